"""Snakemake entry point: flag outliers in one exposure against the medians of the outlier tiles it touches.

With ``tiling.outlier_tile_size`` the outlier-detection median is taken per
sky tile (rules/tiles.smk) instead of on one grid holding the whole
association, so no job holds more than a tile.  Each tile's median (and
its NCOMB) is blotted onto the exposure through the exposure's pixel map
onto that tile; each exposure pixel takes the value of the tile whose core
its centre falls in (the margin only serves the blot's interpolation).  The
test itself is scripts/outlier_flag.py's (`calimage3.outlier_detection.flag_outliers`).
"""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

import numpy as np

from calimage3 import io, layout
from calimage3.logs import configure_logging
from calimage3.outlier_detection import apply_outlier_flags, flag_outliers, parse_pair
from calimage3.pixmap import expand_pixel_map
from calimage3.provenance import provenance_keywords
from calimage3.resample import blot
from calimage3.usable import usable_pixel_mask

log = logging.getLogger("outlier_detection")


def blot_tiles(median_paths, pixmap_paths, shape, margin):
    """The tiles' medians and NCOMB blotted onto an exposure of ``shape``, each pixel from the tile whose core holds it.

    Returns
    -------
    blotted, count : ndarray of float32, shape ``shape``
        NaN (blotted) and 0 (count) where no tile's core holds the pixel.
    input_range : tuple
        The exposure's bounding box (from its pixel maps).
    """
    blotted = np.full(shape, np.nan, np.float32)
    count = np.zeros(shape, np.float32)
    done = np.zeros(shape, bool)
    input_range = None
    for median_path, pixmap_path in zip(median_paths, pixmap_paths, strict=True):
        coarse = io.read_pixel_map(pixmap_path)
        input_range = coarse.input_range
        pixmap = expand_pixel_map(coarse)
        ny, nx = coarse.output_shape
        x, y = pixmap[..., 0], pixmap[..., 1]
        with np.errstate(invalid="ignore"):
            core = ((x >= margin - 0.5) & (x < nx - margin - 0.5) & (y >= margin - 0.5) & (y < ny - margin - 0.5)
                    & ~done)
        if not core.any():
            continue
        with io.open_image_sections(median_path, ("SCI", "NCOMB")) as views:
            median = np.asarray(views["SCI"], dtype=np.float32)
            ncomb = np.asarray(views["NCOMB"], dtype=np.float32)
        blotted[core] = blot(median, None, None, shape, pixmap=pixmap, fillval=np.nan)[core]
        count[core] = blot(ncomb, None, None, shape, pixmap=pixmap)[core]
        done |= core
    return blotted, count, input_range


def tile_outlier_flag(cal_path, wcs_path, sky_path, median_paths, pixmap_paths, crf_path, *, margin,
                      verify_checksums=False, **params):
    """Write the exposure's _crf: aligned WCS, sky level, and OUTLIER|DO_NOT_USE flags from its tiles' medians."""
    exposure, sky_level = io.read_aligned_exposure(cal_path, None, sky_path, verify_checksums=verify_checksums)
    rendered = io.read_rendered_wcs(wcs_path)
    exposure.meta.update(rendered.info)
    inputs = [cal_path, wcs_path, sky_path, *median_paths, *pixmap_paths]
    exposure.meta.update(provenance_keywords("outlier_detection", {"tiled": True, **params},
                                             io.input_checksums(inputs)))
    blotted, count, input_range = blot_tiles(median_paths, pixmap_paths, exposure.shape, margin)
    usable = usable_pixel_mask(exposure.dq, good_bits="~DO_NOT_USE", input_range=input_range)
    usable &= np.isfinite(blotted)
    mask = flag_outliers(
        exposure.data - np.float32(sky_level), exposure.err, np.nan_to_num(blotted),
        snr=parse_pair(params.get("snr", "5.0 4.0")), scale=parse_pair(params.get("scale", "1.2 0.7")),
        backg=params.get("backg", 0.0), backg_boxsize=params.get("backg_boxsize", 0),
        flux_box=params.get("flux_box", 0), flux_tolerance=params.get("flux_tolerance", 0.1), usable=usable,
        blot_count=count,
    ) & usable
    exposure.dq = apply_outlier_flags(exposure.dq, mask)
    exposure.meta["S_OUTLIR"] = "COMPLETE"
    io.write_exposure(crf_path, exposure, rendered_wcs=rendered)
    log.info("outlier_detection: %s: %d pixels flagged against the medians of %d tiles (%.3f%% of usable pixels)",
             exposure.name, int(mask.sum()), len(median_paths), 100.0 * mask.sum() / max(int(usable.sum()), 1))


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    root = snakemake.wildcards.root
    tile_outlier_flag(snakemake.input.cal, layout.rendered_wcs(snakemake.input.grid, root), snakemake.input.sky,
                      list(snakemake.input.medians),
                      [layout.pixel_map(g, root) for g in snakemake.input.tile_grids], snakemake.output.crf,
                      margin=snakemake.params.margin,
                      verify_checksums=layout.checksum_records(snakemake.config), **snakemake.params.step)
