"""Outlier (cosmic-ray) detection on dithered imaging (JWST ``outlier_detection``).

The JWST imaging mode, as ``stcal.outlier_detection`` implements it:

1. drizzle every exposure on its own onto a common grid ("singles",
   `calimage3.resample.drizzle_single`);
2. mask, in each single, pixels whose drizzle weight is below ``maskpt``
   times the typical weight of that single, and take the median of the
   singles pixel by pixel (`median_in_sections`, which reads the singles
   one block of rows at a time so memory does not grow with their number);
3. blot the median back onto every exposure (`calimage3.resample.blot`);
4. flag pixels that differ from the blotted median by more than a noise
   plus blot-derivative threshold (`flag_outliers`), and set OUTLIER and
   DO_NOT_USE on them (`apply_outlier_flags`).

Beyond JWST, `flag_outliers` can first remove the smooth background left
in ``sci - blot`` (each exposure's own background gradient against the
median's; `residual_background`, parameter ``backg_boxsize``) and can
spare the cores of undersampled point sources with a flux-conservation
test near the median's peaks (``flux_box``, ``flux_tolerance``).  Pixels
outside an exposure's bounding box or flagged NON_SCIENCE are never
flagged (``usable``, from `calimage3.usable.usable_pixel_mask`).

With ``resample_data=False`` (exposures already on one pixel grid) step 1
uses each exposure as it is (`unresampled_single`), there is no blot, and
step 4 is JWST's simpler test against the median itself
(`flag_outliers_unresampled`).

Arrays come in and arrays go out; nothing here reads or writes files (the
singles may be numpy memmaps of files the caller wrote).
"""


import threading
import warnings

import numpy as np
from astropy.stats import sigma_clip

from .dqflags import PIXEL

__all__ = [
    "parse_pair",
    "compute_weight_threshold",
    "typical_weight",
    "median_in_sections",
    "nanmedian_first_axis",
    "unresampled_single",
    "flag_outliers_unresampled",
    "abs_derivative",
    "flag_outliers",
    "residual_background",
    "apply_outlier_flags",
]


def parse_pair(value, name="value"):
    """Two floats from a JWST pair parameter such as ``snr='5.0 4.0'``.

    Parameters
    ----------
    value : str or sequence of float
        Two numbers separated by blanks or a comma, or a 2-sequence.
    name : str
        Parameter name used in error messages.

    Returns
    -------
    tuple of float
        ``(first, second)``.
    """
    if isinstance(value, str):
        parts = value.replace(",", " ").split()
    else:
        try:
            parts = list(value)
        except TypeError:
            raise ValueError(f"{name}: expected two numbers, got {value!r}") from None
    if len(parts) != 2:
        raise ValueError(f"{name}: expected two numbers, got {value!r}")
    try:
        first, second = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected two numbers, got {value!r}") from None
    if not (np.isfinite(first) and np.isfinite(second)):
        raise ValueError(f"{name}: expected two finite numbers, got {value!r}")
    return first, second


def typical_weight(weight):
    """Typical drizzle weight of one single: what ``maskpt`` is a fraction of.

    Parameters
    ----------
    weight : array-like
        Drizzle weight image of one single.

    Returns
    -------
    float
        Mean of the finite non-zero weights after 3-sigma clipping (5
        iterations), as ``stcal`` computes it; 0 when the single has no
        non-zero weight.
    """
    weight = np.asarray(weight)
    good = weight[np.isfinite(weight) & (weight != 0)]
    if good.size == 0:
        return 0.0
    clipped = sigma_clip(good, sigma=3, maxiters=5, masked=False, copy=False)
    return float(np.mean(clipped, dtype=np.float64))


