"""Rows of the APCORR and ABVEGAOFFSET reference files for one mosaic (as jwst selects them).

`calimage3.io.read_apcorr` and `calimage3.io.read_abvegaoffset` turn the
CRDS files into plain tables; the functions here pick the rows of the
mosaic's instrument configuration and turn them into aperture radii,
corrections and the AB-to-Vega offset.  Nothing here reads files.

jwst's ``source_catalog`` (``reference_data.ReferenceData``) selects

* APCORR rows by ``filter`` and ``pupil`` for NIRCam and NIRISS, by
  ``filter`` and ``subarray`` for MIRI, all rows for FGS; then one row per
  requested encircled energy (``round(eefraction * 100) == aperture_ee``),
  radii and sky annulus divided by the resample ``pixel_scale_ratio``
  (the table is in detector pixels);
* the ABVEGAOFFSET row by ``filter`` and ``pupil`` (NIRCam, NIRISS),
  ``filter`` (MIRI) or ``detector`` (FGS).

Where jwst stops on an encircled energy the table does not hold, this
module interpolates radius and correction linearly in ``eefraction``
between the neighbouring rows (and says so in the returned ``note``); an
energy outside the tabulated range is an error.
"""

import numpy as np

__all__ = ["crds_parameters", "apcorr_selector", "select_apcorr_rows", "apcorr_aperture_params", "select_abvega_offset",
           "catalog_reference_params"]


def _norm(value):
    return "" if value is None else str(value).strip().upper()


def apcorr_selector(meta, kind="apcorr"):
    """Column -> value that picks the rows of ``meta``'s instrument configuration.

    Parameters
    ----------
    meta : dict
        Mosaic keywords: ``INSTRUME``, ``FILTER``, ``PUPIL``, ``SUBARRAY``,
        ``DETECTOR``.
    kind : {'apcorr', 'abvegaoffset'}

    Returns
    -------
    dict
        Empty for FGS APCORR (every row).

    Raises
    ------
    ValueError
        For an instrument without imaging reference files.
    """
    instrument = _norm(meta.get("INSTRUME"))
    if instrument in ("NIRCAM", "NIRISS"):
        return {"filter": _norm(meta.get("FILTER")), "pupil": _norm(meta.get("PUPIL"))}
    if instrument == "MIRI":
        if kind == "apcorr":
            return {"filter": _norm(meta.get("FILTER")), "subarray": _norm(meta.get("SUBARRAY"))}
        return {"filter": _norm(meta.get("FILTER"))}
    if instrument == "FGS":
        return {} if kind == "apcorr" else {"detector": _norm(meta.get("DETECTOR"))}
    raise ValueError(f"INSTRUME must be NIRCAM, NIRISS, MIRI or FGS for {kind} rows, got {instrument!r}")


def _select(table, selector, what):
    keep = np.ones(len(table), dtype=bool)
    for column, value in selector.items():
        if column not in table.colnames:
            raise ValueError(f"the {what} table has no column {column!r} (columns: {table.colnames})")
        keep &= np.array([_norm(v) == value for v in table[column]], dtype=bool)
    return table[keep]


def select_apcorr_rows(table, meta):
    """The APCORR rows of the mosaic's filter and pupil (or subarray).

    Parameters
    ----------
    table : astropy.table.Table
        The ``APCORR`` table (columns ``filter``, ``pupil`` or ``subarray``,
        ``eefraction``, ``radius``, ``apcorr``, ``skyin``, ``skyout``).
    meta : dict
        Mosaic keywords (`apcorr_selector`).

    Returns
    -------
    astropy.table.Table
        The matching rows.

    Raises
    ------
    ValueError
        When no row matches.
    """
    selector = apcorr_selector(meta, "apcorr")
    rows = _select(table, selector, "APCORR")
    if len(rows) == 0:
        raise ValueError(f"the APCORR table holds no rows for {selector}")
    return rows


def apcorr_aperture_params(rows, aperture_ee, pixel_scale_ratio=1.0):
    """Aperture radii, corrections and sky annulus from selected APCORR rows.

    Parameters
    ----------
    rows : astropy.table.Table
        Rows of one configuration (`select_apcorr_rows`): ``eefraction``
        (0-1), ``radius`` (detector pixels), ``apcorr``, ``skyin``,
        ``skyout`` (detector pixels).
    aperture_ee : array_like of int, shape (3,)
        Encircled energies, percent.
    pixel_scale_ratio : float
        Mosaic-to-detector pixel scale ratio (``PXSCLRT``); radii are
        divided by it.

    Returns
    -------
    radii : ndarray, shape (3,)
        Mosaic pixels.
    apcorr : ndarray, shape (3,)
    skyin, skyout : float
        Mosaic pixels.
    note : str
        Empty, or which energies were interpolated.

    Raises
    ------
    ValueError
        Missing columns, duplicated energies, an energy outside the table,
        or several sky annuli.
    """
    for column in ("eefraction", "radius", "apcorr", "skyin", "skyout"):
        if column not in rows.colnames:
            raise ValueError(f"the APCORR table has no column {column!r}")
    if not (np.isfinite(pixel_scale_ratio) and pixel_scale_ratio > 0):
        raise ValueError(f"pixel_scale_ratio must be a positive number, got {pixel_scale_ratio!r}")
    frac = np.asarray(rows["eefraction"], dtype=float)
    pct = np.round(frac * 100.0)
    radius = np.asarray(rows["radius"], dtype=float)
    apcorr = np.asarray(rows["apcorr"], dtype=float)
    if np.unique(pct).size != pct.size:
        raise ValueError(f"the APCORR rows repeat an eefraction: {sorted(frac.tolist())}")
    order = np.argsort(frac)
    radii, corr, notes = [], [], []
    for ee in np.asarray(aperture_ee, dtype=float):
        hit = np.flatnonzero(pct == ee)
        if hit.size == 1:
            radii.append(radius[hit[0]])
            corr.append(apcorr[hit[0]])
            continue
        f = ee / 100.0
        if not frac.min() < f < frac.max():
            raise ValueError(f"aperture_ee {ee:g} is outside the APCORR table's eefraction range "
                             f"{frac.min():g}-{frac.max():g}")
        radii.append(float(np.interp(f, frac[order], radius[order])))
        corr.append(float(np.interp(f, frac[order], apcorr[order])))
        notes.append(f"{ee:g}")
    skyin = np.unique(np.asarray(rows["skyin"], dtype=float))
    skyout = np.unique(np.asarray(rows["skyout"], dtype=float))
    if skyin.size != 1 or skyout.size != 1:
        raise ValueError("the APCORR rows of one configuration must share one skyin and one skyout")
    note = f"interpolated in eefraction for aperture_ee {', '.join(notes)}" if notes else ""
    return (np.asarray(radii) / pixel_scale_ratio, np.asarray(corr),
            float(skyin[0]) / pixel_scale_ratio, float(skyout[0]) / pixel_scale_ratio, note)


