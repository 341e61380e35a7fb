"""Snakemake entry point: the output grid (WCS and shape) of a drizzle."""

import logging

from calimage3 import io
from calimage3.logs import configure_logging
from calimage3.wcs_tools import output_wcs

log = logging.getLogger("output_grid")

GRID_PARAMETERS = ("pixel_scale_ratio", "pixel_scale", "rotation", "crval", "crpix", "output_shape")


def read_any_wcs(path):
    """WCS and shape from a workflow WCS file (.asdf) or a JWST image."""
    if str(path).endswith(".asdf"):
        wcs, shape, _ = io.read_wcs_file(path)
        return wcs, shape
    wcs, shape, _ = io.read_exposure_wcs(path)
    return wcs, shape


def output_grid(wcs_paths, grid_path, **params):
    """Compute the JWST default (or user-set) output grid covering all inputs."""
    pairs = [read_any_wcs(p) for p in wcs_paths]
    grid_args = {k: params[k] for k in GRID_PARAMETERS if params.get(k) is not None}
    wcs, shape = output_wcs([w for w, _ in pairs], [s for _, s in pairs], **grid_args)
    io.write_wcs_file(grid_path, wcs, shape)
    log.info("output grid: %d x %d pixels covering %d exposures", shape[1], shape[0], len(pairs))


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    params = dict(snakemake.params.step) if hasattr(snakemake.params, "step") else {}
    output_grid(snakemake.input.wcs, snakemake.output.grid, **params)
