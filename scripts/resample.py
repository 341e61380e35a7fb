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


# Keywords of one input file that never describe the mosaic: its name, its sky
# (skymatch), its tweakreg fit (TWK*), its provenance (PRV*) and the
# contribution bookkeeping (CTB_*).
_PER_FILE_KEYS = ("FILENAME", "BKGLEVEL", "BKGSUB", "BKGMETH", "NPRVINP")
_PER_FILE_PREFIXES = ("PRV", "TWK", "CTB_")
# What makes two files the same exposure: JWST's group_id (program, observation,
# visit, visit group, sequence, activity, exposure number); the detectors of
# one exposure share it.
_EXPOSURE_ID_KEYS = ("PROGRAM", "OBSERVTN", "VISIT", "VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE")
# JWST model_blender rules of the core schema for the keywords a mosaic can have.
_BLEND_MIN = ("EXPSTART", "MJD-BEG", "TDB-BEG", "DATE-OBS", "TIME-OBS", "DATE-BEG")
_BLEND_MAX = ("EXPEND", "MJD-END", "TDB-END", "DATE-END")
_BLEND_MEAN = ("EXPMID", "MJD-AVG", "TDB-MID")
_BLEND_MULTI = ("DETECTOR", "MODULE", "FILTER", "GRATING", "BAND")
_STEP_STATUS_KEYS = ("S_TWKREG", "S_SKYMAT", "S_OUTLIR", "S_MTWCS")


def _is_per_file(key):
    return key in _PER_FILE_KEYS or key.startswith(_PER_FILE_PREFIXES)


def exposure_id(meta, index):
    """Identity of the exposure a file belongs to (JWST ``group_id``); the file's index when unknown."""
    if all(k in meta for k in _EXPOSURE_ID_KEYS):
        return tuple(str(meta[k]) for k in _EXPOSURE_ID_KEYS)
    return ("file", index)


def distinct_exposures(metas):
    """Metadata of the first file of each distinct exposure, in input order."""
    first = {}
    for index, meta in enumerate(metas):
        first.setdefault(exposure_id(meta, index), meta)
    return list(first.values())


def _sum_of(exposures, key, fallback=None):
    """Sum of ``key`` (or ``fallback`` where ``key`` is absent) over the exposures that have one; None if none has."""
    values = [m.get(key, m.get(fallback)) if fallback else m.get(key) for m in exposures]
    values = [float(v) for v in values if v is not None]
    return float(np.sum(values)) if values else None


def combined_exposure_times(metas):
    """Exposure-time keywords of a mosaic of ``metas``, as JWST's resample computes them.

    Each distinct exposure (`exposure_id`) is counted once, however many
    detector files it has (stcal ``Resample.update_time``).

    Returns
    -------
    dict
        ``EFFEXPTM`` and ``XPOSURE``: the summed effective exposure times
        (``EXPTIME`` where an input has no ``EFFEXPTM``); ``EXPTIME``: the
        summed ``EXPTIME``; ``DURATION`` and ``TELAPSE``: the summed
        durations; ``TMEASURE``: the summed measurement times, only when
        every exposure has one (JWST leaves it unset otherwise).  Keys no
        input provides are absent.
    """
    exposures = distinct_exposures(metas)
    sums = {
        "EXPTIME": _sum_of(exposures, "EXPTIME"),
        "EFFEXPTM": _sum_of(exposures, "EFFEXPTM", fallback="EXPTIME"),
        "DURATION": _sum_of(exposures, "DURATION"),
    }
    # JWST sets the effective and the elapsed times from the same sums.
    sums["XPOSURE"] = sums["EFFEXPTM"]
    sums["TELAPSE"] = sums["DURATION"]
    if all(m.get("TMEASURE") is not None for m in exposures):
        sums["TMEASURE"] = _sum_of(exposures, "TMEASURE")
    return {k: v for k, v in sums.items() if v is not None}


def blended_keywords(metas):
    """Time-range and instrument keywords blended over the inputs by JWST's rules.

    ``EXPSTART``, ``DATE-OBS``, ``TIME-OBS`` ... take the minimum,
    ``EXPEND`` ... the maximum, ``EXPMID`` ... the mean, and ``DETECTOR``,
    ``MODULE``, ``FILTER`` ... the common value or ``'MULTIPLE'``.  Only
    keywords that some input has are returned.
    """
    out = {}
    for keys, combine in ((_BLEND_MIN, min), (_BLEND_MAX, max), (_BLEND_MEAN, lambda v: float(np.mean(v)))):
        for key in keys:
            values = [m[key] for m in metas if m.get(key) is not None]
            if values:
                out[key] = combine(values)
    for key in _BLEND_MULTI:
        values = {m[key] for m in metas if m.get(key) is not None}
        if values:
            out[key] = values.pop() if len(values) == 1 else "MULTIPLE"
    return out


def common_keywords(metas):
    """Keywords of the first input that every input has with the same value.

    A per-exposure keyword (``EXPOSURE``, ``PATT_NUM``, ``MT_RA``,
    detector-specific ones ...) differs between inputs and would be wrong
    for the mosaic if copied from the first; it is left out, as are the
    per-file keywords (`_is_per_file`) in any case.
    """
    first = metas[0]
    return {k: v for k, v in first.items()
            if not _is_per_file(k) and all(k in m and m[k] == v for m in metas[1:])}


def _pixel_scale_ratio(metas, out_pixar_sr, params):
    """Output-to-input pixel scale ratio (JWST ``PXSCLRT``), from the first input's ``PIXAR_SR``."""
    try:
        in_pixar_sr = float(metas[0]["PIXAR_SR"])
    except (KeyError, TypeError, ValueError):
        in_pixar_sr = float("nan")
    if np.isfinite(in_pixar_sr) and in_pixar_sr > 0:
        return float(np.sqrt(out_pixar_sr / in_pixar_sr))
    return float(params.get("pixel_scale_ratio", 1.0))


def mosaic_metadata(metas, wcs, shape, params):
    """Primary-header keywords of the mosaic from its inputs' metadata.

    Keywords all inputs share are kept; times and instrument keywords are
    blended and exposure times summed over distinct exposures as in JWST
    (`blended_keywords`, `combined_exposure_times`); per-exposure keywords
    that differ between inputs, and per-file ones, are dropped.
    """
    meta = common_keywords(metas)
    meta.update(blended_keywords(metas))
    meta.update(combined_exposure_times(metas))
    scale = local_pixel_scale(wcs, (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    pixar_sr = float(np.deg2rad(scale) ** 2)
    meta.update(
        NDRIZIM=len(metas),
        NDRIZ=len(distinct_exposures(metas)),  # JWST meta.resample.pointings: distinct exposures
        DATAMODL="ImageModel",
        S_RESAMP="COMPLETE",
        PIXFRAC=float(params.get("pixfrac", 1.0)),
        PXSCLRT=_pixel_scale_ratio(metas, pixar_sr, params),
        RESWHT=str(params.get("weight_type", "ivm")),
        RESKERN=str(params.get("kernel", "square")),
        BUNIT="MJy/sr",
        PIXAR_SR=pixar_sr,
        PIXAR_A2=float((scale * 3600.0) ** 2),
        S_REGION=_s_region(wcs, shape),
    )
    for key in _STEP_STATUS_KEYS:
        values = {m.get(key) for m in metas if m.get(key)}
        if values:
            meta[key] = "COMPLETE" if "COMPLETE" in values else values.pop()
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
