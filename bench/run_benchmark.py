"""Benchmark the workflow: wall time, CPU time and peak memory per rule, beside jwst, and how they grow.

For each data set (dithers x size x detectors; by default the three sizes
of issue 16: 4 x 1024², 8 x 2048², and 4 dithers x 4 NIRCam-like
detectors at 2048²) it simulates the exposures (a JWST-like diffraction
PSF with saturated stars), runs the whole workflow with ``--cores 1`` and
``--cores 2``, times a no-op rerun, and reads each job's own wall, CPU and
peak memory (the job server's usage lines in the logs, or Snakemake's
``benchmark:`` files) and the critical path of the 2-core run.  It writes
``bench/results/benchmark.md`` and ``benchmark.csv``.

    python bench/run_benchmark.py                       # the three sets
    python bench/run_benchmark.py --quick               # 2 and 4 x 512² (a minute)
    python bench/run_benchmark.py 8x2048 --cores 2      # one set
    python bench/run_benchmark.py 4x1024 --config job_server=false

Where the optional ``jwst`` package is installed (``pip install .[bench]``,
or in a separate virtualenv named with ``--jwst-python``), ``--jwst`` also
runs jwst's ``Image3Pipeline`` offline on the same association (through
``bench/jwst_image3.py``), right after the workflow, and writes its wall
time, CPU time and peak memory beside the workflow's 2-core run, and the
agreement of the products (``bench/compare_jwst.py``), to ``benchmark.md``
and ``jwst_comparison.csv``/``.json``:

    python bench/run_benchmark.py --jwst-python /tmp/jwstenv/bin/python
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


def run_workflow(asn, out, cores, extra=(), nice=0, pin=False):
    """Run snakemake; return wall seconds.

    ``pin`` confines the whole run (Snakemake, the job server, every job) to
    the first ``cores`` CPUs with ``taskset``: ``--cores 1`` alone still lets
    Snakemake's own process and the job server's imports use a second CPU.
    """
    # The science steps only: QA figures are optional and timed apart from them.
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--quiet", "all",
           "--config", f"asn={asn}", f"output_dir={out}", "qa_figures=false", *extra]
    if pin:
        cmd = ["taskset", "-c", ",".join(str(c) for c in range(cores)), *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          preexec_fn=(lambda: os.nice(nice)) if nice else None)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{proc.stderr[-4000:]}")
    return wall


def read_job_usage(out):
    """Every job's usage line from the logs under ``out`` (jobs run by the job server's workers), as dicts."""
    from calimage3.job_server import parse_usage_line

    jobs = []
    for log in sorted(Path(out).rglob("logs/**/*.log")):
        for line in log.read_text(errors="replace").splitlines():
            usage = parse_usage_line(line)
            if usage:
                jobs.append(usage)
    return jobs


def read_benchmarks(out):
    """Per rule: job count, summed seconds, largest max_rss (MB), summed CPU seconds.

    Jobs run by the job server's workers report their own wall, CPU and peak
    memory in their logs (Snakemake's benchmark measures the process that
    waits for them); Snakemake's ``benchmark:`` files are read otherwise.
    """
    per_rule = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "max_rss_mb": 0.0, "cpu_s": 0.0, "sys_s": 0.0})
    usage = read_job_usage(out)
    for job in usage:
        entry = per_rule[job["rule"]]
        entry["jobs"] += 1
        entry["seconds"] += job["wall_s"]
        entry["cpu_s"] += job["cpu_s"]
        entry["sys_s"] += job.get("sys_s", 0.0)
        entry["max_rss_mb"] = max(entry["max_rss_mb"], job["max_rss_mb"])
    if usage:
        return dict(per_rule)
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


def critical_path(out, slack=0.05):
    """The chain of jobs that set the run's wall time, from the job server's start times.

    Walking back from the job that ended last, each job's predecessor is
    the one that ended last before it started (a dependency, or the job
    whose core it waited for).  Returns ``(chain, job seconds on it, first
    start to last end)``; the difference between the two is what was spent
    between jobs (Snakemake scheduling a job and starting its process).
    """
    jobs = [j for j in read_job_usage(out) if "start" in j]
    if not jobs:
        return [], float("nan"), float("nan")
    for job in jobs:
        job["end"] = job["start"] + job["wall_s"]
    job = max(jobs, key=lambda j: j["end"])
    chain = [job]
    while True:
        before = [j for j in jobs if j["end"] <= job["start"] + slack and j is not job and j not in chain]
        if not before:
            break
        job = max(before, key=lambda j: j["end"])
        chain.append(job)
    chain.reverse()
    span = chain[-1]["end"] - min(j["start"] for j in jobs)
    return [j["rule"] for j in chain], sum(j["wall_s"] for j in chain), span


def compress_chain(rules):
    """``['a', 'a', 'b']`` -> ``'a x2 -> b'``."""
    parts = []
    for rule in rules:
        if parts and parts[-1][0] == rule:
            parts[-1][1] += 1
        else:
            parts.append([rule, 1])
    return " → ".join(f"{r} ×{n}" if n > 1 else r for r, n in parts)


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
            md.append(f"- {line.get('set', line['n_exposures'])}: jwst {jw['error']}")
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
        "| set | ours wall (s) | jwst wall (s) | wall ours/jwst | ours CPU (s) | jwst CPU (s) | CPU ours/jwst "
        "| ours peak job (MB) | jwst peak (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for line in ok:
        jw = line["jwst"]
        md.append(f"| {line.get('set', line['n_exposures'])} | {_fmt(line['ours_wall_s'])} | {jw['wall_s']:.1f} | "
                  f"{_fmt(line['ours_wall_s'] / jw['wall_s'], '.2f')} | {line['ours_cpu_s']:.1f} | {jw['cpu_s']:.1f} | "
                  f"{_fmt(line['ours_cpu_s'] / jw['cpu_s'], '.2f')} | {line['ours_peak_mb']:.0f} | "
                  f"{jw['peak_rss_mb']:.0f} |")
    agree = [line for line in ok if "agreement" in line]
    if agree:
        md += ["", "Agreement at the simulator's true star positions (stars with S/N ≥ "
               f"{agree[0]['agreement']['min_snr']:.0f} covered by both mosaics; aperture "
               f"{agree[0]['agreement']['aperture_radius_pix']:.2f} px, annulus background) and of the _crf outlier flags:",
               "",
               "| set | stars | flux jwst/ours median | robust std | ours/truth | jwst/truth "
               "| offset jwst−ours median (mas) | RMS (mas) | ours−truth RMS (mas) | jwst−truth RMS (mas) "
               "| outlier fraction ours | jwst | truth outliers flagged ours | jwst | flag overlap (Jaccard) |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for line in agree:
            a = line["agreement"]
            off = a["offset_jwst_minus_ours"]
            o = a["outliers"]
            md.append(
                f"| {line.get('set', line['n_exposures'])} | {a['flux_ratio']['n']} | {a['flux_ratio']['median']:.4f} | "
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


def parse_set(text):
    """``"8x2048"`` or ``"4x2048x4"`` (dithers x size x detectors) -> (n, size, detectors)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) not in (2, 3) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected NxSIZE or NxSIZExDETECTORS, got {text!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else 1


def set_label(n, size, detectors):
    return f"{n} x {size}²" + (f" x {detectors} det" if detectors > 1 else "")


def simulate_set(data, n, size, detectors, psf):
    """The benchmark's data: a JWST-like diffraction PSF (F150W) with saturated stars unless ``psf='gaussian'``."""
    kwargs = dict(n_exposures=n, shape=(size, size), detectors=detectors, seed=100 + n + 10 * detectors)
    if psf == "jwst":
        kwargs.update(psf="jwst", psf_filter="F150W", saturation=3000.0, n_saturated=4 * detectors)
    simulate_dither(data, **kwargs)
    add_mast_checksums(data)


def add_mast_checksums(data):
    """Give every _cal in ``data`` the CHECKSUM/DATASUM keywords MAST's files carry (the workflow verifies
    them); files that have them are left alone, so data simulated by an earlier run gets them once."""
    from astropy.io import fits

    for path in sorted(data.glob("*_cal.fits")):
        with fits.open(path) as hdul:
            if "DATASUM" in hdul[1].header:
                continue
            hdul.writeto(path.with_suffix(".tmp"), checksum=True)
        os.replace(path.with_suffix(".tmp"), path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="*", type=parse_set, default=None,
                        help="data sets as DITHERSxSIZE[xDETECTORS] (default: 4x1024 8x2048 4x2048x4, "
                             "the sizes of issue 16)")
    parser.add_argument("-n", "--n-exposures", type=int, nargs="+", default=None,
                        help="instead of sets: these exposure counts at --size, one detector")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--psf", choices=("jwst", "gaussian"), default="jwst")
    parser.add_argument("--quick", action="store_true", help="sets 2x512 and 4x512")
    parser.add_argument("--workdir", default="/tmp/calimage3_bench")
    parser.add_argument("--results", default=str(REPO / "bench" / "results"))
    parser.add_argument("--nice", type=int, default=0, help="run the workflow and jwst at this niceness")
    parser.add_argument("--jwst", action="store_true",
                        help="also run jwst's Image3Pipeline offline and compare the products")
    parser.add_argument("--jwst-python", default=None,
                        help="interpreter that has jwst (implies --jwst; default: this one, if it imports jwst)")
    parser.add_argument("--jwst-skip", nargs="*", default=[], metavar="STEP",
                        help="jwst steps to skip (e.g. source_catalog)")
    parser.add_argument("--pin", action="store_true",
                        help="confine each run to its first N CPUs (taskset), Snakemake and job server included")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra workflow config for every run (e.g. job_server=false)")
    args = parser.parse_args(argv)
    if args.n_exposures:
        sets = [(n, args.size, 1) for n in args.n_exposures]
    elif args.quick:
        sets = [(2, 512, 1), (4, 512, 1)]
    else:
        sets = args.sets or [(4, 1024, 1), (8, 2048, 1), (4, 2048, 4)]
    args.jwst = args.jwst or args.jwst_python is not None
    if args.jwst:
        args.jwst_python = find_jwst_python(args.jwst_python)
    work = Path(args.workdir)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    headline_cores = max(args.cores)

    rows, summary, side = [], [], []
    for n, size, detectors in sets:
        label = set_label(n, size, detectors)
        data = work / f"data_n{n}_s{size}_d{detectors}_{args.psf}"
        if not data.exists():
            print(f"simulating {label} ...", flush=True)
            simulate_set(data, n, size, detectors, args.psf)
        add_mast_checksums(data)
        asn = next(data.glob("*_asn.json"))
        line = {"set": label, "n_exposures": n * detectors, "size": size, "detectors": detectors}
        for cores in args.cores:
            out = work / f"out_n{n}_s{size}_d{detectors}_c{cores}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"{label} cores={cores} ...", flush=True)
            line[f"wall_{cores}core_s"] = run_workflow(asn, out, cores, extra=args.config, nice=args.nice,
                                                       pin=args.pin)
            per_rule = read_benchmarks(out)
            for rule, entry in sorted(per_rule.items()):
                rows.append({"set": label, "cores": cores, "rule": rule, **entry})
            job_s, cpu_s, peak = workflow_summary(out)
            line[f"cpu_{cores}core_s"] = cpu_s
            line["peak_job_rss_mb"] = max(line.get("peak_job_rss_mb", 0.0), peak)
            if cores == headline_cores:
                chain, chain_s, span = critical_path(out)
                line.update(critical_path=compress_chain(chain), critical_path_job_s=chain_s, jobs_span_s=span)
            print(f"  end to end {line[f'wall_{cores}core_s']:.1f} s, jobs' CPU {cpu_s:.1f} s", flush=True)
        out = work / f"out_n{n}_s{size}_d{detectors}_c{headline_cores}"
        line["noop_rerun_s"] = run_workflow(asn, out, headline_cores, extra=args.config, nice=args.nice)
        if 1 in args.cores and 2 in args.cores:
            line["speedup_1_to_2"] = line["wall_1core_s"] / line["wall_2core_s"]
        if args.jwst and args.jwst_python:
            side.append(jwst_side_by_side(n * detectors, size, asn, data, work, args, out,
                                          line[f"wall_{headline_cores}core_s"],
                                          f"end-to-end wall with --cores {headline_cores}", line["peak_job_rss_mb"]))
            side[-1]["set"] = label
        summary.append(line)

    with open(results / "benchmark.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    md = ["# calimage3 benchmark", "",
          f"Machine: {os.cpu_count()} cores. Data: `calimage3.simulate`, "
          + ("JWST-like diffraction PSF (F150W) with saturated stars" if args.psf == "jwst" else "Gaussian PSF")
          + ", the _cal files with FITS checksums as MAST serves them. Times in seconds; QA figures off. "
          "Job seconds, CPU seconds and memory are the jobs' own "
          "(run by the job server's workers, from their logs; Snakemake's benchmark files when it is off); "
          "memory is the largest job's peak RSS (MB), shared library pages included."
          + (f" Extra config: `{' '.join(args.config)}`." if args.config else "")
          + (" Each run confined to its first N CPUs (`taskset`), Snakemake and the job server included."
             if args.pin else ""), "",
          "## End to end", "",
          "| set | exposures | " + " | ".join(f"wall {c} core(s)" for c in args.cores)
          + " | " + " | ".join(f"CPU {c} core(s)" for c in args.cores)
          + " | speed-up 1→2 | no-op rerun | peak job RSS (MB) |",
          "|---|---|" + "---|" * (2 * len(args.cores)) + "---|---|---|"]
    for line in summary:
        md.append(f"| {line['set']} | {line['n_exposures']} | "
                  + " | ".join(f"{line[f'wall_{c}core_s']:.1f}" for c in args.cores) + " | "
                  + " | ".join(f"{line[f'cpu_{c}core_s']:.1f}" for c in args.cores)
                  + f" | {_fmt(line.get('speedup_1_to_2'), '.2f')} | {line['noop_rerun_s']:.1f} "
                  f"| {line['peak_job_rss_mb']:.0f} |")
    md += ["", f"## Critical path ({headline_cores} cores)", "",
           "The chain of jobs that set the wall time (walking back from the last job to end, each job's "
           "predecessor is the one that ended last before it started), the job seconds on it, and the time "
           "from the first job's start to the last job's end; the difference is spent between jobs.", "",
           "| set | job s on the path | first start → last end (s) | path |", "|---|---|---|---|"]
    for line in summary:
        md.append(f"| {line['set']} | {_fmt(line.get('critical_path_job_s'))} | {_fmt(line.get('jobs_span_s'))} "
                  f"| {line.get('critical_path', '')} |")
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
    md += ["", "## Per rule", "",
           "CPU s includes system s, the kernel's time (mostly page faults of fresh memory). "
           "Max RSS is the worker's peak during the job: the job's memory plus what the worker kept from earlier jobs.",
           "", "| set | cores | rule | jobs | summed job s | CPU s | system s | max RSS (MB) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['set']} | {r['cores']} | {r['rule']} | {r['jobs']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} "
                  f"| {r.get('sys_s', 0.0):.1f} | {r['max_rss_mb']:.0f} |")
    (results / "benchmark.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:md.index("## Per rule")]))
    print(f"\nwrote {results / 'benchmark.md'} and {results / 'benchmark.csv'}"
          + (f", {results / 'jwst_comparison.csv'} and .json" if side else ""))


if __name__ == "__main__":
    main()
