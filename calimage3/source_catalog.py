"""Source detection and photometry on a resampled mosaic (the JWST ``source_catalog`` step).

Arrays and a WCS (the ``gwcs``, or an exact FITS equivalent) come in; an
`astropy.table.QTable` with one row per source and an ``int32`` segmentation
image come out.  Nothing here reads or writes files.

The stages follow the JWST ``SourceCatalogStep`` on an ``_i2d`` product:

1. Coverage mask: pixels whose ``data`` is not finite or whose ``wht`` is 0
   (or not finite) take no part in anything.
2. 2D background and background RMS with `photutils.background.Background2D`
   (sigma-clipped median in ``bkg_boxsize`` boxes, 3x3 median filter); the
   background is subtracted.
3. The background-subtracted image is convolved with a normalised Gaussian
   of FWHM ``kernel_fwhm`` pixels.
4. Segmentation: ``detect_sources`` on the convolved image with threshold
   ``snr_threshold`` times the background RMS of the *unconvolved* image
   (as JWST does, so the effective threshold in the smoothed image is
   higher), ``npixels`` connected pixels (8-connectivity); optionally
   deblending with 32 exponential levels and contrast 0.001.
5. Segment properties with `photutils.segmentation.SourceCatalog` (centroids
   and shapes from the convolved image; isophotal flux from the data).
6. Aperture photometry in three circular apertures enclosing
   ``aperture_ee1/2/3`` percent of a point source's energy, after a local
   background (sigma-clipped median in an annulus); the aperture-corrected
   total flux is ``aperture correction x flux`` of the largest aperture.
7. Concentration indices, ``is_extended``, DAOFind sharpness and roundness,
   nearest neighbours, AB (and Vega) magnitudes.

Fluxes are in Jy: the MJy/sr surface brightness times ``1e6 * pixar_sr``.

Aperture radii and corrections
------------------------------
As in JWST, from the APCORR reference file when the user gives one
(``override_apcorr``; rows chosen by `calimage3.reference_data`:
``apcorr_table``, radii divided by ``pixel_scale_ratio``).  Without it:
an explicit Gaussian ``psf_fwhm``, or, by default, the encircled-energy
curve of the mosaic's own bright, isolated, unsaturated point sources
(`psf_encircled_energy`), built to be right for real JWST PSFs --
undersampled, spiky, with far wings and saturated (NaN) cores:

* the FWHM comes from the stars' pixel values against their distance to the
  centroid, which samples the pixel-integrated PSF at all pixel phases
  (`pixel_profile_fwhm`), not from segment moments (which the wings and
  spikes inflate) nor from the half-light radius of a truncated curve;
* stars with a masked pixel (a saturated NaN core) within 3 FWHM, off the
  concentration locus (blends, galaxies, cratered saturated stars) or under
  the wings of bright neighbours (`_neighbour_light`) are left out;
* the curves of growth reach 8 FWHM (at least 12 pixels); each star's
  residual background is removed; the energy beyond is extrapolated with
  the ``1 / r`` deficit of a diffraction wing (`_fit_limit`), so the
  correction is to the total flux, not to the flux within a radius;
* the corrections are measured as the catalog measures fluxes (the local
  background annulus sits on the PSF wings), and the bootstrap uncertainty
  of the total is recorded.

With too few such stars, or a total uncertain by more than 5 %, no
correction is made up: ``aper_total_*`` are NaN and
``meta['aperture_params']['method']`` is ``'refused'`` with the reason in
``note``.  ``meta['psf_curve']`` holds the curve and the stars used.

(The earlier self-calibration normalised the curve at 3x an FWHM that it
took from the half-light radius of that same truncated curve, with the
local background from 3-5 FWHM: on a spiky, undersampled JWST PSF the
normalisation radius shrank with each pass, the wings and spikes beyond it
and in the annulus were lost, and ``100 / ee`` was applied as if the curve
held all the energy -- radii and totals far too small.)
"""

import logging
import warnings
from typing import NamedTuple

import numpy as np
import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.stats import SigmaClip, gaussian_fwhm_to_sigma
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning
from photutils.aperture import CircularAnnulus
from photutils.background import Background2D, MedianBackground
from photutils.geometry import circular_overlap_grid
from photutils.segmentation import SourceCatalog, deblend_sources, detect_sources
from photutils.utils.exceptions import NoDetectionsWarning
from scipy import ndimage
from scipy.spatial import KDTree

from .background import background_images
from .reference_data import apcorr_aperture_params

__all__ = [
    "ApertureParams",
    "EncircledEnergy",
    "PsfCurve",
    "psf_encircled_energy",
    "pixel_profile_fwhm",
    "make_source_catalog",
    "detect_segments",
    "smooth",
    "encircled_energy_radii",
    "gaussian_ee_radii",
    "select_psf_stars",
    "flux_to_abmag",
]

log = logging.getLogger(__name__)

# Fixed settings of the JWST step (not user parameters there either).
_CONNECTIVITY = 8
_DEBLEND_NLEVELS = 32
_DEBLEND_CONTRAST = 0.001
_DEBLEND_MODE = "exponential"
_BKG_FILTER_SIZE = (3, 3)
_SIGMA_CLIP = 3.0

# Self-calibrated aperture radii: normalisation radius and background annulus
# in units of the PSF FWHM, radius grid of the curve of growth (pixels).
_NORM_RADIUS_FWHM = 3.0
_BKG_OUTER_FWHM = 5.0
_MIN_ANNULUS_WIDTH = 3.0
_EE_RADIUS_STEP = 0.05
# PSF-star selection: minimum detection significance and the half-width of
# the stellar locus in FWHM (fractional).
_PSF_STAR_MIN_SNR = 30.0
_PSF_LOCUS_TOL = 0.12
# At most this many (the most significant) stars enter the curve of growth.
_MAX_PSF_STARS = 100
# Curves of growth of the mosaic's stars reach max(15, 12 FWHM) pixels, at
# most 60; a PSF star has no other source brighter than this fraction of
# its flux within that radius.
_OUTER_RADIUS_FWHM = 8.0
_MIN_OUTER_RADIUS = 12.0
_MAX_OUTER_RADIUS = 60.0
_NEIGHBOUR_LIGHT = 0.01
# A PSF star's core pixels keep at least this fraction of the drizzle weight
# around it (no outlier-flagged or saturated pixels in the core).
_MIN_CORE_WEIGHT = 0.75
# Bootstrap resamplings of the PSF stars, and the largest relative
# uncertainty of the extrapolated total flux that is accepted.
_N_BOOTSTRAP = 100
_MAX_LIMIT_ERROR = 0.05
# Flux of a source next to pixels without coverage (a saturated star: its
# segment misses the core) counts this many times in `_neighbour_light`.
_SATURATED_FLUX_FACTOR = 3.0
# The residual background of a PSF star comes from its curve of growth
# between this fraction of the outer radius and the outer radius.
_BKG_FROM_OUTER = 0.6
# Fractional half-width of the stellar locus in concentration.
_CONCENTRATION_TOL = 0.06


class ApertureParams(NamedTuple):
    """Aperture radii and corrections used for the aperture photometry.

    Attributes
    ----------
    aperture_ee : ndarray of int, shape (3,)
        Encircled energies (percent) of the three apertures.
    aperture_radii : ndarray of float, shape (3,)
        Radii of the apertures, mosaic pixels.
    aperture_corrections : ndarray of float, shape (3,)
        Factor turning the flux within each aperture into the total flux of
        a point source (``100 / aperture_ee`` for a curve normalised to 1).
    bkg_aperture_inner_radius, bkg_aperture_outer_radius : float
        Radii of the local-background annulus, mosaic pixels.
    method : str
        ``'apcorr_table'`` (an APCORR reference file), ``'psf_fwhm'``
        (Gaussian of the given FWHM), ``'psf_stars'`` (curve of growth
        measured on the mosaic's stars, `psf_encircled_energy`) or
        ``'refused'`` (too few usable stars: radii of a Gaussian of FWHM
        ``kernel_fwhm``, corrections NaN, so ``aper_total_flux`` is NaN).
    psf_fwhm : float
        FWHM (pixels) of the PSF behind the radii: the Gaussian FWHM for
        ``'psf_fwhm'``/``'kernel_fwhm'``; for ``'psf_stars'`` the FWHM that
        set the normalisation radius (twice the half-light radius of a
        first curve); NaN for ``'apcorr_table'``.
    n_psf_stars : int
        Number of stars whose curves of growth were combined (0 unless
        ``method == 'psf_stars'``).
    note : str
        Where the values come from (the APCORR file and rows) or why no
        correction could be measured.
    """

    aperture_ee: np.ndarray
    aperture_radii: np.ndarray
    aperture_corrections: np.ndarray
    bkg_aperture_inner_radius: float
    bkg_aperture_outer_radius: float
    method: str
    psf_fwhm: float
    n_psf_stars: int
    note: str = ""

    def as_dict(self):
        """Plain-``dict`` form (lists and floats) for table metadata."""
        out = {}
        for key, value in self._asdict().items():
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
        return out


class EncircledEnergy(NamedTuple):
    """Encircled-energy curve measured from stars, and the radii it gives.

    Attributes
    ----------
    radii : ndarray of float, shape (n_ee,)
        Radius (pixels) enclosing each requested encircled energy.
    radius_grid : ndarray of float, shape (n_r,)
        Radii (pixels) at which the curve is sampled.
    curve : ndarray of float, shape (n_r,)
        Weighted median over stars of the background-subtracted curve of growth
        normalised to 1 at ``norm_radius``; made non-decreasing.
    n_stars : int
        Number of stars whose curves were combined.
    """

    radii: np.ndarray
    radius_grid: np.ndarray
    curve: np.ndarray
    n_stars: int


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_positive(name, value, integer=False):
    ok = np.isscalar(value) and np.isfinite(value) and value > 0
    if integer:
        ok = ok and float(value) == int(value)
    if not ok:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _validate_aperture_ee(aperture_ee):
    ee = np.asarray(aperture_ee, dtype=float)
    if ee.shape != (3,) or not np.all(np.isfinite(ee)):
        raise ValueError(f"aperture_ee1/2/3 must be three finite numbers, got {aperture_ee!r}")
    if np.any(ee != np.round(ee)):
        raise ValueError(f"aperture_ee1/2/3 must be integers (percent), got {aperture_ee!r}")
    if np.any((ee <= 0) | (ee >= 100)):
        raise ValueError(f"aperture_ee1/2/3 must lie between 0 and 100 percent, got {aperture_ee!r}")
    if not np.all(np.diff(ee) > 0):
        raise ValueError(
            f"aperture_ee1 < aperture_ee2 < aperture_ee3 is required, got {aperture_ee!r}"
        )
    return ee.astype(int)


