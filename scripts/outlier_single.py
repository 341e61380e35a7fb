"""Snakemake entry point: single-exposure drizzle for outlier detection."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

from calimage3 import io, layout
from calimage3.association import exposure_root
from calimage3.logs import configure_logging
from calimage3.outlier_detection import typical_weight, unresampled_single
from calimage3.pixmap import expand_pixel_map
from calimage3.resample import build_driz_weight, drizzle_single, exposure_time_weight

log = logging.getLogger("outlier_detection")

# Arrays the single drizzle uses (weights from ERR or VAR_RNOISE, DQ).
SINGLE_ARRAYS = ("data", "err", "dq", "var_rnoise")


def write_single(single_path, data, wht, grid_shape, root, origin=(0, 0)):
    """Write a single (SCI, WHT) with what the median job needs: its typical weight
    (``WHTTYP``), the grid's shape and where on it the arrays start (they
    cover only the part of the grid the exposure reaches), and the exposure
    root (``SGL_ROOT``) whose sky level the median subtracts."""
    (ny, nx), (y0, x0) = grid_shape, origin
    io.write_image(single_path, {"SCI": data, "WHT": wht},
                   meta={"WHTTYP": typical_weight(wht), "SGL_NY": int(ny), "SGL_NX": int(nx),
                         "SGL_Y0": int(y0), "SGL_X0": int(x0), "SGL_ROOT": root})


def outlier_single(cal_path, pixmap_path, single_path, *, resample_data=True, verify_checksums=False, **params):
    """Drizzle one exposure onto the common grid, its sky still in; write SCI and WHT.

    The median job subtracts each single's skymatch level (drizzling is
    linear), so the singles need not wait for skymatch.  The exposure's
    pixel map onto the grid comes precomputed from the grid job
    (``pixmap_path``), so no WCS is read here.  With ``resample_data=False``
    the exposure is its own single, on its own grid.  ``verify_checksums``
    checks the _cal's FITS checksums as it is read.
    """
    exposure = io.read_exposure(cal_path, SINGLE_ARRAYS, with_wcs=False, verify_checksums=verify_checksums)
    root = exposure_root(cal_path)
    coarse = io.read_pixel_map(pixmap_path) if pixmap_path else None
    if not resample_data:
        # Without a pixel map the bounding box comes from the _cal's own WCS.
        input_range = coarse.input_range if coarse is not None else io.read_bounding_box_range(cal_path)
        weight = build_driz_weight(exposure.err, exposure.dq, weight_type=params.get("weight_type", "ivm"),
                                   good_bits=params.get("good_bits", "~DO_NOT_USE"),
                                   exptime=exposure_time_weight(exposure.meta), var_rnoise=exposure.var_rnoise,
                                   input_range=input_range)
        data, wht = unresampled_single(exposure.data, weight)
        write_single(single_path, data, wht, data.shape, root)
        log.info("outlier_detection: %s used as it is (resample_data=False)", exposure.name)
        return
    data, wht, (y0, y1, x0, x1) = drizzle_single(
        exposure, None, coarse.output_shape,
        pixfrac=params.get("pixfrac", 1.0), kernel=params.get("kernel", "square"),
        fillval=params.get("fillval", "INDEF"), weight_type=params.get("weight_type", "ivm"),
        good_bits=params.get("good_bits", "~DO_NOT_USE"),
        pixmap=expand_pixel_map(coarse), input_range=coarse.input_range, cutout=True, overwrite_pixmap=True,
    )
    write_single(single_path, data, wht, coarse.output_shape, root, (y0, x0))
    ny, nx = coarse.output_shape
    log.info("outlier_detection: %s drizzled alone onto rows %d:%d, columns %d:%d of the %d x %d grid",
             exposure.name, y0, y1, x0, x1, nx, ny)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    pixmap = layout.pixel_map(snakemake.input.grid, snakemake.wildcards.root)
    outlier_single(snakemake.input.cal, pixmap, snakemake.output.single,
                   verify_checksums=layout.checksum_records(snakemake.config), **snakemake.params.step)
