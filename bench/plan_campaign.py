"""Benchmark campaign planning: ``snakemake -n`` on N associations, beside bare Snakemake.

A campaign of N image3 associations x 8 exposures is made from one simulated
8-exposure dither set: every association gets its own 8 symbolic links
(distinct exposure roots) to those files, so only planning is timed and the
disk holds 8 exposures.  For each N it times

* ``ours_cold``: ``snakemake -n`` on the campaign with an empty output folder
  (the input checks read every member's headers);
* ``ours_warm``: the same again (the input checks use their cache);
* ``bare``: a bare Snakefile with a DAG of the same shape (per association 4
  per-exposure rules x 8 exposures and 8 group jobs, ``{product}`` and
  ``{root}`` wildcards, input functions, touch jobs), which is what Snakemake
  itself costs;

and records wall seconds, peak memory (max RSS of the snakemake process) and
the job count.  With ``--schedule N`` it also runs the bare DAG of N
associations to the end (touch jobs, ``--cores 2``) with Snakemake's
``greedy`` and ``ilp`` schedulers: the time then is job selection and
bookkeeping, which is what the profiles' ``scheduler`` setting is chosen on.
Results go to ``bench/results/plan_campaign.md`` and ``.csv``.

    python bench/plan_campaign.py                   # N = 10, 100, 1000; schedulers at 100
    python bench/plan_campaign.py -n 10 100 --work /tmp/plan --schedule 0
"""

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from calimage3.simulate import simulate_dither  # noqa: E402

EXPOSURES = 8

# Same shape as the workflow: per association, 4 per-exposure rules and 8
# group jobs (align, outlier grid, resample grid, skymatch, median,
# resample, catalog, and the shared detection counted per exposure).
BARE_SNAKEFILE = '''
import json
CAMPAIGN = json.load(open(config["campaign"]))
OUT = config["out"]

wildcard_constraints:
    product="[^/]+",
    root="[^/]+",

def roots(wc):
    return CAMPAIGN[wc.product]

def sources(wc):
    return [f"{OUT}/work/{r}.sources" for r in roots(wc)]

def singles(wc):
    return [f"{OUT}/{wc.product}/work/{r}.single" for r in roots(wc)]

def contributions(wc):
    return [f"{OUT}/{wc.product}/work/{r}.contribution" for r in roots(wc)]

def crf(wc):
    return [f"{OUT}/{wc.product}/{r}.crf" for r in roots(wc)]

rule all:
    input: [f"{OUT}/{p}/{p}.cat" for p in CAMPAIGN] + [f"{OUT}/{p}/{r}.crf" for p in CAMPAIGN for r in CAMPAIGN[p]]

rule detect:
    output: touch(f"{OUT}/work/{{root}}.sources")

rule align:
    input: sources
    output: touch(directory(f"{OUT}/{{product}}/work/aligned"))

rule skymatch:
    input: f"{OUT}/{{product}}/work/aligned"
    output: touch(f"{OUT}/{{product}}/work/sky")

rule outlier_grid:
    input: f"{OUT}/{{product}}/work/aligned"
    output: touch(directory(f"{OUT}/{{product}}/work/ogrid"))

rule resample_grid:
    input: f"{OUT}/{{product}}/work/aligned"
    output: touch(directory(f"{OUT}/{{product}}/work/rgrid"))

rule single:
    input: f"{OUT}/{{product}}/work/ogrid", f"{OUT}/{{product}}/work/sky"
    output: touch(f"{OUT}/{{product}}/work/{{root}}.single")

rule median:
    input: singles
    output: touch(f"{OUT}/{{product}}/work/median")

rule flag:
    input: f"{OUT}/{{product}}/work/median"
    output: touch(f"{OUT}/{{product}}/{{root}}.crf")

rule drizzle:
    input: f"{OUT}/{{product}}/{{root}}.crf", f"{OUT}/{{product}}/work/rgrid"
    output: touch(f"{OUT}/{{product}}/work/{{root}}.contribution")

rule resample:
    input: contributions
    output: touch(f"{OUT}/{{product}}/{{product}}.i2d")

rule catalog:
    input: f"{OUT}/{{product}}/{{product}}.i2d"
    output: touch(f"{OUT}/{{product}}/{{product}}.cat")
'''


