"""Benchmark the workflow: wall time and peak memory per rule, and how they grow with N.

For each exposure count N it simulates N dithered exposures, runs the whole
workflow with ``--cores 1`` and ``--cores 2``, times a no-op rerun, and reads
Snakemake's ``benchmark:`` files.  It writes ``bench/results/benchmark.md``
and ``benchmark.csv``.

    python bench/run_benchmark.py                 # N = 4, 8, 16 at 2048x2048
    python bench/run_benchmark.py --quick         # N = 2, 4 at 512x512 (a minute)
    python bench/run_benchmark.py -n 8 --size 2048 --cores 2

Where the optional ``jwst`` package is installed (``pip install .[bench]``,
or in a separate virtualenv named with ``--jwst-python``), ``--jwst`` also
runs jwst's ``Image3Pipeline`` offline on the same association (through
``bench/jwst_image3.py``) and writes, beside the workflow's numbers, its wall
time, peak memory and the agreement of the products (``bench/compare_jwst.py``)
to ``benchmark.md`` and ``jwst_comparison.csv``/``.json``:

    python bench/run_benchmark.py -n 8 --cores 1 --jwst-python /tmp/jwstenv/bin/python
    python bench/run_benchmark.py -n 8 --jwst-python /tmp/jwstenv/bin/python \
        --ours-dir OUTPUT_OF_AN_EARLIER_RUN --results /tmp/side_by_side   # jwst only
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from calimage3.simulate import simulate_dither  # noqa: E402

# A reserved top-level domain (RFC 2606): never resolves, so CRDS cannot reach a server.
OFFLINE_CRDS_SERVER = "https://crds-offline.invalid"


def run_workflow(asn, out, cores, extra=(), nice=0):
    """Run snakemake; return wall seconds."""
    # The science steps only: QA figures are optional and timed apart from them.
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--quiet", "all",
           "--config", f"asn={asn}", f"output_dir={out}", "qa_figures=false", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          preexec_fn=(lambda: os.nice(nice)) if nice else None)
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


def _run_measured(cmd, nice=0, env=None, cwd=None, log=None):
    """Run ``cmd``; return (returncode, stdout, wall s, CPU s, peak RSS MB) of its process tree."""
    def lower_priority():
        if nice:
            os.nice(nice)

    out = open(log, "w") if log else subprocess.DEVNULL
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=out, text=True,
                                preexec_fn=lower_priority)
        stdout = proc.stdout.read()
        # wait4 gives this child's own resource usage (its waited-for descendants included),
        # unlike RUSAGE_CHILDREN, which also holds every earlier child of this process.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()
    wall = time.perf_counter() - start
    return proc.returncode, stdout, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def find_jwst_python(candidate=None):
    """The interpreter that imports ``jwst``: ``candidate`` if given, else this one if it can."""
    if candidate:
        return str(candidate)
    import importlib.util
    return sys.executable if importlib.util.find_spec("jwst") is not None else None


def _network_isolation():
    """``unshare -n`` (no network at all) where this user may use it, else nothing."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n"] if probe.returncode == 0 else []


def _last_json(stdout):
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON result in the jwst helper's output")


def run_jwst(asn, out, jwst_python, *, psf_fwhm=2.1, skip=(), nice=0):
    """Run jwst's Image3Pipeline offline on the association with ``jwst_python``.

    Two subprocesses of ``bench/jwst_image3.py``: ``stage`` writes jwst-ready
    copies of the members (same pixels, same WCS with a ``v2v3`` frame) and
    the source_catalog reference files; ``run`` runs the pipeline with no
    CRDS server, an empty CRDS cache and no network (``unshare -n`` where
    allowed).  Wall time and peak RSS are those of the ``run`` process tree
    (interpreter start and imports included).

    Returns a dict, with ``error`` set where a stage failed.
    """
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "crds_empty").mkdir(parents=True)
    env = dict(os.environ, CRDS_SERVER_URL=OFFLINE_CRDS_SERVER, CRDS_PATH=str(out / "crds_empty"),
               CRDS_MODE="local", STPIPE_DISABLE_CRDS_STEPPARS="true")
    helper = str(REPO / "bench" / "jwst_image3.py")
    isolate = _network_isolation()
    rc, stdout, stage_wall, _, _ = _run_measured(
        [*isolate, jwst_python, helper, "stage", str(asn), str(out / "input"), "--psf-fwhm", str(psf_fwhm)],
        nice=nice, env=env, log=out / "stage.log")
    if rc != 0:
        return {"error": f"staging failed (see {out / 'stage.log'})"}
    staged = _last_json(stdout)
    cmd = [*isolate, jwst_python, helper, "run", staged["asn"], str(out / "output"),
           "--override-apcorr", staged["override_apcorr"],
           "--override-abvegaoffset", staged["override_abvegaoffset"]]
    if skip:
        cmd += ["--skip", *skip]
    rc, stdout, wall, cpu, peak = _run_measured(cmd, nice=nice, env=env, log=out / "pipeline.log")
    if rc != 0:
        return {"error": f"Image3Pipeline failed (see {out / 'pipeline.log'})", "stage": staged}
    result = _last_json(stdout)
    result.update(wall_s=wall, cpu_s=cpu, peak_rss_mb=peak, stage=staged, stage_s=stage_wall,
                  network="none (unshare -n)" if isolate else "not isolated (CRDS server unreachable)",
                  output_dir=str(out / "output"), nice=nice)
    return result


