"""Snakemake entry point: skymatch over all exposures."""

import logging

import numpy as np

from calimage3 import io
from calimage3.association import exposure_root
from calimage3.dqflags import good_pixel_mask
from calimage3.logs import configure_logging
from calimage3.skymatch import match_sky

log = logging.getLogger("skymatch")

SKY_PARAMETERS = ("skymethod", "match_down", "skystat", "lower", "upper", "nclip", "lsigma", "usigma", "binwidth")


def skymatch(cal_paths, wcs_paths, levels_path, *, skip=False, subtract=False, dqbits="~DO_NOT_USE+NON_SCIENCE", **params):
    """Compute each exposure's sky level and write them as JSON."""
    roots = [exposure_root(p) for p in cal_paths]
    if skip:
        io.write_json(levels_path, {"status": "SKIPPED", "method": None, "subtract": False,
                                    "levels": {r: 0.0 for r in roots}})
        log.info("skymatch: skipped by configuration; sky levels set to 0")
        return
    images, masks, wcs_list = [], [], []
    for cal, wcs_path in zip(cal_paths, wcs_paths):
        exposure = io.read_exposure(cal, arrays=("data", "dq"))
        images.append(exposure.data)
        masks.append(good_pixel_mask(exposure.dq, dqbits) & np.isfinite(exposure.data))
        wcs_list.append(io.read_wcs_file(wcs_path)[0])
    kwargs = {k: params[k] for k in SKY_PARAMETERS if k in params}
    result = match_sky(images, wcs_list, masks, **kwargs)
    levels = {r: float(v) for r, v in zip(roots, result.levels)}
    io.write_json(levels_path, {"status": "COMPLETE", "method": kwargs.get("skymethod", "match"),
                                "subtract": bool(subtract), "levels": levels})
    summary = ", ".join(f"{r}: {v:+.5f}" for r, v in levels.items())
    log.info("skymatch (%s): sky levels in MJy/sr: %s", kwargs.get("skymethod", "match"), summary)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    skymatch(snakemake.input.cal, snakemake.input.wcs, snakemake.output.levels, **snakemake.params.step)
