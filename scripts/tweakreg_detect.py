"""Snakemake entry point: tweakreg source detection in one exposure."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

import numpy as np

from calimage3 import io, layout
from calimage3.logs import configure_logging
from calimage3.source_detection import detect_sources
from calimage3.usable import usable_pixel_mask

log = logging.getLogger("tweakreg")

DETECTION_PARAMETERS = (
    "snr_threshold", "kernel_fwhm", "bkg_boxsize", "brightest", "peakmax",
    "starfinder", "sharplo", "sharphi", "roundlo", "roundhi",
)


def tweakreg_detect(cal_path, sources_path, *, verify_checksums=False, **params):
    """Detect point-like sources for alignment and write them as ECSV.

    Pixels outside the bounding box of the exposure's WCS, NON_SCIENCE and
    DO_NOT_USE pixels are masked (`calimage3.usable.usable_pixel_mask`).
    ``verify_checksums`` checks the _cal's FITS checksums first (`calimage3.io.read_exposure`).
    """
    # Only the bounding box of the WCS is needed here, read without gwcs.
    exposure, input_range = io.read_exposure(cal_path, arrays=("data", "err", "dq"), with_wcs=False,
                                             with_input_range=True, verify_checksums=verify_checksums)
    mask = ~usable_pixel_mask(exposure.dq, input_range=input_range) | ~np.isfinite(exposure.data)
    kwargs = {k: params[k] for k in DETECTION_PARAMETERS if k in params}
    sources = detect_sources(exposure.data, exposure.err, mask, **kwargs)
    io.write_table(sources_path, sources)
    log.info("tweakreg: %s: %d sources detected above %.1f sigma", exposure.name, len(sources),
             kwargs.get("snr_threshold", 10.0))


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    # verify_checksums is read from the config, not a param: it changes no output, so it reruns nothing.
    tweakreg_detect(snakemake.input.cal, snakemake.output.sources,
                    verify_checksums=layout.checksum_records(snakemake.config), **snakemake.params.step)