def _validate_image(name, array, shape, copy=True):
    """``array`` as a float64 copy (``copy=False``: as it is), after a shape check."""
    if array is None:
        return None
    arr = np.asarray(array)
    if arr.shape != shape:
        raise ValueError(f"{name} must have the shape of data {shape}, got {arr.shape}")
    return arr.astype(np.float64) if copy else arr


# --------------------------------------------------------------------------
# Magnitudes
# --------------------------------------------------------------------------


def flux_to_abmag(flux, flux_err):
    """AB magnitude and its error from a flux in Jy.

    Parameters
    ----------
    flux, flux_err : Quantity or ndarray
        Flux and flux error, Jy (plain arrays are taken as Jy).

    Returns
    -------
    abmag, abmag_err : ndarray of float
        ``-2.5 log10(flux / Jy) + 8.9`` and ``2.5 log10(1 + flux_err / flux)``
        as JWST computes them; NaN where ``flux`` is not positive.
    """
    f = np.atleast_1d(u.Quantity(flux, u.Jy).value).astype(float)
    fe = np.atleast_1d(u.Quantity(flux_err, u.Jy).value).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        abmag = -2.5 * np.log10(f) + 8.9
        abmag_err = 2.5 * np.log10(1.0 + fe / f)
    bad = ~(f > 0)
    abmag[bad] = np.nan
    abmag_err[bad] = np.nan
    return abmag, abmag_err


# --------------------------------------------------------------------------
# Background, convolution, detection, deblending
# --------------------------------------------------------------------------