def make_exposures(folder):
    """Simulate one 8-exposure dither set (256x256) once; return its ASN content and folder."""
    folder = Path(folder)
    asn_files = sorted(folder.glob("*_asn.json"))
    if not asn_files:
        simulate_dither(folder, n_exposures=EXPOSURES, shape=(256, 256), seed=3, n_stars=150, n_galaxies=10)
        asn_files = sorted(folder.glob("*_asn.json"))
    return json.loads(asn_files[0].read_text()), folder


def make_campaign(folder, n_assoc, template, source_dir):
    """N associations of 8 distinct symlinked exposures each; return {product: roots} (asn_id a<k>)."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "cal").mkdir(parents=True)
    members = template["products"][0]["members"]
    campaign = {}
    for k in range(n_assoc):
        product = f"jw{k + 1:05d}-o001_t001_nircam_clear-f200w"
        asn_members, roots = [], []
        for i, member in enumerate(members):
            root = f"jw{k + 1:05d}001001_01101_{i + 1:05d}_nrcb1"
            link = folder / "cal" / f"{root}_cal.fits"
            link.symlink_to((Path(source_dir) / member["expname"]).resolve())
            asn_members.append({"expname": f"cal/{link.name}", "exptype": "science"})
            roots.append(root)
        content = dict(template, asn_id=f"a{k + 1:04d}", products=[{"name": product, "members": asn_members}])
        (folder / f"c{k + 1:05d}_asn.json").write_text(json.dumps(content))
        campaign[product] = roots
    return campaign


def fake_finished(out, campaign, asn_ids):
    """Stand-in products of a finished campaign: every file and folder the DAG keeps, empty,
    with modification times increasing along the DAG (temporary files left out, as a run
    leaves them).  A start on it then has nothing to do: a no-op rerun."""
    out = Path(out)
    stages = [[out / "work" / "tweakreg" / f"{r}_sources.ecsv" for roots in campaign.values() for r in roots]]
    per_product = [
        lambda p, roots: [out / p / "work/tweakreg/aligned"],
        lambda p, roots: [out / p / "work/skymatch/skymatch.json", out / p / "work/outlier_detection/grid"],
        lambda p, roots: [out / p / "work/outlier_detection/median.fits", out / p / "work/resample/grid"],
        lambda p, roots: [out / p / f"{r}_{asn_ids[p]}_crf.fits" for r in roots],
        lambda p, roots: [out / p / f"{p}_i2d.fits"],
        lambda p, roots: [out / p / f"{p}_cat.ecsv", out / p / f"{p}_segm.fits"],
    ]
    stages += [[f for p, roots in campaign.items() for f in stage(p, roots)] for stage in per_product]
    now = time.time() + 1  # after the (just linked) _cal files
    for k, paths in enumerate(stages):
        for path in paths:
            if path.suffix:  # a file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:  # a folder output: Snakemake dates it by its timestamp file
                path.mkdir(parents=True, exist_ok=True)
                path = path / ".snakemake_timestamp"
                path.touch()
            os.utime(path, (now + k, now + k))


def timed(cmd, cwd):
    """Run ``cmd``; return (wall seconds, peak RSS in GB, job count) of the process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{output[-4000:]}")
    match = re.search(r"^total\s+(\d+)\s*$", output, re.M)
    return wall, usage.ru_maxrss / 1e6, int(match.group(1)) if match else 0


def plan(n_assoc, work, template, source_dir):
    """Time our planning (cold and warm) and bare Snakemake's for N associations."""
    base = Path(work) / f"n{n_assoc}"
    campaign = make_campaign(base / "data", n_assoc, template, source_dir)
    out = base / "out"
    shutil.rmtree(out, ignore_errors=True)
    ours = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--config",
            f"asns={base / 'data'}/*_asn.json", f"output_dir={out}", "qa_figures=false"]
    row = {"associations": n_assoc, "exposures": n_assoc * EXPOSURES}
    row["ours_cold_s"], row["ours_cold_gb"], row["ours_jobs"] = timed(ours, REPO)
    row["ours_warm_s"], row["ours_warm_gb"], _ = timed(ours, REPO)
    bare_dir = base / "bare"
    shutil.rmtree(bare_dir, ignore_errors=True)  # a dry run of a DAG already run would plan nothing
    bare_dir.mkdir(parents=True)
    (bare_dir / "Snakefile").write_text(BARE_SNAKEFILE)
    (bare_dir / "campaign.json").write_text(json.dumps(campaign))
    bare = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--config",
            f"campaign={bare_dir / 'campaign.json'}", f"out={bare_dir / 'out'}"]
    row["bare_s"], row["bare_gb"], row["bare_jobs"] = timed(bare, bare_dir)
    row["ratio_warm"] = row["ours_warm_s"] / row["bare_s"]
    # A no-op rerun of the finished campaign (its products stood in by empty files).
    asn_ids = {p: f"a{k + 1:04d}" for k, p in enumerate(campaign)}
    fake_finished(out, campaign, asn_ids)
    time.sleep(9)  # fake_finished dates the stand-ins up to 8 s ahead: let them be in the past
    _, _, row["noop_jobs"] = timed(ours, REPO)  # a dry run first: it must have nothing to do
    row["ours_noop_s"] = row["ours_noop_gb"] = float("nan")
    if row["noop_jobs"] == 0:
        noop = [a for a in ours if a != "-n"]
        row["ours_noop_s"], row["ours_noop_gb"], _ = timed(noop, REPO)
    return row


