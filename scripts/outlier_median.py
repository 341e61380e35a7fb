"""Snakemake entry point: median of the single-exposure drizzles, in sections."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging
from contextlib import ExitStack

from calimage3 import io
from calimage3.logs import configure_logging
from calimage3.outlier_detection import median_in_sections

log = logging.getLogger("outlier_detection")


def outlier_median(single_paths, median_path, sky_path=None, *, maskpt=0.7, rows_per_section=256, threads=1):
    """Median-combine the singles less their sky levels, reading them from disk a band of rows at a time.

    The singles are drizzled with the sky in; each one's skymatch level
    (from ``sky_path``, by the exposure root in its ``SGL_ROOT``) is
    subtracted here.  The median file holds SCI (the median) and NCOMB (how
    many singles each pixel's median used), which the flagging jobs' flux
    test needs.
    """
    # Each single job stored its typical weight (WHTTYP), where its arrays lie
    # on the grid (SGL_*: a single covers what its exposure reaches) and its root.
    metas = [io.read_image_meta(p)[0] for p in single_paths]
    offsets = None
    if sky_path is not None:
        levels = io.read_json(sky_path)["levels"]
        offsets = []
        for path, meta in zip(single_paths, metas):
            if meta.get("SGL_ROOT") not in levels:
                raise io.InputFileError(path, f"single of exposure {meta.get('SGL_ROOT')!r}, which has no "
                                              f"sky level in {sky_path}")
            offsets.append(levels[meta["SGL_ROOT"]])
    typical = [m["WHTTYP"] for m in metas] if all("WHTTYP" in m for m in metas) else None
    placed = all("SGL_NY" in m for m in metas)
    origins = [(m["SGL_Y0"], m["SGL_X0"]) for m in metas] if placed else None
    shape = (metas[0]["SGL_NY"], metas[0]["SGL_NX"]) if placed else None
    with ExitStack() as stack:
        views = [stack.enter_context(io.open_image_sections(p, ("SCI", "WHT"))) for p in single_paths]
        median, count = median_in_sections([v["SCI"] for v in views], [v["WHT"] for v in views],
                                           maskpt=maskpt, rows_per_section=rows_per_section,
                                           typical_weights=typical, with_count=True, origins=origins,
                                           shape=shape, threads=threads, offsets=offsets)
    # NCOMB: singles in each pixel's median, for the flagging jobs' flux test.
    io.write_image(median_path, {"SCI": median, "NCOMB": count})
    log.info("outlier_detection: median of %d exposures computed in bands of %d rows", len(single_paths), rows_per_section)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    outlier_median(snakemake.input.singles, snakemake.output.median, snakemake.input.sky,
                   maskpt=snakemake.params.maskpt, threads=snakemake.threads)
