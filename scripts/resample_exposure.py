"""Snakemake entry point: drizzle one exposure onto its part of the mosaic grid.

The result (a "contribution": cutout arrays, their offsets on the grid and
the exposure's metadata) is combined with the others by scripts/resample.py.
"""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

from calimage3 import io, layout
from calimage3.logs import configure_logging
from calimage3.pixmap import expand_pixel_map
from calimage3.resample import drizzle_exposure

log = logging.getLogger("resample")

# Arrays drizzle_exposure uses (AREA is not needed).
EXPOSURE_ARRAYS = ("data", "err", "dq", "var_poisson", "var_rnoise", "var_flat")


def exposure_sky_level(meta):
    """Sky level still in the data: BKGLEVEL unless skymatch already subtracted it."""
    return 0.0 if meta.get("BKGSUB", True) else float(meta.get("BKGLEVEL", 0.0))


def contribution_meta(meta, keywords, *, name, sha256, sky_level):
    """Keywords of a contribution file: exposure metadata, then CTB_* keywords."""
    return {
        **{k: v for k, v in meta.items() if not k.startswith("CTB_")},
        **keywords,
        "CTB_NAME": name,
        "CTB_SHA": sha256,
        "CTB_SKY": float(sky_level),
    }


def resample_exposure(exposure_path, pixmap_path, contribution_path, *, verify_checksums=False, **params):
    """Drizzle one exposure (data and variances) and write its contribution file.

    The exposure's pixel map onto the mosaic grid comes precomputed from the
    grid job (``pixmap_path``), so no WCS is read here.  ``verify_checksums``
    checks the file's FITS checksums (a lone _cal is read first here).
    """
    coarse = io.read_pixel_map(pixmap_path)
    out_shape = coarse.output_shape
    exposure = io.read_exposure(exposure_path, arrays=EXPOSURE_ARRAYS, with_wcs=False,
                                verify_checksums=verify_checksums)
    sky_level = exposure_sky_level(exposure.meta)
    pixmap = expand_pixel_map(coarse)
    contribution = drizzle_exposure(
        exposure, None, out_shape, sky_level=sky_level, pixmap=pixmap, input_range=coarse.input_range,
        pixfrac=params.get("pixfrac", 1.0), kernel=params.get("kernel", "square"),
        weight_type=params.get("weight_type", "ivm"),
        good_bits=params.get("good_bits", "~DO_NOT_USE+NON_SCIENCE"), overwrite_pixmap=True,
    )
    del pixmap
    arrays, keywords = contribution.to_arrays()
    meta = contribution_meta(exposure.meta, keywords, name=exposure.name,
                             sha256=io.file_sha256(exposure_path), sky_level=sky_level)
    io.write_image(contribution_path, arrays, meta=meta)
    y0, y1, x0, x1 = contribution.bbox
    log.info("resample: %s drizzled onto mosaic rows %d:%d, columns %d:%d of %d x %d (sky %.5f MJy/sr subtracted)",
             exposure.name, y0, y1, x0, x1, out_shape[1], out_shape[0], sky_level)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    pixmap = layout.pixel_map(snakemake.input.grid, snakemake.wildcards.root)
    resample_exposure(snakemake.input.exposure, pixmap, snakemake.output.contribution,
                      verify_checksums=layout.checksum_records(snakemake.config), **snakemake.params.step)