def schedule(n_assoc, work, schedulers=("greedy", "ilp")):
    """Wall seconds of running the bare DAG of N associations to the end with each scheduler."""
    bare_dir = Path(work) / f"n{n_assoc}" / "bare"
    times = {}
    for scheduler in schedulers:
        shutil.rmtree(bare_dir / "out", ignore_errors=True)
        shutil.rmtree(bare_dir / ".snakemake", ignore_errors=True)
        cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--quiet", "--scheduler", scheduler, "--config",
               f"campaign={bare_dir / 'campaign.json'}", f"out={bare_dir / 'out'}"]
        times[scheduler], _, _ = timed(cmd, bare_dir)
    return times


def write_results(rows, results, schedule_times=None, schedule_n=0):
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "plan_campaign.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Campaign planning (`snakemake -n`), 8 exposures per association",
        "",
        "Made by `python bench/plan_campaign.py`. *cold*: empty output folder (every member's headers",
        "read by the input checks); *warm*: second start (input-check cache). *bare*: bare Snakemake on",
        "a DAG of the same shape (touch jobs). Peak memory is the max RSS of the snakemake process.",
        "",
        "*no-op*: a start on the finished campaign (its products stood in by empty files), which",
        "has nothing to do.",
        "",
        "| associations | jobs (ours / bare) | ours cold | ours warm | bare Snakemake | warm / bare | ours no-op rerun | peak GB (cold / warm / bare) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['associations']} | {r['ours_jobs']} / {r['bare_jobs']} | {r['ours_cold_s']:.1f} s | "
                     f"{r['ours_warm_s']:.1f} s | {r['bare_s']:.1f} s | {r['ratio_warm']:.2f} | "
                     f"{r['ours_noop_s']:.1f} s ({r['noop_jobs']} jobs) | "
                     f"{r['ours_cold_gb']:.2f} / {r['ours_warm_gb']:.2f} / {r['bare_gb']:.2f} |")
    if schedule_times:
        jobs = next((r["bare_jobs"] for r in rows if r["associations"] == schedule_n), "")
        lines += ["", f"Running the bare DAG of {schedule_n} associations ({jobs} touch jobs) to the end, "
                      "`--cores 2`: " + ", ".join(f"`--scheduler {k}` {v:.1f} s" for k, v in schedule_times.items())
                  + "."]
    (results / "plan_campaign.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--associations", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--work", default="/tmp/calimage3_plan_campaign", help="scratch folder")
    parser.add_argument("--results", default=str(REPO / "bench" / "results"))
    parser.add_argument("--schedule", type=int, default=100,
                        help="run the bare DAG of this many associations with each scheduler (0: skip)")
    args = parser.parse_args(argv)
    template, source_dir = make_exposures(Path(args.work) / "exposures")
    rows = []
    for n in args.associations:
        rows.append(plan(n, args.work, template, source_dir))
        print(rows[-1], flush=True)
    schedule_times = None
    if args.schedule:
        if args.schedule not in args.associations:
            rows.append(plan(args.schedule, args.work, template, source_dir))
        schedule_times = schedule(args.schedule, args.work)
        print(schedule_times, flush=True)
    write_results(sorted(rows, key=lambda r: r["associations"]), args.results, schedule_times, args.schedule)


if __name__ == "__main__":
    main()