def compute_weight_threshold(weight, maskpt):
    """Weight below which a single-drizzled pixel is left out of the median.

    Parameters
    ----------
    weight : array-like
        Drizzle weight image of one single.
    maskpt : float
        Fraction of the typical weight, in [0, 1].

    Returns
    -------
    float
        ``maskpt`` times `typical_weight` (the clipped mean weight), as
        ``stcal`` computes it; 0 when the single has no non-zero weight.
    """
    return typical_weight(weight) * maskpt


def median_in_sections(singles, weights, *, maskpt=0.7, rows_per_section=256, typical_weights=None,
                       with_count=False, origins=None, shape=None, threads=1, offsets=None):
    """Median of single-drizzled images, computed a block of rows at a time.

    Parameters
    ----------
    singles : sequence of array-like, each shape (ny, nx)
        Single-drizzled images (MJy/sr); may be numpy memmaps: only row
        slices ``a[r0:r1]`` are read, plus nothing else.
    weights : sequence of array-like, each shape (ny, nx)
        Their drizzle weight images, read by row slices (and each once in
        full for its threshold, unless ``typical_weights`` is given).
    maskpt : float
        A pixel of a single is excluded where its weight is below
        ``maskpt`` times that single's typical weight
        (`compute_weight_threshold`); JWST default 0.7.
    rows_per_section : int
        Rows read from every single at a time; peak memory is about
        ``n_singles * rows_per_section * nx * 12`` bytes.
    typical_weights : sequence of float or None
        Each single's `typical_weight`, when already known (the
        single-drizzle jobs store it); computed from ``weights`` otherwise.
    with_count : bool
        Also return how many singles contributed to each pixel.
    origins : sequence of (int, int) or None
        When the singles are cutouts of the grid (each drizzled onto the
        part of it its exposure reaches): the grid pixel ``(y0, x0)`` of
        each cutout's first pixel.  Grid pixels outside a cutout are
        pixels that single does not cover.  None: every single is the
        whole grid.
    shape : tuple of int or None
        ``(ny, nx)`` of the grid; required with ``origins``.
    threads : int
        Bands computed at once (numpy's sort releases the GIL); the
        singles are read one band at a time.  Memory grows by one band's
        stack per thread.
    offsets : sequence of float or None
        A value subtracted from each single before the median: its sky
        level, when the singles were drizzled with the sky still in
        (drizzling is linear, so that equals drizzling the sky-subtracted
        exposure, and the singles need not wait for skymatch).  None: 0.

    Returns
    -------
    median : ndarray of float32, shape (ny, nx)
        Pixel-wise median of the unmasked, finite single values, MJy/sr;
        NaN where no single contributes.
    count : ndarray of uint8, shape (ny, nx)
        Only with ``with_count``: the number of singles in each pixel's
        median (0 where none).

    Notes
    -----
    Identical to ``np.nanmedian`` of the whole masked stack; sectioning
    only bounds memory, as the on-disk ``MedianComputer`` of stcal does.
    """
    singles = list(singles)
    weights = list(weights)
    if not singles:
        raise ValueError("singles: at least one single-drizzled image is needed")
    if len(weights) != len(singles):
        raise ValueError(
            f"weights: {len(weights)} weight images for {len(singles)} singles"
        )
    try:
        maskpt = float(maskpt)
    except (TypeError, ValueError):
        raise ValueError(f"maskpt: must be a number in [0, 1], got {maskpt!r}") from None
    if not 0.0 <= maskpt <= 1.0:
        raise ValueError(f"maskpt: must be a number in [0, 1], got {maskpt!r}")
    if int(rows_per_section) != rows_per_section or rows_per_section < 1:
        raise ValueError(
            f"rows_per_section: must be a positive integer, got {rows_per_section!r}"
        )
    rows_per_section = int(rows_per_section)
    if origins is None:
        shape = tuple(np.shape(singles[0]))
        origins = [(0, 0)] * len(singles)
    elif shape is None or len(origins) != len(singles):
        raise ValueError("origins: one (y0, x0) per single, and the grid's shape, are needed together")
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2:
        raise ValueError(f"singles: images must be 2-D, got shape {shape}")
    for i, (sci, wht, (y0, x0)) in enumerate(zip(singles, weights, origins)):
        h, w = np.shape(sci)[:2] if np.ndim(sci) == 2 else (-1, -1)
        if tuple(np.shape(wht)) != tuple(np.shape(sci)) or not (0 <= y0 and 0 <= x0 and y0 + h <= shape[0]
                                                                 and x0 + w <= shape[1]) or h < 0:
            raise ValueError(
                f"singles/weights: image {i} has shapes {np.shape(sci)}/{np.shape(wht)} at {(y0, x0)}, "
                f"which do not fit in the grid {shape}"
            )
    if typical_weights is None:
        thresholds = [compute_weight_threshold(w, maskpt) for w in weights]
    else:
        if len(typical_weights) != len(singles):
            raise ValueError(f"typical_weights: {len(typical_weights)} values for {len(singles)} singles")
        thresholds = [float(t) * maskpt for t in typical_weights]
    if offsets is None:
        offsets = [0.0] * len(singles)
    elif len(offsets) != len(singles):
        raise ValueError(f"offsets: {len(offsets)} values for {len(singles)} singles")
    offsets = [np.float32(v) for v in offsets]

    ny, nx = shape
    median = np.full(shape, np.nan, dtype=np.float32)
    count = np.zeros(shape, dtype=np.uint8)
    n = len(singles)

    # Views that read from disk share one file handle each: one band reads at a time.
    reading = threading.Lock()

    def band(r0):
        r1 = min(ny, r0 + rows_per_section)
        stack = np.full((n, r1 - r0, nx), np.nan, dtype=np.float32)
        with reading:
            for k, (sci, wht, thr, (y0, x0), offset) in enumerate(
                    zip(singles, weights, thresholds, origins, offsets)):
                # the rows of this band the single covers, in its own rows
                a, b = max(r0, y0) - y0, min(r1, y0 + np.shape(sci)[0]) - y0
                if a >= b:
                    continue
                part = stack[k, a + y0 - r0:b + y0 - r0, x0:x0 + np.shape(sci)[1]]
                np.subtract(sci[a:b], offset, out=part)
                w = np.asarray(wht[a:b])
                part[~(w >= thr) | (w == 0)] = np.nan
        median[r0:r1] = nanmedian_first_axis(stack)
        count[r0:r1] = np.minimum(np.count_nonzero(~np.isnan(stack), axis=0), 255)

    starts = range(0, ny, rows_per_section)
    if int(threads) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(int(threads)) as pool:
            list(pool.map(band, starts))
    else:
        for r0 in starts:
            band(r0)
    return (median, count) if with_count else median


