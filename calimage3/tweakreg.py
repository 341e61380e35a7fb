"""Relative astrometric alignment of exposures (JWST ``tweakreg``).

Two stages, as in the JWST ``tweakreg`` step:

1. `calimage3.source_detection.detect_sources` finds point-like sources
   in one exposure (photutils ``Background2D`` for the background and its
   noise, then ``IRAFStarFinder`` or ``DAOStarFinder``) and returns their
   pixel centroids and fluxes.  It is not imported here, so that the
   alignment job does not import photutils.
2. `align_exposures` matches those catalogues across exposures in a
   common tangent plane and fits a linear correction of each exposure (or
   rigid group of exposures) relative to a reference, using
   ``tweakwcs.align_wcs`` with an iterative matcher (`_IterativeMatch`:
   ``xyxymatch`` re-run with a tolerance tightened to the fit scatter, so
   that the JWST default tolerance does not admit false pairs).
   Corrections are applied to our ``gwcs`` objects by
   `TangentPlaneCorrector`, a ``tweakwcs`` WCS corrector built on
   `calimage3.wcs_tools.tangent_plane_correction`.

Nothing here reads or writes files.
"""

import logging
import math
import numbers
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from scipy.spatial import cKDTree
from astropy.table import Table
from tweakwcs.correctors import WCSCorrector
from tweakwcs.imalign import NotEnoughCatalogs, align_wcs
from tweakwcs.linearfit import iter_linear_fit
from tweakwcs.matchutils import MatchCatalogs, MatchSourceConfusionError, XYXYMatch

from calimage3.refcat import REMOTE_CATALOGS, reference_catalog_path
from calimage3.checks import require_positive
from calimage3.wcs_tools import (
    footprint,
    from_tangent_plane,
    local_pixel_scale,
    tangent_plane_correction,
    to_tangent_plane,
)

__all__ = [
    "FITGEOMETRIES",
    "AlignmentResult",
    "TangentPlaneCorrector",
    "REMOTE_CATALOGS",
    "AbsoluteAlignment",
    "align_exposures",
    "align_to_reference_catalog",
    "exposure_group_id",
    "reference_catalog_path",
    "reference_radec",
]

log = logging.getLogger(__name__)

#: Fit geometries accepted by `align_exposures` and the least number of
#: matched sources each one needs.
FITGEOMETRIES = {"shift": 1, "rshift": 2, "rscale": 2, "general": 3}

#: ``abs_refcat`` names that JWST resolves with a web query (not done here).
#: Primary-header keywords whose values identify one exposure (all its
#: detectors), in the order JWST builds ``meta.group_id`` from them.
GROUP_KEYWORDS = ("PROGRAM", "OBSERVTN", "VISIT", "VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE")

# Iterative matching (see `_IterativeMatch`): most match-and-fit passes, the
# tolerance floor in detector pixels, the largest offset histogram side in
# bins, and the median residual norm -> RMS factor for 2-D Gaussian
# residuals (the norm is Rayleigh distributed, median s*sqrt(2 ln 2),
# RMS s*sqrt(2)).
_MAX_MATCH_PASSES = 5
_TOLERANCE_FLOOR_PIX = 0.5
_MAX_HIST_BINS = 2048
_MEDIAN_TO_RMS = 1.0 / math.sqrt(math.log(2.0))
# Source ids handed to tweakwcs are ``exposure index * _ID_STRIDE + row + 1``
# so that the matcher can tell which exposures a catalogue came from.
_ID_STRIDE = 10_000_000


# --------------------------------------------------------------------------
# tweakwcs corrector for our gwcs objects
# --------------------------------------------------------------------------


class TangentPlaneCorrector(WCSCorrector):
    """``tweakwcs`` corrector for a `calimage3.wcs_tools` imaging gwcs.

    Its tangent plane is the gnomonic projection about a fixed tangent
    point ``(ref_ra, ref_dec)`` shared by every exposure of an alignment,
    with ``xi`` to the east and ``eta`` to the north, in **arcsec** (as for
    the JWST corrector, so matching tolerances are in arcsec).

    Parameters
    ----------
    wcs : gwcs.WCS
        Pixel ``(x, y)`` to ``(RA, Dec)`` degrees; not modified.
    ref_ra, ref_dec : float
        Tangent point, degrees.
    shape : tuple of int
        ``(ny, nx)`` of the exposure.
    meta : dict or None
        Merged into ``meta`` (``tweakwcs`` reads ``catalog``, ``name``,
        ``group_id`` from it).

    Notes
    -----
    ``set_correction(matrix, shift, ref_tpwcs)`` receives the fit
    ``p_ref = matrix @ p + shift`` in the tangent plane of ``ref_tpwcs``
    (another `TangentPlaneCorrector`; this one when None), with ``shift``
    in arcsec, and replaces ``wcs`` by
    ``tangent_plane_correction(wcs, tangent point, matrix, shift / 3600)``.
    Repeated calls compose.  Transformations ignore the bounding box, so
    points just off the detector still map (``tweakwcs`` evaluates the
    detector edges).
    """

    units = "arcsec"

    def __init__(self, wcs, ref_ra, ref_dec, shape, meta=None):
        super().__init__(wcs=wcs, meta=meta)
        self.ref_ra = float(ref_ra)
        self.ref_dec = float(ref_dec)
        self.shape = (int(shape[0]), int(shape[1]))

    def set_correction(self, matrix=((1, 0), (0, 1)), shift=(0, 0), ref_tpwcs=None, meta=None,
                       **kwargs):
        """Apply ``p' = matrix @ p + shift`` (arcsec) in the tangent plane of ``ref_tpwcs``."""
        plane = self if ref_tpwcs is None else ref_tpwcs
        if not isinstance(plane, TangentPlaneCorrector):
            raise TypeError(
                "ref_tpwcs must be a TangentPlaneCorrector or None, got "
                f"{type(ref_tpwcs).__name__}"
            )
        matrix = np.asarray(matrix, dtype=float)
        shift = np.asarray(shift, dtype=float)
        self._wcs = tangent_plane_correction(
            self._wcs, plane.ref_ra, plane.ref_dec, matrix, shift / 3600.0
        )
        super().set_correction(matrix=matrix, shift=shift, meta=meta, **kwargs)

    def det_to_world(self, x, y):
        """Pixel to ``(RA, Dec)`` degrees."""
        return self._wcs.forward_transform(np.asarray(x, float), np.asarray(y, float))

    def world_to_det(self, ra, dec):
        """``(RA, Dec)`` degrees to pixel."""
        return self._wcs.backward_transform(np.asarray(ra, float), np.asarray(dec, float))

    def world_to_tanp(self, ra, dec):
        """``(RA, Dec)`` degrees to tangent-plane ``(xi, eta)`` arcsec."""
        xi, eta = to_tangent_plane(np.asarray(ra, float), np.asarray(dec, float),
                                   self.ref_ra, self.ref_dec)
        return 3600.0 * xi, 3600.0 * eta

    def tanp_to_world(self, x, y):
        """Tangent-plane ``(xi, eta)`` arcsec to ``(RA, Dec)`` degrees."""
        return from_tangent_plane(np.asarray(x, float) / 3600.0, np.asarray(y, float) / 3600.0,
                                  self.ref_ra, self.ref_dec)

    def det_to_tanp(self, x, y):
        """Pixel to tangent-plane arcsec."""
        return self.world_to_tanp(*self.det_to_world(x, y))

    def tanp_to_det(self, x, y):
        """Tangent-plane arcsec to pixel."""
        return self.world_to_det(*self.tanp_to_world(x, y))

    def _get_tanp_center_pixel_scale(self):
        # Pixel scale (arcsec) at the detector centre, which unlike the
        # tangent point is always on the detector.
        ny, nx = self.shape
        return self.tanp_pixel_scale((nx - 1) / 2.0, (ny - 1) / 2.0)

    @property
    def bounding_box(self):
        """``((xmin, xmax), (ymin, ymax))`` of the detector, outer pixel edges."""
        ny, nx = self.shape
        return ((-0.5, nx - 0.5), (-0.5, ny - 0.5))


