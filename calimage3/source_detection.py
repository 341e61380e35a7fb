"""Point-source detection for alignment (the first stage of JWST ``tweakreg``).

`detect_sources` finds point-like sources in one exposure: photutils
``Background2D`` for the background and its noise, then ``IRAFStarFinder``
or ``DAOStarFinder``, optionally refined windowed centroids.  It is kept
apart from the catalog matching in `calimage3.tweakreg` so that the
per-exposure detection jobs do not import the alignment libraries.

Nothing here reads or writes files.
"""

import math
import warnings

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from photutils.background import Background2D
from photutils.detection import DAOStarFinder, IRAFStarFinder
from photutils.utils import NoDetectionsWarning
from scipy.ndimage import convolve
from scipy.special import erf

from .background import background_images
from .checks import require_positive

__all__ = ["STARFINDERS", "detect_sources"]

#: Names accepted for ``starfinder`` (case-insensitive), as in JWST.
STARFINDERS = {"iraf": "iraf", "irafstarfinder": "iraf", "dao": "dao", "daostarfinder": "dao"}

_CATALOG_COLUMNS = ("x", "y", "flux")
_RECENTER_CHUNK = 1024
_PEAK_CHUNK = 8192  # candidate pixels per gather in `circular_peaks` (chunk x footprint float64s)


# --------------------------------------------------------------------------
# Source detection
# --------------------------------------------------------------------------


def _empty_catalog():
    return Table(names=_CATALOG_COLUMNS, dtype=(float, float, float))


def _validate_detection(data, err, mask, snr_threshold, kernel_fwhm, bkg_boxsize, brightest,
                        peakmax, starfinder, sharplo, sharphi, roundlo, roundhi):
    data = np.asarray(data)
    if data.ndim != 2 or min(data.shape) < 1:
        raise ValueError(f"data must be a non-empty 2-D array, got shape {data.shape}")
    for name, arr in (("err", err), ("mask", mask)):
        if arr is not None and np.shape(arr) != data.shape:
            raise ValueError(
                f"{name} must have the same shape as data {data.shape}, got {np.shape(arr)}"
            )
    require_positive("snr_threshold", snr_threshold)
    require_positive("kernel_fwhm", kernel_fwhm)
    require_positive("bkg_boxsize", bkg_boxsize, integer=True)
    require_positive("brightest", brightest, integer=True, allow_none=True)
    require_positive("peakmax", peakmax, allow_none=True)
    if not isinstance(starfinder, str) or starfinder.lower() not in STARFINDERS:
        raise ValueError(
            f"starfinder must be one of {sorted(set(STARFINDERS.values()))}, got {starfinder!r}"
        )
    if not sharplo < sharphi:
        raise ValueError(f"sharplo must be below sharphi, got sharplo={sharplo!r}, sharphi={sharphi!r}")
    if not roundlo < roundhi:
        raise ValueError(f"roundlo must be below roundhi, got roundlo={roundlo!r}, roundhi={roundhi!r}")
    return data


def _column(table, *names):
    """First of ``names`` that ``table`` has (photutils renamed its columns in 3.0)."""
    for name in names:
        if name in table.colnames:
            return name
    raise KeyError(f"none of {names} in the star finder output")