def _background(data, box_size, coverage_mask):
    """Background2D with the JWST settings; one box over the image if meshes fail."""
    kwargs = dict(
        filter_size=_BKG_FILTER_SIZE,
        coverage_mask=coverage_mask,
        sigma_clip=SigmaClip(sigma=_SIGMA_CLIP),
        bkg_estimator=MedianBackground(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        try:
            return Background2D(data, box_size, **kwargs)
        except ValueError:
            log.info("Background could not be estimated in %s boxes; using one box", box_size)
            return Background2D(data, data.shape, exclude_percentile=100.0, **kwargs)


def _gaussian_profile(fwhm):
    """1-D factor of astropy's ``Gaussian2DKernel`` for ``fwhm``, normalised to unit sum.

    That kernel samples the Gaussian at pixel centres on an odd
    ``ceil(8 sigma)`` grid; it is the outer product of this profile with
    itself.
    """
    sigma = fwhm * gaussian_fwhm_to_sigma
    size = int(np.ceil(8.0 * sigma))
    size += 1 - size % 2
    x = np.arange(size, dtype=float) - size // 2
    profile = np.exp(-0.5 * (x / sigma) ** 2)
    return profile / profile.sum()


def smooth(data, fwhm, mask=None, *, threads=1):
    """``data`` convolved with a normalised Gaussian, masked pixels interpolated over.

    The result of ``astropy.convolution.convolve(data, kernel, mask=mask,
    normalize_kernel=True)`` with ``kernel`` the integral-normalised
    ``Gaussian2DKernel`` of ``fwhm`` (JWST's detection kernel): each pixel
    is the kernel-weighted mean of the usable pixels around it, where
    masked and non-finite pixels are left out and pixels beyond the edges
    count as 0.  The kernel is separable, so two 1-D passes replace the 2-D
    sum; the values agree to rounding.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
    fwhm : float
        FWHM of the Gaussian, pixels.
    mask : ndarray of bool or None
        True where a pixel must be left out.
    threads : int
        With 2 or more, the data's and the weights' convolutions run at
        once (scipy.ndimage releases the GIL); the result is the same.

    Returns
    -------
    ndarray of float64, shape (ny, nx)
        NaN where no usable pixel is within the kernel.
    """
    profile = _gaussian_profile(fwhm)
    image = np.array(data, dtype=float)  # a copy, convolved in place
    bad = ~np.isfinite(image)
    if mask is not None:
        bad |= mask

    def separable(values, outside):
        # in place: scipy reads each line into a buffer before it writes the line back
        ndimage.correlate1d(values, profile, axis=0, output=values, mode="constant", cval=outside)
        return ndimage.correlate1d(values, profile, axis=1, output=values, mode="constant", cval=outside)

    if not bad.any():
        return separable(image, 0.0)
    image[bad] = 0.0
    usable = (~bad).astype(float)
    del bad
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            weighing = pool.submit(separable, usable, 1.0)
            total = separable(image, 0.0)
            weight = weighing.result()
    else:
        total = separable(image, 0.0)
        weight = separable(usable, 1.0)  # beyond the edges counts as usable
    covered = weight > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(total, weight, out=total, where=covered)
    total[~covered] = np.nan
    return total


def _multi_peak_labels(image, segm, min_area):
    """Labels of the segments (of at least ``min_area`` pixels) that might deblend.

    A segment is left out when exactly one of its pixels is at least as
    high as each of its 8 neighbours within the segment.  Every regional
    maximum of ``image`` on the segment (a plateau whose neighbours in the
    segment are all lower) holds such a pixel, and every connected part of
    the segment above any threshold holds a regional maximum, so such a
    segment never splits into two parts at any threshold: photutils'
    multi-thresholding finds no second marker in it and leaves it as it is.
    Segments with non-finite values are kept (photutils decides).
    """
    keep = []
    for label, slc, area in zip(segm.labels, segm.slices, segm.areas):
        if area < min_area:
            continue
        inside = segm.data[slc] == label
        cut = image[slc]
        if not np.all(np.isfinite(cut[inside])):
            keep.append(label)
            continue
        values = np.where(inside, cut, -np.inf)
        peak = ndimage.maximum_filter(values, size=3, mode="constant", cval=-np.inf)
        if np.count_nonzero(inside & (values >= peak)) > 1:
            keep.append(label)
    return np.asarray(keep, dtype=np.int64)


def _deblend(convolved, segm, n_pixels):
    """Multi-threshold + watershed deblending of every segment (photutils, as jwst).

    Only segments with more than one peak (`_multi_peak_labels`) are handed
    to photutils -- in ascending label order, as photutils goes through all
    labels -- the others it would leave unchanged, so the result is the
    same at a fraction of the cost (most segments of a mosaic have one peak).
    """
    labels = _multi_peak_labels(convolved, segm, 2 * n_pixels)
    if labels.size == 0:
        return segm
    return deblend_sources(
        convolved, segm, n_pixels, labels=labels, n_levels=_DEBLEND_NLEVELS,
        contrast=_DEBLEND_CONTRAST, mode=_DEBLEND_MODE, connectivity=_CONNECTIVITY,
        relabel=True, progress_bar=False,
    )


def detect_segments(data, threshold, *, kernel_fwhm=2.0, npixels=5, deblend=False, mask=None, threads=1):
    """Convolve, threshold and (optionally) deblend a background-subtracted image.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Background-subtracted image (any surface-brightness unit).
    threshold : float or ndarray, shape (ny, nx)
        Detection level per pixel in the unit of ``data`` (JWST: the
        background RMS times ``snr_threshold``), applied to the convolved
        image.
    kernel_fwhm : float
        FWHM (pixels) of the normalised Gaussian smoothing kernel.
    npixels : int
        Minimum number of 8-connected pixels above ``threshold``.
    deblend : bool
        Deblend overlapping sources (32 exponential levels, contrast 0.001).
    mask : ndarray of bool or None
        True where a pixel has no coverage; such pixels join no source.
    threads : int
        Threads for the convolution (`smooth`).

    Returns
    -------
    segm : photutils.segmentation.SegmentationImage or None
        Labels 1..n consecutive, 0 = background; None when nothing is found.
    convolved : ndarray, shape (ny, nx)
        The convolved image (masked pixels interpolated over by `smooth`,
        then set to 0).
    """
    _check_positive("kernel_fwhm", kernel_fwhm)
    _check_positive("npixels", npixels, integer=True)
    npixels = int(npixels)
    convolved = smooth(data, kernel_fwhm, mask, threads=threads)
    if mask is not None:
        convolved[mask] = 0.0
    convolved = np.nan_to_num(convolved, nan=0.0, copy=False)
    if mask is not None and mask.all():
        return None, convolved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        segm = detect_sources(convolved, threshold, npixels, connectivity=_CONNECTIVITY, mask=mask)
    if segm is None:
        return None, convolved
    if deblend:
        segm = _deblend(convolved, segm, npixels)
    return segm, convolved


# --------------------------------------------------------------------------
# Encircled energy and aperture parameters
# --------------------------------------------------------------------------


def gaussian_ee_radii(fwhm, aperture_ee):
    """Radii enclosing given encircled energies of a circular Gaussian PSF.

    Parameters
    ----------
    fwhm : float
        FWHM of the Gaussian, pixels.
    aperture_ee : array_like of float
        Encircled energies in percent (0 < ee < 100).

    Returns
    -------
    ndarray of float
        ``sigma * sqrt(-2 ln(1 - ee / 100))``, pixels.
    """
    _check_positive("fwhm", fwhm)
    ee = np.asarray(aperture_ee, dtype=float) / 100.0
    if np.any((ee <= 0) | (ee >= 1)):
        raise ValueError(f"aperture_ee must lie between 0 and 100 percent, got {aperture_ee!r}")
    return fwhm * gaussian_fwhm_to_sigma * np.sqrt(-2.0 * np.log1p(-ee))


def _local_background(data, positions, r_in, r_out, mask=None):
    """Sigma-clipped median, its standard error and the clipped std in annuli.

    One Python loop over sources (not pixels), as the annuli differ in size.
    """
    n = len(positions)
    med = np.full(n, np.nan)
    err = np.full(n, np.nan)
    std = np.full(n, np.nan)
    if n == 0:
        return med, err, std
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    clip = SigmaClip(sigma=_SIGMA_CLIP)
    annuli = CircularAnnulus(positions, r_in, r_out).to_mask(method="center")
    if not isinstance(annuli, list):
        annuli = [annuli]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        for i, amask in enumerate(annuli):
            # Masked pixels left out here, non-finite ones below (the same
            # values, in the same order, as NaN-filling a full-image copy).
            vals = amask.get_values(data, mask=mask)
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                continue
            vals = clip(vals, masked=False)
            med[i] = np.median(vals)
            std[i] = np.std(vals)
            err[i] = np.sqrt(np.pi / (2.0 * vals.size)) * std[i]
    return med, err, std


def _aperture_sums(data, positions, radii, error=None, mask=None):
    """Exact circular-aperture sums (n_src, n_r) and errors; NaN if a masked pixel is inside.

    The same numbers as ``aperture_photometry`` with one `CircularAperture`
    per radius (method ``'exact'``; masked pixels of ``data`` and ``error``
    count as 0; an aperture with a masked pixel centre inside it, the
    ``'center'`` method, gives NaN; no overlap with the image gives NaN),
    computed with the same `photutils.geometry.circular_overlap_grid` calls,
    bounding boxes and pixel selections, so the sums agree bit for bit.
    Without the per-aperture ``ApertureMask``/``BoundingBox`` objects and
    full-image copies it is several times faster for the hundreds of radii
    of a curve of growth.  One cutout (the largest aperture's box) per
    source serves all radii; a source whose cutout holds no masked pixel
    needs no coverage test.
    """
    positions = np.atleast_2d(np.asarray(positions, dtype=float))
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    n, nr = positions.shape[0], radii.size
    sums = np.full((n, nr), np.nan)
    errs = np.full((n, nr), np.nan)
    if n == 0 or nr == 0:
        return sums, errs
    ny, nx = data.shape
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    x = positions[:, 0][:, None]
    y = positions[:, 1][:, None]
    # photutils: BoundingBox.from_float(x - r, x + r, y - r, y + r) and the
    # pixel edges relative to the centre, with the same float operations.
    ixmin = np.floor((x - radii) + 0.5)
    ixmax = np.ceil((x + radii) + 0.5)
    iymin = np.floor((y - radii) + 0.5)
    iymax = np.ceil((y + radii) + 0.5)
    finite = np.isfinite(ixmin) & np.isfinite(ixmax) & np.isfinite(iymin) & np.isfinite(iymax)
    edges = np.stack([(ixmin - 0.5) - x, (ixmax - 0.5) - x, (iymin - 0.5) - y,
                      (iymax - 0.5) - y], axis=-1).tolist()
    boxes = np.stack([np.where(finite, b, 0) for b in (ixmin, ixmax, iymin, iymax)],
                     axis=-1).astype(np.int64).tolist()
    finite = finite.tolist()
    r_list = radii.tolist()
    big = int(np.argmax(radii))  # its box contains the boxes of all the other radii
    def on_image(i, k):  # the box of aperture k of source i is finite and overlaps the image
        x0, x1, y0, y1 = boxes[i][k]
        return finite[i][k] and x0 < nx and y0 < ny and x1 > 0 and y1 > 0

    for i in range(n):
        if not on_image(i, big):
            continue
        bx0, bx1, by0, by1 = boxes[i][big]
        cx0, cy0 = max(bx0, 0), max(by0, 0)
        cut = (slice(cy0, min(by1, ny)), slice(cx0, min(bx1, nx)))
        dcut = data[cut]
        ecut = None if error is None else error[cut]
        mcut = None if mask is None else mask[cut]
        if mcut is not None and mcut.any():
            dcut = np.where(mcut, 0.0, dcut)
            ecut = None if ecut is None else np.where(mcut, 0.0, ecut)
        else:
            mcut = None
        var_cut = None if ecut is None else ecut**2
        for k in range(nr):
            if not on_image(i, k):
                continue
            x0, x1, y0, y1 = boxes[i][k]
            ex0, ex1, ey0, ey1 = edges[i][k]
            r = r_list[k]
            small = (slice(max(-y0, 0), min(y1 - y0, ny - y0)),
                     slice(max(-x0, 0), min(x1 - x0, nx - x0)))
            rel = (slice(max(y0, 0) - cy0, min(y1, ny) - cy0),
                   slice(max(x0, 0) - cx0, min(x1, nx) - cx0))
            weights = circular_overlap_grid(ex0, ex1, ey0, ey1, x1 - x0, y1 - y0, r, 1, 1)[small]
            good = weights > 0
            if mcut is not None:
                centre = circular_overlap_grid(ex0, ex1, ey0, ey1, x1 - x0, y1 - y0, r, 0, 1)
                if np.any(mcut[rel][centre[small] > 0]):
                    continue
            sums[i, k] = (dcut[rel] * weights)[good].sum()
            if var_cut is not None:
                errs[i, k] = np.sqrt((var_cut[rel] * weights)[good].sum())
    return sums, errs


def _radius_at(curve, grid, fraction):
    """Radius where a non-decreasing sampled curve first reaches ``fraction`` (linear)."""
    j = int(np.searchsorted(curve, fraction))
    if j == 0:
        return float(grid[0] * fraction / curve[0]) if curve[0] > 0 else float(grid[0])
    if j >= grid.size:
        return float(grid[-1])
    return float(grid[j - 1] + (fraction - curve[j - 1]) / (curve[j] - curve[j - 1])
                 * (grid[j] - grid[j - 1]))


def _weighted_median(values, weights):
    """Weighted median along axis 0 of ``values`` (n, m) with weights (n,)."""
    order = np.argsort(values, axis=0)
    sorted_vals = np.take_along_axis(values, order, axis=0)
    cum = np.cumsum(weights[order], axis=0)
    half = 0.5 * cum[-1]
    idx = np.argmax(cum >= half[None, :], axis=0)
    return sorted_vals[idx, np.arange(values.shape[1])]


def encircled_energy_radii(
    data, positions, aperture_ee, *, norm_radius, bkg_inner=None, bkg_outer=None,
    radius_step=_EE_RADIUS_STEP, mask=None,
):
    """Radii enclosing given fractions of a point source's energy, measured on stars.

    The curve of growth of each star (exact circular apertures every
    ``radius_step`` pixels out to ``norm_radius``, minus the sigma-clipped
    median of the ``bkg_inner``-``bkg_outer`` annulus times the aperture
    area) is divided by its value at ``norm_radius``.  The curves are
    combined by a weighted median at each radius, weights ``(flux /
    noise)**2`` of each star's normalising flux (equal weights when the
    annuli show no noise); the result, made non-decreasing, is interpolated
    linearly for each energy.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Background-subtracted image.
    positions : array_like, shape (n_stars, 2)
        ``(x, y)`` centroids of bright, isolated, unsaturated point sources
        (zero-based pixels).
    aperture_ee : array_like of float
        Encircled energies, percent.
    norm_radius : float
        Radius (pixels) at which the curve is taken to hold all the energy.
    bkg_inner, bkg_outer : float or None
        Background annulus radii (pixels); by default ``norm_radius`` and
        ``norm_radius + max(3, norm_radius / 2)``.
    radius_step : float
        Sampling of the curve of growth, pixels.
    mask : ndarray of bool or None
        True at pixels without coverage; stars whose normalisation aperture
        touches one are dropped.

    Returns
    -------
    EncircledEnergy
        Radii (pixels) for each energy, the sampled median curve and the
        number of stars used.  Radii are NaN when no star is usable.

    Notes
    -----
    The energy outside ``norm_radius`` is invisible to this measurement:
    the radii enclose the given fractions of the flux *within*
    ``norm_radius``.  Saturated stars cannot be recognised from an image
    alone; the caller must not pass them.
    """
    return _encircled_energy(data, positions, aperture_ee, norm_radius=norm_radius,
                             bkg_inner=bkg_inner, bkg_outer=bkg_outer, radius_step=radius_step,
                             mask=mask)


def _boxes_overlap(positions, radii, shape):
    """(n, n_r) bool: the bounding box of each circular aperture overlaps the image."""
    ny, nx = shape
    x = positions[:, 0][:, None]
    y = positions[:, 1][:, None]
    with np.errstate(invalid="ignore"):
        return ~((np.floor((x - radii) + 0.5) >= nx) | (np.floor((y - radii) + 0.5) >= ny)
                 | (np.ceil((x + radii) + 0.5) <= 0) | (np.ceil((y + radii) + 0.5) <= 0))


# Radii of the curve of growth measured per call of _aperture_sums when only
# the start of the curve is needed.
_EE_CHUNK = 10


def _encircled_energy(data, positions, aperture_ee, *, norm_radius, bkg_inner=None,
                      bkg_outer=None, radius_step=_EE_RADIUS_STEP, mask=None, upto=None):
    """`encircled_energy_radii`; with ``upto``, the curve only as far as needed.

    ``upto`` (a fraction, 0-1): the curve is measured outwards in chunks of
    radii and stops once it reaches both ``upto`` and the largest of
    ``aperture_ee``; ``curve`` and ``radius_grid`` of the result are then a
    prefix of the full ones.  The radii, the prefix and `_radius_at` of the
    prefix for any fraction up to ``upto`` are the same as with the full
    curve: the median at one radius does not depend on the other radii, a
    running maximum's prefix is the running maximum of the prefix, and
    which stars are usable (finite curve at every radius) follows from the
    normalisation aperture alone -- the pixels of a smaller aperture (and
    the masked pixel centres inside it) are a subset of the larger one's --
    and from each aperture's bounding box overlapping the image.
    """
    _check_positive("norm_radius", norm_radius)
    _check_positive("radius_step", radius_step)
    ee = np.asarray(aperture_ee, dtype=float) / 100.0
    if bkg_inner is None:
        bkg_inner = norm_radius
    if bkg_outer is None:
        bkg_outer = bkg_inner + max(_MIN_ANNULUS_WIDTH, 0.5 * norm_radius)
    if not 0 < bkg_inner < bkg_outer:
        raise ValueError(f"need 0 < bkg_inner < bkg_outer, got {bkg_inner!r}, {bkg_outer!r}")
    positions = np.atleast_2d(np.asarray(positions, dtype=float))
    grid = np.arange(radius_step, norm_radius + 0.5 * radius_step, radius_step)
    grid[-1] = norm_radius
    if positions.size == 0:
        return EncircledEnergy(np.full(ee.shape, np.nan), grid, np.full(grid.shape, np.nan), 0)
    areas = np.pi * grid**2
    norm_sums, _ = _aperture_sums(data, positions, grid[-1:], mask=mask)
    bkg, bkg_err, bkg_std = _local_background(data, positions, bkg_inner, bkg_outer, mask=mask)
    total = norm_sums[:, 0] - bkg * areas[-1]
    area = np.pi * norm_radius**2
    # Noise of each star's normalising flux: pixel noise over the aperture
    # plus the error of the background level times the aperture area.
    total_err = np.sqrt(bkg_std**2 * area + (bkg_err * area) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = (total / total_err) ** 2
    # Stars whose curve is finite at every radius.
    good = (np.isfinite(total) & (total > 0) & np.isfinite(bkg)
            & np.all(_boxes_overlap(positions, grid, data.shape), axis=1))
    if not good.any():
        return EncircledEnergy(np.full(ee.shape, np.nan), grid, np.full(grid.shape, np.nan), 0)
    weight = weight[good]
    if not np.all(np.isfinite(weight) & (weight > 0)):  # e.g. noiseless data
        weight = np.ones_like(weight)
    stars, bkg, total = positions[good], bkg[good], total[good]
    target = None if upto is None else max(float(np.max(ee)), float(upto))
    step = grid.size if upto is None else _EE_CHUNK
    medians = []
    peak = -np.inf
    for k0 in range(0, grid.size, step):
        k1 = min(k0 + step, grid.size)
        sums, _ = _aperture_sums(data, stars, grid[k0:k1], mask=mask)
        curves = sums - bkg[:, None] * areas[None, k0:k1]
        with np.errstate(divide="ignore", invalid="ignore"):
            curves = curves / total[:, None]
        medians.append(_weighted_median(curves, weight))
        peak = max(peak, float(np.max(medians[-1])))
        if target is not None and peak >= target:
            break
    curve = np.maximum.accumulate(np.concatenate(medians))
    grid = grid[: curve.size]
    radii = np.array([_radius_at(curve, grid, f) for f in ee])
    return EncircledEnergy(radii, grid, curve, int(good.sum()))


def select_psf_stars(fwhm, snr, nn_dist, *, min_snr=_PSF_STAR_MIN_SNR, tol=_PSF_LOCUS_TOL):
    """Pick the bright, compact sources of the stellar locus.

    Parameters
    ----------
    fwhm : ndarray of float, shape (n,)
        Moment-based size of each source (any consistent unit).
    snr : ndarray of float, shape (n,)
        Detection significance of each source.
    nn_dist : ndarray of float, shape (n,)
        Distance to the nearest detected neighbour (returned unchanged in
        the selection; isolation is the caller's cut).
    min_snr : float
        Minimum significance of a candidate.
    tol : float
        Fractional half-width of the stellar locus in ``fwhm``.

    Returns
    -------
    stars : ndarray of bool, shape (n,)
        True for sources in the locus.
    locus_fwhm : float
        Median ``fwhm`` of the locus (NaN when no candidate).

    Notes
    -----
    Point sources are the smallest objects and all have the same size, so
    among candidates with ``snr >= min_snr`` and ``fwhm`` at most the
    candidates' median, the ``fwhm`` with the most candidates within
    ``+-tol`` of it (in log) is the stellar locus.
    """
    fwhm = np.asarray(fwhm, dtype=float)
    cand = np.isfinite(fwhm) & (fwhm > 0) & (np.asarray(snr) >= min_snr) & np.isfinite(nn_dist)
    stars = np.zeros(fwhm.shape, dtype=bool)
    if not cand.any():
        return stars, np.nan
    logf = np.log(fwhm[cand])
    width = np.log1p(tol)
    ordered = np.sort(logf)
    counts = (np.searchsorted(ordered, logf + width, side="right")
              - np.searchsorted(ordered, logf - width, side="left"))
    counts[logf > np.median(logf)] = -1  # the locus is at the compact end
    centre = np.median(logf[np.abs(logf - logf[np.argmax(counts)]) <= width])
    stars[cand] = np.abs(logf - centre) <= width
    return stars, float(np.exp(centre))


def _apcorr_from_table(table, aperture_ee, pixel_scale_ratio=1.0, source="apcorr_table"):
    """Aperture parameters from APCORR rows of one configuration (`calimage3.reference_data`)."""
    radii, apcorr, r_in, r_out, note = apcorr_aperture_params(table, aperture_ee, pixel_scale_ratio)
    note = "; ".join(p for p in (source, f"pixel_scale_ratio {pixel_scale_ratio:g}", note) if p)
    log.info("Aperture radii %s pix and corrections %s from %s", np.round(radii, 3).tolist(),
             np.round(apcorr, 4).tolist(), note)
    return ApertureParams(aperture_ee, radii, apcorr, r_in, r_out, "apcorr_table", np.nan, 0, note)


def _gaussian_params(fwhm, aperture_ee, method):
    radii = gaussian_ee_radii(fwhm, aperture_ee)
    r_in = _NORM_RADIUS_FWHM * fwhm
    r_out = max(_BKG_OUTER_FWHM * fwhm, r_in + _MIN_ANNULUS_WIDTH)
    return ApertureParams(
        aperture_ee, radii, 100.0 / aperture_ee, r_in, r_out, method, float(fwhm), 0
    )


def _touches(segm_data, mask, labels):
    """(n,) bool: segment ``labels[k]`` has a pixel next to a ``mask`` pixel (a saturated core)."""
    if not mask.any():
        return np.zeros(labels.size, dtype=bool)
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
    hit = np.unique(segm_data[ring])
    return np.isin(labels, hit[hit > 0])


def _curve_meta(curve):
    """The measured PSF curve as plain lists for the catalog's meta (and the QA figure)."""
    def plain(values, digits=5):
        return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=float).ravel()]

    return {
        "radius": plain(curve.radius_grid), "ee": plain(curve.ee),
        "fwhm": float(curve.fwhm), "norm_radius": float(curve.norm_radius),
        "outer_radius": float(curve.outer_radius), "total_over_norm": float(curve.total_over_norm),
        "total_over_norm_err": float(curve.total_over_norm_err),
        "x": plain(curve.xy[:, 0], 7), "y": plain(curve.xy[:, 1], 7), "reason": curve.reason,
    }


def _neighbour_light(xy, flux, idx, radius, fwhm, saturated=None):
    """Light of the other sources that would bias the curve of growth of each source ``idx``.

    A neighbour at distance ``d`` beyond the outer radius ``R`` lays a
    diffraction wing of surface brightness ``A F / (2 pi d**3)`` over the
    star (``1 - EE(r) = A / r``, ``A = 0.25 FWHM`` for a JWST-like PSF).  Its
    mean and gradient cancel in the star's local background and circular
    apertures; its curvature does not and adds about ``(9/16) A R**4 / d**5``
    of its flux within ``R``.  A neighbour within ``R`` counts with half its
    flux.  Sources with a not-finite flux, and
    ``saturated`` ones (times `_SATURATED_FLUX_FACTOR`), count as bright.

    Returns
    -------
    ndarray, shape (len(idx),)
        In the units of ``flux``.
    """
    lit = np.where(np.isfinite(flux), flux, np.nanmax(np.where(np.isfinite(flux), flux, 0.0)))
    if saturated is not None:
        lit = np.where(saturated, lit * _SATURATED_FLUX_FACTOR, lit)
    ok = np.all(np.isfinite(xy), axis=1)
    wing = 0.25 * fwhm
    out = np.zeros(len(idx))
    for start in range(0, len(idx), 256):  # bounded memory on large mosaics
        rows = np.asarray(idx[start:start + 256])
        d = np.hypot(xy[rows, 0][:, None] - xy[ok, 0][None, :], xy[rows, 1][:, None] - xy[ok, 1][None, :])
        with np.errstate(divide="ignore", over="ignore"):
            # Beyond the circle: the curvature of the neighbour's wing (a
            # constant and a gradient cancel in the star's background and its
            # circular apertures): (9/16) A R**4 / d**5.  Inside: half its light.
            share = np.where(d > radius, np.minimum(0.5, 9.0 / 16.0 * wing * radius**4 / d**5), 0.5)
        share[d == 0] = 0.0  # the star itself
        out[start:start + len(rows)] = share @ lit[ok]
    return out


def _full_weight_cores(wht, xy, fwhm):
    """(n,) bool: no pixel within ``1.5 FWHM`` of the centroid has less than ``_MIN_CORE_WEIGHT`` of the
    median drizzle weight between 3 and 5 FWHM.

    A star whose core pixels were flagged in some exposures (outliers, or the
    edge of a saturated core) has a dip in the mosaic's weight there and a
    core that no longer has the PSF's shape.
    """
    half = int(np.ceil(5.0 * fwhm)) + 1
    cut = _cutouts(np.asarray(wht, dtype=float), xy, 2 * half + 1)
    off = np.arange(-half, half + 1)
    dx = (np.round(xy[:, 0]) - xy[:, 0])[:, None, None] + off[None, None, :]
    dy = (np.round(xy[:, 1]) - xy[:, 1])[:, None, None] + off[None, :, None]
    d = np.hypot(dx, dy)
    core = d <= max(1.5 * fwhm, 1.5)
    ring = (d >= 3.0 * fwhm) & (d <= 5.0 * fwhm)
    ok = np.zeros(xy.shape[0], dtype=bool)
    for i in range(xy.shape[0]):
        ref = np.median(cut[i][ring[i]])
        ok[i] = ref > 0 and np.min(cut[i][core[i]]) >= _MIN_CORE_WEIGHT * ref
    return ok


def _self_calibrated_params(data, mask, cat_fwhm, snr, flux, xy, noise, aperture_ee, kernel_fwhm,
                            min_psf_stars, near_hole=None, wht=None):
    """Aperture parameters from the mosaic's own bright, isolated, unsaturated point sources.

    Candidates: sources of significance >= ``_PSF_STAR_MIN_SNR``; the
    FWHM from the pixel profile (`pixel_profile_fwhm`) of the more compact
    half by segment moments; those whose neighbours' light
    (`_neighbour_light`, ``near_hole`` marking saturated ones) stays below
    ``_NEIGHBOUR_LIGHT`` of their flux, and (with ``wht``) whose core has
    its full drizzle weight (`_full_weight_cores`), brightest first.  The stellar locus
    in concentration is picked in `psf_encircled_energy`.
    `psf_encircled_energy` measures the curve and the corrections, or says
    why it cannot; then the corrections are NaN (``method='refused'``: the
    radii are those of a Gaussian of FWHM ``kernel_fwhm``, and
    ``aper_total_flux`` is NaN) rather than a guess.

    Returns
    -------
    params : ApertureParams
    curve : PsfCurve
    """
    cand = (np.all(np.isfinite(xy), axis=1) & np.isfinite(flux) & (flux > 0)
            & (np.nan_to_num(snr, nan=0.0) >= _PSF_STAR_MIN_SNR) & np.isfinite(cat_fwhm))
    if near_hole is not None:
        cand &= ~near_hole  # saturated (NaN core) or at a coverage edge
    idx = np.flatnonzero(cand)
    fwhm = np.nan
    if idx.size:
        # The compact half by moments (mostly stars) gives the FWHM; moments
        # of a spiky PSF overestimate it, so it only sets the window.
        compact = idx[cat_fwhm[idx] <= np.median(cat_fwhm[idx])]
        compact = compact[np.argsort(-snr[compact])][:_MAX_PSF_STARS]
        window = float(np.sqrt(max(np.median(cat_fwhm[compact]) ** 2 - kernel_fwhm**2, 1.0)))
        fwhm = pixel_profile_fwhm(data, xy[compact], flux[compact], max(window, 2.0))
    if np.isfinite(fwhm) and idx.size:
        outer = float(np.clip(_OUTER_RADIUS_FWHM * fwhm, _MIN_OUTER_RADIUS, _MAX_OUTER_RADIUS))
        # Isolation: the light of all other sources within the outer radius
        # (`_neighbour_light`) must stay below _NEIGHBOUR_LIGHT of the star's.
        light = _neighbour_light(xy, flux, idx, outer, fwhm, saturated=near_hole)
        idx = idx[light < _NEIGHBOUR_LIGHT * flux[idx]]
        if wht is not None and idx.size:
            idx = idx[_full_weight_cores(wht, xy[idx], fwhm)]
        idx = idx[np.argsort(-snr[idx])]
    else:
        idx = idx[:0]
    curve = psf_encircled_energy(data, xy[idx], flux[idx], noise[idx], aperture_ee,
                                 fwhm=fwhm, mask=mask, min_stars=min_psf_stars)
    if curve.reason:
        log.warning(
            "No aperture correction: %s (bright, isolated, unsaturated point sources). "
            "aper_total_* are NaN; the apertures are those of a Gaussian of FWHM kernel_fwhm=%s "
            "pix. Give override_apcorr (an APCORR reference file) for real corrections.",
            curve.reason, kernel_fwhm,
        )
        radii = gaussian_ee_radii(kernel_fwhm, aperture_ee)
        r_in = _NORM_RADIUS_FWHM * kernel_fwhm
        r_out = max(_BKG_OUTER_FWHM * kernel_fwhm, r_in + _MIN_ANNULUS_WIDTH)
        params = ApertureParams(aperture_ee, radii, np.full(3, np.nan), r_in, r_out, "refused",
                                float(curve.fwhm), 0, curve.reason)
        return params, curve
    log.info(
        "Aperture radii %s pix and corrections %s from the curves of growth of %d stars "
        "(FWHM %.2f pix)", np.round(curve.radii, 3).tolist(), np.round(curve.corrections, 4).tolist(),
        curve.xy.shape[0], curve.fwhm,
    )
    params = ApertureParams(aperture_ee, curve.radii, curve.corrections, curve.bkg_inner,
                            curve.bkg_outer, "psf_stars", float(curve.fwhm), int(curve.xy.shape[0]), "")
    return params, curve


# --------------------------------------------------------------------------
# Aperture corrections measured on the mosaic's own stars
# --------------------------------------------------------------------------


class PsfCurve(NamedTuple):
    """Encircled-energy curve of the mosaic's point sources and the corrections it gives.

    Attributes
    ----------
    radius_grid : ndarray, shape (n_r,)
        Radii (pixels) of the curve.
    ee : ndarray, shape (n_r,)
        Fraction of the total energy within each radius (the stacked curve
        of growth divided by its extrapolated limit).
    total_over_norm : float
        Total energy over the energy within ``norm_radius``.
    total_over_norm_err : float
        Its 1-sigma uncertainty (bootstrap over the stars).
    norm_radius, outer_radius : float
        Normalisation radius and outermost radius of the curve, pixels.
    fwhm : float
        FWHM of the pixel-integrated PSF (pixels), from the pixel values
        of the stars against their distance to the centroid.
    radii, corrections : ndarray, shape (3,)
        Aperture radii (pixels) and aperture corrections (total flux over
        the background-subtracted aperture flux, as the catalog measures it).
    bkg_inner, bkg_outer : float
        Local-background annulus, pixels.
    xy : ndarray, shape (n_stars, 2)
        Centroids of the stars used.
    reason : str
        Empty when the curve is usable; else why not.
    """

    radius_grid: np.ndarray
    ee: np.ndarray
    total_over_norm: float
    total_over_norm_err: float
    norm_radius: float
    outer_radius: float
    fwhm: float
    radii: np.ndarray
    corrections: np.ndarray
    bkg_inner: float
    bkg_outer: float
    xy: np.ndarray
    reason: str


def pixel_profile_fwhm(data, xy, norm, guess):
    """FWHM (pixels) of the pixel-integrated PSF from the pixels of many stars.

    Each star's pixel values, divided by its flux ``norm``, against their
    distance from its centroid sample the pixel-integrated profile at all
    pixel phases (an undersampled PSF included); the median profile in
    0.1-pixel bins (``guess / 10`` if smaller), its peak from a parabola
    through the bins within ``guess / 2``, falls to half at ``FWHM / 2``.
    Not-finite pixels (a saturated core) are left out.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Background-subtracted image.
    xy : ndarray, shape (n, 2)
        Star centroids, pixels.
    norm : ndarray, shape (n,)
        Star fluxes (any common scale).
    guess : float
        An FWHM estimate that may be too large (pixels): the profile is
        measured out to ``3 x guess``.

    Returns
    -------
    float
        NaN when fewer than 5 bins are filled or the profile does not fall
        to half within ``3 x guess``.
    """
    half = int(np.ceil(3.0 * guess)) + 1
    size = 2 * half + 1
    cut = _cutouts(data, xy, size)
    off = np.arange(-half, half + 1)
    ix = np.round(xy[:, 0])
    iy = np.round(xy[:, 1])
    dx = (ix - xy[:, 0])[:, None, None] + off[None, None, :]
    dy = (iy - xy[:, 1])[:, None, None] + off[None, :, None]
    r = np.hypot(dx, dy).ravel()
    v = (cut / norm[:, None, None]).ravel()
    ok = np.isfinite(v) & (r < 3.0 * guess)
    r, v = r[ok], v[ok]
    step = min(0.1, guess / 10.0)
    edges = np.arange(0.0, 3.0 * guess + step, step)
    idx = np.digitize(r, edges) - 1
    centres, prof = [], []
    for k in range(edges.size - 1):
        vals = v[idx == k]
        if vals.size >= 3:
            centres.append(0.5 * (edges[k] + edges[k + 1]))
            prof.append(np.median(vals))
    centres, prof = np.asarray(centres), np.asarray(prof)
    if centres.size < 5:
        return np.nan

    def crossing(peak):
        start = int(np.argmax(prof))
        below = np.flatnonzero(prof[start:] < 0.5 * peak)
        if below.size == 0:
            return np.nan
        j = start + below[0]
        if j == 0:
            return float(2.0 * centres[0])
        r0, r1, p0, p1 = centres[j - 1], centres[j], prof[j - 1], prof[j]
        return float(2.0 * (r0 + (0.5 * peak - p0) / (p1 - p0) * (r1 - r0)))

    # First the highest bin as the peak; then a parabola in r through the
    # pixels within 0.35 of that FWHM (robust: the median of each pixel's
    # peak estimate) extrapolates the peak to r = 0.
    fwhm = crossing(float(prof.max()))
    if not np.isfinite(fwhm):
        return np.nan
    near = r < 0.35 * fwhm
    if near.sum() >= 10:
        design = np.column_stack([np.ones(near.sum()), r[near] ** 2])
        coef, *_ = np.linalg.lstsq(design, v[near], rcond=None)
        resid = v[near] - design @ coef
        keep = np.abs(resid) <= 3.0 * 1.4826 * np.median(np.abs(resid)) + 1e-300
        if keep.sum() >= 5:
            coef, *_ = np.linalg.lstsq(design[keep], v[near][keep], rcond=None)
        if coef[0] > prof.max():
            fwhm = crossing(float(coef[0]))
    return fwhm


def _star_curves(data, mask, xy, grid, core_radius):
    """Curves of growth (n, n_r) on exact circular apertures, masked pixels filled per ring.

    Within each ring between consecutive radii, masked pixels (and pixels
    off the image) take the mean of the ring's other pixels (weighted by
    their exact overlap), so a masked pixel far from the star costs only
    its share of the ring.  A star is invalid (NaN row) when a masked pixel
    lies within ``core_radius`` (a saturated or bad core) or when more than
    half of any ring is masked.

    Each radius' exact overlaps are computed on its own box only; a ring's
    area, unmasked area and flux are differences of the enclosed sums.
    """
    n = xy.shape[0]
    ny, nx = data.shape
    out = np.full((n, grid.size), np.nan)
    half = int(np.ceil(grid[-1])) + 2
    box_half = np.minimum(np.ceil(grid).astype(int) + 1, half)
    for i, (x, y) in enumerate(xy):
        ix, iy = int(round(x)), int(round(y))
        ys = np.arange(iy - half, iy + half + 1)
        xs = np.arange(ix - half, ix + half + 1)
        inside = ((ys >= 0) & (ys < ny))[:, None] & ((xs >= 0) & (xs < nx))[None, :]
        cy, cx = np.clip(ys, 0, ny - 1), np.clip(xs, 0, nx - 1)
        cut = data[np.ix_(cy, cx)]
        bad = ~inside | ~np.isfinite(cut)
        if mask is not None:
            bad |= mask[np.ix_(cy, cx)]
        # per pixel: 1, unmasked, flux (0 where masked)
        planes = np.stack([np.ones(bad.shape), ~bad, np.where(bad, 0.0, cut)])
        ex0, ey0 = xs[0] - 0.5 - x, ys[0] - 0.5 - y
        enclosed_before = np.zeros(3)
        total = 0.0
        for k, (r, h) in enumerate(zip(grid, box_half)):
            lo, hi = half - h, half + h + 1
            overlap = circular_overlap_grid(ex0 + lo, ex0 + hi, ey0 + lo, ey0 + hi, 2 * h + 1, 2 * h + 1,
                                            float(r), 1, 1)
            enclosed = np.einsum("kij,ij->k", planes[:, lo:hi, lo:hi], overlap)
            area, g_area, flux = enclosed - enclosed_before
            enclosed_before = enclosed
            if (r <= core_radius and g_area < area - 1e-9) or g_area < 0.5 * area:
                total = np.nan
                break
            total += flux * (area / g_area if g_area > 0 else 0.0)
            out[i, k] = total
        if not np.isfinite(total):
            out[i] = np.nan
    return out


def _clipped_weighted_mean(values, weights, sigma=3.0):
    """Weighted mean along axis 0 of ``values`` (n, m), leaving out values off the median by more than ``sigma`` robust sigma."""
    med = np.median(values, axis=0)
    mad = 1.4826 * np.median(np.abs(values - med), axis=0)
    keep = np.abs(values - med) <= sigma * mad + 1e-12 * np.abs(med)
    w = weights[:, None] * keep
    return np.sum(w * values, axis=0) / np.sum(w, axis=0)


def _fit_limit(grid, curve, r_min, r_bkg):
    """Limit at infinity of a curve of growth from which a local background was removed.

    The far wings of a diffraction PSF fall as ``r**-3`` (edge diffraction,
    spikes included), so the curve goes as ``a + b / r``.  The curve
    passed here had the mean surface brightness between ``r_bkg`` and the
    last radius ``R`` removed (a residual background, and with it that
    part of the wing), which turns ``b / r`` into ``b (1 / r + K r**2)``
    with ``K = (1 / r_bkg - 1 / R) / (R**2 - r_bkg**2)``; ``a`` and ``b``
    are fitted by least squares beyond ``r_min``.  A fit with ``b > 0``
    (no wing) gives ``a`` as the mean there.  NaN with fewer than 4 points.
    """
    use = (grid >= r_min) & np.isfinite(curve)
    r, y = grid[use], curve[use]
    if r.size < 4:
        return np.nan
    big = grid[-1]
    k = (1.0 / r_bkg - 1.0 / big) / (big**2 - r_bkg**2)
    design = np.column_stack([np.ones_like(r), 1.0 / r + k * r**2])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    if coef[1] > 0:
        return float(np.mean(y))
    return float(coef[0])


def psf_encircled_energy(data, xy, flux, noise, aperture_ee, *, fwhm, mask=None,
                         min_stars=5, max_stars=_MAX_PSF_STARS):
    """Encircled energy and aperture corrections from bright isolated unsaturated stars.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Background-subtracted image.
    xy : ndarray, shape (n, 2)
        Centroids of candidate point sources (the stellar locus, bright,
        with no comparable neighbour nearby), brightest first.
    flux : ndarray, shape (n,)
        Their fluxes (any estimate; only ratios between stars are used for
        weights).
    noise : ndarray, shape (n,)
        Background RMS per pixel at each candidate.
    aperture_ee : array_like of int, shape (3,)
        Encircled energies, percent.
    fwhm : float
        FWHM of the pixel-integrated PSF, pixels (`pixel_profile_fwhm`):
        sets the normalisation radius, the outer radius and the annulus.
    mask : ndarray of bool or None
        True where a pixel has no coverage (a saturated core, a gap).
    min_stars : int
        Fewer usable stars: no curve (``reason`` says why).
    max_stars : int
        At most this many candidates (the first ones) are measured.

    Returns
    -------
    PsfCurve

    Notes
    -----
    Stages (the FWHM comes from `pixel_profile_fwhm`):

    1. (none)
    2. Curves of growth out to ``max(15, 12 FWHM)`` pixels (at most 60) on
       exact apertures, masked pixels filled per ring (`_star_curves`);
       stars with a masked pixel within ``3 FWHM`` (saturated NaN cores) are
       dropped.
    3. Each curve is divided by its value at ``norm_radius = 3 FWHM``;
       only stars on the concentration locus (energy within 1 FWHM over
       that within ``norm_radius``; the densest value at the concentrated
       end, +-6 %, `select_psf_stars`) are kept -- no cratered saturated
       stars, blends or compact galaxies.
    4. The curves are combined at each radius by a weighted mean (weights
       ``SNR**2``) of the values within 3 robust sigma of the median.
    5. Each star's residual background (the mean surface brightness
       between 0.6 and 1 times the outer radius, from its own curve) is
       removed before stacking; the limit at infinity comes from a fit of
       ``a + b / r`` (the ``1 / r`` energy of diffraction wings and spikes
       outside a radius), with the part of the wing removed with the
       background modelled (`_fit_limit`).
    6. Radii: where ``curve / a`` reaches each energy.  Corrections: ``a``
       over the weighted median of each star's normalised aperture flux
       minus the sigma-clipped median of the local-background annulus
       (``3-5 FWHM``) times the aperture area -- what the catalog measures,
       so the PSF wings in the annulus are accounted for.
    """
    ee = np.asarray(aperture_ee, dtype=float) / 100.0
    xy = np.atleast_2d(np.asarray(xy, dtype=float))[:max_stars]
    flux = np.asarray(flux, dtype=float)[:max_stars]
    noise = np.asarray(noise, dtype=float)[:max_stars]
    nan3 = np.full(3, np.nan)

    def refuse(reason, fwhm=np.nan, grid=np.zeros(0), curve=np.zeros(0), used=np.zeros((0, 2))):
        return PsfCurve(grid, curve, np.nan, np.nan, np.nan, np.nan, float(fwhm), nan3, nan3, np.nan,
                        np.nan, used, reason)

    if xy.shape[0] < min_stars:
        return refuse(f"{xy.shape[0]} bright isolated point-source candidates, {min_stars} needed", fwhm)
    if not (np.isfinite(fwhm) and fwhm > 0):
        return refuse("the stars' radial profile gives no FWHM")
    norm_radius = _NORM_RADIUS_FWHM * fwhm
    outer = float(np.clip(_OUTER_RADIUS_FWHM * fwhm, _MIN_OUTER_RADIUS, _MAX_OUTER_RADIUS))
    outer = max(outer, norm_radius + _MIN_ANNULUS_WIDTH + 2.0)
    step = max(_EE_RADIUS_STEP, fwhm / 30.0)
    inner_grid = np.arange(step, norm_radius, step)
    grid = np.concatenate([inner_grid, np.geomspace(norm_radius, outer, 30)])
    k_norm = inner_grid.size
    # 2: curves of growth.
    curves = _star_curves(data, mask, xy, grid, norm_radius)
    valid = np.all(np.isfinite(curves), axis=1) & (curves[:, k_norm] > 0)
    if valid.sum() < min_stars:
        return refuse(f"{int(valid.sum())} stars with clean curves of growth, {min_stars} needed", fwhm)
    curves, xy, noise = curves[valid], xy[valid], noise[valid]
    norm = curves[:, k_norm]
    curves = curves / norm[:, None]
    # 3: concentration locus.
    conc = np.array([np.interp(fwhm, grid, c) for c in curves])
    with np.errstate(divide="ignore", invalid="ignore"):
        keep, _ = select_psf_stars(1.0 / conc, np.full(conc.size, np.inf), np.zeros(conc.size),
                                   tol=_CONCENTRATION_TOL)
    if keep.sum() < min_stars:
        return refuse(f"{int(keep.sum())} stars on the concentration locus, {min_stars} needed", fwhm)
    curves, xy, noise, norm = curves[keep], xy[keep], noise[keep], norm[keep]
    # 4: weighted median.
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = (norm / (noise * np.sqrt(np.pi) * outer)) ** 2
    if not np.all(np.isfinite(weight) & (weight > 0)):
        weight = np.ones_like(norm)
    # Residual background of each star: the mean surface brightness between
    # r_bkg and the outer radius, removed from its curve (the wing there is
    # modelled in _fit_limit).
    k_bkg = int(np.searchsorted(grid, _BKG_FROM_OUTER * outer))
    r_bkg = grid[k_bkg]
    slope = (curves[:, -1] - curves[:, k_bkg]) / (grid[-1] ** 2 - r_bkg**2)
    stack = _clipped_weighted_mean(curves - slope[:, None] * grid[None, :] ** 2, weight)
    # 5: the limit.
    limit = _fit_limit(grid, stack, norm_radius, r_bkg)
    if not (np.isfinite(limit) and limit > 0.5):
        return refuse("the curve of growth has no usable limit", fwhm)
    # Its uncertainty: the same with the stars resampled (bootstrap).
    corrected = curves - slope[:, None] * grid[None, :] ** 2
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(_N_BOOTSTRAP):
        pick = rng.integers(0, corrected.shape[0], corrected.shape[0])
        boot.append(_fit_limit(grid, _clipped_weighted_mean(corrected[pick], weight[pick]),
                               norm_radius, r_bkg))
    limit_err = float(np.nanstd(boot))
    if not limit_err <= _MAX_LIMIT_ERROR * limit:
        return refuse(f"the total flux is uncertain by {100 * limit_err / limit:.1f}% "
                      f"(more than {100 * _MAX_LIMIT_ERROR:g}%) from {corrected.shape[0]} stars", fwhm)
    ee_curve = np.maximum.accumulate(stack / limit)
    # 6: radii and corrections.
    radii = np.array([_radius_at(ee_curve, grid, f) for f in ee])
    if np.any(radii >= norm_radius):
        return refuse(f"aperture_ee3 needs a radius beyond {norm_radius:.2f} pix", fwhm)
    bkg_inner = norm_radius
    bkg_outer = min(bkg_inner + max(_MIN_ANNULUS_WIDTH, 2.0 * fwhm), outer)
    bkg, _, _ = _local_background(data, xy, bkg_inner, bkg_outer, mask=mask)
    bkg = np.where(np.isfinite(bkg), bkg, 0.0)
    measured = np.array([[np.interp(r, grid, c) for r in radii] for c in curves])
    measured -= (bkg / norm)[:, None] * (np.pi * radii**2)[None, :]
    corrections = limit / _clipped_weighted_mean(measured, weight)
    log.info(
        "PSF from %d stars: FWHM %.2f pix, EE %s at %s pix, %.1f%% of the energy beyond %.1f pix "
        "(extrapolated from %.1f-%.1f pix; total flux uncertain by %.1f%%)",
        xy.shape[0], fwhm, np.round(100 * ee).astype(int).tolist(), np.round(radii, 3).tolist(),
        100.0 * (1.0 - 1.0 / limit), norm_radius, norm_radius, outer, 100.0 * limit_err / limit,
    )
    return PsfCurve(grid, ee_curve, limit, limit_err, norm_radius, outer, fwhm, radii, corrections,
                    float(bkg_inner), float(bkg_outer), xy, "")


# --------------------------------------------------------------------------
# Per-source extras
# --------------------------------------------------------------------------


def _cutouts(image, xy, size, return_valid=False):
    """(n, size, size) cutouts centred on the nearest pixels of ``xy``; 0 outside.

    With ``return_valid``, also the (n, size, size) mask of the pixels inside
    the image.
    """
    half = size // 2
    ny, nx = image.shape
    ix = np.round(xy[:, 0]).astype(int)
    iy = np.round(xy[:, 1]).astype(int)
    off = np.arange(-half, half + 1)
    yy = iy[:, None, None] + off[None, :, None]
    xx = ix[:, None, None] + off[None, None, :]
    valid = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    out = image[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)]
    out = np.where(valid, out, 0.0)
    return (out, valid) if return_valid else out


