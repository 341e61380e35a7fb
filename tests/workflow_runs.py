"""Running the workflow from tests: the documented command line, and dry-run job plans."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_snakemake(input_item, output_dir, *config_items, flags=(), check=True):
    """Run ``snakemake --cores 2`` with ``input_item`` (``asn=...`` or ``asns=...``); return the process."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *flags,
           "--config", input_item, f"output_dir={output_dir}", *config_items]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(input_item, output_dir, *config_items):
    """Rule -> job count that a dry run would execute (empty when nothing is to be done)."""
    proc = run_snakemake(input_item, output_dir, *config_items, flags=("--dry-run",))
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    jobs = {}
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            jobs[match.group(1)] = int(match.group(2))
    return jobs