def _windowed_centroids(image, bad, x, y, fwhm, niter=30, tol=1e-4):
    """Gaussian-windowed centroids (SExtractor ``XWIN``), vectorised over sources.

    Iterates ``c <- c + 2 sum(w I (p - c)) / sum(w I)`` with a circular
    Gaussian window ``w`` of FWHM ``fwhm`` centred on ``c``.  The fixed
    point, where the windowed first moment vanishes, is the centre of any
    symmetric profile, free of the pixel-phase bias of moments in a fixed
    box.

    Returns
    -------
    xc, yc : ndarray
        Refined centroids (input positions where ``usable`` is False).
    usable : ndarray of bool
        False where the iteration failed or moved more than one pixel, or
        where a bad or off-detector pixel lies within ``1.2 * fwhm`` of the
        centroid: such a truncated profile gives a biased centroid.
    """
    sig = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    rcut = 1.2 * fwhm
    half = int(math.ceil(max(4.0 * sig, rcut))) + 2
    ny, nx = image.shape
    offs = np.arange(-half, half + 1)
    px = np.rint(x).astype(int)[:, None, None] + offs[None, None, :]
    py = np.rint(y).astype(int)[:, None, None] + offs[None, :, None]
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    cpx, cpy = np.clip(px, 0, nx - 1), np.clip(py, 0, ny - 1)
    valid = inside & ~bad[cpy, cpx]
    cut = np.where(valid, image[cpy, cpx], 0.0)
    xc, yc = x.astype(float).copy(), y.astype(float).copy()
    ok = np.ones(x.size, dtype=bool)
    active = ok.copy()
    for _ in range(niter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        ddx = px[idx] - xc[idx, None, None]
        ddy = py[idx] - yc[idx, None, None]
        wi = np.exp(-(ddx**2 + ddy**2) / (2.0 * sig**2)) * cut[idx]
        norm = wi.sum(axis=(1, 2))
        good = norm > 0
        norm = np.where(good, norm, 1.0)
        stepx = np.where(good, 2.0 * (wi * ddx).sum(axis=(1, 2)) / norm, 0.0)
        stepy = np.where(good, 2.0 * (wi * ddy).sum(axis=(1, 2)) / norm, 0.0)
        xc[idx] += stepx
        yc[idx] += stepy
        ok[idx] &= good & np.isfinite(xc[idx]) & np.isfinite(yc[idx])
        ok[idx] &= np.hypot(xc[idx] - x[idx], yc[idx] - y[idx]) < 1.0
        # Each source stops when converged (or failed).
        active[idx] = ok[idx] & ((np.abs(stepx) >= tol) | (np.abs(stepy) >= tol))
    near = np.hypot(px - xc[:, None, None], py - yc[:, None, None]) <= rcut
    truncated = np.any(near & ~valid, axis=(1, 2))
    usable = ok & ~truncated
    return np.where(usable, xc, x), np.where(usable, yc, y), usable


def circular_peaks(data, threshold, radius, mask=None):
    """The peaks photutils' star finders search for, found only among pixels above ``threshold``.

    The same ``(x, y)``, in the same order, as
    ``photutils.detection.find_peaks(data, threshold, min_separation=radius,
    mask=mask)``.  photutils tests every pixel of the image and checks the
    tens of thousands of noise maxima it finds against its circular
    footprint one at a time in Python (0.3-0.6 s for a 2048 x 2048
    exposure); only pixels above the threshold can be peaks, so only they
    are tested here, all at once.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Image (the finder's convolved image).
    threshold : float
        Peaks must be strictly above it; positive.
    radius : float
        photutils ``min_separation``, pixels; positive.
    mask : ndarray of bool or None
        True where a pixel may not be a peak.

    Returns
    -------
    ndarray of int, shape (n, 2)
        ``(x, y)`` of each peak, in row-major order.

    Notes
    -----
    photutils' rule, reproduced for a pixel of value ``v``: ``v`` is the
    maximum of the box of ``size = len(np.arange(-radius, radius + 1))``
    pixels around it, or both the maximum of a smaller box inscribed in
    the circle and the maximum of the circular footprint (offsets ``k -
    size // 2``, kept where ``np.arange(-radius, radius + 1)[k]`` lies
    within ``radius`` of the origin); outside the image the values are 0.
    For a radius under about 2 pixels the "inscribed" box is larger than
    the footprint and photutils' rule differs from a plain circular
    maximum filter; it is photutils' rule that the finders use.  NaNs
    are replaced by the smallest value and may not be peaks; a constant
    image has none.
    """
    data = np.asarray(data, dtype=float)
    if not threshold > 0 or not radius > 0:
        raise ValueError(f"circular_peaks: threshold and radius must be positive, got {threshold}, {radius}")
    none = np.empty((0, 2), dtype=np.intp)
    if data.size == 0 or np.all(data == data.flat[0]):
        return none
    nan = np.isnan(data)
    if nan.any():
        data = np.where(nan, np.nanmin(data), data)
    above = data > threshold
    above &= ~nan
    if mask is not None:
        above &= ~np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(above)
    if ys.size == 0:
        return none

    idx = np.arange(-radius, radius + 1)
    size, half = idx.size, idx.size // 2
    half_side = math.floor(radius / math.sqrt(2) - (0.5 if size % 2 == 0 else 0.0))
    inscribed = max(2 * half_side + 1, 3) // 2
    lo, hi = max(half, inscribed), max(size - 1 - half, inscribed)
    offsets = np.arange(-lo, hi + 1)
    oy, ox = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
    in_box = (oy >= -half) & (oy <= size - 1 - half) & (ox >= -half) & (ox <= size - 1 - half)
    in_inscribed = (np.abs(oy) <= inscribed) & (np.abs(ox) <= inscribed)
    in_footprint = np.zeros(oy.size, dtype=bool)
    in_footprint[in_box] = (idx[oy[in_box] + half] ** 2 + idx[ox[in_box] + half] ** 2) <= radius**2

    ny, nx = data.shape

    def around(y, x):
        # Values at (y, x), 0 outside the image (photutils' cval), without a padded copy of the image.
        inside = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
        return np.where(inside, data[np.clip(y, 0, ny - 1), np.clip(x, 0, nx - 1)], 0.0)

    values = data[ys, xs]
    # A peak is at least its immediate neighbours in both boxes: that rejects most pixels cheaply.
    near = in_box & (np.abs(oy) <= 1) & (np.abs(ox) <= 1)
    keep = np.ones(ys.size, dtype=bool)
    for dy, dx in zip(oy[near], ox[near]):
        keep &= around(ys + dy, xs + dx) <= values
    ys, xs, values = ys[keep], xs[keep], values[keep]
    keep = np.empty(ys.size, dtype=bool)
    for start in range(0, ys.size, _PEAK_CHUNK):
        part = slice(start, start + _PEAK_CHUNK)
        local = around(ys[part, None] + oy, xs[part, None] + ox)
        v = values[part]
        keep[part] = (v == local[:, in_box].max(axis=1)) | (
            (v == local[:, in_inscribed].max(axis=1)) & (v == local[:, in_footprint].max(axis=1, initial=-np.inf)))
    return np.column_stack([xs[keep], ys[keep]]) if keep.any() else none


def _background(data, bad, bkg_boxsize):
    """Background map and its median RMS, ignoring ``bad`` pixels."""
    ny, nx = data.shape
    box = (min(bkg_boxsize, ny), min(bkg_boxsize, nx))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            bkg = Background2D(data, box, mask=bad)
        background, rms_image = background_images(bkg)
        background = np.asarray(background, dtype=float)
        rms = float(np.median(np.asarray(rms_image)[~bad]))
    except ValueError:
        # Too many bad pixels for the mesh: use global clipped statistics.
        _, median, std = sigma_clipped_stats(data[~bad], sigma=3.0, maxiters=10)
        background = np.full(data.shape, median, dtype=float)
        rms = float(std)
    return background, rms


def detect_sources(
    data,
    err=None,
    mask=None,
    *,
    snr_threshold=10.0,
    kernel_fwhm=2.5,
    bkg_boxsize=400,
    brightest=200,
    peakmax=None,
    starfinder="iraf",
    sharplo=0.2,
    sharphi=1.0,
    roundlo=-1.0,
    roundhi=1.0,
    recenter=True,
):
    """Point-like sources of one exposure, for alignment.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Science array, MJy/sr (any units work; thresholds follow them).
    err : ndarray or None
        1-sigma uncertainty, same shape as ``data``.  As in JWST (where only
        the segmentation finder uses it) it does not set the threshold;
        pixels where it is not finite are treated as bad.
    mask : ndarray of bool or None
        True where a pixel is bad and must be ignored; same shape as
        ``data``.  Non-finite ``data`` are always ignored.
    snr_threshold : float
        Detection threshold in units of the background RMS.
    kernel_fwhm : float
        FWHM of the Gaussian detection kernel, pixels.
    bkg_boxsize : int
        Background mesh box size, pixels; clipped to the image size.
    brightest : int or None
        Keep at most this many sources, brightest first; None keeps all.
    peakmax : float or None
        Reject sources whose background-subtracted peak pixel exceeds this
        (units of ``data``), e.g. to drop saturated stars.
    starfinder : {'iraf', 'dao'}
        photutils ``IRAFStarFinder`` (JWST default) or ``DAOStarFinder``.
    sharplo, sharphi : float
        Inclusive bounds on the finder's sharpness statistic.
    roundlo, roundhi : float
        Inclusive bounds on the finder's roundness statistic.
    recenter : bool
        calimage3 extension (not a JWST parameter): refine the finder's
        centroids with Gaussian-windowed centroids (window FWHM
        ``kernel_fwhm``) and drop sources whose profile is cut by the
        detector edge or bad pixels.  False returns the finder's own
        centroids and sources, as JWST does.

    Returns
    -------
    astropy.table.Table
        Columns ``x``, ``y`` (zero-based pixel centroids) and ``flux``
        (finder flux, background-subtracted, units of ``data`` times
        pixels), sorted by decreasing flux, at most ``brightest`` rows.
        An empty table with these columns when nothing is found.

    Notes
    -----
    Stages:

    1. Bad pixels (``mask``, non-finite ``data`` or ``err``) are excluded.
    2. ``Background2D`` (box ``bkg_boxsize``, sigma-clipped median and
       standard deviation) gives the background and its RMS; if the mesh
       cannot be computed (too many bad pixels), global sigma-clipped
       statistics are used instead.
    3. The background is subtracted and the star finder run with
       ``threshold = snr_threshold * median(background RMS)`` and
       ``fwhm = kernel_fwhm``; bad pixels are masked.
    4. With ``recenter``, each centroid is refined by iterating a
       Gaussian-windowed first moment to zero (SExtractor ``XWIN``) on
       the background-subtracted image.  ``IRAFStarFinder`` moment
       centroids in a fixed box carry a pixel-phase bias of up to ~0.1
       pixel for FWHM ~2 pixel stars (``DAOStarFinder`` ~0.08); the
       windowed centroids are unbiased for symmetric PSFs, which matters
       when a fit of only tens of stars must reach 0.01 pixel.  Sources
       with a bad or off-detector pixel within ``1.2 * kernel_fwhm`` of
       the centroid, or whose iteration fails or moves more than a pixel,
       are dropped: a truncated profile biases the centroid by up to
       tenths of a pixel, differently in each dithered exposure.
    5. Sources are sorted by flux and the ``brightest`` kept.

    JWST passes ``median(background + snr_threshold * RMS)`` as the
    threshold on the unsubtracted image; as both finders measure peaks
    above the local sky, that matches the threshold used here only where
    the background is near zero.  Here a source must stand
    ``snr_threshold`` RMS above the background, as the parameter's name
    says, whatever the background level or slope.
    """
    data = _validate_detection(data, err, mask, snr_threshold, kernel_fwhm, bkg_boxsize,
                               brightest, peakmax, starfinder, sharplo, sharphi, roundlo, roundhi)
    data = np.asarray(data, dtype=float)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if err is not None:
        bad |= ~np.isfinite(np.asarray(err, dtype=float))
    if bad.all():
        return _empty_catalog()

    background, rms = _background(data, bad, bkg_boxsize)
    if not np.isfinite(rms) or rms <= 0:
        return _empty_catalog()
    work = np.where(bad, 0.0, data - background)
    threshold = snr_threshold * rms

    finder_class = IRAFStarFinder if STARFINDERS[starfinder.lower()] == "iraf" else DAOStarFinder
    settings = dict(peak_max=peakmax, sharpness_range=(sharplo, sharphi), roundness_range=(roundlo, roundhi))
    finder = finder_class(threshold, kernel_fwhm, **settings)
    # The finder's own peak search, done faster (`circular_peaks`): its
    # threshold on the convolved image (DAOStarFinder scales it), its
    # footprint, its convolution; the finder then measures those peaks.
    convolved = convolve(work, finder.kernel.data, mode="constant", cval=0.0)
    peaks = circular_peaks(convolved, getattr(finder, "threshold_eff", finder.threshold),
                           finder.min_separation, mask=bad)
    del convolved
    if len(peaks) == 0:
        return _empty_catalog()
    finder = finder_class(threshold, kernel_fwhm, xycoords=peaks, **settings)
    with warnings.catch_warnings():
        # "No sources were found" is an ordinary outcome here.
        warnings.simplefilter("ignore", NoDetectionsWarning)
        sources = finder(work, mask=bad)
    if sources is None or len(sources) == 0:
        return _empty_catalog()

    x = np.asarray(sources[_column(sources, "x_centroid", "xcentroid")], dtype=float)
    y = np.asarray(sources[_column(sources, "y_centroid", "ycentroid")], dtype=float)
    flux = np.asarray(sources["flux"], dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    keep &= ~_sharper_than_psf(work, x, y, kernel_fwhm)
    order = np.argsort(-flux[keep], kind="stable")
    x, y, flux = x[keep][order], y[keep][order], flux[keep][order]
    if recenter:
        # Brightest first, in chunks to bound memory in crowded fields,
        # stopping once ``brightest`` usable sources are found.
        usable = []
        for start in range(0, x.size, _RECENTER_CHUNK):
            part = slice(start, start + _RECENTER_CHUNK)
            x[part], y[part], ok = _windowed_centroids(work, bad, x[part], y[part], kernel_fwhm)
            usable.append(ok)
            if brightest is not None and sum(int(u.sum()) for u in usable) >= brightest:
                break
        usable = np.concatenate(usable)
        x, y, flux = (a[: usable.size][usable] for a in (x, y, flux))
    if brightest is not None:
        x, y, flux = x[:brightest], y[:brightest], flux[:brightest]
    catalog = Table([x, y, flux], names=_CATALOG_COLUMNS)
    return catalog


def _sharper_than_psf(image, x, y, kernel_fwhm):
    """Detections too sharp to be point sources: residual cosmic rays and hot pixels.

    The brightest pixel of a detection's 3x3 box holds ~20% of the box's
    light for a PSF of FWHM 2-2.5 pixels, but 50-100% for a one-to-three
    pixel cosmic-ray hit.  Detections whose peak fraction exceeds twice
    that of a Gaussian of ``kernel_fwhm`` (and at least one half) are
    rejected; for FWHM near one pixel nothing is rejected.
    """
    ny, nx = image.shape
    ix = np.clip(np.round(x).astype(int), 1, nx - 2)
    iy = np.clip(np.round(y).astype(int), 1, ny - 2)
    offsets = np.arange(-1, 2)
    boxes = image[iy[:, None, None] + offsets[None, :, None], ix[:, None, None] + offsets[None, None, :]]
    boxes = np.clip(boxes, 0.0, None)
    total = boxes.sum(axis=(1, 2))
    peak_fraction = np.where(total > 0, boxes.max(axis=(1, 2)) / np.where(total > 0, total, 1.0), 1.0)
    sigma = kernel_fwhm / 2.3548
    centre = erf(0.5 / (np.sqrt(2.0) * sigma)) ** 2
    box = erf(1.5 / (np.sqrt(2.0) * sigma)) ** 2
    limit = max(0.5, 2.0 * centre / box)
    return peak_fraction > limit
