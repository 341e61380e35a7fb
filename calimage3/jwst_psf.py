"""A JWST-like diffraction PSF for the simulator, and stars drawn with it.

The pupil is JWST's in outline: 18 hexagonal segments (1.32 m flat to flat,
7 mm gaps) in two rings around a missing central segment, a circular
secondary obscuration and three secondary-mirror struts.  Its PSF -- six
bright diffraction spikes from the segment edges, two fainter ones from the
struts, a hexagonal core and far wings whose surface brightness falls as
``r**-3`` -- is computed by a matrix Fourier transform (numpy) at several
wavelengths across a top-hat bandpass, summed (equal photon weights),
oversampled ``oversample`` times and integrated over the detector pixel.

Stages of `psf_stamp`:

1. Pupil on a ``n_pupil x n_pupil`` grid (`jwst_pupil`).
2. For each of ``n_wavelengths`` wavelengths, the complex field on a focal
   grid of ``pixel_scale / oversample`` spacing (matrix Fourier transform,
   exact sampling at every wavelength), its intensity normalised by
   Parseval's theorem to the fraction of the energy per sample.
3. The mean over wavelengths is convolved with a one-pixel box
   (``oversample x oversample`` samples): each sample is then the fraction
   of the energy that falls in a detector pixel centred there.
4. The stamp holds the PSF out to ``half_size`` pixels; the energy beyond
   (a few per cent for a spiky JWST PSF) is dropped and the stamp
   normalised to unit sum, so a star drawn with `render_psf_stars` puts
   exactly its flux in the image and a simulator's truth flux is the total.

Stamps are cached per settings (`functools.lru_cache`).
"""

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import ndimage

__all__ = [
    "FILTERS",
    "PsfStamp",
    "jwst_pupil",
    "psf_stamp",
    "render_psf_stars",
    "pixelated_fwhm",
]

# Pivot wavelength and bandwidth (micron) of a few NIRCam filters (top hats).
FILTERS = {
    "F070W": (0.704, 0.128),
    "F090W": (0.902, 0.194),
    "F115W": (1.154, 0.225),
    "F150W": (1.501, 0.318),
    "F200W": (1.989, 0.457),
    "F277W": (2.762, 0.672),
    "F356W": (3.568, 0.781),
    "F444W": (4.421, 1.024),
}

# Pupil geometry (metres).
_SEGMENT_FLAT = 1.32  # flat-to-flat size of a segment
_SEGMENT_GAP = 0.007
_SECONDARY_RADIUS = 0.37
_STRUT_WIDTH = 0.08
_STRUT_ANGLES_DEG = (90.0, 210.0, 330.0)
_PUPIL_DIAMETER = 6.6  # the grid's extent: the primary's outer vertices fit inside
_RAD_TO_ARCSEC = 206264.80624709636


class PsfStamp(NamedTuple):
    """A pixel-integrated, oversampled PSF.

    Attributes
    ----------
    image : ndarray, shape (n, n)
        ``image[j, i]`` is the fraction of a star's flux that falls in a
        detector pixel whose centre is ``((i - c) / oversample, (j - c) /
        oversample)`` pixels from the star, ``c = (n - 1) / 2``.  Sums to
        ``oversample**2`` (each pixel-sized cell holds unit energy once).
    oversample : int
        Samples per detector pixel (odd).
    half_size : int
        Radius of the stamp in detector pixels.
    fwhm : float
        FWHM of the pixel-integrated PSF, pixels (`pixelated_fwhm`).
    """

    image: np.ndarray
    oversample: int
    half_size: int
    fwhm: float