def unresampled_single(data, weight, sky_level=0.0):
    """An exposure as its own "single", for ``resample_data=False``.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Science array, MJy/sr.
    weight : ndarray, shape (ny, nx)
        Its drizzle weight map (`calimage3.resample.build_driz_weight`), 0
        on unusable pixels.
    sky_level : float
        Sky still in ``data``, MJy/sr, subtracted as for a drizzled single.

    Returns
    -------
    data : ndarray of float32
        ``data - sky_level``; NaN where the weight is 0 or the data are not
        finite.
    weight : ndarray of float32
        The weight map, 0 where ``data`` is NaN.
    """
    sci = np.asarray(data, dtype=np.float32) - np.float32(sky_level)
    wht = np.asarray(weight, dtype=np.float32).copy()
    unusable = ~(wht > 0) | ~np.isfinite(sci)
    sci[unusable] = np.nan
    wht[unusable] = 0.0
    return sci, wht


def flag_outliers_unresampled(sci, err, median, *, snr="5.0 4.0", backg_boxsize=0, usable=None):
    """Outliers of an exposure against a median on its own pixel grid (``resample_data=False``).

    As JWST for data that are not resampled: ``|sci - median| > snr1 * err``
    (``err`` NaN counts as 0), with no derivative term, second threshold or
    neighbour growth.  With ``backg_boxsize`` > 0 the smooth background
    left in ``sci - median`` is removed first (`residual_background`), as
    in `flag_outliers`; ``usable`` (bool, same shape) limits the pixels
    that may be flagged and enter that background.

    Returns
    -------
    ndarray of bool
        True on outliers; False wherever ``sci`` or ``median`` is NaN or
        ``usable`` is False.
    """
    snr1, _ = parse_pair(snr, "snr")
    sci = np.asarray(sci, dtype=np.float64)
    median = np.asarray(median, dtype=np.float64)
    if sci.shape != median.shape:
        raise ValueError(f"median: shape {median.shape} differs from the exposure's {sci.shape}")
    usable = _usable(usable, sci.shape)
    with np.errstate(invalid="ignore"):
        diff = sci - median
    if _check_box(backg_boxsize, "backg_boxsize"):
        diff -= residual_background(diff, backg_boxsize, usable=usable)
    with np.errstate(invalid="ignore"):
        return (np.abs(diff) > snr1 * np.nan_to_num(np.asarray(err, dtype=np.float64))) & usable


