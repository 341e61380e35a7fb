"""Snakemake entry point: single-exposure drizzle for outlier detection."""

import logging

from calimage3 import io
from calimage3.logs import configure_logging
from calimage3.resample import drizzle_single

log = logging.getLogger("outlier_detection")


def outlier_single(cal_path, wcs_path, sky_path, grid_path, single_path, *, grid_step=16, **params):
    """Drizzle one sky-subtracted exposure onto the common grid; write SCI and WHT."""
    exposure, sky_level = io.read_aligned_exposure(cal_path, wcs_path, sky_path)
    grid_wcs, grid_shape, _ = io.read_wcs_file(grid_path)
    data, wht = drizzle_single(
        exposure, grid_wcs, grid_shape, sky_level=sky_level,
        pixfrac=params.get("pixfrac", 1.0), kernel=params.get("kernel", "square"),
        fillval=params.get("fillval", "INDEF"), weight_type=params.get("weight_type", "ivm"),
        good_bits=params.get("good_bits", "~DO_NOT_USE"), grid_step=grid_step,
    )
    io.write_image(single_path, {"SCI": data, "WHT": wht})
    log.info("outlier_detection: %s drizzled alone onto the %d x %d grid", exposure.name, grid_shape[1], grid_shape[0])


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    outlier_single(snakemake.input.cal, snakemake.input.wcs, snakemake.input.sky, snakemake.input.grid,
                   snakemake.output.single, grid_step=snakemake.params.grid_step, **snakemake.params.step)