def _daofind_stats(data, xy, kernel_fwhm):
    """DAOFind sharpness and roundness (the JWST definitions) at each source."""
    sigma = kernel_fwhm * gaussian_fwhm_to_sigma
    rmax = max(2.0, 1.5 * sigma)
    size = 2 * int(rmax) + 1
    c = (size - 1) // 2
    yy, xx = np.mgrid[0:size, 0:size]
    kmask = (np.hypot(xx - c, yy - c) <= rmax).astype(float)
    gauss = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2.0 * sigma**2)) * kmask
    npix = kmask.sum()
    denom = np.sum(gauss**2) - np.sum(gauss) ** 2 / npix
    kernel = (gauss - gauss.sum() / npix) / denom * kmask
    # The convolved image is needed only in the size x size cutouts: convolve
    # cutouts of twice the size (0 outside the image, as mode="constant"
    # with cval=0 of the whole image) and keep their centres.  A kernel of
    # shape (1, size, size) runs the same correlation, weight for weight, as
    # the 2D one on the whole image, so the values are the same.
    cut, valid = _cutouts(data, xy, size, return_valid=True)
    wide = _cutouts(data, xy, size + 2 * c)
    conv = ndimage.convolve(wide, kernel[None, :, :], mode="constant", cval=0.0)
    cut_conv = np.where(valid, conv[:, c : c + size, c : c + size], 0.0)
    peak = cut[:, c, c]
    conv_peak = cut_conv[:, c, c]
    mean = (np.sum(cut * kmask, axis=(1, 2)) - peak) / (npix - 1)
    cc = cut_conv.copy()
    cc[:, c, c] = 0.0
    q1 = cc[:, 0 : c + 1, c + 1 :].sum(axis=(1, 2))
    q2 = cc[:, 0:c, 0 : c + 1].sum(axis=(1, 2))
    q3 = cc[:, c:, 0:c].sum(axis=(1, 2))
    q4 = cc[:, c + 1 :, c:].sum(axis=(1, 2))
    sum2 = -q1 + q2 - q3 + q4
    sum4 = np.abs(cc).sum(axis=(1, 2))
    sum4[sum4 == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpness = (peak - mean) / conv_peak
        roundness = 2.0 * sum2 / sum4
    return sharpness, roundness


def _sky_orientation(wcs, xy, orientation_deg):
    """Position angle (deg, east of north, [0, 360)) of the major axis at each source."""
    theta = np.deg2rad(orientation_deg)
    step = 0.5
    ra0, dec0 = wcs.pixel_to_world_values(xy[:, 0], xy[:, 1])
    ra1, dec1 = wcs.pixel_to_world_values(xy[:, 0] + step * np.cos(theta), xy[:, 1] + step * np.sin(theta))
    c0 = SkyCoord(ra0, dec0, unit="deg")
    c1 = SkyCoord(ra1, dec1, unit="deg")
    return c0.position_angle(c1).to(u.deg) % (360 * u.deg)


# --------------------------------------------------------------------------
# Catalog assembly
# --------------------------------------------------------------------------


def _column_spec(aperture_ee):
    """Ordered (name, unit, kind, description) of the JWST catalog columns."""
    ee = [int(e) for e in aperture_ee]
    big = ee[-1]
    spec = [
        ("label", None, "int", "Unique source identification label number"),
        ("xcentroid", None, "float", "X pixel value of the source centroid (0 indexed)"),
        ("ycentroid", None, "float", "Y pixel value of the source centroid (0 indexed)"),
        ("sky_centroid", None, "sky", "ICRS Sky coordinate of the source centroid"),
        ("aper_bkg_flux", u.Jy, "float",
         "The local background value calculated as the sigma-clipped median value in the "
         "background annulus aperture"),
        ("aper_bkg_flux_err", u.Jy, "float",
         "The standard error of the sigma-clipped median background value"),
    ]
    # (column kind, unit, label at the start of a description, label inside one):
    # JWST writes "Total aperture-corrected flux" but "... AB magnitude".
    for kind, unit, label, inner in (("flux", u.Jy, "Flux", "flux"),
                                     ("abmag", None, "AB magnitude", "AB magnitude"),
                                     ("vegamag", None, "Vega magnitude", "Vega magnitude")):
        for e in ee:
            spec.append((f"aper{e}_{kind}", unit, "float",
                         f"{label} within the {e}% encircled energy circular aperture"))
            spec.append((f"aper{e}_{kind}_err", unit, "float",
                         f"{label} error within the {e}% encircled energy circular aperture"))
        spec.append((f"aper_total_{kind}", unit, "float",
                     f"Total aperture-corrected {inner} based on the {big}% encircled "
                     "energy circular aperture; should be used only for unresolved sources."))
        spec.append((f"aper_total_{kind}_err", unit, "float",
                     f"Total aperture-corrected {inner} error based on the {big}% "
                     "encircled energy circular aperture; should be used only for unresolved "
                     "sources."))
    for i, j in ((0, 1), (1, 2), (0, 2)):
        spec.append((f"CI_{ee[j]}_{ee[i]}", None, "float",
                     f"Concentration index calculated as (aper{ee[j]}_flux / aper{ee[i]}_flux)"))
    spec += [
        ("is_extended", None, "bool", "Flag indicating whether the source is extended"),
        ("sharpness", None, "float", "The DAOFind source sharpness statistic"),
        ("roundness", None, "float", "The DAOFind source roundness statistic"),
        ("nn_label", None, "int", "The label number of the nearest neighbor"),
        ("nn_dist", u.pix, "float", "The distance in pixels to the nearest neighbor"),
        ("isophotal_flux", u.Jy, "float", "Isophotal flux"),
        ("isophotal_flux_err", u.Jy, "float", "Isophotal flux error"),
        ("isophotal_abmag", None, "float", "Isophotal AB magnitude"),
        ("isophotal_abmag_err", None, "float", "Isophotal AB magnitude error"),
        ("isophotal_vegamag", None, "float", "Isophotal Vega magnitude"),
        ("isophotal_vegamag_err", None, "float", "Isophotal Vega magnitude error"),
        ("isophotal_area", u.pix**2, "float", "Isophotal area"),
        ("semimajor_sigma", u.pix, "float",
         "1-sigma standard deviation along the semimajor axis of the 2D Gaussian function "
         "that has the same second-order central moments as the source"),
        ("semiminor_sigma", u.pix, "float",
         "1-sigma standard deviation along the semiminor axis of the 2D Gaussian function "
         "that has the same second-order central moments as the source"),
        # dimensionless Quantity, as JWST writes it (an empty unit in the ECSV)
        ("ellipticity", u.dimensionless_unscaled, "float",
         "1 minus the ratio of the 1-sigma lengths of the semimajor and semiminor axes"),
        ("orientation", u.deg, "float",
         "The angle (degrees) between the positive X axis and the major axis (increases "
         "counter-clockwise)"),
        ("sky_orientation", u.deg, "float",
         "The position angle (degrees) from North of the major axis"),
        ("sky_bbox_ll", None, "sky",
         "Sky coordinate of the lower-left vertex of the minimal bounding box of the source"),
        ("sky_bbox_ul", None, "sky",
         "Sky coordinate of the upper-left vertex of the minimal bounding box of the source"),
        ("sky_bbox_lr", None, "sky",
         "Sky coordinate of the lower-right vertex of the minimal bounding box of the source"),
        ("sky_bbox_ur", None, "sky",
         "Sky coordinate of the upper-right vertex of the minimal bounding box of the source"),
    ]
    return spec


def _empty_value(unit, kind):
    if kind == "sky":
        return SkyCoord([], [], unit="deg")
    dtype = {"int": np.int64, "bool": bool, "float": np.float64}[kind]
    value = np.zeros(0, dtype=dtype)
    return value << unit if unit is not None else value


def _assemble(values, aperture_ee, meta):
    table = QTable(meta=meta)
    for name, unit, kind, desc in _column_spec(aperture_ee):
        value = values[name] if values is not None else _empty_value(unit, kind)
        if unit is not None and not isinstance(value, u.Quantity):
            value = value << unit
        elif unit is not None:
            value = value.to(unit)
        table[name] = value
        table[name].info.description = desc
    for name in table.colnames:
        if name in ("xcentroid", "ycentroid") or name.startswith("CI_"):
            table[name].info.format = ".4f"
        elif "flux" in name:
            table[name].info.format = ".6e"
        elif ("mag" in name or name in ("nn_dist", "sharpness", "roundness", "semimajor_sigma",
                                        "semiminor_sigma", "ellipticity", "orientation",
                                        "sky_orientation")):
            table[name].info.format = ".6f"
    return table


def make_source_catalog(
    data, err, wcs, *, wht=None, pixar_sr, bkg_boxsize=1000, kernel_fwhm=2.0,
    snr_threshold=3.0, npixels=5, deblend=False, aperture_ee1=30, aperture_ee2=50,
    aperture_ee3=70, ci1_star_threshold=2.0, ci2_star_threshold=1.8, abvega_offset=None,
    psf_fwhm=None, apcorr_table=None, pixel_scale_ratio=1.0, apcorr_source=None, min_psf_stars=5, threads=1,
):
    """Detect sources on a mosaic and measure the JWST source-catalog columns.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Mosaic surface brightness, MJy/sr (the ``_i2d`` SCI array).  Not
        modified.
    err : ndarray, shape (ny, nx), or None
        Total 1-sigma error of ``data``, MJy/sr.  None gives NaN in every
        ``*_err`` column except ``aper_bkg_flux_err``.
    wcs : gwcs.WCS or astropy.wcs.WCS
        Maps zero-based pixel ``(x, y)`` to ICRS ``(RA, Dec)`` degrees
        through ``pixel_to_world_values`` (any APE 14 celestial WCS).
    wht : ndarray, shape (ny, nx), or None
        Drizzle weight; pixels with ``wht == 0`` have no coverage.
    pixar_sr : float
        Solid angle of one mosaic pixel, steradians (JWST
        ``meta.photometry.pixelarea_steradians``).
    bkg_boxsize : int
        Background mesh box size, pixels; clipped to the image size.
    kernel_fwhm : float
        FWHM (pixels) of the Gaussian smoothing kernel; also the DAOFind
        kernel of ``sharpness``/``roundness`` and the fallback PSF FWHM.
    snr_threshold : float
        Detection threshold in units of the background RMS.
    npixels : int
        Minimum number of connected pixels of a source.
    deblend : bool
        Deblend overlapping sources.
    aperture_ee1, aperture_ee2, aperture_ee3 : int
        Encircled energies (percent, strictly increasing) of the apertures.
    ci1_star_threshold, ci2_star_threshold : float
        A source is extended when ``CI_ee2_ee1 > ci1_star_threshold`` and
        ``CI_ee3_ee2 > ci2_star_threshold``.
    abvega_offset : float or None
        ``m_AB - m_Vega``; None (no ABVEGAOFFSET reference) leaves the Vega
        magnitudes NaN.
    psf_fwhm : float or None
        If given, the aperture radii come from a Gaussian PSF of this FWHM
        (pixels) instead of being measured on the mosaic.
    apcorr_table : astropy.table.Table or None
        Rows of an APCORR reference file for the mosaic's configuration
        (`calimage3.reference_data.select_apcorr_rows`): ``eefraction``
        (0-1), ``radius``, ``apcorr``, ``skyin``, ``skyout`` (detector
        pixels); takes precedence over ``psf_fwhm``.
    pixel_scale_ratio : float
        Mosaic-to-detector pixel scale ratio (``PXSCLRT``): the APCORR
        radii are divided by it, as jwst does.
    apcorr_source : str or None
        Name of the APCORR file, for the log and ``meta``.
    min_psf_stars : int
        Minimum number of stars for the measured encircled-energy curve;
        with fewer, ``aper_total_*`` are NaN and
        ``meta['aperture_params']['method']`` is ``'refused'``.
    threads : int
        Threads for the detection image's convolution (`smooth`); the
        catalog does not depend on it.

    Returns
    -------
    catalog : astropy.table.QTable
        One row per source with the JWST columns (see `_column_spec`):
        fluxes in Jy, magnitudes as plain floats, sizes in pix, angles in
        deg, ``sky_*`` as `~astropy.coordinates.SkyCoord`.  ``meta`` holds
        ``aperture_params``, ``abvega_offset``, ``pixar_sr`` and the
        detection settings.  A table with no rows (same columns) when
        nothing is found.
    segmentation : ndarray of int32, shape (ny, nx)
        Source labels (equal to the ``label`` column), 0 = background.

    Notes
    -----
    ``aper_total_flux`` is meaningful for point sources only.  The default
    ``ci1/ci2_star_threshold`` (2.0, 1.8) suit JWST PSFs with extended
    wings; for a nearly Gaussian PSF a resolved source cannot exceed
    ``(r_ee2 / r_ee1)**2 = 1.94`` in ``CI_50_30``, so lower thresholds are
    needed there.
    """
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"data must be a 2D array, got {data.ndim} dimensions")
    shape = data.shape
    data = data.astype(np.float64)  # a copy, filled in place below
    err = _validate_image("err", err, shape)  # a float64 copy, filled in place below
    # Only compared with 0 (a float64 copy would give the same coverage).
    wht = _validate_image("wht", wht, shape, copy=False)
    _check_positive("pixar_sr", pixar_sr)
    _check_positive("bkg_boxsize", bkg_boxsize, integer=True)
    _check_positive("kernel_fwhm", kernel_fwhm)
    _check_positive("snr_threshold", snr_threshold)
    _check_positive("npixels", npixels, integer=True)
    _check_positive("min_psf_stars", min_psf_stars, integer=True)
    aperture_ee = _validate_aperture_ee((aperture_ee1, aperture_ee2, aperture_ee3))
    for name, value in (("ci1_star_threshold", ci1_star_threshold),
                        ("ci2_star_threshold", ci2_star_threshold)):
        if not (np.isscalar(value) and np.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if abvega_offset is not None and not (np.isscalar(abvega_offset) and np.isfinite(abvega_offset)):
        raise ValueError(f"abvega_offset must be a finite number or None, got {abvega_offset!r}")
    if psf_fwhm is not None:
        _check_positive("psf_fwhm", psf_fwhm)
    npixels = int(npixels)

    coverage = ~np.isfinite(data)
    if wht is not None:
        coverage |= ~(np.isfinite(wht) & (wht > 0))
    box = (min(int(bkg_boxsize), shape[0]), min(int(bkg_boxsize), shape[1]))
    meta = {
        "pixar_sr": float(pixar_sr),
        "bkg_boxsize": list(box),
        "kernel_fwhm": float(kernel_fwhm),
        "snr_threshold": float(snr_threshold),
        "npixels": npixels,
        "deblend": bool(deblend),
        "ci_star_thresholds": [float(ci1_star_threshold), float(ci2_star_threshold)],
        "abvega_offset": abvega_offset,
    }
    empty_segm = np.zeros(shape, dtype=np.int32)
    if coverage.all():
        log.warning("No pixel has coverage; the source catalog is empty")
        return _assemble(None, aperture_ee, meta), empty_segm

    # 2-4: background, subtraction, convolution, detection.
    filled = data
    filled[coverage] = 0.0
    bkg = _background(filled, box, coverage)
    # Both full-size images from one pair of axis operators (calimage3.background).
    bkg_image, bkg_rms = background_images(bkg)
    # In place, and each full-size image dropped once used: on a large mosaic
    # each is hundreds of MB.
    sub = np.subtract(filled, bkg_image, out=filled)
    del bkg_image, filled, data
    sub[coverage] = 0.0
    threshold = snr_threshold * bkg_rms
    segm, convolved = detect_segments(
        sub, threshold, kernel_fwhm=kernel_fwhm, npixels=npixels, deblend=deblend,
        mask=coverage, threads=threads,
    )
    del threshold
    if segm is None:
        log.warning("No sources were found; the source catalog is empty")
        return _assemble(None, aperture_ee, meta), empty_segm
    log.info("Detected %d sources", segm.n_labels)

    # 5: segment properties, in Jy.
    to_jy = 1.0e6 * pixar_sr
    data_jy = sub * to_jy
    err_jy = err
    if err_jy is not None:
        err_jy[coverage | ~np.isfinite(err_jy)] = 0.0
        err_jy *= to_jy
    convolved *= to_jy
    scat = SourceCatalog(
        data_jy << u.Jy, segm, convolved_data=convolved << u.Jy,
        error=None if err_jy is None else err_jy << u.Jy, mask=coverage, wcs=wcs,
    )
    labels = np.asarray(scat.label, dtype=np.int64)
    n = labels.size
    xy = np.column_stack([np.asarray(scat.x_centroid, float), np.asarray(scat.y_centroid, float)])
    finite_xy = np.all(np.isfinite(xy), axis=1)
    xy_phot = np.where(finite_xy[:, None], xy, -1000.0)  # off the image: NaN photometry

    # Nearest neighbours.
    if n > 1:
        dist, idx = KDTree(xy_phot).query(xy_phot, k=[2])
        nn_dist = dist[:, 0].astype(float)
        nn_label = labels[idx[:, 0]]
        nn_dist[~finite_xy] = np.nan
        nn_label[~finite_xy] = -1
    else:
        nn_dist = np.full(n, np.nan)
        nn_label = np.full(n, -1, dtype=np.int64)

    # 6: aperture radii and corrections, local background, aperture photometry.
    if apcorr_table is not None:
        params = _apcorr_from_table(apcorr_table, aperture_ee, float(pixel_scale_ratio),
                                    apcorr_source or "apcorr_table")
    elif psf_fwhm is not None:
        params = _gaussian_params(float(psf_fwhm), aperture_ee, "psf_fwhm")
    else:
        area = np.asarray(scat.area.value, dtype=float)
        # Sum of the background variance over each segment: a bincount over
        # the segment pixels only (raster order, as ndimage.sum_labels over
        # the whole image, so the same sums).
        seg_flat = segm.data.ravel()
        pix = np.flatnonzero(seg_flat)
        var_sum = np.bincount(seg_flat[pix], weights=(bkg_rms.ravel()[pix] * to_jy) ** 2,
                              minlength=int(labels.max()) + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            noise = np.sqrt(var_sum[labels])
            snr = np.asarray(scat.segment_flux.value, float) / noise
        snr[~(area > 0)] = np.nan
        iy = np.clip(np.round(xy_phot[:, 1]).astype(int), 0, shape[0] - 1)
        ix = np.clip(np.round(xy_phot[:, 0]).astype(int), 0, shape[1] - 1)
        params, curve = _self_calibrated_params(
            sub, coverage, np.asarray(scat.fwhm.value, float), snr,
            np.asarray(scat.segment_flux.value, float) / to_jy, xy_phot, bkg_rms[iy, ix],
            aperture_ee, float(kernel_fwhm), int(min_psf_stars),
            near_hole=_touches(segm.data, coverage, labels), wht=wht,
        )
        meta["psf_curve"] = _curve_meta(curve)
    meta["aperture_params"] = params.as_dict()

    bkg_loc, bkg_loc_err, _ = _local_background(
        data_jy, xy_phot, params.bkg_aperture_inner_radius, params.bkg_aperture_outer_radius,
        mask=coverage,
    )
    sums, sum_errs = _aperture_sums(data_jy, xy_phot, params.aperture_radii, err_jy, coverage)
    areas = np.pi * np.asarray(params.aperture_radii) ** 2
    fluxes = sums - bkg_loc[:, None] * areas[None, :]

    values = {
        "label": labels,
        "xcentroid": xy[:, 0],
        "ycentroid": xy[:, 1],
        "sky_centroid": scat.sky_centroid,
        "aper_bkg_flux": bkg_loc,
        "aper_bkg_flux_err": bkg_loc_err,
    }
    vega = np.nan if abvega_offset is None else float(abvega_offset)
    total = params.aperture_corrections[-1] * fluxes[:, -1]
    total_err = params.aperture_corrections[-1] * sum_errs[:, -1]
    flux_cols = [(f"aper{e}", fluxes[:, k], sum_errs[:, k]) for k, e in enumerate(aperture_ee)]
    flux_cols.append(("aper_total", total, total_err))
    for stem, f, fe in flux_cols:
        mag, mag_err = flux_to_abmag(f, fe)
        values[f"{stem}_flux"] = f
        values[f"{stem}_flux_err"] = fe
        values[f"{stem}_abmag"] = mag
        values[f"{stem}_abmag_err"] = mag_err
        values[f"{stem}_vegamag"] = mag - vega
        values[f"{stem}_vegamag_err"] = mag_err if abvega_offset is not None else mag_err * np.nan

    # 7: concentration, morphology, neighbours.
    with np.errstate(divide="ignore", invalid="ignore"):
        ci = {(i, j): fluxes[:, j] / fluxes[:, i] for i, j in ((0, 1), (1, 2), (0, 2))}
    for (i, j), value in ci.items():
        values[f"CI_{aperture_ee[j]}_{aperture_ee[i]}"] = value
    values["is_extended"] = (ci[(0, 1)] > ci1_star_threshold) & (ci[(1, 2)] > ci2_star_threshold)
    sharp, rnd = _daofind_stats(data_jy, xy_phot, float(kernel_fwhm))
    sharp[~finite_xy] = np.nan
    rnd[~finite_xy] = np.nan
    values["sharpness"] = sharp
    values["roundness"] = rnd
    values["nn_label"] = nn_label
    values["nn_dist"] = nn_dist

    iso = np.asarray(scat.segment_flux.to_value(u.Jy), float)
    iso_err = (np.full(n, np.nan) if err_jy is None
               else np.asarray(scat.segment_flux_err.to_value(u.Jy), float))
    iso_mag, iso_mag_err = flux_to_abmag(iso, iso_err)
    values.update({
        "isophotal_flux": iso,
        "isophotal_flux_err": iso_err,
        "isophotal_abmag": iso_mag,
        "isophotal_abmag_err": iso_mag_err,
        "isophotal_vegamag": iso_mag - vega,
        "isophotal_vegamag_err": iso_mag_err if abvega_offset is not None else iso_mag_err * np.nan,
        "isophotal_area": scat.area,
        "semimajor_sigma": scat.semimajor_axis,
        "semiminor_sigma": scat.semiminor_axis,
        "ellipticity": np.asarray(scat.ellipticity, float),
        "orientation": scat.orientation,
        "sky_orientation": _sky_orientation(wcs, xy_phot, np.asarray(scat.orientation.value)),
        "sky_bbox_ll": scat.sky_bbox_ll,
        "sky_bbox_ul": scat.sky_bbox_ul,
        "sky_bbox_lr": scat.sky_bbox_lr,
        "sky_bbox_ur": scat.sky_bbox_ur,
    })
    for key in ("sky_centroid", "sky_bbox_ll", "sky_bbox_ul", "sky_bbox_lr", "sky_bbox_ur"):
        if not isinstance(values[key], SkyCoord) or values[key].isscalar:
            values[key] = SkyCoord(np.atleast_1d(values[key].ra), np.atleast_1d(values[key].dec))
    for key, value in values.items():
        if not isinstance(value, SkyCoord):
            values[key] = np.atleast_1d(value)
    return _assemble(values, aperture_ee, meta), segm.data.astype(np.int32)