def nanmedian_first_axis(stack):
    """``np.nanmedian(stack, axis=0)``, exactly, for a short first axis; NaN where all are NaN.

    Sorting puts NaNs last, so the median of each pixel's ``n`` finite
    values is the mean of sorted elements ``(n - 1) // 2`` and ``n // 2``;
    about five times faster than ``np.nanmedian`` for a handful of images.
    """
    ordered = np.sort(stack, axis=0)
    count = np.count_nonzero(~np.isnan(stack), axis=0)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[None], axis=0)[0]
    high = np.take_along_axis(ordered, (count // 2)[None], axis=0)[0]
    median = (low + high) * np.asarray(0.5, dtype=stack.dtype)
    median[count == 0] = np.nan
    return median


def abs_derivative(array, dtype=None):
    """Largest absolute difference between each pixel and its 4 neighbours.

    Parameters
    ----------
    array : ndarray, shape (ny, nx)
    dtype : numpy float dtype or None
        Precision of the differences and of the result; None: that of
        ``array`` (float64 for an integer array).  float32 values given
        with ``dtype=np.float64`` give exactly what their float64 copy
        would, without the copy.

    Returns
    -------
    ndarray, same shape, of ``dtype``
        ``max(|a[j, i] - a[j +- 1, i]|, |a[j, i] - a[j, i +- 1]|)`` over
        the neighbours that exist and are finite; 0 where none is; NaN
        where ``array`` is NaN (as ``stcal``'s ``_abs_deriv``).
    """
    array = np.asarray(array)
    if dtype is None:
        dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64
    out = np.zeros(array.shape, dtype=dtype)
    # one difference array at a time, made finite in place: the temporaries
    # of a 2048 x 2048 exposure are 32 MB each
    for axis in (0, 1):
        lead = (slice(None),) * axis
        upper, lower = lead + (slice(1, None),), lead + (slice(None, -1),)
        with np.errstate(invalid="ignore"):
            step = np.subtract(array[upper], array[lower], dtype=dtype)
        np.abs(step, out=step)
        step[~np.isfinite(step)] = 0
        np.maximum(out[upper], step, out=out[upper])
        np.maximum(out[lower], step, out=out[lower])
        del step
    out[np.isnan(array)] = np.nan
    return out


def flag_outliers(sci, err, blot, *, snr="5.0 4.0", scale="1.2 0.7", backg=0.0, backg_boxsize=0,
                  flux_box=0, flux_tolerance=0.1, usable=None, blot_count=None):
    """Pixels of an exposure that disagree with the blotted median.

    Parameters
    ----------
    sci : ndarray, shape (ny, nx)
        Exposure SCI, MJy/sr.
    err : ndarray, shape (ny, nx)
        Exposure ERR, MJy/sr (NaN counts as 0).
    blot : ndarray, shape (ny, nx)
        Median image blotted onto the exposure, MJy/sr.
    snr : str or pair of float
        ``(snr1, snr2)`` noise multipliers; JWST default ``'5.0 4.0'``.
    scale : str or pair of float
        ``(scale1, scale2)`` blot-derivative multipliers; JWST default
        ``'1.2 0.7'``.
    backg : float
        Background to subtract from ``sci - blot``, MJy/sr (the sky level
        when it is still in ``sci`` but not in the median).
    backg_boxsize : int
        Side, in pixels, of the boxes over which the smooth background
        left in ``sci - blot - backg`` is measured and removed
        (`residual_background`): the difference between this exposure's
        background gradient and the median's, which a constant sky level
        cannot take out.  0 (JWST): none removed.
    flux_box : int
        Odd side, in pixels, of the flux-conservation test that spares the
        cores of undersampled point sources (see Notes).  0 (JWST): no
        such test.
    flux_tolerance : float
        Fraction of the blotted flux in the ``flux_box`` box by which the
        exposure's flux there may exceed (or fall short of) the median's
        before a candidate near a source is confirmed.
    usable : ndarray of bool or None
        Same shape: pixels that may be flagged and enter the background
        (`calimage3.usable.usable_pixel_mask`); None: every pixel.
    blot_count : ndarray or None
        Same shape: how many singles the median had at each pixel (the
        median's count, blotted like the median).  The flux test applies
        only where it is at least 3: the median of two singles is their
        mean and holds half of any outlier, so a peak there may be the
        outlier itself.  None: the test applies everywhere.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True on outliers.  False wherever ``sci`` or ``blot`` is NaN or
        ``usable`` is False.

    Notes
    -----
    With ``D = sci - blot - backg - B``, where ``B`` is the smooth residual
    background (0 when ``backg_boxsize`` is 0), and ``G`` = `abs_derivative`
    of ``blot``:

    1. ``mask1 = |D| > scale1 * G + snr1 * err``;
    2. grow ``mask1`` to its 8 neighbours (3x3 box);
    3. keep the grown pixels where also ``|D| > scale2 * G + snr2 * err``
       (JWST's test, stages 1-3);
    4. with ``flux_box = k``: within one pixel of a peak of the median (a
       local 3x3 maximum of the blot, less its local sky, above
       ``snr1 * err``), keep a candidate only when the flux of ``D`` in
       the ``k x k`` box around it exceeds
       ``snr1 * sqrt(sum err**2) + flux_tolerance * sum |blot - sky|``
       (`_flux_test`, evaluated at the candidates only), where the
       median had at least three singles (``blot_count``).

    The derivative term keeps the sharp cores of stars, where small
    registration or interpolation errors give large differences, from
    being flagged.  It is not enough for undersampled point sources
    (FWHM ~1-1.3 pixels): the exposure whose pixel grid is centred on a
    star has a peak up to twice that of the median, which drizzling and
    blotting blur, and JWST flags it (jwst#9989, #5131, #10751), taking
    the brightest part of the star out of the mosaic.  Sub-pixel phase
    only moves a point source's flux between neighbouring pixels, so the
    flux in a box a few FWHM wide is the same in the exposure and the
    median; a cosmic ray adds flux there.  Stage 4 tests that.  Away from
    sources stage 4 does nothing, so faint cosmic rays on the sky are
    found as in JWST; on a source a cosmic ray must add more than
    ``flux_tolerance`` of the source's box flux (plus the box noise) to be
    flagged.
    """
    snr1, snr2 = parse_pair(snr, "snr")
    scale1, scale2 = parse_pair(scale, "scale")
    # Arithmetic in float64, as on float64 copies of the inputs, but without
    # making them: float32 values enter each float64 operation exactly.
    sci, err, blot = (_as_float(a) for a in (sci, err, blot))
    if sci.ndim != 2:
        raise ValueError(f"sci: must be 2-D, got shape {sci.shape}")
    for name, arr in (("err", err), ("blot", blot)):
        if arr.shape != sci.shape:
            raise ValueError(f"{name}: shape {arr.shape} differs from sci shape {sci.shape}")
    try:
        backg = float(backg)
    except (TypeError, ValueError):
        raise ValueError(f"backg: must be a number, got {backg!r}") from None
    flux_box = _check_box(flux_box, "flux_box", odd=True)
    backg_boxsize = _check_box(backg_boxsize, "backg_boxsize")
    try:
        flux_tolerance = float(flux_tolerance)
    except (TypeError, ValueError):
        flux_tolerance = -1.0
    if not (np.isfinite(flux_tolerance) and flux_tolerance >= 0):
        raise ValueError(f"flux_tolerance: must be a non-negative number, got {flux_tolerance!r}")
    usable = _usable(usable, sci.shape)
    err = np.nan_to_num(err, nan=0.0, posinf=0.0, neginf=0.0)  # a copy, in the input's precision
    deriv = abs_derivative(blot, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.subtract(sci, blot, dtype=np.float64)
        diff -= backg
    if backg_boxsize:
        diff -= residual_background(diff, backg_boxsize, usable=usable)
    # The two tests, a band of rows at a time: their thresholds and |diff|
    # would otherwise be three more full-size float64 arrays.
    mask1 = np.empty(sci.shape, dtype=bool)
    mask2 = np.empty(sci.shape, dtype=bool)
    for r0 in range(0, sci.shape[0], _ROWS_PER_BAND):
        rows = slice(r0, r0 + _ROWS_PER_BAND)
        adiff = np.abs(diff[rows])
        for mask, scale_k, snr_k in ((mask1, scale1, snr1), (mask2, scale2, snr2)):
            threshold = deriv[rows] * scale_k
            threshold += np.multiply(err[rows], snr_k, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                np.greater(adiff, threshold, out=mask[rows])
    mask1 &= usable
    mask = _dilate_3x3(mask1) & mask2 & usable
    if flux_box and mask.any():
        tested = mask if blot_count is None else mask & (np.asarray(blot_count) >= 2.5)
        mask &= _flux_test(tested, diff, err, blot, usable, flux_box, snr1, flux_tolerance)
    return mask


# Rows per band of the thresholds in `flag_outliers`.
_ROWS_PER_BAND = 256


def _as_float(array):
    """``array`` as it is when float32 or float64, else a float64 copy."""
    array = np.asarray(array)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def _check_box(value, name, odd=False):
    """A box size: a non-negative integer (odd when ``odd`` and non-zero); 0 means off."""
    if value is None:
        return 0
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name}: must be a non-negative integer, got {value!r}")
    value = int(value)
    if odd and value and value % 2 == 0:
        raise ValueError(f"{name}: must be odd (the box is centred on the pixel), got {value!r}")
    return value


def _usable(usable, shape):
    if usable is None:
        return np.ones(shape, bool)
    usable = np.asarray(usable)
    if usable.shape != tuple(shape) or usable.dtype != bool:
        raise ValueError(f"usable: must be a boolean array of shape {tuple(shape)}, got "
                         f"{usable.dtype} {usable.shape}")
    return usable


SOURCE_SKY_BOX = 17  # side of the box whose median is the median image's sky around a candidate
PEAK_RADIUS = 1  # candidates within this many pixels of a peak of the median get the flux test


def _flux_test(mask, diff, err, blot, usable, size, snr1, tolerance):
    """Stage 4 of `flag_outliers`, evaluated at the candidates only: True where a candidate stands.

    At each candidate of ``mask``, the median's light ``b`` is the blot
    less its local sky (the median of the ``SOURCE_SKY_BOX`` box: the
    median still holds the sky unless skymatch subtracted it).  The
    candidate is near a peak when a pixel within ``PEAK_RADIUS`` is a
    local 3x3 maximum of ``b`` above ``snr1 * err``; there it stands only
    if ``|sum(diff)| > snr1 * sqrt(sum(err**2)) + tolerance * sum(|b|)``
    over the ``size x size`` box.  Elsewhere every candidate stands.
    Unusable and non-finite pixels count as 0 in the sums.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return np.ones(mask.shape, bool)
    good = usable & np.isfinite(diff) & np.isfinite(blot)
    ny, nx = mask.shape

    def windows(array, fill, half):
        """``(n, 2 half + 1, 2 half + 1)`` cut-outs of ``array`` around the candidates; ``fill`` where
        unusable or off the image.  Indexed at the candidates only: a handful of pixels per
        candidate, however large the exposure."""
        off = np.arange(-half, half + 1)
        yy = ys[:, None, None] + off[None, :, None]
        xx = xs[:, None, None] + off[None, None, :]
        inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
        values = np.asarray(array[yy, xx], dtype=np.float64) if np.ndim(array) else array
        return np.where(inside & good[yy, xx], values, fill)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN boxes: no sky, no peak
        sky = np.nanmedian(windows(blot, np.nan, SOURCE_SKY_BOX // 2).reshape(len(ys), -1), axis=1)
    sky = np.nan_to_num(sky)
    reach = PEAK_RADIUS + 1
    light = windows(blot, -np.inf, reach) - sky[:, None, None]
    n = 2 * reach + 1
    local_max = np.full((len(ys), n - 2, n - 2), -np.inf)
    for dy in range(3):
        for dx in range(3):
            np.maximum(local_max, light[:, dy:dy + n - 2, dx:dx + n - 2], out=local_max)
    inner = light[:, 1:-1, 1:-1]
    near_peak = ((inner >= local_max) & (inner > snr1 * windows(err, np.inf, PEAK_RADIUS))).any(axis=(1, 2))
    half = size // 2
    excess = np.abs(windows(diff, 0.0, half).sum(axis=(1, 2)))
    noise = np.sqrt((windows(err, 0.0, half) ** 2).sum(axis=(1, 2)))
    flux = np.abs(windows(blot, 0.0, half) - sky[:, None, None] * windows(1.0, 0.0, half))
    stands = ~near_peak | (excess > snr1 * noise + tolerance * flux.sum(axis=(1, 2)))
    keep = ~mask
    keep[ys[stands], xs[stands]] = True
    return keep


def residual_background(residual, box_size, *, usable=None, nclip=3, sigma=3.0):
    """Smooth background of a residual image, from clipped medians in boxes.

    Parameters
    ----------
    residual : ndarray, shape (ny, nx)
        E.g. ``sci - blot - backg``, MJy/sr; NaN pixels are ignored.
    box_size : int
        Box side, pixels.  An image smaller than one box gets one value.
    usable : ndarray of bool or None
        Pixels that may enter the statistics.
    nclip : int
        Iterations of ``sigma`` clipping about the median in each box.
    sigma : float
        Clipping threshold in units of the box's robust (MAD) scatter.

    Returns
    -------
    ndarray of float64, same shape
        The background: sigma-clipped box medians (boxes with fewer
        than 10 usable pixels take the median of the others),
        interpolated bilinearly between box centres and extrapolated
        linearly beyond the outer centres, so a planar gradient is
        reproduced exactly.  0 everywhere when no pixel is usable.

    Notes
    -----
    Every exposure's background differs from the median of all of them by
    a smooth surface (each has its own gradient, and skymatch subtracts
    only a constant); this is that surface, to be removed before the
    outlier test, which would otherwise flag large areas where it
    exceeds a few sigma of the noise.
    """
    residual = np.asarray(residual, dtype=np.float64)
    box_size = _check_box(box_size, "backg_boxsize")
    if box_size == 0:
        raise ValueError("backg_boxsize: must be positive to measure a background")
    ny, nx = residual.shape
    good = np.isfinite(residual) & _usable(usable, residual.shape)
    my, mx = max(1, int(round(ny / box_size))), max(1, int(round(nx / box_size)))
    ey = np.linspace(0, ny, my + 1).round().astype(int)
    ex = np.linspace(0, nx, mx + 1).round().astype(int)
    # Boxes of 32 pixels or more are sampled every other row and column
    # (a quarter of the work; the medians stay far below the noise); the
    # box centres are those of the sampled pixels, so a plane stays exact.
    step = 2 if box_size >= 32 else 1
    rows = [np.arange(-(-ey[j] // step) * step, ey[j + 1], step) for j in range(my)]
    cols = [np.arange(-(-ex[i] // step) * step, ex[i + 1], step) for i in range(mx)]
    sampled = residual[::step, ::step]
    sampled_good = good[::step, ::step]
    mesh = np.full((my, mx), np.nan)
    for j in range(my):
        r0, r1 = rows[j][0] // step, rows[j][-1] // step + 1
        for i in range(mx):
            c0, c1 = cols[i][0] // step, cols[i][-1] // step + 1
            block = sampled[r0:r1, c0:c1][sampled_good[r0:r1, c0:c1]]
            if block.size < 10:
                continue
            for _ in range(nclip):
                centre = np.median(block)
                spread = 1.4826 * np.median(np.abs(block - centre))
                keep = np.abs(block - centre) <= sigma * spread if spread > 0 else block == centre
                if keep.all() or keep.sum() < 10:
                    break
                block = block[keep]
            mesh[j, i] = np.median(block)
    if not np.isfinite(mesh).any():
        return np.zeros((ny, nx))
    mesh = np.where(np.isfinite(mesh), mesh, np.nanmedian(mesh))
    wy = _linear_weights(np.array([r.mean() for r in rows]), ny)
    wx = _linear_weights(np.array([c.mean() for c in cols]), nx)
    return wy @ mesh @ wx.T


def _linear_weights(centres, n):
    """``(n, len(centres))`` weights of linear interpolation at pixels ``0 .. n-1``, extrapolating at the ends."""
    k = len(centres)
    weights = np.zeros((n, k))
    if k == 1:
        weights[:, 0] = 1.0
        return weights
    x = np.arange(n, dtype=np.float64)
    left = np.clip(np.searchsorted(centres, x, side="right") - 1, 0, k - 2)
    t = (x - centres[left]) / (centres[left + 1] - centres[left])
    rows = np.arange(n)
    weights[rows, left] = 1.0 - t
    weights[rows, left + 1] = t
    return weights


def _dilate_3x3(mask):
    """Binary dilation by a 3x3 square (``scipy.ndimage.binary_dilation``),
    in numpy: the flagging jobs then need not import scipy.ndimage."""
    padded = np.pad(mask, 1)
    grown = np.zeros_like(mask)
    ny, nx = mask.shape
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy:dy + ny, dx:dx + nx]
    return grown


def apply_outlier_flags(dq, mask):
    """DQ array with OUTLIER and DO_NOT_USE set on flagged pixels.

    Parameters
    ----------
    dq : ndarray of uint32, shape (ny, nx)
        Input data-quality array (not modified).
    mask : ndarray of bool, shape (ny, nx)
        Outlier mask from `flag_outliers`.

    Returns
    -------
    ndarray of uint32, shape (ny, nx)
        Copy of ``dq`` with ``OUTLIER | DO_NOT_USE`` or-ed in where
        ``mask`` is True.
    """
    dq = np.asarray(dq)
    mask = np.asarray(mask, dtype=bool)
    if dq.shape != mask.shape:
        raise ValueError(f"mask: shape {mask.shape} differs from dq shape {dq.shape}")
    out = dq.astype(np.uint32, copy=True)
    out[mask] |= np.uint32(PIXEL["OUTLIER"] | PIXEL["DO_NOT_USE"])
    return out