def workflow_summary(out):
    """Summed job seconds, summed job CPU seconds and largest job max RSS (MB) from Snakemake's benchmarks."""
    per_rule = read_benchmarks(out)
    return (sum(entry["seconds"] for entry in per_rule.values()),
            sum(entry["cpu_s"] for entry in per_rule.values()),
            max((entry["max_rss_mb"] for entry in per_rule.values()), default=0.0))


def jwst_side_by_side(n, size, asn, data, work, args, ours_dir, ours_wall, ours_wall_kind, ours_peak):
    """Run jwst, compare its products with ours; one summary dict for the report."""
    from compare_jwst import compare_products

    truth = data / "truth"
    info = json.loads((truth / "truth.json").read_text()) if (truth / "truth.json").exists() else {}
    print(f"N={n} size={size}: jwst Image3Pipeline ({args.jwst_python}) ...", flush=True)
    jw = run_jwst(asn, work / f"jwst_n{n}_s{size}", args.jwst_python, psf_fwhm=float(info.get("psf_fwhm", 2.1)),
                  skip=args.jwst_skip, nice=args.nice)
    _, ours_cpu, _ = workflow_summary(ours_dir)
    line = {"n_exposures": n, "size": size, "ours_dir": str(ours_dir), "ours_wall_s": ours_wall,
            "ours_wall_kind": ours_wall_kind, "ours_cpu_s": ours_cpu, "ours_peak_mb": ours_peak, "jwst": jw}
    if "error" in jw:
        print(f"  jwst: {jw['error']}", flush=True)
        return line
    print(f"  jwst {jw['wall_s']:.1f} s ({jw['cpu_s']:.1f} CPU s), peak {jw['peak_rss_mb']:.0f} MB", flush=True)
    product = json.loads(Path(asn).read_text())["products"][0]["name"]
    if truth.exists() and jw.get("i2d"):
        line["agreement"] = compare_products(ours_dir, jw["output_dir"], truth, product)
    return line


def _fmt(value, spec=".1f"):
    return "–" if value is None or (isinstance(value, float) and value != value) else format(value, spec)


