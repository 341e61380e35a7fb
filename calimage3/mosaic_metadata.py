"""Header keywords and header table (HDRTAB) of the _i2d mosaic from its inputs' metadata.

Plain keyword dictionaries in, keyword dictionaries (and an astropy Table)
out; no files are read or written here (that is `calimage3.io`'s work).
The rules follow JWST's resample step and its ``model_blender``
(blendmeta) rules of the core schema:

* keywords every input shares with the same value are kept; per-exposure
  keywords that differ between inputs, and per-file ones (file name, sky,
  tweakreg fit, provenance, contribution bookkeeping), are dropped
  (`common_keywords`);
* time-range keywords take the minimum, maximum or mean over the inputs
  and instrument keywords the common value or ``'MULTIPLE'``
  (`blended_keywords`);
* exposure times are summed once per distinct exposure, identified by
  JWST's ``group_id`` keywords (`combined_exposure_times`,
  `distinct_exposures`, `exposure_id`; stcal ``Resample.update_time``);
* the resample keywords (``NDRIZ``, ``NDRIZIM``, ``PIXFRAC``, ``PXSCLRT``,
  ``PIXAR_SR``, ``S_REGION`` ...) describe the drizzle and the output grid
  (`mosaic_metadata`);
* the header table holds one row of `HDRTAB_KEYWORDS` per input file
  (`header_table`), as JWST's blendmeta ``hdrtab`` does.
"""

import numpy as np
from astropy.table import Table

__all__ = [
    "HDRTAB_KEYWORDS",
    "exposure_id",
    "distinct_exposures",
    "combined_exposure_times",
    "blended_keywords",
    "common_keywords",
    "GRID_KEYWORDS",
    "mosaic_metadata",
    "header_table",
]

HDRTAB_KEYWORDS = ("FILENAME", "EXPTIME", "EFFEXPTM", "EXPSTART", "EXPMID", "EXPEND", "DETECTOR", "FILTER",
                   "PUPIL", "BKGLEVEL", "S_TWKREG", "S_SKYMAT", "S_OUTLIR", "PHOTMJSR")

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


# Keywords of the output grid itself (`calimage3.io.read_rendered_wcs` of the grid).
GRID_KEYWORDS = ("PIXAR_SR", "PIXAR_A2", "S_REGION")


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


def mosaic_metadata(metas, grid, params):
    """Primary-header keywords of the mosaic from its inputs' metadata.

    Keywords all inputs share are kept; times and instrument keywords are
    blended and exposure times summed over distinct exposures as in JWST
    (`blended_keywords`, `combined_exposure_times`); per-exposure keywords
    that differ between inputs, and per-file ones, are dropped.

    Parameters
    ----------
    metas : sequence of dict
        Metadata of each input, in input order.
    grid : dict
        `GRID_KEYWORDS` of the output grid: its pixel area at the centre
        (``PIXAR_SR``, ``PIXAR_A2``) and footprint (``S_REGION``), as
        `calimage3.wcs_tools.pixel_area_keywords` and ``s_region`` give them.
    params : dict
        The resample parameters.
    """
    meta = common_keywords(metas)
    meta.update(blended_keywords(metas))
    meta.update(combined_exposure_times(metas))
    pixar_sr = float(grid["PIXAR_SR"])
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
        PIXAR_A2=float(grid["PIXAR_A2"]),
        S_REGION=str(grid["S_REGION"]),
    )
    for key in _STEP_STATUS_KEYS:
        values = {m.get(key) for m in metas if m.get(key)}
        if values:
            meta[key] = "COMPLETE" if "COMPLETE" in values else values.pop()
    return meta


def header_table(metas, filenames):
    """The mosaic's header table (HDRTAB): one row of `HDRTAB_KEYWORDS` per input file.

    Parameters
    ----------
    metas : sequence of dict
        Metadata of each input, in input order.
    filenames : sequence of str
        Name of each input file, in the same order; it is the row's
        ``FILENAME`` whatever the metadata says.

    Returns
    -------
    astropy.table.Table
        Columns `HDRTAB_KEYWORDS`; a keyword an input lacks is ``''``.
    """
    rows = [{k: meta.get(k, "") for k in HDRTAB_KEYWORDS} | {"FILENAME": name}
            for meta, name in zip(metas, filenames, strict=True)]
    return Table(rows=[[str(r[k]) if isinstance(r[k], str) else r[k] for k in HDRTAB_KEYWORDS] for r in rows],
                 names=HDRTAB_KEYWORDS)
