"""Snakemake entry point: render each exposure's aligned WCS as its _crf carries it.

One job for all exposures, so that asdf and gwcs are loaded once; the
per-exposure flagging jobs then copy the rendered keywords and ASDF
extension into their _crf without either.
"""

import logging

from calimage3 import io
from calimage3.logs import configure_logging

log = logging.getLogger("outlier_detection")


def render_wcs(wcs_paths, rendered_paths):
    """Write `io.write_rendered_wcs` files, one per tweakreg WCS file."""
    for wcs_path, rendered_path in zip(wcs_paths, rendered_paths, strict=True):
        wcs, shape, info = io.read_wcs_file(wcs_path)
        io.write_rendered_wcs(rendered_path, wcs, shape, info)
    log.info("outlier_detection: WCS of %d exposures rendered for their _crf", len(rendered_paths))


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    render_wcs(snakemake.input.wcs, snakemake.output.rendered)