def jwst_pupil(n_pupil=256):
    """Transmission (0/1) of a JWST-like pupil on a square grid.

    Parameters
    ----------
    n_pupil : int
        Samples across the ``_PUPIL_DIAMETER`` (6.6 m) grid.

    Returns
    -------
    pupil : ndarray of float, shape (n_pupil, n_pupil)
        1 inside a segment and outside the secondary and struts, else 0.
    dx : float
        Sample spacing, metres.
    """
    dx = _PUPIL_DIAMETER / n_pupil
    coords = (np.arange(n_pupil) - (n_pupil - 1) / 2.0) * dx
    xx, yy = np.meshgrid(coords, coords)
    pupil = np.zeros((n_pupil, n_pupil), dtype=bool)
    pitch = _SEGMENT_FLAT + _SEGMENT_GAP
    half_flat = 0.5 * _SEGMENT_FLAT
    for q in range(-2, 3):
        for r in range(-2, 3):
            if max(abs(q), abs(r), abs(q + r)) not in (1, 2):
                continue  # the missing central segment, and beyond ring 2
            # Pointy-topped hexagons: flat sides vertical, neighbours at 0, +-60 deg.
            cx, cy = pitch * (q + 0.5 * r), pitch * r * np.sqrt(3.0) / 2.0
            ax, ay = np.abs(xx - cx), np.abs(yy - cy)
            pupil |= (ax <= half_flat) & (0.5 * ax + np.sqrt(3.0) / 2.0 * ay <= half_flat)
    pupil &= np.hypot(xx, yy) > _SECONDARY_RADIUS
    for angle in np.deg2rad(_STRUT_ANGLES_DEG):
        along = xx * np.cos(angle) + yy * np.sin(angle)
        across = -xx * np.sin(angle) + yy * np.cos(angle)
        pupil &= ~((along > 0) & (np.abs(across) < 0.5 * _STRUT_WIDTH))
    return pupil.astype(float), dx


def _monochromatic(pupil, dx, wavelength_m, pixel_scale, oversample, n_out):
    """Fraction of the energy per focal sample at one wavelength (matrix Fourier transform)."""
    n_pupil = pupil.shape[0]
    x = (np.arange(n_pupil) - (n_pupil - 1) / 2.0) * dx
    theta = (np.arange(n_out) - (n_out - 1) / 2.0) * (pixel_scale / oversample / _RAD_TO_ARCSEC)
    kernel = np.exp(-2j * np.pi * np.outer(theta, x) / wavelength_m)  # (n_out, n_pupil)
    field = kernel @ (pupil * dx * dx) @ kernel.T
    dtheta = pixel_scale / oversample / _RAD_TO_ARCSEC
    # Parseval: the integral of |field|^2 over the sky is lambda^2 times the pupil area.
    total = wavelength_m**2 * np.sum(pupil**2) * dx * dx
    return np.abs(field) ** 2 * dtheta**2 / total


@lru_cache(maxsize=8)
def psf_stamp(filter_name="F200W", *, pixel_scale=0.031, wavelength=None, bandwidth=None,
              oversample=5, half_size=None, n_wavelengths=9, n_pupil=256):
    """Pixel-integrated JWST-like PSF, oversampled (cached per settings).

    Parameters
    ----------
    filter_name : str
        A key of `FILTERS`; its pivot wavelength and bandwidth are used
        unless ``wavelength``/``bandwidth`` are given.
    pixel_scale : float
        Detector pixel scale, arcsec.
    wavelength, bandwidth : float or None
        Centre and full width of the top-hat bandpass, micron.
    oversample : int
        Samples per pixel, odd.
    half_size : int or None
        Stamp radius in pixels; by default 32 diffraction widths
        ``lambda / D`` at the longest wavelength, at least 32 pixels
        (about 1 % of the energy lies beyond).
    n_wavelengths : int
        Monochromatic PSFs summed across the band.
    n_pupil : int
        Pupil samples across 6.6 m.

    Returns
    -------
    PsfStamp

    Raises
    ------
    ValueError
        For an unknown filter or an even ``oversample``.
    """
    if wavelength is None or bandwidth is None:
        if filter_name not in FILTERS:
            raise ValueError(f"psf_filter must be one of {sorted(FILTERS)}, got {filter_name!r}")
        wl0, bw0 = FILTERS[filter_name]
        wavelength = wl0 if wavelength is None else wavelength
        bandwidth = bw0 if bandwidth is None else bandwidth
    if not (wavelength > 0 and 0 <= bandwidth < 2 * wavelength):
        raise ValueError(f"need wavelength > 0 and 0 <= bandwidth < 2 wavelength, got {wavelength}, {bandwidth}")
    if int(oversample) != oversample or oversample < 1 or oversample % 2 == 0:
        raise ValueError(f"oversample must be a positive odd integer, got {oversample!r}")
    oversample = int(oversample)
    wl_max = wavelength + 0.5 * bandwidth
    if half_size is None:
        lambda_over_d = wl_max * 1e-6 / 6.5 * _RAD_TO_ARCSEC / pixel_scale
        half_size = max(32, int(np.ceil(32 * lambda_over_d)))
    half_size = int(half_size)
    pupil, dx = jwst_pupil(n_pupil)
    n_out = (2 * half_size + 1) * oversample + (oversample - 1)  # room for the pixel box
    if n_wavelengths > 1:
        waves = np.linspace(wavelength - 0.5 * bandwidth, wavelength + 0.5 * bandwidth, n_wavelengths)
    else:
        waves = np.array([wavelength])
    fine = np.zeros((n_out, n_out))
    for wl in waves:
        fine += _monochromatic(pupil, dx, wl * 1e-6, pixel_scale, oversample, n_out)
    fine /= waves.size
    # Integrate over one detector pixel: the sum over an oversample^2 box.
    pixel = ndimage.uniform_filter(fine, size=oversample, mode="constant") * oversample**2
    trim = (oversample - 1) // 2
    pixel = pixel[trim:n_out - trim, trim:n_out - trim]
    image = pixel * (oversample**2 / pixel.sum())
    return PsfStamp(image, oversample, half_size, pixelated_fwhm(image, oversample))