def side_by_side_markdown(lines):
    """Markdown tables: jwst next to the workflow (cost), and the agreement of the products."""
    md = ["", "## Side by side with jwst Image3Pipeline", ""]
    versions = {line["jwst"].get("jwst_version") for line in lines if "jwst_version" in line["jwst"]}
    for line in lines:
        jw = line["jwst"]
        if "error" in jw:
            md.append(f"- N={line['n_exposures']}: jwst {jw['error']}")
    ok = [line for line in lines if "error" not in line["jwst"]]
    if not ok:
        return md
    first = ok[0]["jwst"]
    ran = [step for step, status in first["steps"].items() if status == "COMPLETE"]
    not_ran = [f"{step} ({'jwst runs it for moving targets only' if step == 'assign_mtwcs' and not status else status})"
               for step, status in first["steps"].items() if status != "COMPLETE"]
    md += [
        f"jwst {', '.join(sorted(versions))} ({', '.join(f'{k} {v}' for k, v in first['versions'].items() if k != 'jwst')}); "
        f"steps run: {', '.join(ran)}; not run: {', '.join(not_ran) or 'none'}. "
        f"Offline: CRDS_SERVER_URL={first['offline']['CRDS_SERVER_URL']}, empty CRDS_PATH "
        f"({first['crds_cache_files_after_run']} files after the run), CRDS_MODE=local, "
        f"STPIPE_DISABLE_CRDS_STEPPARS=true, source_catalog reference files given as overrides; "
        f"network: {first['network']}. jwst's wall, CPU time (user+system) and peak RSS are those of its one "
        f"process (interpreter start and imports included, staging of the inputs excluded); ours are the "
        f"{ok[0]['ours_wall_kind']}, the jobs' summed CPU time and the largest job's max RSS. "
        f"CPU time depends less than wall time on other load on the machine.",
        "",
        "| N | size | ours wall (s) | jwst wall (s) | wall jwst/ours | ours CPU (s) | jwst CPU (s) | CPU jwst/ours "
        "| ours peak job (MB) | jwst peak (MB) | peak jwst/ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for line in ok:
        jw = line["jwst"]
        ratio = jw["wall_s"] / line["ours_wall_s"] if line["ours_wall_s"] else float("nan")
        peak_ratio = jw["peak_rss_mb"] / line["ours_peak_mb"] if line["ours_peak_mb"] else float("nan")
        cpu_ratio = jw["cpu_s"] / line["ours_cpu_s"] if line["ours_cpu_s"] else float("nan")
        md.append(f"| {line['n_exposures']} | {line['size']} | {_fmt(line['ours_wall_s'])} | {jw['wall_s']:.1f} | "
                  f"{_fmt(ratio, '.2f')} | {line['ours_cpu_s']:.1f} | {jw['cpu_s']:.1f} | {_fmt(cpu_ratio, '.2f')} | "
                  f"{line['ours_peak_mb']:.0f} | {jw['peak_rss_mb']:.0f} | {_fmt(peak_ratio, '.2f')} |")
    agree = [line for line in ok if "agreement" in line]
    if agree:
        md += ["", "Agreement at the simulator's true star positions (stars with S/N ≥ "
               f"{agree[0]['agreement']['min_snr']:.0f} covered by both mosaics; aperture "
               f"{agree[0]['agreement']['aperture_radius_pix']:.2f} px, annulus background) and of the _crf outlier flags:",
               "",
               "| N | stars | flux jwst/ours median | robust std | ours/truth | jwst/truth "
               "| offset jwst−ours median (mas) | RMS (mas) | ours−truth RMS (mas) | jwst−truth RMS (mas) "
               "| outlier fraction ours | jwst | truth outliers flagged ours | jwst | flag overlap (Jaccard) |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for line in agree:
            a = line["agreement"]
            off = a["offset_jwst_minus_ours"]
            o = a["outliers"]
            md.append(
                f"| {line['n_exposures']} | {a['flux_ratio']['n']} | {a['flux_ratio']['median']:.4f} | "
                f"{a['flux_ratio']['robust_std']:.4f} | {a['ours_over_truth']['median']:.4f} | "
                f"{a['jwst_over_truth']['median']:.4f} | {off['median_abs_mas']:.2f} | {off['rms_mas']:.2f} | "
                f"{a['ours_minus_truth']['rms_mas']:.2f} | {a['jwst_minus_truth']['rms_mas']:.2f} | "
                f"{100 * o['fraction_ours']:.4f}% | {100 * o['fraction_jwst']:.4f}% | "
                f"{100 * o.get('truth_recall_ours', float('nan')):.1f}% | {100 * o.get('truth_recall_jwst', float('nan')):.1f}% | "
                f"{o['jaccard']:.3f} |")
    return md


def _flatten(prefix, value, into):
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, item, into)
    elif isinstance(value, (list, tuple)):
        into[prefix] = json.dumps(value)
    else:
        into[prefix] = value
    return into


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n-exposures", type=int, nargs="+", default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="N = 2, 4 at 512x512")
    parser.add_argument("--workdir", default="/tmp/calimage3_bench")
    parser.add_argument("--results", default=str(REPO / "bench" / "results"))
    parser.add_argument("--nice", type=int, default=0, help="run the workflow and jwst at this niceness")
    parser.add_argument("--jwst", action="store_true",
                        help="also run jwst's Image3Pipeline offline and compare the products")
    parser.add_argument("--jwst-python", default=None,
                        help="interpreter that has jwst (implies --jwst; default: this one, if it imports jwst)")
    parser.add_argument("--jwst-skip", nargs="*", default=[], metavar="STEP",
                        help="jwst steps to skip (e.g. source_catalog)")
    parser.add_argument("--ours-dir", default=None,
                        help="existing workflow output for the one N given: compare with it instead of "
                             "running the workflow (its summed job seconds stand in for the wall time)")
    args = parser.parse_args(argv)
    counts = args.n_exposures or ([2, 4] if args.quick else [4, 8, 16])
    size = args.size or (512 if args.quick else 2048)
    if args.ours_dir and len(counts) != 1:
        parser.error("--ours-dir needs exactly one -n")
    args.jwst = args.jwst or args.jwst_python is not None
    if args.jwst:
        args.jwst_python = find_jwst_python(args.jwst_python)
    work = Path(args.workdir)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)

    rows, summary, side = [], [], []
    for n in counts:
        data = work / f"data_n{n}_s{size}"
        if not data.exists():
            print(f"simulating {n} exposures of {size}x{size} ...", flush=True)
            simulate_dither(data, n_exposures=n, shape=(size, size), seed=100 + n)
        asn = next(data.glob("*_asn.json"))
        walls = {}
        if args.ours_dir:
            out = Path(args.ours_dir)
            for rule, entry in sorted(read_benchmarks(out).items()):
                rows.append({"n_exposures": n, "size": size, "cores": "reused", "rule": rule, **entry})
            job_s, _, peak = workflow_summary(out)
            line = {"n_exposures": n, "size": size, "reused_output": str(out), "summed_job_s": job_s,
                    "peak_job_rss_mb": peak}
            ours_wall, ours_kind = job_s, f"summed job seconds of the reused output {out}"
        else:
            for cores in args.cores:
                out = work / f"out_n{n}_s{size}_c{cores}"
                shutil.rmtree(out, ignore_errors=True)
                print(f"N={n} size={size} cores={cores} ...", flush=True)
                walls[cores] = run_workflow(asn, out, cores, nice=args.nice)
                for rule, entry in sorted(read_benchmarks(out).items()):
                    rows.append({"n_exposures": n, "size": size, "cores": cores, "rule": rule, **entry})
                print(f"  end to end {walls[cores]:.1f} s", flush=True)
            noop = run_workflow(asn, out, max(args.cores), nice=args.nice)
            line = {"n_exposures": n, "size": size, "noop_rerun_s": noop}
            for cores, wall in walls.items():
                line[f"wall_{cores}core_s"] = wall
            if 1 in walls and 2 in walls:
                line["speedup_1_to_2"] = walls[1] / walls[2]
            peak = max((r["max_rss_mb"] for r in rows if r["n_exposures"] == n), default=0.0)
            line["peak_job_rss_mb"] = peak
            cores = min(walls)
            ours_wall, ours_kind = walls[cores], f"end-to-end wall with --cores {cores}"
            out = work / f"out_n{n}_s{size}_c{cores}"
        if args.jwst and args.jwst_python:
            side.append(jwst_side_by_side(n, size, asn, data, work, args, out, ours_wall, ours_kind, peak))
        summary.append(line)

    with open(results / "benchmark.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    md = ["# calimage3 benchmark", "",
          f"Machine: {os.cpu_count()} cores. Sizes in pixels; times in seconds; memory is each rule's largest job max RSS (MB).", ""]
    if args.ours_dir:
        md += ["## Reused workflow output", "", "| N | size | output | summed job s | peak job RSS (MB) |",
               "|---|---|---|---|---|"]
        md += [f"| {line['n_exposures']} | {line['size']} | {line['reused_output']} | {line['summed_job_s']:.1f} | "
               f"{line['peak_job_rss_mb']:.0f} |" for line in summary]
    else:
        md += ["## End to end", "", "| N | size | " + " | ".join(f"wall {c} core(s)" for c in args.cores)
               + " | speed-up 1→2 | no-op rerun | peak job RSS (MB) |",
               "|---|---|" + "---|" * len(args.cores) + "---|---|---|"]
        for line in summary:
            md.append(f"| {line['n_exposures']} | {line['size']} | "
                      + " | ".join(f"{line[f'wall_{c}core_s']:.1f}" for c in args.cores)
                      + f" | {line.get('speedup_1_to_2', float('nan')):.2f} | {line['noop_rerun_s']:.1f} | {line['peak_job_rss_mb']:.0f} |")
    if args.jwst and not args.jwst_python:
        md += ["", "## Side by side with jwst Image3Pipeline", "",
               "jwst is not installed in this interpreter; pass `--jwst-python` with one that has it."]
    elif side:
        md += side_by_side_markdown(side)
        flat = [_flatten("", line, {}) for line in side]
        fields = sorted({key for row in flat for key in row})
        with open(results / "jwst_comparison.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(flat)
        (results / "jwst_comparison.json").write_text(json.dumps(side, indent=2) + "\n")
    md += ["", "## Per rule", "", "| N | cores | rule | jobs | summed job s | CPU s | max RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['n_exposures']} | {r['cores']} | {r['rule']} | {r['jobs']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['max_rss_mb']:.0f} |")
    (results / "benchmark.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:md.index("## Per rule")]))
    print(f"\nwrote {results / 'benchmark.md'} and {results / 'benchmark.csv'}"
          + (f", {results / 'jwst_comparison.csv'} and .json" if side else ""))


if __name__ == "__main__":
    main()