# --------------------------------------------------------------------------
# Catalogue matching
# --------------------------------------------------------------------------


def _histogram_offset(imxy, refxy, searchrad, binsize):
    """Most common offset ``image - reference`` of two position lists.

    Parameters
    ----------
    imxy, refxy : ndarray, shape (n, 2) and (m, 2)
        Tangent-plane positions of the image and reference sources.
    searchrad : float
        Largest offset considered along each axis, same units.
    binsize : float
        Histogram bin size, same units (one detector pixel); enlarged if
        the histogram would exceed ``_MAX_HIST_BINS`` bins a side.

    Returns
    -------
    ndarray, shape (2,), or None
        The offset; None when no pair of sources lies within ``searchrad``.

    Notes
    -----
    Every image-reference pair (found with a k-d tree, never by a loop
    over sources) whose offset lies within ``searchrad`` on both axes
    enters a 2-D histogram with bins centred on zero offset.  The peak of
    the histogram summed over 3x3-bin boxes (so that a peak split across
    bin edges is not missed) picks the box; the result is the mean offset
    of the pairs in that box, which is much finer than a bin.
    """
    pairs = cKDTree(imxy).sparse_distance_matrix(
        cKDTree(refxy), searchrad * math.sqrt(2.0), output_type="ndarray"
    )
    if pairs.size == 0:
        return None
    diff = imxy[pairs["i"]] - refxy[pairs["j"]]
    diff = diff[np.all(np.abs(diff) <= searchrad, axis=1)]
    if diff.shape[0] == 0:
        return None
    nhalf = min(int(math.ceil(searchrad / binsize)), _MAX_HIST_BINS // 2)
    binsize = max(binsize, searchrad / nhalf)
    edges = (np.arange(-nhalf, nhalf + 2) - 0.5) * binsize
    hist = np.histogram2d(diff[:, 0], diff[:, 1], bins=(edges, edges))[0]
    padded = np.pad(hist, 1)
    boxed = sum(padded[i : i + hist.shape[0], j : j + hist.shape[1]] for i in range(3) for j in range(3))
    peak = (np.array(np.unravel_index(np.argmax(boxed), boxed.shape)) - nhalf) * binsize
    in_box = np.all(np.abs(diff - peak) <= 1.5 * binsize, axis=1)
    return diff[in_box].mean(axis=0)


class _IterativeMatch(MatchCatalogs):
    """``tweakwcs`` matcher that iterates tolerance matching and fitting.

    Called by ``tweakwcs`` with a reference and an image catalogue holding
    tangent-plane columns ``TPx``, ``TPy``; returns the indices of matched
    pairs, which ``tweakwcs`` then fits.  Parameters are those of
    `align_exposures`.

    Notes
    -----
    Stages:

    1. Initial offset (image minus reference): the 2-D histogram peak of
       `_histogram_offset` with one-pixel bins over ``searchrad`` when
       ``use2dhist``, else ``(xoffset, yoffset)``.
    2. ``xyxymatch`` (``tweakwcs.XYXYMatch``) pairs each source with its
       nearest counterpart within ``tolerance`` of the offset, after
       dropping sources closer than ``separation`` to another.  The
       median offset of these pairs re-centres the shift, and
       ``1.20 * median`` distance from it estimates the RMS of true pairs.
    3. Up to ``_MAX_MATCH_PASSES`` times: match again about the current
       solution with the tolerance tightened to ``sigma`` times the RMS
       estimate (never above ``tolerance``, never below half a detector
       pixel), fit ``fitgeometry`` with ``nclip`` clipping iterations at
       ``sigma`` RMS, and take ``1.20 * median`` residual of the fitted
       pairs as the next estimate; stop as soon as a pass returns the
       same pairs.

    Why: at the JWST default ``tolerance`` (0.7") a source without a
    counterpart (undetected, off the other detector) is often paired with
    an unrelated neighbour up to 0.7" away.  With only tens of matches a
    few such pairs dominate the fit RMS, so clipping at ``sigma`` times
    that RMS keeps them and a single fit is off by pixels.  True pairs lie
    within a few hundredths of an arcsec of the solution, so the tightened
    tolerance excludes the false ones, as when tweakreg is re-run by hand
    with a smaller tolerance.
    """

    def __init__(self, *, searchrad, separation, tolerance, use2dhist, xoffset, yoffset,
                 fitgeometry, nclip, sigma, check=None):
        self.check = check
        #: Unit key -> reason, for fits that ``check`` rejected.
        self.rejected = {}
        self.searchrad = float(searchrad)
        self.separation = float(separation)
        self.tolerance = float(tolerance)
        self.use2dhist = bool(use2dhist)
        self.offset = np.array([xoffset, yoffset], dtype=float)
        self.fitgeometry = fitgeometry
        self.nclip = int(nclip)
        self.sigma = float(sigma)

    def _match(self, refcat, imxy, tolerance, name):
        """``xyxymatch`` of already shifted image positions; sorted index pairs."""
        match = XYXYMatch(searchrad=self.searchrad, separation=self.separation, use2dhist=False,
                          tolerance=tolerance, xoffset=0.0, yoffset=0.0)
        imcat = Table([imxy[:, 0], imxy[:, 1]], names=("TPx", "TPy"), meta={"name": name})
        ref_idx, im_idx = match(refcat, imcat)
        ref_idx, im_idx = np.asarray(ref_idx, dtype=int), np.asarray(im_idx, dtype=int)
        order = np.lexsort((ref_idx, im_idx))
        return ref_idx[order], im_idx[order]

    def __call__(self, refcat, imcat, tp_pscale=1.0, tp_units=None, **kwargs):
        """Indices ``(ref_idx, im_idx)`` of matched sources (see class Notes)."""
        refxy = np.column_stack([refcat["TPx"], refcat["TPy"]]).astype(float)
        imxy = np.column_stack([imcat["TPx"], imcat["TPy"]]).astype(float)
        refcat = Table([refxy[:, 0], refxy[:, 1]], names=("TPx", "TPy"),
                       meta={"name": refcat.meta.get("name")})
        name = imcat.meta.get("name")

        # 1. Initial offset.
        offset = self.offset
        if self.use2dhist:
            offset = _histogram_offset(imxy, refxy, self.searchrad, tp_pscale)
            if offset is None:
                log.warning("tweakreg: no source pairs within searchrad=%g of each other",
                            self.searchrad)
                offset = np.zeros(2)

        # 2. Matching at the full tolerance; robust shift and scatter.
        ref_idx, im_idx = self._match(refcat, imxy - offset, self.tolerance, name)
        if ref_idx.size == 0:
            return ref_idx, im_idx
        resid = imxy[im_idx] - offset - refxy[ref_idx]
        centre = np.median(resid, axis=0)
        offset = offset + centre
        scatter = _MEDIAN_TO_RMS * float(np.median(np.hypot(*(resid - centre).T)))
        moved = imxy - offset

        # 3. Re-match with tightened tolerance and refit until stable.
        floor = min(self.tolerance, _TOLERANCE_FLOOR_PIX * tp_pscale)
        needed = FITGEOMETRIES[self.fitgeometry]
        previous = None
        for npass in range(1, _MAX_MATCH_PASSES + 1):
            tolerance = min(self.tolerance, max(self.sigma * scatter, floor))
            ref_idx, im_idx = self._match(refcat, moved, tolerance, name)
            if previous is not None and np.array_equal(ref_idx, previous[0]) and \
                    np.array_equal(im_idx, previous[1]):
                break
            if ref_idx.size < needed:
                break
            try:
                fit = iter_linear_fit(refxy[ref_idx], imxy[im_idx], fitgeom=self.fitgeometry,
                                      nclip=self.nclip, sigma=(self.sigma, "rmse"))
            except (ValueError, ArithmeticError, np.linalg.LinAlgError):
                break
            matrix, shift, centre = (np.asarray(fit[k], dtype=float)
                                     for k in ("matrix", "shift", "center"))
            moved = (imxy - centre) @ matrix.T + shift + centre
            resid = np.asarray(fit["resids"], dtype=float)
            scatter = _MEDIAN_TO_RMS * float(np.median(np.hypot(resid[:, 0], resid[:, 1])))
            previous = (ref_idx, im_idx)
            log.debug("tweakreg: pass %d, tolerance %.4g, %d matches, fit RMS %.4g", npass,
                      tolerance, ref_idx.size, fit["rmse"])
        if self.check is not None and ref_idx.size >= needed and "id" in imcat.colnames:
            # 4. Sanity checks of the final fit, before tweakwcs applies it
            #    (and, with expand_refcat, adds the unit to the reference).
            try:
                fit = iter_linear_fit(refxy[ref_idx], imxy[im_idx], fitgeom=self.fitgeometry,
                                      nclip=self.nclip, sigma=(self.sigma, "rmse"))
            except (ValueError, ArithmeticError, np.linalg.LinAlgError):
                fit = None
            if fit is not None:
                exposures = np.unique(np.asarray(imcat["id"], dtype=np.int64) // _ID_STRIDE)
                unit, reason = self.check(exposures, fit, ref_idx.size)
                if reason:
                    self.rejected[unit] = reason
                    log.warning("tweakreg: fit of %s rejected: %s", name, reason)
                    empty = np.array([], dtype=int)
                    return empty, empty
        return ref_idx, im_idx


# --------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------


@dataclass
class AlignmentResult:
    """Outcome of `align_exposures` for one exposure.

    Attributes
    ----------
    wcs : gwcs.WCS
        Corrected WCS; the input WCS when ``status`` is ``'SKIPPED'`` or the
        exposure is the reference.
    status : str
        ``'COMPLETE'`` (aligned, or the reference) or ``'SKIPPED'``.
    shift : tuple of float
        Fitted ``(xi, eta)`` shift in the common tangent plane, arcsec
        (east, north); ``(0, 0)`` when not fitted.
    rotation : float
        Fitted rotation of the sky positions, degrees, from north through
        east (``tweakwcs`` convention: matrix ``[[cos, sin], [-sin, cos]]``
        acting on ``(xi, eta)``), so a positive value raises position
        angles by that much.  0 when not fitted.
    scale : float
        Fitted scale factor (geometric mean of the two axes); 1 when not
        fitted.
    rms : float
        RMS of the fit residuals in pixels of this exposure; 0 for the
        reference, NaN when skipped.
    nmatch : int
        Number of sources matched to the reference catalogue (0 when not
        fitted).
    is_reference : bool
        True for the exposure(s) that defined the reference catalogue.
    message : str
        Human-readable summary or reason for skipping.
    in_refcat : bool
        True when the exposure's sources are in the final reference
        catalogue (the reference exposure's; with ``expand_refcat`` also
        every aligned exposure's).  False for a skipped exposure: a
        fit that fails the sanity checks is rejected before ``tweakwcs``
        could add its sources (``tweakwcs`` still adds the sources of a
        failed exposure that overlaps no other).
    """

    wcs: object
    status: str
    shift: tuple = (0.0, 0.0)
    rotation: float = 0.0
    scale: float = 1.0
    rms: float = math.nan
    nmatch: int = 0
    is_reference: bool = False
    message: str = ""
    in_refcat: bool = False


def _validate_match_parameters(prefix, searchrad, separation, tolerance, fitgeometry, nclip,
                               sigma, minobj):
    """Checks shared by relative (``prefix=''``) and absolute (``'abs_'``) alignment."""
    require_positive(f"{prefix}searchrad", searchrad)
    require_positive(f"{prefix}separation", separation)
    require_positive(f"{prefix}tolerance", tolerance)
    if not separation > math.sqrt(2.0) * tolerance and not prefix:
        raise ValueError(
            "separation must exceed sqrt(2) * tolerance to avoid source confusion, got "
            f"separation={separation!r}, tolerance={tolerance!r}"
        )
    if not isinstance(fitgeometry, str) or fitgeometry.lower() not in FITGEOMETRIES:
        raise ValueError(
            f"{prefix}fitgeometry must be one of {list(FITGEOMETRIES)}, got {fitgeometry!r}"
        )
    if isinstance(nclip, bool) or not isinstance(nclip, numbers.Integral) or nclip < 0:
        raise ValueError(f"{prefix}nclip must be a non-negative integer, got {nclip!r}")
    require_positive(f"{prefix}sigma", sigma)
    require_positive(f"{prefix}minobj", minobj, integer=True)
    needed = FITGEOMETRIES[fitgeometry.lower()]
    if minobj < needed:
        raise ValueError(
            f"{prefix}minobj must be at least {needed} for {prefix}fitgeometry={fitgeometry!r}, "
            f"got {minobj!r}"
        )


def _validate_inputs(catalogs, wcs_list, shapes, group_ids=None):
    n = len(catalogs)
    if len(wcs_list) != n or len(shapes) != n:
        raise ValueError(
            f"catalogs, wcs_list and shapes must have equal lengths, got {n}, "
            f"{len(wcs_list)} and {len(shapes)}"
        )
    if group_ids is not None and len(group_ids) != n:
        raise ValueError(f"group_ids must have one entry per exposure ({n}), got {len(group_ids)}")
    for i, cat in enumerate(catalogs):
        names = getattr(cat, "colnames", None)
        if names is None or "x" not in names or "y" not in names:
            raise ValueError(f"catalogs[{i}] must be a Table with 'x' and 'y' columns")
    for i, shape in enumerate(shapes):
        if len(shape) != 2:
            raise ValueError(f"shapes[{i}] must be (ny, nx), got {shape!r}")


def _validate_alignment(catalogs, wcs_list, shapes, group_ids, searchrad, separation, tolerance,
                        xoffset, yoffset, fitgeometry, nclip, sigma, minobj):
    _validate_inputs(catalogs, wcs_list, shapes, group_ids)
    _validate_match_parameters("", searchrad, separation, tolerance, fitgeometry, nclip, sigma,
                               minobj)
    for name, value in (("xoffset", xoffset), ("yoffset", yoffset)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number (arcsec), got {value!r}")


def _tangent_point(wcs_list, shapes):
    """Centre of the combined footprint of all exposures, degrees."""
    corners = np.vstack([footprint(w, s) for w, s in zip(wcs_list, shapes)])
    ra0, dec0 = corners[0]
    xi, eta = to_tangent_plane(corners[:, 0], corners[:, 1], ra0, dec0)
    ra, dec = from_tangent_plane(0.5 * (xi.min() + xi.max()), 0.5 * (eta.min() + eta.max()), ra0,
                                 dec0)
    return float(ra), float(dec)


def _max_corner_motion(wcs_a, wcs_b, shape):
    """Largest displacement of the detector corners between two WCSs, arcsec."""
    a = footprint(wcs_a, shape)
    b = footprint(wcs_b, shape)
    xi, eta = to_tangent_plane(b[:, 0], b[:, 1], a[0, 0], a[0, 1])
    xa, ea = to_tangent_plane(a[:, 0], a[:, 1], a[0, 0], a[0, 1])
    return 3600.0 * float(np.max(np.hypot(xi - xa, eta - ea)))


def _corrector(i, catalog, wcs, shape, ref_ra, ref_dec, group_id):
    """`TangentPlaneCorrector` of exposure ``i`` with ids that encode ``i``."""
    x = np.asarray(catalog["x"], float)
    cat = Table(
        [x, np.asarray(catalog["y"], float), i * _ID_STRIDE + np.arange(1, x.size + 1)],
        names=("x", "y", "id"),
    )
    return TangentPlaneCorrector(
        wcs, ref_ra, ref_dec, shape,
        meta={"catalog": cat, "name": f"exposure {i}", "group_id": group_id},
    )


def _exposures_in(refcat):
    """Indices of the exposures whose sources are in a tweakwcs reference catalogue."""
    if refcat is None or "cat_name" not in getattr(refcat, "colnames", ()):
        return set()
    names = np.unique(np.asarray(refcat["cat_name"]).astype(str))
    return {int(n.split()[-1]) for n in names if n.startswith("exposure ")}


def _fill_fit(result, info, wcs, shape):
    """Copy a tweakwcs ``fit_info`` into ``result`` (RMS in pixels of ``wcs``)."""
    pscale = local_pixel_scale(wcs, (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0) * 3600.0
    result.shift = (float(info["shift"][0]), float(info["shift"][1]))
    result.rotation = float(info["proper_rot"])
    result.scale = float(info["<scale>"])
    result.rms = float(info["rmse"]) / pscale
    result.nmatch = int(info.get("nmatches", np.count_nonzero(info["fitmask"])))


class _FitCheck:
    """Sanity checks of a unit's fit, called by `_IterativeMatch` before tweakwcs applies it.

    Called with the exposure indices of an image catalogue, the
    ``iter_linear_fit`` result (image -> reference tangent plane, arcsec)
    and the number of matches; returns ``(unit key, reason)`` with an
    empty reason when the fit is acceptable.  Rejected: a correction that
    moves any detector corner of the unit by more than ``max_corr``
    arcsec, a fit RMS above ``tolerance`` arcsec, a fit keeping fewer than
    ``minobj`` matches after clipping.  ``prefix`` ('' or 'abs_') names
    the parameters in the reasons.
    """

    def __init__(self, keys, wcs_list, shapes, ref_ra, ref_dec, *, max_corr, tolerance, minobj,
                 prefix):
        self.keys = keys
        self.corners = [
            3600.0 * np.column_stack(to_tangent_plane(*footprint(w, s).T, ref_ra, ref_dec))
            for w, s in zip(wcs_list, shapes)
        ]
        self.max_corr = max_corr
        self.tolerance = tolerance
        self.minobj = minobj
        self.prefix = prefix

    def __call__(self, exposures, fit, nmatch):
        exposures = [int(e) for e in exposures if 0 <= e < len(self.keys)]
        unit = self.keys[exposures[0]] if exposures else None
        if nmatch < self.minobj:
            return unit, ""  # tweakwcs reports "not enough matches"
        matrix, shift, centre = (np.asarray(fit[k], dtype=float) for k in ("matrix", "shift", "center"))
        corners = np.vstack([self.corners[i] for i in exposures]) if exposures else np.empty((0, 2))
        moved = (corners - centre) @ matrix.T + shift + centre
        motion = float(np.max(np.hypot(*(moved - corners).T), initial=0.0))
        kept = int(np.count_nonzero(fit["fitmask"]))
        p = self.prefix
        if motion > self.max_corr:
            return unit, (
                f"fitted correction moves the footprint by {motion:.3g} arcsec, more than "
                f"{self.max_corr:.3g} arcsec (2 * ({p}searchrad + {p}tolerance)); likely a "
                "source mismatch"
            )
        if not float(fit["rmse"]) <= self.tolerance:
            return unit, (
                f"fit RMS {float(fit['rmse']):.3g} arcsec exceeds {p}tolerance={self.tolerance!r}; "
                "likely a source mismatch"
            )
        if kept < self.minobj:
            return unit, (
                f"fit kept {kept} of {nmatch} matches after clipping, fewer than "
                f"{p}minobj={self.minobj}"
            )
        return unit, ""


def align_exposures(
    catalogs,
    wcs_list,
    shapes,
    *,
    group_ids=None,
    searchrad=2.0,
    separation=1.0,
    tolerance=0.7,
    use2dhist=True,
    xoffset=0.0,
    yoffset=0.0,
    fitgeometry="rshift",
    nclip=3,
    sigma=3.0,
    minobj=15,
    enforce_user_order=False,
    expand_refcat=False,
):
    """Relative alignment of exposures by matching their source catalogues.

    Parameters
    ----------
    catalogs : list of astropy.table.Table
        One per exposure, with zero-based pixel columns ``x`` and ``y``
        (e.g. from `detect_sources`).
    wcs_list : list of gwcs.WCS
        The exposures' WCSs, pixel to ``(RA, Dec)`` degrees; not modified.
    shapes : list of tuple of int
        ``(ny, nx)`` of each exposure.
    group_ids : list of hashable or None
        Exposures sharing a value are fitted together as one rigid unit
        (e.g. the detectors of one NIRCam exposure); None fits each
        exposure on its own.
    searchrad : float
        Search radius of the initial-offset 2-D histogram, arcsec.
    separation : float
        Sources closer than this (arcsec) within a catalogue are dropped
        before matching; must exceed ``sqrt(2) * tolerance``.
    tolerance : float
        Matching tolerance after the initial offset, arcsec: no pair
        farther apart is ever matched (later passes match within a
        tighter radius, see Notes).  A fit whose RMS exceeds it is
        rejected.
    use2dhist : bool
        Find the initial offset with a 2-D histogram of position
        differences (one-pixel bins); otherwise use ``xoffset``,
        ``yoffset``.
    xoffset, yoffset : float
        Initial offset (image minus reference) along ``xi`` (east) and
        ``eta`` (north), arcsec; used when ``use2dhist`` is False.
    fitgeometry : {'shift', 'rshift', 'rscale', 'general'}
        Allowed correction: shift; shift and rotation; shift, rotation and
        scale; or a general affine transformation.
    nclip : int
        Number of sigma-clipping iterations of the fit.
    sigma : float
        Clipping limit in units of the fit RMS; also sets the tightened
        matching radius of the iterative matching (see Notes).
    minobj : int
        Fewest sources a catalogue (or group) must have, fewest matches a
        fit must have, and fewest matches it may keep after clipping.
    enforce_user_order : bool
        Align in input order with the first exposure (or group) as
        reference, rather than by largest overlap.  As in ``tweakwcs``, the
        order is only optimised when ``expand_refcat`` is True.
    expand_refcat : bool
        Add unmatched sources of each aligned exposure to the reference
        catalogue.

    Returns
    -------
    list of AlignmentResult
        Same order as the inputs.  Exposures that could not be aligned, or
        whose fit failed a sanity check (stage 5), keep their original WCS
        with ``status='SKIPPED'`` and the reason in ``message``; with fewer
        than two usable exposures (or groups), all are skipped.

    Raises
    ------
    ValueError
        For an invalid parameter or mismatched input lengths.

    Notes
    -----
    Stages:

    1. Exposures (or groups) with fewer than ``minobj`` sources are set
       aside as SKIPPED.
    2. Each remaining exposure gets a `TangentPlaneCorrector`; all share
       one tangent plane, about the centre of the combined footprint, in
       arcsec.
    3. ``tweakwcs.align_wcs`` picks the reference (first exposure unless
       ``expand_refcat`` with ``enforce_user_order`` False, then largest
       overlap) and matches each catalogue to the reference catalogue.
    4. Matching is iterated (`_IterativeMatch`):

       a. initial offset from the peak of a 2-D histogram of all pairwise
          offsets within ``searchrad``, one detector pixel per bin,
          refined to the mean offset of the pairs under the peak (or
          ``xoffset``, ``yoffset`` without ``use2dhist``);
       b. ``xyxymatch`` within ``tolerance`` of that offset, with sources
          closer than ``separation`` dropped, exactly as JWST; the median
          offset of these pairs and the median distance from it give a
          robust shift and scatter;
       c. up to 5 passes of: re-match about the current solution within
          ``sigma`` times the RMS scatter (clipped to between half a
          detector pixel and ``tolerance``), fit ``fitgeometry`` with
          ``nclip`` clipping iterations at ``sigma`` RMS; stop when a pass
          returns the same pairs.

       ``tweakwcs`` then fits the final pairs the same way and corrects
       the WCS.  A single match at the JWST default ``tolerance`` (0.7",
       ~23 NIRCam short-wave pixels) pairs many sources that have no
       true counterpart (spurious detections, sources off the other
       detector) with unrelated neighbours; with tens of matches these
       pairs dominate the fit RMS, escape ``sigma`` clipping and bias the
       fit by pixels.  The tightened radius, never larger than the
       user's, excludes them, as re-running tweakreg by hand with a
       smaller tolerance would.
    5. Sanity checks, each reverting the exposure (or group) to its input
       WCS with SKIPPED: as in JWST, a correction that moves any detector
       corner by more than ``2 * (searchrad + tolerance)`` arcsec
       (``2 * (max(|xoffset|, |yoffset|) + tolerance)`` without
       ``use2dhist``) is taken as a mismatch; so is a fit whose RMS
       exceeds ``tolerance``; and a fit that keeps fewer than ``minobj``
       matches after clipping is too weak to trust.
    """
    _validate_alignment(catalogs, wcs_list, shapes, group_ids, searchrad, separation, tolerance,
                        xoffset, yoffset, fitgeometry, nclip, sigma, minobj)
    fitgeometry = fitgeometry.lower()
    n = len(catalogs)
    results = [AlignmentResult(wcs=w, status="SKIPPED") for w in wcs_list]
    if n < 2:
        for r in results:
            r.message = "at least two exposures are needed for alignment"
        return results

    # 1. Units of alignment (single exposures or groups) with enough sources.
    keys = [
        ("group", group_ids[i]) if group_ids is not None and group_ids[i] is not None
        else ("exposure", i)
        for i in range(n)
    ]
    units = {}
    for i, key in enumerate(keys):
        units.setdefault(key, []).append(i)
    usable = []
    for key, members in units.items():
        nsrc = sum(len(catalogs[i]) for i in members)
        if nsrc < minobj:
            what = "exposure" if key[0] == "exposure" else f"group {key[1]!r}"
            for i in members:
                results[i].message = f"{what} has {nsrc} sources, fewer than minobj={minobj}"
        else:
            usable.extend(members)
    usable.sort()
    if len(set(keys[i] for i in usable)) < 2:
        for i in usable:
            results[i].message = (
                "fewer than two exposures (or groups) have at least minobj="
                f"{minobj} sources; nothing to align to"
            )
        return results

    # 2-5 (see Notes); repeated without failed units that tweakwcs added to
    # the expanded reference catalogue anyway (it does so for a unit that
    # overlaps nothing aligned before it), so they cannot poison the rest.
    if use2dhist:
        max_corr = 2.0 * (searchrad + tolerance)
    else:
        max_corr = 2.0 * (max(abs(xoffset), abs(yoffset)) + tolerance)
    settings = dict(searchrad=searchrad, separation=separation, tolerance=tolerance,
                    use2dhist=use2dhist, xoffset=xoffset, yoffset=yoffset,
                    fitgeometry=fitgeometry, nclip=nclip, sigma=sigma, minobj=minobj,
                    enforce_user_order=enforce_user_order, expand_refcat=expand_refcat)
    active = usable
    while True:
        poisoned = _alignment_pass(active, keys, catalogs, wcs_list, shapes, group_ids, results,
                                   max_corr, **settings)
        if not poisoned:
            return results
        log.warning("tweakreg: re-aligning without %s, which failed but entered the reference "
                    "catalogue", ", ".join(str(k[1]) for k in sorted(poisoned, key=str)))
        for i in active:
            if results[i].status == "SKIPPED":
                results[i].in_refcat = False
        active = [i for i in active if results[i].status == "COMPLETE"]
        for i in active:
            results[i] = AlignmentResult(wcs=wcs_list[i], status="SKIPPED")
        if len(set(keys[i] for i in active)) < 2:
            for i in active:
                results[i].message = "fewer than two exposures (or groups) could be aligned"
            return results


def _alignment_pass(active, keys, catalogs, wcs_list, shapes, group_ids, results, max_corr, *,
                    searchrad, separation, tolerance, use2dhist, xoffset, yoffset, fitgeometry,
                    nclip, sigma, minobj, enforce_user_order, expand_refcat):
    """One ``tweakwcs`` alignment of exposures ``active``; fills their ``results``.

    Returns the keys of failed units whose sources are in the final
    reference catalogue (empty when the pass is clean).
    """
    usable = active
    # 2. Correctors in one common tangent plane.
    ref_ra, ref_dec = _tangent_point([wcs_list[i] for i in usable], [shapes[i] for i in usable])
    correctors = {
        i: _corrector(i, catalogs[i], wcs_list[i], shapes[i], ref_ra, ref_dec,
                      None if group_ids is None else group_ids[i])
        for i in usable
    }

    # 3. tweakwcs matching and fitting; the matcher rejects implausible fits
    #    of a unit before tweakwcs applies them, so that with expand_refcat
    #    a mismatched unit never enters the reference catalogue.
    check = _FitCheck(keys, wcs_list, shapes, ref_ra, ref_dec, max_corr=max_corr,
                      tolerance=tolerance, minobj=minobj, prefix="")
    match = _IterativeMatch(searchrad=searchrad, separation=separation, tolerance=tolerance,
                            use2dhist=use2dhist, xoffset=xoffset, yoffset=yoffset,
                            fitgeometry=fitgeometry, nclip=nclip, sigma=sigma, check=check)
    try:
        refcat = align_wcs(
            [correctors[i] for i in usable],
            refcat=None,
            enforce_user_order=enforce_user_order,
            expand_refcat=expand_refcat,
            minobj=minobj,
            match=match,
            fitgeom=fitgeometry,
            nclip=nclip,
            sigma=(sigma, "rmse"),
        )
    except NotEnoughCatalogs as exc:
        for i in usable:
            results[i].message = f"alignment not possible: {exc}"
        return set()
    except MatchSourceConfusionError as exc:
        for i in usable:
            results[i].message = (
                f"source confusion in matching ({exc}); adjust tolerance and/or separation"
            )
        return set()
    in_refcat = _exposures_in(refcat)

    # 4. Collect results; revert implausible corrections (too large, RMS
    #    above tolerance, too few sources kept) per unit, should any have
    #    escaped the matcher's checks.
    too_large = set()
    for i in usable:
        info = correctors[i].meta.get("fit_info", {})
        if info.get("status") == "SUCCESS":
            motion = _max_corner_motion(wcs_list[i], correctors[i].wcs, shapes[i])
            if motion > max_corr:
                too_large.add(keys[i])
                log.warning("tweakreg: exposure %d moved by %.3g arcsec > %.3g", i, motion,
                            max_corr)
    for i in usable:
        info = correctors[i].meta.get("fit_info", {})
        status = str(info.get("status", "FAILED: not aligned"))
        result = results[i]
        result.in_refcat = i in in_refcat
        if status == "REFERENCE":
            result.status = "COMPLETE"
            result.is_reference = True
            result.rms = 0.0
            result.message = "reference exposure (defines the reference catalogue)"
        elif keys[i] in match.rejected:
            result.message = match.rejected[keys[i]]
        elif status != "SUCCESS":
            result.message = f"alignment failed: {status.removeprefix('FAILED: ')}"
        elif keys[i] in too_large:
            result.message = (
                f"fitted correction moves the footprint by more than {max_corr:.3g} arcsec; "
                "likely a source mismatch"
            )
        elif not float(info["rmse"]) <= tolerance:
            result.message = (
                f"fit RMS {float(info['rmse']):.3g} arcsec exceeds tolerance={tolerance!r}; "
                "likely a source mismatch"
            )
        elif np.count_nonzero(info["fitmask"]) < minobj:
            result.message = (
                f"fit kept {np.count_nonzero(info['fitmask'])} of "
                f"{int(info.get('nmatches', 0))} matches after clipping, fewer than "
                f"minobj={minobj}"
            )
        else:
            result.wcs = correctors[i].wcs
            result.status = "COMPLETE"
            _fill_fit(result, info, wcs_list[i], shapes[i])
            result.message = (
                f"{fitgeometry} fit of {result.nmatch} matches: shift "
                f"({result.shift[0]:+.4f}, {result.shift[1]:+.4f}) arcsec, rotation "
                f"{result.rotation:+.5f} deg, scale {result.scale:.6f}, RMS {result.rms:.4f} pix"
            )
        if result.status == "SKIPPED":
            log.warning("tweakreg: exposure %d SKIPPED: %s", i, result.message)
    return {keys[i] for i in usable if results[i].status == "SKIPPED" and results[i].in_refcat}


# --------------------------------------------------------------------------
# Exposure groups
# --------------------------------------------------------------------------


def exposure_group_id(meta):
    """Exposure group of a JWST exposure from its header keywords, as JWST builds ``group_id``.

    The detectors of one exposure share program, observation, visit, visit
    group, sequence, activity and exposure numbers, so they get one group
    and `align_exposures` moves them as a rigid unit.

    Parameters
    ----------
    meta : mapping
        Primary-header keywords (``PROGRAM``, ``OBSERVTN``, ``VISIT``,
        ``VISITGRP``, ``SEQ_ID``, ``ACT_ID``, ``EXPOSURE``).

    Returns
    -------
    str or None
        ``'jw{program}{obs}{visit}_{visitgrp}{seq}{act}_{exposure}'``; None
        when any keyword is missing or blank (the exposure is then aligned
        on its own).
    """
    values = [meta.get(k) for k in GROUP_KEYWORDS]
    if any(v is None or str(v).strip() == "" for v in values):
        return None
    program, obs, visit, visitgrp, seq, act, exposure = (str(v).strip() for v in values)
    return f"jw{program}{obs}{visit}_{visitgrp}{seq}{act}_{exposure}"


# --------------------------------------------------------------------------
# Absolute astrometry
# --------------------------------------------------------------------------


def reference_radec(table):
    """RA and Dec (degrees) of a reference catalog table.

    Parameters
    ----------
    table : astropy.table.Table
        With columns named ``RA`` and ``Dec`` in any case (e.g. Gaia's
        ``ra``, ``dec``), in degrees or with angle units.

    Returns
    -------
    ra, dec : ndarray
        Finite positions only.

    Raises
    ------
    ValueError
        When either column is missing.
    """
    lower = {c.lower(): c for c in table.colnames}
    if "ra" not in lower or "dec" not in lower:
        raise ValueError(f"abs_refcat needs RA and Dec columns, found {table.colnames}")
    out = []
    for name in ("ra", "dec"):
        col = table[lower[name]]
        if isinstance(col, u.Quantity):
            values = col.to_value(u.deg)
        elif getattr(col, "unit", None) is not None:
            values = col.quantity.to_value(u.deg)
        else:
            values = np.asarray(col)
        out.append(np.asarray(values, dtype=float))
    ra, dec = out
    good = np.isfinite(ra) & np.isfinite(dec)
    return ra[good], dec[good]


@dataclass
class AbsoluteAlignment:
    """Outcome of `align_to_reference_catalog`: one rigid fit of all exposures.

    Attributes
    ----------
    wcs_list : list of gwcs.WCS
        Corrected WCSs, in input order; the input WCSs when skipped.
    status : str
        ``'COMPLETE'`` or ``'SKIPPED'``.
    shift : tuple of float
        Fitted ``(xi, eta)`` shift, arcsec (east, north).
    rotation : float
        Fitted rotation, degrees (convention of `AlignmentResult`).
    scale : float
        Fitted scale factor.
    rms : float
        RMS of the fit residuals, arcsec; NaN when skipped.
    nmatch : int
        Sources matched to the reference catalog.
    nref : int
        Reference sources within the field (footprint padded by
        ``abs_searchrad``).
    message : str
        Summary, or the reason for skipping.
    """

    wcs_list: list
    status: str
    shift: tuple = (0.0, 0.0)
    rotation: float = 0.0
    scale: float = 1.0
    rms: float = math.nan
    nmatch: int = 0
    nref: int = 0
    message: str = ""


def align_to_reference_catalog(
    catalogs,
    wcs_list,
    shapes,
    ref_ra,
    ref_dec,
    *,
    abs_minobj=15,
    abs_searchrad=6.0,
    abs_use2dhist=True,
    abs_separation=0.1,
    abs_tolerance=0.7,
    abs_fitgeometry="rshift",
    abs_nclip=3,
    abs_sigma=3.0,
):
    """Align a (relatively aligned) set of exposures as one rigid unit to a reference catalog.

    Parameters
    ----------
    catalogs : list of astropy.table.Table
        One per exposure, zero-based pixel columns ``x``, ``y``.
    wcs_list : list of gwcs.WCS
        The exposures' WCSs after relative alignment; not modified.
    shapes : list of tuple of int
        ``(ny, nx)`` of each exposure.
    ref_ra, ref_dec : array-like
        Reference source positions (e.g. Gaia), degrees; see `reference_radec`.
    abs_minobj : int
        Fewest reference sources in the field, fewest matches, and fewest
        matches kept after clipping.
    abs_searchrad : float
        Search radius of the initial-offset 2-D histogram, arcsec; also
        pads the footprint when selecting reference sources.
    abs_use2dhist : bool
        Find the initial offset with a 2-D histogram; otherwise start
        from zero offset (JWST has no ``abs_xoffset``).
    abs_separation : float
        Sources closer than this (arcsec) count as one: the same star seen
        in overlapping exposures collapses to one position.
    abs_tolerance : float
        Matching tolerance, arcsec; a fit whose RMS exceeds it is rejected.
    abs_fitgeometry : {'shift', 'rshift', 'rscale', 'general'}
        Allowed correction of the whole set.
    abs_nclip : int
        Sigma-clipping iterations of the fit.
    abs_sigma : float
        Clipping limit in units of the fit RMS.

    Returns
    -------
    AbsoluteAlignment
        One correction for all exposures; ``status='SKIPPED'`` with the
        input WCSs and the reason when the fit is not possible or not
        plausible.

    Raises
    ------
    ValueError
        For an invalid parameter, mismatched lengths, or ``ref_ra`` and
        ``ref_dec`` of different lengths.

    Notes
    -----
    Stages, as in JWST ``tweakreg`` after relative alignment:

    1. Reference sources within the combined footprint (padded by
       ``abs_searchrad``) are selected; fewer than ``abs_minobj`` skips.
    2. All exposures form one ``tweakwcs`` group, so their catalogs are
       merged and matched together (duplicates within
       ``abs_separation`` collapse) to the reference catalog with the
       iterative matcher of `align_exposures`, using the ``abs_*``
       parameters.
    3. One ``abs_fitgeometry`` fit corrects every WCS.  As for relative
       alignment, a fit moving a detector corner by more than
       ``2 * (abs_searchrad + abs_tolerance)`` arcsec, with RMS above
       ``abs_tolerance``, or keeping fewer than ``abs_minobj`` matches is
       rejected and the input WCSs kept.
    """
    _validate_inputs(catalogs, wcs_list, shapes)
    _validate_match_parameters("abs_", abs_searchrad, abs_separation, abs_tolerance,
                               abs_fitgeometry, abs_nclip, abs_sigma, abs_minobj)
    ref_ra = np.atleast_1d(np.asarray(ref_ra, dtype=float))
    ref_dec = np.atleast_1d(np.asarray(ref_dec, dtype=float))
    if ref_ra.shape != ref_dec.shape:
        raise ValueError(f"ref_ra and ref_dec must have equal lengths, got {ref_ra.size} and "
                         f"{ref_dec.size}")
    fitgeometry = abs_fitgeometry.lower()
    result = AbsoluteAlignment(wcs_list=list(wcs_list), status="SKIPPED")
    n = len(catalogs)
    if n == 0:
        result.message = "no exposures to align"
        return result
    nsrc = sum(len(c) for c in catalogs)
    if nsrc < abs_minobj:
        result.message = f"exposures have {nsrc} sources, fewer than abs_minobj={abs_minobj}"
        return result

    # 1. Reference sources in the field.
    tp_ra, tp_dec = _tangent_point(wcs_list, shapes)
    corners = np.vstack([footprint(w, s) for w, s in zip(wcs_list, shapes)])
    cxi, ceta = (3600.0 * v for v in to_tangent_plane(corners[:, 0], corners[:, 1], tp_ra, tp_dec))
    rxi, reta = (3600.0 * v for v in to_tangent_plane(ref_ra, ref_dec, tp_ra, tp_dec))
    near = ((rxi >= cxi.min() - abs_searchrad) & (rxi <= cxi.max() + abs_searchrad)
            & (reta >= ceta.min() - abs_searchrad) & (reta <= ceta.max() + abs_searchrad))
    result.nref = int(np.count_nonzero(near))
    if result.nref < abs_minobj:
        result.message = (
            f"reference catalog has {result.nref} sources in the field, fewer than "
            f"abs_minobj={abs_minobj}"
        )
        return result
    refcat = Table([ref_ra[near], ref_dec[near]], names=("RA", "DEC"), meta={"name": "abs_refcat"})

    # 2. One group, matched to the reference catalog.
    correctors = [_corrector(i, catalogs[i], wcs_list[i], shapes[i], tp_ra, tp_dec, "abs_refcat")
                  for i in range(n)]
    max_corr = 2.0 * (abs_searchrad + abs_tolerance)
    keys = ["abs_refcat"] * n
    check = _FitCheck(keys, wcs_list, shapes, tp_ra, tp_dec, max_corr=max_corr,
                      tolerance=abs_tolerance, minobj=abs_minobj, prefix="abs_")
    match = _IterativeMatch(searchrad=abs_searchrad, separation=abs_separation,
                            tolerance=abs_tolerance, use2dhist=abs_use2dhist, xoffset=0.0,
                            yoffset=0.0, fitgeometry=fitgeometry, nclip=abs_nclip,
                            sigma=abs_sigma, check=check)
    try:
        align_wcs(correctors, refcat=refcat, enforce_user_order=True, expand_refcat=False,
                  minobj=abs_minobj, match=match, fitgeom=fitgeometry, nclip=abs_nclip,
                  sigma=(abs_sigma, "rmse"))
    except (NotEnoughCatalogs, MatchSourceConfusionError) as exc:
        result.message = f"alignment to the reference catalog not possible: {exc}"
        return result

    # 3. Result, with the sanity checks.
    info = next((c.meta["fit_info"] for c in correctors
                 if c.meta.get("fit_info", {}).get("status") == "SUCCESS"), None)
    if "abs_refcat" in match.rejected:
        result.message = match.rejected["abs_refcat"]
        return result
    if info is None:
        status = str(correctors[0].meta.get("fit_info", {}).get("status", "FAILED: not aligned"))
        result.message = f"alignment to the reference catalog failed: {status.removeprefix('FAILED: ')}"
        return result
    motion = max(_max_corner_motion(w, c.wcs, s) for w, c, s in zip(wcs_list, correctors, shapes))
    kept = int(np.count_nonzero(info["fitmask"]))
    if motion > max_corr:
        result.message = (f"fitted correction moves the footprint by {motion:.3g} arcsec, more "
                          f"than {max_corr:.3g} arcsec; likely a source mismatch")
    elif not float(info["rmse"]) <= abs_tolerance:
        result.message = (f"fit RMS {float(info['rmse']):.3g} arcsec exceeds "
                          f"abs_tolerance={abs_tolerance!r}; likely a source mismatch")
    elif kept < abs_minobj:
        result.message = (f"fit kept {kept} of {int(info.get('nmatches', 0))} matches after "
                          f"clipping, fewer than abs_minobj={abs_minobj}")
    else:
        result.wcs_list = [c.wcs for c in correctors]
        result.status = "COMPLETE"
        result.shift = (float(info["shift"][0]), float(info["shift"][1]))
        result.rotation = float(info["proper_rot"])
        result.scale = float(info["<scale>"])
        result.rms = float(info["rmse"])
        result.nmatch = int(info.get("nmatches", kept))
        result.message = (
            f"{fitgeometry} fit of {result.nmatch} matches to {result.nref} reference sources: "
            f"shift ({result.shift[0]:+.4f}, {result.shift[1]:+.4f}) arcsec, rotation "
            f"{result.rotation:+.5f} deg, scale {result.scale:.6f}, RMS {result.rms:.4f} arcsec"
        )
    return result
