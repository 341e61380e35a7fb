"""Time the input checks of a synthetic campaign: cold, warm, and after a few files changed.

    python bench/preflight_campaign.py --asns 1000 --members 8 --workdir /tmp/campaign

simulates ``--members`` small overlapping exposures once, then writes
``--asns`` associations whose members are hard links to them under
distinct names (distinct exposure roots must be distinct files, and a
hard link is its own path, so each is checked and cached on its own),
and times `calimage3.preflight.check_campaign` with the cache under a
fresh output folder: a cold start (every member read), a warm start
(nothing changed), and a start after ``--touch`` members were replaced
by new copies.
``--baseline PATH`` also times the ``check_campaign`` of another checkout
(e.g. the landed one, without the cache) in a subprocess.  The table
goes to ``bench/results/preflight_campaign.md``.  Member files are in the
page cache after the simulation, so "cold" means cold cache, warm disk.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from calimage3.preflight import CACHE_FILE, check_campaign  # noqa: E402
from calimage3.simulate import simulate_dither  # noqa: E402


def write_campaign(workdir, n_asns, n_members, shape):
    """Simulate ``n_members`` exposures and ``n_asns`` associations of hard-linked copies; return the ASN glob."""
    sim = simulate_dither(workdir / "sim", n_exposures=n_members, shape=shape, n_stars=20, n_galaxies=2, seed=5)
    template = json.loads(Path(sim["asn"]).read_text())
    data = workdir / "data"
    data.mkdir(parents=True)
    for a in range(n_asns):
        members = []
        for k, cal in enumerate(sim["cal"]):
            name = f"jw{a + 1:05d}001001_01101_{k + 1:05d}_nrcb1_cal.fits"
            os.link(cal, data / name)
            members.append({"expname": name, "exptype": "science"})
        content = dict(template, asn_id=f"a{a + 1:05d}",
                       products=[{"name": f"jw{a + 1:05d}-o001_t001_nircam_clear-f200w", "members": members}])
        (data / f"jw{a + 1:05d}_image3_asn.json").write_text(json.dumps(content))
    return f"{data}/*_asn.json", sorted(data.glob("*_cal.fits"))


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def baseline_seconds(checkout, pattern):
    """Seconds another checkout's check_campaign(pattern) takes, in its own process."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from calimage3.preflight import check_campaign; "
            "t = time.perf_counter(); check_campaign(sys.argv[2]); print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code, str(checkout), pattern], capture_output=True, text=True,
                          check=True)
    return float(proc.stdout.split()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asns", type=int, default=1000)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="exposure side, pixels")
    parser.add_argument("--touch", type=int, default=10, help="members replaced before the last start")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/calimage3_preflight_campaign"))
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time without the cache")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "preflight_campaign.md")
    args = parser.parse_args(argv)

    shutil.rmtree(args.workdir, ignore_errors=True)
    pattern, cals = write_campaign(args.workdir, args.asns, args.members, (args.size, args.size))
    out = args.workdir / "out"
    rows = []
    if args.baseline:
        rows.append((f"baseline {args.baseline} (no cache)", baseline_seconds(args.baseline, pattern), len(cals)))
    cold, (associations, _) = timed(check_campaign, pattern, cache_dir=out)
    rows.append(("cold (no cache)", cold, len(cals)))
    warm, _ = timed(check_campaign, pattern, cache_dir=out)
    rows.append(("warm (nothing changed)", warm, 0))
    step = max(1, len(cals) // max(args.touch, 1))
    touched = cals[::step][: args.touch]
    for path in touched:  # replaced by a fresh copy (a hard link shares its mtime with the others)
        shutil.copyfile(path, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    after, _ = timed(check_campaign, pattern, cache_dir=out)
    rows.append((f"{len(touched)} members replaced", after, len(touched)))

    n_members = sum(len(a.members) for a in associations)
    lines = [
        f"# Input checks of a campaign: {len(associations)} associations x {args.members} members "
        f"({n_members} members, {args.size}x{args.size} _cal files)",
        "",
        f"`python bench/preflight_campaign.py --asns {args.asns} --members {args.members} --size {args.size}`; "
        f"cache `{CACHE_FILE}` {(out / CACHE_FILE).stat().st_size / 1e6:.1f} MB.",
        "",
        "| start | check_campaign | members read | per 1000 members |",
        "| --- | --- | --- | --- |",
    ]
    for label, seconds, read in rows:
        lines.append(f"| {label} | {seconds:.2f} s | {read} | {1000 * seconds / n_members:.3f} s |")
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