def pixelated_fwhm(image, oversample):
    """FWHM (pixels) of an oversampled PSF: twice the radius where the azimuthal mean falls to half the peak."""
    n = image.shape[0]
    c = (n - 1) / 2.0
    yy, xx = np.indices(image.shape)
    r = np.hypot(xx - c, yy - c) / oversample
    peak = image.max()
    step = 0.5 / oversample
    edges = np.arange(0.0, r.max(), step)
    idx = np.digitize(r.ravel(), edges) - 1
    sums = np.bincount(idx, weights=image.ravel(), minlength=edges.size)[: edges.size]
    counts = np.bincount(idx, minlength=edges.size)[: edges.size]
    filled = counts > 0  # fine sampling leaves some thin rings empty
    prof = sums[filled] / counts[filled]
    centres = (edges + 0.5 * step)[filled]
    below = np.flatnonzero(prof < 0.5 * peak)
    if below.size == 0 or below[0] == 0:
        return float("nan")
    j = below[0]
    r0, r1, p0, p1 = centres[j - 1], centres[j], prof[j - 1], prof[j]
    return float(2.0 * (r0 + (0.5 * peak - p0) / (p1 - p0) * (r1 - r0)))


def render_psf_stars(image, x, y, flux, stamp):
    """Add stars drawn with a `PsfStamp` to ``image`` in place.

    Each star's pixel values are the stamp sampled (bilinear between its
    samples) at the offsets of the pixel centres from the star, normalised
    to sum exactly to ``flux`` over the stamp; pixels off the image are
    dropped.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
    x, y : array_like
        Zero-based pixel positions of the stars.
    flux : array_like
        Flux of each star in the units of ``image`` times pixels.
    stamp : PsfStamp
    """
    ny, nx = image.shape
    h, o = stamp.half_size, stamp.oversample
    c = (stamp.image.shape[0] - 1) / 2.0
    k = np.arange(-h, h + 1, dtype=float)
    for xc, yc, f in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(flux)):
        if not (np.isfinite(xc) and np.isfinite(yc)):
            continue
        ix, iy = int(round(xc)), int(round(yc))
        x0, x1 = max(ix - h, 0), min(ix + h + 1, nx)
        y0, y1 = max(iy - h, 0), min(iy + h + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        fx = c + (k - (xc - ix)) * o
        fy = c + (k - (yc - iy)) * o
        gy, gx = np.meshgrid(fy, fx, indexing="ij")
        star = ndimage.map_coordinates(stamp.image, [gy, gx], order=1, mode="constant")
        star *= f / star.sum()
        image[y0:y1, x0:x1] += star[y0 - (iy - h):y1 - (iy - h), x0 - (ix - h):x1 - (ix - h)]
