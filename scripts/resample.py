"""Snakemake entry point: combine the per-exposure drizzles into the final mosaic (_i2d).

Each exposure was drizzled onto its part of the grid by
scripts/resample_exposure.py; the contributions are read and added one at a
time, so memory is the mosaic's arrays plus one contribution.
"""

import logging

import numpy as np
from astropy.table import Table

from calimage3 import io
from calimage3.logs import configure_logging
from calimage3.provenance import provenance_keywords
from calimage3.resample import ExposureContribution, MosaicCombiner
from calimage3.wcs_tools import footprint, local_pixel_scale

log = logging.getLogger("resample")

HDRTAB_KEYWORDS = ("FILENAME", "EXPTIME", "EFFEXPTM", "EXPSTART", "EXPMID", "EXPEND", "DETECTOR", "FILTER",
                   "PUPIL", "BKGLEVEL", "S_TWKREG", "S_SKYMAT", "S_OUTLIR", "PHOTMJSR")
_ARRAY_NAMES = ("data", "wht", "con", "var_rnoise", "var_poisson", "var_flat")


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


def read_contribution(path):
    """A contribution file: the `ExposureContribution`, the exposure's metadata and file info."""
    header, extensions = io.read_image_meta(path)
    keywords = {k: v for k, v in header.items() if k.startswith("CTB_")}
    meta = {k: v for k, v in header.items() if not k.startswith("CTB_")}
    present = [n for n in _ARRAY_NAMES if n in extensions]
    with io.open_image_sections(path, present) as arrays:
        contribution = ExposureContribution.from_arrays(arrays, keywords)
    return contribution, meta, keywords


def resample(contribution_paths, grid_path, i2d_path, **params):
    """Add the per-exposure contributions one at a time and write the _i2d."""
    out_wcs, out_shape, _ = io.read_wcs_file(grid_path)
    combiner = MosaicCombiner(out_shape, fillval=params.get("fillval", "NAN"),
                              n_exposures=len(contribution_paths))
    metas, rows, checksums = [], [], []
    for path in contribution_paths:
        contribution, meta, info = read_contribution(path)
        combiner.add(contribution)
        metas.append(meta)
        rows.append({k: meta.get(k, "") for k in HDRTAB_KEYWORDS} | {"FILENAME": info["CTB_NAME"]})
        checksums.append((info["CTB_NAME"], info["CTB_SHA"]))
        log.info("resample: added %s (sky %.5f MJy/sr subtracted)", info["CTB_NAME"], info["CTB_SKY"])
        del contribution
    arrays = combiner.finalize()
    meta = mosaic_metadata(metas, out_wcs, out_shape, params)
    meta.update(provenance_keywords("resample", params, [*checksums, *io.input_checksums([grid_path])]))
    hdrtab = Table(rows=[[str(r[k]) if isinstance(r[k], str) else r[k] for k in HDRTAB_KEYWORDS] for r in rows],
                   names=HDRTAB_KEYWORDS)
    io.write_i2d(i2d_path, arrays, out_wcs, meta, hdrtab=hdrtab)
    covered = np.count_nonzero(arrays["wht"] > 0)
    log.info("resample: %d exposures drizzled into a %d x %d mosaic (%.1f%% covered)",
             len(metas), out_shape[1], out_shape[0], 100.0 * covered / arrays["wht"].size)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    resample(snakemake.input.contributions, snakemake.input.grid, snakemake.output.i2d, **snakemake.params.step)
