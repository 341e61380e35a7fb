"""Benchmark the workflow: wall time and peak memory per rule, and how they grow with N.

For each exposure count N it simulates N dithered exposures, runs the whole
workflow with ``--cores 1`` and ``--cores 2``, times a no-op rerun, and reads
Snakemake's ``benchmark:`` files.  It writes ``bench/results/benchmark.md``
and ``benchmark.csv``.

    python bench/run_benchmark.py                 # N = 4, 8, 16 at 2048x2048
    python bench/run_benchmark.py --quick         # N = 2, 4 at 512x512 (a minute)
    python bench/run_benchmark.py -n 8 --size 2048 --cores 2

Where the optional ``jwst`` package is installed (``pip install .[bench]``),
``--jwst`` also runs jwst's ``Image3Pipeline`` on the same association,
offline, and reports it beside the workflow.
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from calimage3.simulate import simulate_dither  # noqa: E402


def run_workflow(asn, out, cores, extra=()):
    """Run snakemake; return wall seconds."""
    # The science steps only: QA figures are optional and timed apart from them.
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--quiet", "all",
           "--config", f"asn={asn}", f"output_dir={out}", "qa_figures=false", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{proc.stderr[-4000:]}")
    return wall


def read_benchmarks(out):
    """Per rule: job count, summed seconds, largest max_rss (MB), summed CPU seconds."""
    per_rule = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "max_rss_mb": 0.0, "cpu_s": 0.0})
    for tsv in sorted((Path(out) / "benchmarks").rglob("*.tsv")):
        rule = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        with open(tsv) as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        for row in rows:
            entry = per_rule[rule]
            entry["jobs"] += 1
            entry["seconds"] += float(row["s"])
            rss = row.get("max_rss", "NA")
            if rss not in ("NA", "-", ""):
                entry["max_rss_mb"] = max(entry["max_rss_mb"], float(rss))
            cpu = row.get("cpu_time", "NA")
            if cpu not in ("NA", "-", ""):
                entry["cpu_s"] += float(cpu)
    return dict(per_rule)


def run_jwst(asn, out):
    """Run jwst's Image3Pipeline offline on the association; return (wall, peak MB) or None."""
    try:
        import jwst  # noqa: F401
    except ImportError:
        return None
    code = (
        "import resource, time; from jwst.pipeline import Image3Pipeline; t=time.perf_counter(); "
        f"Image3Pipeline.call({str(asn)!r}, output_dir={str(out)!r}, save_results=True); "
        "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"
    )
    env = dict(os.environ, CRDS_SERVER_URL="", CRDS_PATH=str(Path(out) / "crds_cache"))
    Path(out).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return ("failed", proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "")
    wall, peak = proc.stdout.split()[-2:]
    return float(wall), float(peak)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n-exposures", type=int, nargs="+", default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="N = 2, 4 at 512x512")
    parser.add_argument("--workdir", default="/tmp/calimage3_bench")
    parser.add_argument("--results", default=str(REPO / "bench" / "results"))
    parser.add_argument("--jwst", action="store_true", help="also run jwst's Image3Pipeline where installed")
    args = parser.parse_args(argv)
    counts = args.n_exposures or ([2, 4] if args.quick else [4, 8, 16])
    size = args.size or (512 if args.quick else 2048)
    work = Path(args.workdir)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)

    rows, summary = [], []
    for n in counts:
        data = work / f"data_n{n}_s{size}"
        if not data.exists():
            print(f"simulating {n} exposures of {size}x{size} ...", flush=True)
            simulate_dither(data, n_exposures=n, shape=(size, size), seed=100 + n)
        asn = next(data.glob("*_asn.json"))
        walls = {}
        for cores in args.cores:
            out = work / f"out_n{n}_s{size}_c{cores}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"N={n} size={size} cores={cores} ...", flush=True)
            walls[cores] = run_workflow(asn, out, cores)
            for rule, entry in sorted(read_benchmarks(out).items()):
                rows.append({"n_exposures": n, "size": size, "cores": cores, "rule": rule, **entry})
            print(f"  end to end {walls[cores]:.1f} s", flush=True)
        noop = run_workflow(asn, out, max(args.cores))
        line = {"n_exposures": n, "size": size, "noop_rerun_s": noop}
        for cores, wall in walls.items():
            line[f"wall_{cores}core_s"] = wall
        if 1 in walls and 2 in walls:
            line["speedup_1_to_2"] = walls[1] / walls[2]
        peak = max((r["max_rss_mb"] for r in rows if r["n_exposures"] == n), default=0.0)
        line["peak_job_rss_mb"] = peak
        if args.jwst:
            line["jwst"] = run_jwst(asn, work / f"jwst_n{n}")
        summary.append(line)

    with open(results / "benchmark.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    md = ["# calimage3 benchmark", "",
          f"Machine: {os.cpu_count()} cores. Sizes in pixels; times in seconds; memory is each rule's largest job max RSS (MB).", "",
          "## End to end", "", "| N | size | " + " | ".join(f"wall {c} core(s)" for c in args.cores)
          + " | speed-up 1→2 | no-op rerun | peak job RSS (MB) |",
          "|---|---|" + "---|" * len(args.cores) + "---|---|---|"]
    for line in summary:
        md.append(f"| {line['n_exposures']} | {line['size']} | "
                  + " | ".join(f"{line[f'wall_{c}core_s']:.1f}" for c in args.cores)
                  + f" | {line.get('speedup_1_to_2', float('nan')):.2f} | {line['noop_rerun_s']:.1f} | {line['peak_job_rss_mb']:.0f} |")
    if args.jwst:
        md += ["", "## jwst Image3Pipeline on the same data", ""]
        for line in summary:
            md.append(f"- N={line['n_exposures']}: {line['jwst'] or 'jwst not installed'}")
    md += ["", "## Per rule", "", "| N | cores | rule | jobs | summed job s | CPU s | max RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['n_exposures']} | {r['cores']} | {r['rule']} | {r['jobs']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['max_rss_mb']:.0f} |")
    (results / "benchmark.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:8 + len(summary)]))
    print(f"\nwrote {results / 'benchmark.md'} and {results / 'benchmark.csv'}")


if __name__ == "__main__":
    main()
