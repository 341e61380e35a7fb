"""Snakemake entry point: one sky tile's grid, and the pixel map onto it of each exposure that touches it.

As scripts/output_grid.py does for a whole mosaic: the grid (a tile of
`calimage3.tiling`, whose WCS follows from its id alone) is rendered as the
tile's _i2d will carry it, and the pixel maps are computed once here, so
the per-exposure drizzle jobs (scripts/resample_exposure.py, unchanged)
need no WCS.
"""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

from calimage3 import io, layout
from calimage3.logs import configure_logging
from calimage3.pixmap import coarse_pixel_map
from calimage3.tiling import tile_wcs

log = logging.getLogger("resample")


def tile_grid(tile, wcs_paths, grid_path, pixmap_paths, *, pixel_scale, tile_size, margin, grid_step=16):
    """Write tile ``tile``'s rendered grid and each exposure's coarse pixel map onto it.

    ``wcs_paths``: each exposure's final WCS (tweakreg's .asdf, or a lone
    _cal), in the order of ``pixmap_paths``.
    """
    wcs, shape = tile_wcs(tile, pixel_scale, tile_size, margin)
    io.write_rendered_wcs(grid_path, wcs, shape, pixel_area=True)
    for wcs_path, pixmap_path in zip(wcs_paths, pixmap_paths, strict=True):
        if str(wcs_path).endswith(".asdf"):
            exposure_wcs, exposure_shape, _ = io.read_wcs_file(wcs_path)
        else:
            exposure_wcs, exposure_shape, _ = io.read_exposure_wcs(wcs_path)
        io.write_pixel_map(pixmap_path, coarse_pixel_map(exposure_wcs, wcs, exposure_shape, grid_step=grid_step,
                                                         output_shape=shape))
    log.info("tile %s: %d x %d pixels at %.4g arcsec, pixel maps of %d exposures", tile, shape[1], shape[0],
             pixel_scale, len(pixmap_paths))


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    folder, roots = snakemake.output.grid, snakemake.params.roots
    wcs_paths = layout.files_or_folder(snakemake.input.wcs, layout.aligned_wcs, roots)
    tile_grid(snakemake.wildcards.tile, wcs_paths, layout.grid_wcs(folder, "resample"),
              layout.member_files(layout.pixel_map, folder, roots), grid_step=snakemake.params.grid_step,
              **snakemake.params.tiling)
