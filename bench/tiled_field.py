"""Peak job memory of a tiled run over a field whose single mosaic would not fit in memory.

16 small exposures (256 x 256 pixels of 0.031") in 8 overlapping pairs spread
over a 10' field: one mosaic of that field at 0.031"/pixel is about 375
Mpix, which at the measured 64 (resample) and 97 (source_catalog) bytes per
mosaic pixel would need about 24 GB and 36 GB in one job each.  With sky
tiles every job holds one tile at most.

    python bench/tiled_field.py OUTDIR [--tile-size 2048] [--margin 128] [--outlier-tile-size 0] [--cores 2]

Writes OUTDIR/data (simulated _cal files and the association), runs the
workflow into OUTDIR/out with tiling on, and prints a Markdown table of the
peak memory (max_rss of Snakemake's benchmark files) per rule, with the
single-mosaic estimate.  tweakreg is skipped (the pairs share too few stars
to align).  Outlier detection is skipped unless ``--outlier-tile-size`` is
given: its internal grid is otherwise the whole field (README, "Mosaics of
any size").
"""

import argparse
import csv
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from calimage3 import io  # noqa: E402
from calimage3.simulate import simulate_dither  # noqa: E402
from calimage3.wcs_tools import output_wcs  # noqa: E402

# Bytes per mosaic pixel measured on a 20.7 Mpix NIRCam mosaic (the numbers).
RESAMPLE_BYTES, CATALOG_BYTES = 64, 97
FIELD_ARCMIN = 10.0
PIXEL_SCALE = 0.031


def pair_offsets(n_pairs=8, field_arcmin=FIELD_ARCMIN, pixel_scale=PIXEL_SCALE, seed=4):
    """Dither offsets (pixels) of ``n_pairs`` overlapping pairs spread over the field, corners included."""
    half = 0.5 * field_arcmin * 60.0 / pixel_scale - 200.0
    rng = np.random.default_rng(seed)
    corners = [(-half, -half), (half, half), (-half, half), (half, -half)]
    centres = corners + [tuple(rng.uniform(-half, half, 2)) for _ in range(n_pairs - len(corners))]
    offsets = []
    for x, y in centres:
        offsets += [(float(x), float(y)), (float(x) + 70.3, float(y) + 45.7)]
    return offsets


def peak_memory(bench_dir):
    """Rule -> (jobs, largest max_rss in MB) over the benchmark files under ``bench_dir``."""
    peaks = defaultdict(lambda: [0, 0.0])
    for path in Path(bench_dir).rglob("*.tsv"):
        rel = path.relative_to(bench_dir).parts
        rule = rel[0].removesuffix(".tsv")
        with open(path) as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                rss = float(row["max_rss"]) if row["max_rss"] not in ("", "NA", "-") else 0.0
                peaks[rule][0] += 1
                peaks[rule][1] = max(peaks[rule][1], rss)
    return dict(peaks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--tile-size", type=int, default=2048)
    parser.add_argument("--margin", type=int, default=128)
    parser.add_argument("--outlier-tile-size", type=int, default=0,
                        help="tiling.outlier_tile_size; 0 skips outlier detection")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.outdir)
    offsets = pair_offsets()
    sim = simulate_dither(out / "data", n_exposures=len(offsets), shape=(256, 256), offsets=offsets, seed=5,
                          n_stars=4000, n_galaxies=400, cr_density=2e-5)
    wcs_shapes = [io.read_exposure_wcs(p)[:2] for p in sorted((out / "data").glob("*_cal.fits"))]
    _, mosaic_shape = output_wcs([w for w, _ in wcs_shapes], [s for _, s in wcs_shapes], pixel_scale=PIXEL_SCALE)
    mpix = mosaic_shape[0] * mosaic_shape[1] / 1e6
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--config", f"asn={sim['asn']}",
           f"output_dir={out / 'out'}", "qa_figures=true", "tweakreg={'skip': true}",
           f"outlier_detection={{'skip': {str(not args.outlier_tile_size).lower()}}}",
           "skymatch={'skymethod': 'local'}",
           f"tiling={{'enabled': true, 'pixel_scale': {PIXEL_SCALE}, 'tile_size': {args.tile_size}, "
           f"'margin': {args.margin}, 'outlier_tile_size': {args.outlier_tile_size}}}"]
    start = time.time()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    elapsed = time.time() - start
    peaks = peak_memory(out / "out" / "benchmarks")
    side = args.tile_size + 2 * args.margin
    n_tiles = len(io.read_json(out / "out" / "tiles.json")["tiles"])
    lines = [
        f"16 exposures of 256x256 at {PIXEL_SCALE}\" in 8 pairs over {FIELD_ARCMIN:g}'; "
        f"tiles {args.tile_size} + 2x{args.margin} = {side} px ({side * side / 1e6:.1f} Mpix), {n_tiles} tiles; "
        f"outlier detection {'per tile of ' + str(args.outlier_tile_size) + ' px' if args.outlier_tile_size else 'skipped'}; "
        f"{args.cores} cores, {elapsed:.0f} s wall.",
        "",
        f"Single mosaic of the field: {mosaic_shape[1]} x {mosaic_shape[0]} = {mpix:.0f} Mpix; at "
        f"{RESAMPLE_BYTES} and {CATALOG_BYTES} B/pixel: resample ~{mpix * RESAMPLE_BYTES / 1e3:.1f} GB, "
        f"source_catalog ~{mpix * CATALOG_BYTES / 1e3:.1f} GB.",
        "",
        "| rule | jobs | peak max_rss (MB) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {rule} | {n} | {rss:.0f} |" for rule, (n, rss) in sorted(peaks.items())]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
