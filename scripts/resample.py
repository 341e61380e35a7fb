"""Snakemake entry point: drizzle every exposure into the final mosaic (_i2d)."""

import logging

import numpy as np
from astropy.table import Table

from calimage3 import io
from calimage3.logs import configure_logging
from calimage3.provenance import provenance_keywords
from calimage3.resample import ResampledImage
from calimage3.wcs_tools import footprint, local_pixel_scale, pixel_map

log = logging.getLogger("resample")

HDRTAB_KEYWORDS = ("FILENAME", "EXPTIME", "EFFEXPTM", "EXPSTART", "EXPMID", "EXPEND", "DETECTOR", "FILTER",
                   "PUPIL", "BKGLEVEL", "S_TWKREG", "S_SKYMAT", "S_OUTLIR", "PHOTMJSR")


def _s_region(wcs, shape):
    corners = footprint(wcs, shape)
    return "POLYGON ICRS  " + " ".join(f"{ra:.9f} {dec:.9f}" for ra, dec in corners)


def mosaic_metadata(metas, wcs, shape, params):
    """Primary-header keywords of the mosaic from its inputs' metadata."""
    # Per-exposure keywords (sky, provenance of the _crf) do not describe the mosaic.
    meta = {k: v for k, v in metas[0].items()
            if k not in ("FILENAME", "BKGLEVEL", "BKGSUB", "BKGMETH", "NPRVINP") and not k.startswith("PRV")}
    exptimes = [float(m.get("EXPTIME", 0.0)) for m in metas]
    meta.update(
        EXPTIME=float(np.sum(exptimes)),
        EFFEXPTM=float(np.sum([float(m.get("EFFEXPTM", m.get("EXPTIME", 0.0))) for m in metas])),
        EXPSTART=float(min(m.get("EXPSTART", np.inf) for m in metas)),
        EXPEND=float(max(m.get("EXPEND", -np.inf) for m in metas)),
        NDRIZIM=len(metas),
        DATAMODL="ImageModel",
        S_RESAMP="COMPLETE",
        PIXFRAC=float(params.get("pixfrac", 1.0)),
        RESWHT=str(params.get("weight_type", "ivm")),
        RESKERN=str(params.get("kernel", "square")),
        BUNIT="MJy/sr",
    )
    meta["EXPMID"] = 0.5 * (meta["EXPSTART"] + meta["EXPEND"])
    for key in ("S_TWKREG", "S_SKYMAT", "S_OUTLIR", "S_MTWCS"):
        values = {m.get(key) for m in metas if m.get(key)}
        if values:
            meta[key] = "COMPLETE" if "COMPLETE" in values else values.pop()
    scale = local_pixel_scale(wcs, (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    meta["PIXAR_SR"] = float(np.deg2rad(scale) ** 2)
    meta["PIXAR_A2"] = float((scale * 3600.0) ** 2)
    meta["S_REGION"] = _s_region(wcs, shape)
    return meta


def resample(exposure_paths, grid_path, i2d_path, *, grid_step=16, **params):
    """Drizzle the exposures one at a time onto the output grid and write the _i2d."""
    out_wcs, out_shape, _ = io.read_wcs_file(grid_path)
    mosaic = ResampledImage(
        out_wcs, out_shape, pixfrac=params.get("pixfrac", 1.0), kernel=params.get("kernel", "square"),
        fillval=params.get("fillval", "NAN"), weight_type=params.get("weight_type", "ivm"),
        good_bits=params.get("good_bits", "~DO_NOT_USE+NON_SCIENCE"),
    )
    metas, rows = [], []
    for path in exposure_paths:
        exposure = io.read_exposure(path)
        sky_level = 0.0 if exposure.meta.get("BKGSUB", True) else float(exposure.meta.get("BKGLEVEL", 0.0))
        pixmap = pixel_map(exposure.wcs, out_wcs, exposure.shape, grid_step=grid_step or None)
        mosaic.add_exposure(exposure, sky_level=sky_level, pixmap=pixmap)
        metas.append(exposure.meta)
        rows.append({k: exposure.meta.get(k, "") for k in HDRTAB_KEYWORDS} | {"FILENAME": exposure.name})
        log.info("resample: added %s (sky %.5f MJy/sr subtracted)", exposure.name, sky_level)
        del exposure, pixmap
    arrays = mosaic.finalize()
    meta = mosaic_metadata(metas, out_wcs, out_shape, params)
    meta.update(provenance_keywords("resample", params, io.input_checksums([*exposure_paths, grid_path])))
    hdrtab = Table(rows=[[str(r[k]) if isinstance(r[k], str) else r[k] for k in HDRTAB_KEYWORDS] for r in rows],
                   names=HDRTAB_KEYWORDS)
    io.write_i2d(i2d_path, arrays, out_wcs, meta, hdrtab=hdrtab)
    covered = np.count_nonzero(arrays["wht"] > 0)
    log.info("resample: %d exposures drizzled into a %d x %d mosaic (%.1f%% covered)",
             len(metas), out_shape[1], out_shape[0], 100.0 * covered / arrays["wht"].size)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    resample(snakemake.input.exposures, snakemake.input.grid, snakemake.output.i2d,
             grid_step=snakemake.params.grid_step, **snakemake.params.step)