def select_abvega_offset(table, meta):
    """``m_AB - m_Vega`` of the mosaic's filter (and pupil, or detector for FGS).

    Parameters
    ----------
    table : astropy.table.Table
        The ``abvega_offset`` table of an ABVEGAOFFSET file.
    meta : dict
        Mosaic keywords (`apcorr_selector`).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When not exactly one row matches.
    """
    selector = apcorr_selector(meta, "abvegaoffset")
    rows = _select(table, selector, "ABVEGAOFFSET")
    if len(rows) != 1:
        raise ValueError(f"the ABVEGAOFFSET table holds {len(rows)} rows for {selector}; need exactly one")
    return float(rows["abvega_offset"][0])


def catalog_reference_params(meta, *, apcorr=None, abvegaoffset=None, apcorr_name="",
                             abvegaoffset_name="", abvega_offset=None):
    """Keyword arguments of `calimage3.source_catalog.make_source_catalog` from reference tables.

    Parameters
    ----------
    meta : dict
        Mosaic keywords (``INSTRUME``, ``FILTER``, ``PUPIL``, ``SUBARRAY``,
        ``DETECTOR``, ``PXSCLRT``).
    apcorr, abvegaoffset : astropy.table.Table or None
        The tables of the APCORR and ABVEGAOFFSET files (None: not given).
    apcorr_name, abvegaoffset_name : str
        Their file names, for the log and the catalog's meta.
    abvega_offset : float or None
        The ``abvega_offset`` parameter; the ABVEGAOFFSET file, when given,
        takes precedence.

    Returns
    -------
    dict
        ``apcorr_table``, ``pixel_scale_ratio`` and ``apcorr_source`` when
        ``apcorr`` is given; ``abvega_offset`` (and ``abvega_source``, for
        the meta) always.
    """
    out = {"abvega_offset": abvega_offset,
           "abvega_source": "abvega_offset parameter" if abvega_offset is not None else ""}
    if apcorr is not None:
        rows = select_apcorr_rows(apcorr, meta)
        ratio = meta.get("PXSCLRT")
        out["apcorr_table"] = rows
        out["pixel_scale_ratio"] = float(ratio) if ratio not in (None, "") else 1.0
        selector = ", ".join(f"{k}={v}" for k, v in apcorr_selector(meta, "apcorr").items())
        out["apcorr_source"] = f"APCORR {apcorr_name} ({selector or 'all rows'})"
    if abvegaoffset is not None:
        out["abvega_offset"] = select_abvega_offset(abvegaoffset, meta)
        selector = ", ".join(f"{k}={v}" for k, v in apcorr_selector(meta, "abvegaoffset").items())
        out["abvega_source"] = f"ABVEGAOFFSET {abvegaoffset_name} ({selector})"
    return out


# FITS keyword of the mosaic -> the CRDS matching parameter it gives (as jwst's
# datamodels name them); CRDS rules for APCORR and ABVEGAOFFSET select on these.
_CRDS_KEYWORDS = {
    "INSTRUME": "META.INSTRUMENT.NAME",
    "DETECTOR": "META.INSTRUMENT.DETECTOR",
    "FILTER": "META.INSTRUMENT.FILTER",
    "PUPIL": "META.INSTRUMENT.PUPIL",
    "CHANNEL": "META.INSTRUMENT.CHANNEL",
    "MODULE": "META.INSTRUMENT.MODULE",
    "EXP_TYPE": "META.EXPOSURE.TYPE",
    "SUBARRAY": "META.SUBARRAY.NAME",
    "DATE-OBS": "META.OBSERVATION.DATE",
    "TIME-OBS": "META.OBSERVATION.TIME",
    "READPATT": "META.EXPOSURE.READPATT",
}


def crds_parameters(meta):
    """CRDS matching parameters of a mosaic from its header keywords.

    Parameters
    ----------
    meta : dict
        The ``_i2d`` header keywords (primary and SCI).

    Returns
    -------
    dict
        ``META.INSTRUMENT.NAME`` etc. for the keywords present; what
        `calimage3.io.crds_reference_files` passes to ``crds.getreferences``.
    """
    return {crds_key: str(meta[key]).strip() for key, crds_key in _CRDS_KEYWORDS.items()
            if meta.get(key) not in (None, "")}
