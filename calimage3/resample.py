"""Drizzle resampling of calibrated exposures (the JWST ``resample`` step).

Exposures are drizzled one at a time onto a common output grid with the
``drizzle`` package, as the JWST ``ResampleStep`` (through
``stcal.resample``) does: a weight map per exposure (`build_driz_weight`),
sky subtraction, a pixel map from the exposure WCS to the output WCS, and
co-addition into a running weighted mean with a weight image and a context
image.  The variance arrays are resampled alongside and combined into the
output ``var_poisson``, ``var_rnoise``, ``var_flat`` and ``err`` arrays.

The co-add is split in two so that a workflow can drizzle the exposures
in parallel: `drizzle_exposure` drizzles one exposure onto the part of the
output grid it reaches (an `ExposureContribution`, whose size does not
depend on the size of the mosaic), and `MosaicCombiner` adds contributions
one at a time into the mosaic (``add`` then ``finalize``), with the same
result as one drizzle of all exposures.  `ResampledImage` chains the two
for callers that hold every exposure (``add_exposure`` then ``finalize``);
`drizzle_single` drizzles one exposure for outlier detection, and `blot`
interpolates a resampled image back onto an exposure's pixel grid.  Nothing
here reads or writes files.

Units: data are surface brightness (MJy/sr) in and out.  Because a drizzled
pixel is a weighted *mean* of the surface brightness of the input pixels
that overlap it, no pixel-area factor is applied when the input and output
pixel scales differ (``iscale = 1``); the total flux of a source,
``sum(data) * output pixel solid angle``, is then the same in the input and
the output.  JWST does the same: its only intensity factor,
``iscale = PIXAR_SR / (mean pixel area of the WCS)``, corrects a nominal
pixel area that differs from the WCS one, not the change of pixel scale; it
is 1 when the data are surface brightness on the true pixel solid angle (as
the calimage3 simulator writes them) and can be passed to
`ResampledImage.add_exposure` when it is not.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from drizzle.resample import Drizzle, blot_image

from .pixmap import pixel_map
from .pixmap import input_range as _input_range
from .usable import usable_pixel_mask

__all__ = [
    "KERNELS",
    "WEIGHT_TYPES",
    "VARIANCE_METHODS",
    "build_driz_weight",
    "exposure_time_weight",
    "ExposureContribution",
    "drizzle_exposure",
    "MosaicCombiner",
    "ResampledImage",
    "drizzle_single",
    "blot",
]

KERNELS = ("square", "gaussian", "point", "turbo", "lanczos2", "lanczos3")
WEIGHT_TYPES = ("ivm", "exptime")
VARIANCE_METHODS = ("jwst", "squared_weights")
_VAR_NAMES = ("var_rnoise", "var_poisson", "var_flat")
_CTX_PLANE_BITS = 32  # exposures per int32 context plane
_BLOT_INTERP = ("nearest", "linear", "poly3", "poly5", "lanczos3", "lanczos5")


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _check_kernel(kernel):
    if not isinstance(kernel, str) or kernel.lower() not in KERNELS:
        raise ValueError(f"kernel: must be one of {KERNELS}, got {kernel!r}")
    return kernel.lower()


def _check_pixfrac(pixfrac):
    try:
        value = float(pixfrac)
    except (TypeError, ValueError):
        raise ValueError(f"pixfrac: must be a number in (0, 1], got {pixfrac!r}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"pixfrac: must be in (0, 1], got {pixfrac!r}")
    return value


def _check_weight_type(weight_type):
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type: must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    return weight_type


def _check_fillval(fillval):
    """Return the string form drizzle expects and the float used for NaN tests."""
    if fillval is None:
        return "INDEF", math.nan
    if isinstance(fillval, str):
        text = fillval.strip()
        if text.upper() in ("INDEF", "NAN", ""):
            return "INDEF" if text.upper() == "INDEF" else "NAN", math.nan
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"fillval: must be a number, 'NAN' or 'INDEF', got {fillval!r}"
            ) from None
        return text, value
    if isinstance(fillval, (bool, np.bool_)):
        raise ValueError(f"fillval: must be a number, 'NAN' or 'INDEF', got {fillval!r}")
    try:
        value = float(fillval)
    except (TypeError, ValueError):
        raise ValueError(
            f"fillval: must be a number, 'NAN' or 'INDEF', got {fillval!r}"
        ) from None
    return repr(value), value


def _check_shape(shape, name):
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a (ny, nx) pair of integers, got {shape!r}") from None
    if ny <= 0 or nx <= 0:
        raise ValueError(f"{name}: both dimensions must be positive, got {shape!r}")
    return ny, nx


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------
def exposure_time_weight(meta):
    """Exposure time used for ``weight_type='exptime'``, seconds.

    Parameters
    ----------
    meta : dict
        Exposure metadata.

    Returns
    -------
    float
        ``TMEASURE`` (measurement time) when present, else ``EFFEXPTM``,
        else ``EXPTIME``, else 1.0 -- the JWST order of preference.
    """
    for key in ("TMEASURE", "EFFEXPTM", "EXPTIME"):
        value = meta.get(key) if meta else None
        if value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if np.isfinite(value) and value > 0:
                return value
    return 1.0


def build_driz_weight(
    err,
    dq,
    *,
    weight_type="ivm",
    good_bits="~DO_NOT_USE+NON_SCIENCE",
    exptime=1.0,
    var_rnoise=None,
    input_range=None,
):
    """Per-pixel drizzle weight map of one exposure.

    Parameters
    ----------
    err : ndarray, shape (ny, nx)
        Total 1-sigma uncertainty (ERR), MJy/sr; used for ``'ivm'`` only
        where ``var_rnoise`` is None.
    dq : ndarray of uint32, shape (ny, nx)
        Data-quality flags.
    weight_type : {'ivm', 'exptime'}
        ``'ivm'``: inverse read-noise variance, ``1 / var_rnoise``
        ((MJy/sr)**-2).  ``'exptime'``: ``exptime`` on every usable pixel.
    good_bits : int or str
        DQ bits allowed on a usable pixel (see
        `calimage3.dqflags.interpret_bit_flags`); the JWST ``resample``
        default accepts everything except DO_NOT_USE and NON_SCIENCE.
    exptime : float
        Exposure (measurement) time for ``'exptime'`` weighting, seconds.
    var_rnoise : ndarray or None, shape (ny, nx)
        Read-noise variance (VAR_RNOISE), (MJy/sr)**2.
    input_range : tuple of int or None
        ``(xmin, xmax, ymin, ymax)`` inside the WCS bounding box; pixels
        outside get weight 0.  None: the whole array.

    Returns
    -------
    ndarray of float32, shape (ny, nx)
        Weights; 0 on pixels with bad DQ, on NON_SCIENCE pixels whatever
        ``good_bits`` says, outside ``input_range``, and where the inverse
        variance is not finite and positive
        (`calimage3.usable.usable_pixel_mask`).

    Notes
    -----
    JWST weights by ``1 / VAR_RNOISE`` so that the Poisson noise of the
    sources does not bias the combination.  Where ``var_rnoise`` is absent
    this function falls back to ``1 / err**2`` (the JWST code falls back to
    a uniform weight of 1 with a warning), and where the inverse variance of
    a pixel is not finite it gives that pixel zero weight (JWST gives 1 but
    such pixels are always DO_NOT_USE in JWST products anyway).
    """
    weight_type = _check_weight_type(weight_type)
    dq = np.asarray(dq)
    err = np.asarray(err)
    if err.shape != dq.shape:
        raise ValueError(f"err: shape {err.shape} differs from dq shape {dq.shape}")
    good = usable_pixel_mask(dq, good_bits=good_bits, input_range=input_range)
    if weight_type == "ivm":
        if var_rnoise is not None:
            var = np.asarray(var_rnoise, dtype=np.float64)
            if var.shape != dq.shape:
                raise ValueError(
                    f"var_rnoise: shape {var.shape} differs from dq shape {dq.shape}"
                )
        else:
            var = np.asarray(err, dtype=np.float64) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = 1.0 / var
        weight[~(np.isfinite(weight) & (weight > 0))] = 0.0
    else:
        try:
            exptime = float(exptime)
        except (TypeError, ValueError):
            raise ValueError(f"exptime: must be a positive number, got {exptime!r}") from None
        if not (np.isfinite(exptime) and exptime > 0):
            raise ValueError(f"exptime: must be a positive number, got {exptime!r}")
        weight = np.full(dq.shape, exptime)
    weight[~good] = 0.0
    return weight.astype(np.float32)


# --------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------
def _pixel_scale_ratio(pixmap, stride=8):
    """Output-to-input linear pixel size ratio from the pixmap Jacobian.

    The median of the Jacobian determinant over every ``stride``-th pixel
    in each direction: the map is smooth, and the full-resolution median
    costs half a second per 2048 x 2048 exposure.
    """
    xo, yo = pixmap[..., 0], pixmap[..., 1]
    if xo.shape[0] < 2 or xo.shape[1] < 2:
        return 1.0
    rows, cols = np.ix_(np.arange(0, xo.shape[0] - 1, stride), np.arange(0, xo.shape[1] - 1, stride))
    dxdi = xo[rows, cols + 1] - xo[rows, cols]
    dydi = yo[rows, cols + 1] - yo[rows, cols]
    dxdj = xo[rows + 1, cols] - xo[rows, cols]
    dydj = yo[rows + 1, cols] - yo[rows, cols]
    det = np.abs(dxdi * dydj - dxdj * dydi)
    det = det[np.isfinite(det) & (det > 0)]
    if det.size == 0:
        return 1.0
    return float(1.0 / np.sqrt(np.median(det)))


def _drizzle_inputs(exposure, output_wcs, *, sky_level, pixmap, grid_step, weight_type,
                    good_bits, pixfrac, iscale=1.0, input_range=None):
    """Sky-subtracted data, weight map and ``add_image`` keywords of one exposure.

    Returns
    -------
    sci : ndarray of float32
        ``data - sky_level`` with 0 wherever the weight is 0.
    weight : ndarray of float32
        Drizzle weight map, 0 also where the data are not finite.
    kwargs : dict
        Keywords for ``Drizzle.add_image`` other than the data.
    """
    data = np.asarray(exposure.data)
    if data.ndim != 2:
        raise ValueError(f"exposure.data: must be 2-D, got shape {data.shape}")
    try:
        sky_level = float(sky_level)
    except (TypeError, ValueError):
        raise ValueError(f"sky_level: must be a finite number, got {sky_level!r}") from None
    if not np.isfinite(sky_level):
        raise ValueError(f"sky_level: must be a finite number, got {sky_level!r}")
    if not (np.isfinite(iscale) and iscale > 0):
        raise ValueError(f"iscale: must be a positive number, got {iscale!r}")
    if pixmap is None:
        pixmap = pixel_map(exposure.wcs, output_wcs, data.shape, grid_step)
    pixmap = np.asarray(pixmap, dtype=np.float64)
    if pixmap.shape != data.shape + (2,):
        raise ValueError(
            f"pixmap: shape {pixmap.shape} does not match data shape {data.shape} + (2,)"
        )
    exptime = exposure_time_weight(exposure.meta)
    if input_range is None:
        input_range = _input_range(data.shape, exposure.wcs)
    weight = build_driz_weight(
        exposure.err,
        exposure.dq,
        weight_type=weight_type,
        good_bits=good_bits,
        exptime=exptime,
        var_rnoise=exposure.var_rnoise,
        input_range=input_range,
    )
    sci = np.subtract(data, np.float32(sky_level), dtype=np.float32)
    unusable = (weight == 0) | ~np.isfinite(sci)
    weight[unusable] = 0.0
    sci[unusable] = 0.0
    xmin, xmax, ymin, ymax = (int(v) for v in input_range)
    kwargs = dict(
        exptime=exptime,
        pixmap=pixmap,
        iscale=float(iscale),
        pixel_scale_ratio=_pixel_scale_ratio(pixmap),
        weight_map=weight,
        pixfrac=pixfrac,
        in_units="cps",
        xmin=xmin,
        xmax=xmax,
        ymin=ymin,
        ymax=ymax,
    )
    return sci, weight, kwargs


# --------------------------------------------------------------------------
# per-exposure contribution and combiner
# --------------------------------------------------------------------------
def _check_variance_method(variance_method):
    if variance_method not in VARIANCE_METHODS:
        raise ValueError(
            f"variance_method: must be one of {VARIANCE_METHODS}, got {variance_method!r}"
        )
    return variance_method


def _output_bbox(pixmap, input_range, output_shape, pixel_scale_ratio):
    """Output pixels ``(y0, y1, x0, x1)`` that drops of the input range can reach.

    The box encloses the pixel-map positions of every input pixel of
    ``input_range`` plus a margin for the drop and kernel size (lanczos3
    reaches 3 input pixels, i.e. ``3 / pixel_scale_ratio`` output pixels),
    clipped to the output; ``(0, 0, 0, 0)`` when nothing falls on it.
    """
    xmin, xmax, ymin, ymax = input_range
    sub = pixmap[ymin : ymax + 1, xmin : xmax + 1]
    xo, yo = sub[..., 0], sub[..., 1]
    finite = np.isfinite(xo) & np.isfinite(yo)
    if not finite.any():
        return (0, 0, 0, 0)
    margin = int(math.ceil(3.0 / pixel_scale_ratio)) + 2
    ny, nx = output_shape
    x0 = max(0, int(math.floor(xo[finite].min())) - margin)
    x1 = min(nx, int(math.ceil(xo[finite].max())) + margin + 1)
    y0 = max(0, int(math.floor(yo[finite].min())) - margin)
    y1 = min(ny, int(math.ceil(yo[finite].max())) + margin + 1)
    if x0 >= x1 or y0 >= y1:
        return (0, 0, 0, 0)
    return (y0, y1, x0, x1)


def _onto_cutout(kwargs, output_shape, in_place=False):
    """The output box ``(y0, y1, x0, x1)`` an exposure's drizzle reaches (`_output_bbox`), and its
    ``add_image`` keywords with the pixel map shifted onto that box (unchanged when the box is empty).

    Drizzling onto the box is the drizzle onto the whole grid, cut: the same
    values to float rounding (the shifted coordinates can differ in the last
    bit).  ``in_place`` shifts the caller's pixel map itself instead of a copy.
    """
    used = tuple(kwargs[k] for k in ("xmin", "xmax", "ymin", "ymax"))
    bbox = _output_bbox(kwargs["pixmap"], used, output_shape, kwargs["pixel_scale_ratio"])
    y0, y1, x0, x1 = bbox
    if y0 < y1 and x0 < x1:
        origin = np.array([x0, y0], dtype=np.float64)
        if in_place:
            kwargs["pixmap"] -= origin
        else:
            kwargs = dict(kwargs, pixmap=kwargs["pixmap"] - origin)
    return bbox, kwargs


@dataclass
class ExposureContribution:
    """One exposure drizzled on its own onto the part of the output grid it reaches.

    Attributes
    ----------
    bbox : tuple of int
        ``(y0, y1, x0, x1)``: the arrays cover output pixels
        ``[y0:y1, x0:x1]``; ``(0, 0, 0, 0)`` (and empty arrays) when the
        exposure misses the output grid.
    data : ndarray of float32, shape (y1 - y0, x1 - x0)
        Sky-subtracted surface brightness drizzled from this exposure
        alone, MJy/sr; NaN where its weight is 0.
    wht : ndarray of float32, same shape
        Drizzle weight of this exposure.
    con : ndarray of bool, same shape
        Where drizzle set this exposure's context bit.
    variances : dict
        ``'var_rnoise'``, ``'var_poisson'``, ``'var_flat'`` (those the
        exposure has) -> float32 array of the same shape, NaN where nothing
        was drizzled.  For ``variance_method='jwst'`` the drizzled
        ``sqrt(var)`` (MJy/sr); for ``'squared_weights'`` the variance
        drizzled with squared weights, (MJy/sr)**2.
    exptime : float
        Exposure time used for the weights, seconds.
    weight_type : {'ivm', 'exptime'}
    variance_method : {'jwst', 'squared_weights'}
    """

    bbox: tuple
    data: np.ndarray
    wht: np.ndarray
    con: np.ndarray
    variances: dict
    exptime: float
    weight_type: str
    variance_method: str

    def to_arrays(self):
        """Plain arrays and FITS-keyword-safe scalars describing the contribution.

        Returns
        -------
        arrays : dict
            ``'data'``, ``'wht'`` (float32), ``'con'`` (uint8 0/1) and the
            variance pieces under their names.
        keywords : dict
            ``CTB_Y0``, ``CTB_Y1``, ``CTB_X0``, ``CTB_X1`` (the bbox),
            ``CTB_EXPT``, ``CTB_WTYP``, ``CTB_VMTH``.
        """
        arrays = {"data": self.data, "wht": self.wht, "con": self.con.astype(np.uint8)}
        arrays.update(self.variances)
        y0, y1, x0, x1 = self.bbox
        keywords = {
            "CTB_Y0": int(y0), "CTB_Y1": int(y1), "CTB_X0": int(x0), "CTB_X1": int(x1),
            "CTB_EXPT": float(self.exptime), "CTB_WTYP": self.weight_type,
            "CTB_VMTH": self.variance_method,
        }
        return arrays, keywords

    @classmethod
    def from_arrays(cls, arrays, keywords):
        """Inverse of `to_arrays` (arrays may be memory maps: they are read here)."""
        bbox = tuple(int(keywords[k]) for k in ("CTB_Y0", "CTB_Y1", "CTB_X0", "CTB_X1"))
        shape = (bbox[1] - bbox[0], bbox[3] - bbox[2])

        def array(name, dtype):
            # An empty image (exposure off the grid) may come back as None.
            value = arrays[name]
            value = np.zeros(shape, dtype) if value is None else np.asarray(value, dtype=dtype)
            if value.shape != shape:
                raise ValueError(f"{name}: shape {value.shape} differs from the bbox {bbox}")
            return value

        return cls(
            bbox=bbox,
            data=array("data", np.float32),
            wht=array("wht", np.float32),
            con=array("con", np.uint8) != 0,
            variances={n: array(n, np.float32) for n in _VAR_NAMES if n in arrays},
            exptime=float(keywords["CTB_EXPT"]),
            weight_type=_check_weight_type(keywords["CTB_WTYP"]),
            variance_method=_check_variance_method(keywords["CTB_VMTH"]),
        )


def drizzle_exposure(
    exposure,
    output_wcs,
    output_shape,
    *,
    sky_level=0.0,
    pixfrac=1.0,
    kernel="square",
    weight_type="ivm",
    good_bits="~DO_NOT_USE+NON_SCIENCE",
    variance_method="jwst",
    pixmap=None,
    grid_step=16,
    iscale=1.0,
    input_range=None,
    overwrite_pixmap=False,
):
    """Drizzle one exposure, with its variances, onto the output pixels it reaches.

    Parameters
    ----------
    exposure : calimage3.exposure.Exposure
        Calibrated exposure (SCI in MJy/sr, ERR, DQ, variances, WCS).
    output_wcs : gwcs.WCS
        WCS of the mosaic grid.
    output_shape : tuple of int
        ``(ny, nx)`` of the mosaic.
    sky_level : float
        Sky level to subtract, MJy/sr.
    pixfrac, kernel, weight_type, good_bits, variance_method
        As for `ResampledImage` (JWST ``resample`` defaults).
    pixmap : ndarray or None, shape (ny_in, nx_in, 2)
        Mosaic-pixel coordinates of every input pixel; computed from the
        WCSs when None.
    grid_step : int or None
        Grid spacing for `calimage3.pixmap.pixel_map` (None: every
        pixel).
    iscale : float
        Intensity factor applied to the data (see `ResampledImage.add_exposure`).
    input_range : tuple of int or None
        ``(xmin, xmax, ymin, ymax)`` input pixels drizzle may use (with a
        precomputed ``pixmap``, `calimage3.pixmap.CoarsePixelMap.input_range`);
        None takes it from the bounding box of ``exposure.wcs``.
    overwrite_pixmap : bool
        Let the drizzle shift a float64 ``pixmap`` onto the output box in
        place instead of in a copy (64 MB for a 2048 x 2048 exposure), for
        a caller that is done with it.

    Returns
    -------
    ExposureContribution
        Arrays cut to the exposure's bounding box on the mosaic grid, so
        their size does not depend on the size of the mosaic.

    Notes
    -----
    Stages: weight map, sky subtraction and pixel map (as in
    `ResampledImage`); bounding box of the pixel map plus the kernel's
    reach; ``Drizzle.add_image`` onto that cutout (`_onto_cutout`: the pixel
    map shifted by the box origin, the values those of a full-grid drizzle
    to float rounding); then the variance pieces of ``variance_method``.
    `MosaicCombiner` adds contributions into the mosaic.
    """
    output_shape = _check_shape(output_shape, "output_shape")
    kernel = _check_kernel(kernel)
    variance_method = _check_variance_method(variance_method)
    weight_type = _check_weight_type(weight_type)
    sci, weight, kwargs = _drizzle_inputs(
        exposure,
        output_wcs,
        sky_level=sky_level,
        pixmap=pixmap,
        grid_step=grid_step,
        weight_type=weight_type,
        good_bits=good_bits,
        pixfrac=_check_pixfrac(pixfrac),
        iscale=iscale,
        input_range=input_range,
    )
    # Cleaned (`_clean_variance`) only when drizzled, one at a time: each is a
    # full-size copy.
    variances = {n: getattr(exposure, n) for n in _VAR_NAMES if getattr(exposure, n) is not None}
    for var in variances.values():
        _check_variance_shape(var, sci.shape)
    bbox, kwargs = _onto_cutout(kwargs, output_shape, in_place=overwrite_pixmap)
    y0, y1, x0, x1 = bbox
    shape = (y1 - y0, x1 - x0)
    settings = dict(bbox=bbox, exptime=kwargs["exptime"], weight_type=weight_type, variance_method=variance_method)
    if 0 in shape:  # off the grid
        return ExposureContribution(data=np.full(shape, np.nan, np.float32), wht=np.zeros(shape, np.float32),
                                    con=np.zeros(shape, bool),
                                    variances={n: np.full(shape, np.nan, np.float32) for n in variances},
                                    **settings)
    names = list(variances)
    resampled = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not a flux-conserving kernel.*")
        if variance_method == "squared_weights" and names:
            driz = Drizzle(kernel=kernel, fillval="NAN", out_shape=shape,
                           out_img2=[None] * len(names), fillval2="NAN")
            driz.add_image(sci, data2=[_clean_variance(variances[n], sci.shape, weight) for n in names], **kwargs)
            for name, arr in zip(names, driz.out_img2):
                resampled[name] = np.asarray(arr, dtype=np.float32)
        else:
            driz = Drizzle(kernel=kernel, fillval="NAN", out_shape=shape)
            driz.add_image(sci, **kwargs)
            # the variances' drizzles only need their images: one weight array serves them all
            discarded_wht = np.empty(shape, np.float32)
            for name in names if variance_method == "jwst" else ():
                root_var = _clean_variance(variances[name], sci.shape, weight)
                with np.errstate(invalid="ignore"):
                    np.sqrt(root_var, out=root_var)
                discarded_wht.fill(0)
                single = Drizzle(kernel=kernel, fillval="NAN", out_shape=shape, out_wht=discarded_wht,
                                 disable_ctx=True)
                single.add_image(root_var, **kwargs)
                resampled[name] = np.asarray(single.out_img, dtype=np.float32)
                del root_var
    return ExposureContribution(data=np.asarray(driz.out_img, dtype=np.float32),
                                wht=np.asarray(driz.out_wht, dtype=np.float32),
                                con=np.asarray(driz.out_ctx[0]) != 0, variances=resampled, **settings)


_ADD_ROWS = 128  # rows per band in MosaicCombiner.add


class MosaicCombiner:
    """Co-add of `ExposureContribution` objects into a mosaic, one at a time.

    Parameters
    ----------
    output_shape : tuple of int
        ``(ny, nx)`` of the mosaic.
    fillval : str, float or None
        Value of mosaic pixels with no weight: 'NAN' (JWST default),
        'INDEF'/None (NaN too) or a number.
    n_exposures : int or None
        Expected number of exposures; sizes the context image up front (it
        grows by one plane per 32 exposures otherwise).
    threads : int
        Threads adding bands of rows of a contribution at once (the bands
        are disjoint, so the result does not depend on it).

    Notes
    -----
    Memory is that of the mosaic's own arrays plus one contribution,
    whatever the number of exposures.  With ``W_k``, ``D_k`` the weight
    and data of contribution ``k``:

    - ``data = sum(W_k D_k) / sum(W_k)`` (accumulated in float64), exactly
      what one drizzle of all exposures computes incrementally, to float32
      rounding; ``wht = sum(W_k)``;
    - ``con``: bit ``k % 32`` of plane ``k // 32`` where contribution ``k``
      (order of ``add`` calls) set its context;
    - ``variance_method='jwst'``: ``v_k = (drizzled sqrt(var))**2`` and
      ``var = sum(w_k**2 v_k) / (sum w_k)**2`` over contributions with a
      finite, non-negative ``v_k``, ``w_k = 1 / v_rnoise_k`` ('ivm'; 1 where
      that is not positive and finite) or the exposure time ('exptime');
    - ``variance_method='squared_weights'``: ``var = sum(W_k**2 V_k) /
      (sum W_k)**2`` with ``V_k`` the variance drizzled with squared
      weights, which is what drizzle's ``out_img2`` accumulates;
    - ``err = sqrt(var_rnoise + var_poisson + var_flat)``, NaN where no
      variance was resampled.
    """

    def __init__(self, output_shape, *, fillval="NAN", n_exposures=None, threads=1):
        self.output_shape = _check_shape(output_shape, "output_shape")
        self.threads = max(1, int(threads))
        _, self._fill = _check_fillval(fillval)
        if n_exposures is not None and int(n_exposures) < 1:
            raise ValueError(f"n_exposures: must be a positive integer, got {n_exposures!r}")
        nplanes = 1 if n_exposures is None else (int(n_exposures) - 1) // _CTX_PLANE_BITS + 1
        self._wsum = np.zeros(self.output_shape, np.float64)
        self._wht = np.zeros(self.output_shape, np.float32)
        self._con = np.zeros((nplanes,) + self.output_shape, np.int32)
        self._var_sum = {}
        self._var_wht = {}
        self.weight_type = None
        self.variance_method = None
        self.n_exposures = 0
        self.total_exptime = 0.0
        self._finalized = False

    def add(self, contribution):
        """Add one exposure's contribution (see `drizzle_exposure`).

        Parameters
        ----------
        contribution : ExposureContribution

        Returns
        -------
        None
        """
        if self._finalized:
            raise RuntimeError("MosaicCombiner: finalize() was called; nothing can be added")
        c = contribution
        if self.n_exposures == 0:
            self.weight_type = _check_weight_type(c.weight_type)
            self.variance_method = _check_variance_method(c.variance_method)
        elif (c.weight_type, c.variance_method) != (self.weight_type, self.variance_method):
            raise ValueError(
                f"contribution: weight_type/variance_method {c.weight_type!r}/{c.variance_method!r} "
                f"differ from the first one's {self.weight_type!r}/{self.variance_method!r}"
            )
        y0, y1, x0, x1 = (int(v) for v in c.bbox)
        if not (0 <= y0 <= y1 <= self.output_shape[0] and 0 <= x0 <= x1 <= self.output_shape[1]):
            raise ValueError(f"contribution: bbox {c.bbox} is outside the output {self.output_shape}")
        index = self.n_exposures
        self.n_exposures += 1
        self.total_exptime += float(c.exptime)
        plane, bit = divmod(index, _CTX_PLANE_BITS)
        if plane >= self._con.shape[0]:
            extra = np.zeros((plane + 1 - self._con.shape[0],) + self.output_shape, np.int32)
            self._con = np.concatenate([self._con, extra])
        for name in c.variances:  # created here, not by the threads
            self._accumulators(name, np.float32 if self.variance_method == "jwst" else np.float64)
        # In bands of rows: numpy releases the GIL, so threads add bands at once.
        bands = [slice(r0, min(r0 + _ADD_ROWS, y1 - y0)) for r0 in range(0, y1 - y0, _ADD_ROWS)]
        if self.threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(lambda rows: self._add_band(c, rows, plane, bit), bands))
        else:
            for rows in bands:
                self._add_band(c, rows, plane, bit)

    def _add_band(self, c, rows, plane, bit):
        """Add rows ``rows`` of contribution ``c`` (its own row numbering)."""
        y0, _, x0, x1 = (int(v) for v in c.bbox)
        cut = np.s_[y0 + rows.start:y0 + rows.stop, x0:x1]
        wht = np.asarray(c.wht[rows], dtype=np.float32)
        with np.errstate(invalid="ignore"):
            self._wsum[cut] += np.where(wht != 0, wht.astype(np.float64) * c.data[rows], 0.0)
        self._wht[cut] += wht
        self._con[plane].view(np.uint32)[cut] |= np.asarray(c.con[rows], np.uint32) << np.uint32(bit)
        variances = {name: v[rows] for name, v in c.variances.items()}
        if self.variance_method == "jwst":
            self._add_variances_jwst(variances, c.exptime, cut)
        else:
            self._add_variances_squared(variances, cut, wht)

    def _accumulators(self, name, dtype):
        if name not in self._var_sum:
            self._var_sum[name] = np.zeros(self.output_shape, dtype)
            self._var_wht[name] = np.zeros(self.output_shape, np.float32)
        return self._var_sum[name], self._var_wht[name]

    def _add_variances_jwst(self, variances, exptime, cut):
        # Masked sums written as "+= where(ok, x, 0)": adding 0.0 leaves a
        # float32 sum bit-for-bit unchanged, and is much faster than
        # boolean-index assignment.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            rn = variances.get("var_rnoise")
            if self.weight_type == "exptime":
                weight = np.float64(exptime)
            elif rn is None:
                weight = np.float64(1.0)
            else:
                rn = np.square(rn, dtype=np.float64)
                weight = np.where(np.isfinite(rn) & (rn > 0), 1.0 / rn, 1.0)
            if np.ndim(weight) == 0 and not weight > 0:
                return
            weight2 = weight * weight
            for name, root_var in variances.items():
                var = np.square(root_var, dtype=np.float64)
                # A square is >= 0 unless NaN, and the weight is positive: only finiteness to check.
                ok = np.isfinite(var)
                vsum, vwht = self._accumulators(name, np.float32)
                vsum[cut] += np.where(ok, var * weight2, 0.0)
                vwht[cut] += np.where(ok, weight, 0.0)

    def _add_variances_squared(self, variances, cut, wht):
        w2 = np.square(wht.astype(np.float64))
        for name, var in variances.items():
            vsum, _ = self._accumulators(name, np.float64)
            var = np.asarray(var, np.float64)
            with np.errstate(invalid="ignore"):
                vsum[cut] += np.where((wht > 0) & np.isfinite(var), w2 * var, 0.0)

    def finalize(self):
        """Return the mosaic arrays; nothing can be added afterwards.

        Returns
        -------
        dict
            ``'data'`` (SCI, float32, MJy/sr; ``fillval`` where ``wht`` is
            0), ``'wht'`` (float32 total drizzle weight), ``'con'`` (int32,
            shape (nplanes, ny, nx)), ``'var_rnoise'``, ``'var_poisson'``,
            ``'var_flat'`` (float32, (MJy/sr)**2, NaN where nothing
            contributed) and ``'err'`` (float32, MJy/sr).
        """
        if self.n_exposures == 0:
            raise RuntimeError("MosaicCombiner: no exposure was added")
        self._finalized = True
        wht = self._wht
        covered = wht != 0
        # Divisions in float64 rounded to float32, written where defined only
        # (a masked ufunc: boolean-index copies of a large mosaic are slow).
        data = np.full(self.output_shape, self._fill, np.float32)
        np.divide(self._wsum, wht, out=data, where=covered, casting="same_kind")
        self._wsum = None
        out = {"data": data, "wht": wht, "con": self._con}
        for name in _VAR_NAMES:
            if name not in self._var_sum:
                out[name] = np.full(self.output_shape, np.nan, np.float32)
                continue
            vsum = self._var_sum.pop(name)
            vwht = self._var_wht.pop(name) if self.variance_method == "jwst" else wht
            ok = vwht > 0
            var = np.full(self.output_shape, np.nan, np.float32)
            np.divide(vsum, np.square(vwht, dtype=np.float64), out=var, where=ok, casting="same_kind")
            out[name] = var
            del vsum, vwht
        # err = sqrt of the NaN-skipping sum of the variances, summed in place
        # in their order (as a nansum over a stack of them, without the stack)
        total = np.zeros(self.output_shape, np.float32)
        all_nan = np.ones(self.output_shape, bool)
        for name in _VAR_NAMES:
            missing = np.isnan(out[name])
            total += np.where(missing, np.float32(0), out[name])
            all_nan &= missing
        err = np.sqrt(total, out=total)
        err[all_nan] = np.nan
        out["err"] = err
        return out


# --------------------------------------------------------------------------
# accumulator
# --------------------------------------------------------------------------
class ResampledImage:
    """Running drizzle co-add of exposures onto one output grid.

    Parameters
    ----------
    output_wcs : gwcs.WCS
        WCS of the output grid (e.g. from `calimage3.wcs_tools.output_wcs`).
    output_shape : tuple of int
        ``(ny, nx)`` of the output.
    pixfrac : float
        Linear size of the drop relative to the input pixel, in (0, 1].
    kernel : {'square', 'gaussian', 'point', 'turbo', 'lanczos2', 'lanczos3'}
        Drizzle kernel.  'gaussian' and 'lanczos*' do not conserve flux.
    fillval : str, float or None
        Value of output pixels that no input pixel reaches: 'NAN' (JWST
        default), 'INDEF'/None (also NaN for a new output) or a number.
    weight_type : {'ivm', 'exptime'}
        Weighting of the inputs (see `build_driz_weight`).
    good_bits : int or str
        DQ bits allowed on a usable input pixel.
    n_exposures : int or None
        Expected number of exposures; sizes the context image up front
        (it grows by one plane per 32 exposures otherwise).
    grid_step : int or None
        Passed to `calimage3.pixmap.pixel_map` when ``add_exposure``
        computes the pixel map: the WCSs are evaluated every ``grid_step``
        pixels and interpolated bicubically (1e-8 pixel error on a
        distorted 2048x2048 NIRCam-like WCS, 14x faster); None evaluates
        them at every pixel.
    variance_method : {'jwst', 'squared_weights'}
        How the variance arrays are propagated; see Notes.

    Notes
    -----
    ``add_exposure`` is `drizzle_exposure` (one exposure onto the part of
    the grid it reaches) followed by `MosaicCombiner.add`; a workflow can
    run the first in parallel jobs and the second in one job, with the
    same result.  Stages of ``add_exposure``:

    1. weight map from DQ and VAR_RNOISE (or exposure time);
    2. subtraction of the sky level;
    3. pixel map from the exposure WCS to the output WCS and the ratio of
       output to input pixel size (sets the size of the non-square kernels);
    4. ``drizzle.resample.Drizzle.add_image`` onto the exposure's
       bounding box, then co-addition into the running SCI, WHT and CON
       arrays;
    5. resampling of the three variance arrays.

    Variance, ``variance_method='jwst'`` (default; what the JWST pipeline
    does through ``stcal.resample``): each exposure's ``sqrt(var)`` is
    drizzled on its own with the same weights and kernel and squared,
    giving a per-exposure variance ``v_i`` that keeps the per-pixel level of
    the input; the exposures are then combined as
    ``sum(w_i**2 v_i) / (sum w_i)**2`` with ``w_i = 1 / v_rnoise_i`` for
    ``'ivm'`` (or the exposure time for ``'exptime'``), counting only
    exposures with a finite, non-negative ``v_i`` at that pixel.
    ``variance_method='squared_weights'`` uses the ``data2`` / ``out_img2``
    option of drizzle >= 2.1 instead: the variances are drizzled with the
    squares of the drizzle weights ``w * overlap``, i.e.
    ``sum((w a)**2 v) / (sum w a)**2`` over all input pixels, the formally
    correct variance of each output pixel if covariances are ignored.  It is
    lower than the JWST value by up to 4x for pixfrac=1 on a same-scale
    grid and varies with the sub-pixel phase, which is why JWST (issues
    #8813, #9028, #9496) keeps it out of the pipeline.  ``err`` is
    ``sqrt(var_rnoise + var_poisson + var_flat)`` in both cases, NaN where
    no variance was resampled.
    """

    def __init__(
        self,
        output_wcs,
        output_shape,
        *,
        pixfrac=1.0,
        kernel="square",
        fillval="NAN",
        weight_type="ivm",
        good_bits="~DO_NOT_USE+NON_SCIENCE",
        n_exposures=None,
        grid_step=16,
        variance_method="jwst",
    ):
        self.output_wcs = output_wcs
        self.output_shape = _check_shape(output_shape, "output_shape")
        self.pixfrac = _check_pixfrac(pixfrac)
        self.kernel = _check_kernel(kernel)
        self.fillval, _ = _check_fillval(fillval)
        self.weight_type = _check_weight_type(weight_type)
        self.good_bits = good_bits
        self.variance_method = _check_variance_method(variance_method)
        self.grid_step = grid_step
        self._combiner = MosaicCombiner(self.output_shape, fillval=fillval, n_exposures=n_exposures)
        self._finalized = False

    @property
    def n_exposures(self):
        """Number of exposures added so far."""
        return self._combiner.n_exposures

    @property
    def total_exptime(self):
        """Sum of the exposure times of the exposures added, seconds."""
        return self._combiner.total_exptime

    def add_exposure(self, exposure, sky_level=0.0, pixmap=None, iscale=1.0):
        """Drizzle one exposure into the running co-add.

        Parameters
        ----------
        exposure : calimage3.exposure.Exposure
            Calibrated exposure (SCI in MJy/sr, ERR, DQ, variances, WCS).
        sky_level : float
            Sky level to subtract, MJy/sr (the skymatch ``BKGLEVEL`` when
            the sky has not been subtracted yet).
        pixmap : ndarray or None, shape (ny, nx, 2)
            Output-pixel coordinates of every input pixel; computed from
            the two WCSs when None.
        iscale : float
            Multiplicative intensity factor applied to the data (its square
            to the variances); 1 for surface brightness on the true pixel
            area.

        Returns
        -------
        None
        """
        if self._finalized:
            raise RuntimeError("ResampledImage: finalize() was called; no exposure can be added")
        contribution = drizzle_exposure(
            exposure,
            self.output_wcs,
            self.output_shape,
            sky_level=sky_level,
            pixfrac=self.pixfrac,
            kernel=self.kernel,
            weight_type=self.weight_type,
            good_bits=self.good_bits,
            variance_method=self.variance_method,
            pixmap=pixmap,
            grid_step=self.grid_step,
            iscale=iscale,
        )
        self._combiner.add(contribution)

    def finalize(self):
        """Return the resampled arrays; no exposure can be added afterwards.

        Returns
        -------
        dict
            ``'data'`` (SCI, float32, MJy/sr), ``'wht'`` (float32 total
            drizzle weight), ``'con'`` (int32, shape (nplanes, ny, nx):
            bit ``k`` of plane ``p`` is set where exposure ``32 p + k``
            (order of ``add_exposure`` calls) contributed), ``'var_rnoise'``,
            ``'var_poisson'``, ``'var_flat'`` (float32, (MJy/sr)**2, NaN
            where nothing contributed) and ``'err'`` (float32, MJy/sr).
        """
        if self.n_exposures == 0:
            raise RuntimeError("ResampledImage: no exposure was added")
        self._finalized = True
        return self._combiner.finalize()


def _check_variance_shape(var, shape):
    if np.shape(var) != tuple(shape):
        raise ValueError(f"variance array: shape {np.shape(var)} differs from data shape {tuple(shape)}")


def _clean_variance(var, shape, weight):
    """Float32 variance (a new array) with zeros where the weight is zero; None if absent."""
    if var is None:
        return None
    var = np.asarray(var, dtype=np.float32)
    _check_variance_shape(var, shape)
    return np.where(weight > 0, var, np.float32(0))


# --------------------------------------------------------------------------
# single-exposure drizzle and blot
# --------------------------------------------------------------------------
def drizzle_single(
    exposure,
    output_wcs,
    output_shape,
    *,
    sky_level=0.0,
    pixfrac=1.0,
    kernel="square",
    fillval="NAN",
    weight_type="ivm",
    good_bits="~DO_NOT_USE",
    pixmap=None,
    grid_step=16,
    input_range=None,
    cutout=False,
    overwrite_pixmap=False,
):
    """Drizzle one exposure on its own (the outlier-detection "single").

    Parameters
    ----------
    exposure : calimage3.exposure.Exposure
    output_wcs : gwcs.WCS
        WCS of the common output grid.
    output_shape : tuple of int
        ``(ny, nx)`` of the output.
    sky_level : float
        Sky level to subtract, MJy/sr.
    pixfrac, kernel, fillval, weight_type
        As for `ResampledImage`; the defaults are those of the JWST
        ``outlier_detection`` step.
    good_bits : int or str
        DQ bits allowed on a usable pixel; JWST ``outlier_detection``
        default ``'~DO_NOT_USE'``.
    pixmap : ndarray or None, shape (ny_in, nx_in, 2)
        Precomputed pixel map; computed from the WCSs when None.
    grid_step : int or None
        Grid spacing for `calimage3.pixmap.pixel_map` (None: every
        pixel).
    input_range : tuple of int or None
        As for `drizzle_exposure`.
    cutout : bool
        Drizzle onto the part of the grid the exposure reaches only (its
        box on the grid, as `drizzle_exposure` finds it) and return the
        box too: on a large grid of many detectors each single is then a
        fraction of the grid, to compute, write and read.
    overwrite_pixmap : bool
        As for `drizzle_exposure` (with ``cutout``).

    Returns
    -------
    data : ndarray of float32, shape ``output_shape`` (or the box's)
        Resampled sky-subtracted surface brightness, MJy/sr; ``fillval``
        where the exposure does not reach.
    wht : ndarray of float32, shape ``output_shape`` (or the box's)
        Drizzle weight; 0 where the exposure does not reach.
    bbox : tuple of int
        Only with ``cutout``: ``(y0, y1, x0, x1)`` of the arrays on the grid.
    """
    output_shape = _check_shape(output_shape, "output_shape")
    kernel = _check_kernel(kernel)
    fillval = _check_fillval(fillval)[0]
    sci, _, kwargs = _drizzle_inputs(
        exposure,
        output_wcs,
        sky_level=sky_level,
        pixmap=pixmap,
        grid_step=grid_step,
        weight_type=_check_weight_type(weight_type),
        good_bits=good_bits,
        pixfrac=_check_pixfrac(pixfrac),
        input_range=input_range,
    )
    bbox = (0, output_shape[0], 0, output_shape[1])
    if cutout:
        bbox, kwargs = _onto_cutout(kwargs, output_shape, in_place=overwrite_pixmap)
        if bbox[0] == bbox[1] or bbox[2] == bbox[3]:  # off the grid
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), bbox
    y0, y1, x0, x1 = bbox
    driz = Drizzle(kernel=kernel, fillval=fillval, out_shape=(y1 - y0, x1 - x0), disable_ctx=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not a flux-conserving kernel.*")
        driz.add_image(sci, **kwargs)
    data = np.asarray(driz.out_img, dtype=np.float32)
    wht = np.asarray(driz.out_wht, dtype=np.float32)
    return (data, wht, bbox) if cutout else (data, wht)


def blot(median, median_wcs, target_wcs, target_shape, *, fillval=0.0, interp="linear",
         grid_step=16, pixmap=None, overwrite_pixmap=False):
    """Interpolate a resampled image back onto an exposure's pixel grid.

    Parameters
    ----------
    median : ndarray, shape (ny_m, nx_m)
        Resampled image (e.g. the outlier-detection median), MJy/sr.
    median_wcs : gwcs.WCS
        WCS of ``median``.
    target_wcs : gwcs.WCS
        WCS of the exposure to blot onto.
    target_shape : tuple of int
        ``(ny, nx)`` of that exposure.
    fillval : float
        Value of target pixels that map outside ``median`` (JWST: 0).
    interp : {'nearest', 'linear', 'poly3', 'poly5', 'lanczos3', 'lanczos5'}
        Interpolation; JWST outlier detection always uses 'linear'.
    grid_step : int or None
        Grid spacing for `calimage3.pixmap.pixel_map` (None: every
        pixel).
    pixmap : ndarray or None, shape (ny, nx, 2)
        Precomputed map from target pixels to ``median`` pixels (the same
        map that drizzles the exposure onto the median's grid); the WCSs
        are not used when it is given.
    overwrite_pixmap : bool
        Let the edits below (edge positions, undefined ones) be made in a
        float64 ``pixmap`` itself instead of a copy, for a caller that is
        done with it or blots several images through it (the edits do not
        change an edited map).

    Returns
    -------
    ndarray of float32, shape ``target_shape``
        Surface brightness of ``median`` at every target pixel, MJy/sr
        (no pixel-area scaling: surface brightness is preserved).

    Notes
    -----
    Uses ``drizzle.resample.blot_image`` with a pixel map from the target
    pixels to the median frame; target pixels where a WCS is undefined are
    sent off the median frame (to -1, as JWST does) and get ``fillval``.
    ``tblot`` accepts positions up to half a pixel past the last row and
    column but none below 0, so target pixels whose centres fall within the
    first half pixel of the median frame (e.g. the edge pixels of an
    exposure on the output grid built around it, at -1e-9 by round-off)
    would get ``fillval``; they are moved onto the edge (0) here, unlike in
    JWST, so that they are not compared with 0.
    """
    target_shape = _check_shape(target_shape, "target_shape")
    if interp not in _BLOT_INTERP:
        raise ValueError(f"interp: must be one of {_BLOT_INTERP}, got {interp!r}")
    try:
        fillval = float(fillval)
    except (TypeError, ValueError):
        raise ValueError(f"fillval: must be a number, got {fillval!r}") from None
    median = np.asarray(median, dtype=np.float32)
    if median.ndim != 2:
        raise ValueError(f"median: must be 2-D, got shape {median.shape}")
    if pixmap is None:
        pixmap = pixel_map(target_wcs, median_wcs, target_shape, grid_step)
    else:
        # edited below: the caller's only when handed over
        pixmap = np.asarray(pixmap, dtype=np.float64) if overwrite_pixmap else np.array(pixmap, dtype=np.float64)
        if pixmap.shape != target_shape + (2,):
            raise ValueError(f"pixmap: shape {pixmap.shape} does not match target_shape {target_shape} + (2,)")
    # tblot interpolates up to half a pixel beyond the last row/column but
    # not below 0; treat the first half pixel the same way.
    edge = (pixmap >= -0.5) & (pixmap < 0.0)
    pixmap[edge] = 0.0
    pixmap[~np.isfinite(pixmap)] = -1.0
    return blot_image(median, pixmap, fillval=fillval, iscale=1.0, interp=interp)
