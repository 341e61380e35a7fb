"""Simulate a JWST-like dithered set of ``_cal`` images with known truth.

The simulated set is what ``calwebb_image2`` would hand to image3 for a
NIRCam short-wavelength dither: N exposures of one detector, each with

* a tangent-plane WCS with a polynomial optical distortion (a few pixels
  at the corners), moved by the dither;
* an injected pointing error (shift and small rotation) in the header WCS
  of every exposure but the first, which plays the astrometric reference;
* a field of stars (Gaussian PSF) and Sersic galaxies with known sky
  positions and total fluxes, rendered in MJy/sr on each pixel's true
  solid angle;
* a sky level with a known per-exposure offset;
* Poisson and read noise with matching VAR_POISSON, VAR_RNOISE, VAR_FLAT
  and ERR arrays;
* cosmic rays and hot pixels at known pixels, left unflagged in DQ (the
  residuals that image3's outlier detection must find), and a flagged
  reference-pixel border and bad pixels set to NaN as in real ``_cal`` files.

With ``moving_target=True`` the set is a moving-target observation: every
exposure says TARGTYPE ``MOVING`` with the target's position at mid
exposure in MT_RA/MT_DEC, and the target, a point source of known flux
moving at ``target_rate`` across the sky, is drawn there; the stars and
galaxies stay fixed.  Nothing trails within one exposure (a simplification:
JWST tracks the target, so the stars would trail a little), so that only
the exposure-to-exposure motion matters for image3.

`simulate_dither` returns the paths it wrote; the truth is written beside
the data under ``truth/`` (sources, outliers, per-exposure errors and the
true WCS of each exposure).
"""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from astropy.modeling.models import Sersic2D
from astropy.table import Table
from scipy.ndimage import gaussian_filter
from scipy.special import erf

from . import io
from .dqflags import PIXEL
from .exposure import Exposure
from .jwst_psf import psf_stamp, render_psf_stars
from .wcs_tools import (
    distortion_model,
    from_tangent_plane,
    imaging_wcs,
    tangent_plane_correction,
    to_tangent_plane,
)

__all__ = ["SimulationSettings", "miri_imaging_settings", "simulate_dither", "main"]

log = logging.getLogger(__name__)

# Photometric and detector constants of a NIRCam SW-like detector.
PHOTMJSR = 0.45  # MJy/sr per DN/s
GAIN = 2.0  # e-/DN
READ_NOISE_E = 12.0  # effective read noise of a ramp fit, e-
FLAT_ERROR = 0.002  # relative flat-field uncertainty
REF_BORDER = 4  # reference-pixel border width, pixels


class SimulationSettings:
    """Parameters of a simulated dither set.

    Parameters
    ----------
    n_exposures : int
        Number of dithered exposures.
    shape : tuple of int
        ``(ny, nx)`` of each exposure (2048x2048 is NIRCam's size).
    pixel_scale : float
        Arcsec per pixel at the reference pixel.
    psf_fwhm : float
        Gaussian PSF FWHM, pixels.
    n_stars, n_galaxies : int or None
        Number of sources; None scales them with the detector area.
    exptime : float
        Effective exposure time, seconds.
    sky : float
        Mean sky level, MJy/sr.
    sky_offset_rms : float
        Spread of the per-exposure sky offsets, MJy/sr.
    shift_error : float
        Largest injected pointing shift per axis, arcsec.
    rotation_error : float
        Largest injected rotation, degrees.
    dither_fraction : float
        Largest dither offset as a fraction of the detector size.
    cr_density : float
        Cosmic-ray events per pixel per exposure (left unflagged).
    n_hot : int or None
        Unflagged hot pixels per exposure; None scales 5 per 512x512.
    crval : tuple of float
        Field centre (RA, Dec), degrees.
    position_angle : float
        Position angle of the detector +y axis, degrees east of north.
    offsets : list of tuple or None
        Explicit dither offsets ``(dx, dy)`` in pixels; overrides the pattern.
    moving_target : bool
        Make a moving-target observation: TARGTYPE ``MOVING``, MT_RA/MT_DEC
        per exposure, and the target drawn as a point source at those
        positions.
    target_rate : tuple of float
        Apparent motion of the moving target on the sky, arcsec per hour
        towards east and north.  The default, about 0.5 arcsec/hour, moves
        it about 4.7 pixels of 0.031 arcsec between exposures 1060 s apart.
    target_snr : float
        Flux of the moving target in units of the point-source noise of
        one exposure (see `_point_source_sigma_jy`).
    detectors : int
        Detectors per exposure, side by side along the detector x axis
        with a ``detector_gap`` pixel gap (NRCB1, NRCB2, ...).  The
        detectors of one dither position share the exposure numbers (one
        JWST exposure group) and one pointing error, applied about the
        pointing centre.  With None source counts, the counts scale with
        the number of detectors.
    detector_gap : float
        Gap between adjacent detectors, pixels.
    seed : int
        Random seed; the same settings and seed give identical files.
    psf : {'gaussian', 'jwst'}
        PSF of stars and galaxies: a Gaussian of ``psf_fwhm``, or the
        diffraction PSF of a JWST-like pupil in ``psf_filter``
        (`calimage3.jwst_psf.psf_stamp`; its pixel-integrated FWHM then
        replaces ``psf_filter``, e.g. about 1.1 px for F090W at 0.031
        arcsec/px, 2.4 px for F444W at 0.063 arcsec/px).
    psf_filter : str
        Filter of the ``'jwst'`` PSF (`calimage3.jwst_psf.FILTERS`); also
        the FILTER keyword of the files when ``psf='jwst'``.
    saturation : float or None
        Saturation level, MJy/sr: pixels whose noiseless sky plus sources
        exceed it are NaN in SCI/ERR/VAR_* with DQ ``SATURATED |
        DO_NOT_USE`` (as jwst >= 1.13 writes saturated cores).  None: no
        saturation.
    n_saturated : int
        Extra stars bright enough to saturate (peak 3-100 times
        ``saturation``); needs ``saturation``.  Drawn with their own random
        stream, so the rest of the set is that of the same seed.
    instrument : {'NIRCAM', 'MIRI'}
        Header keywords and file names of a NIRCam SW (F200W) or a MIRI
        imager (MIRIMAGE, F770W) exposure; `miri_imaging_settings` also
        sets MIRI's detector size, pixel scale, PSF and background.
    sky_gradient : float
        Peak-to-peak amplitude of a planar background gradient across the
        detector, as a fraction of ``sky``, in a random direction for each
        exposure (0: flat sky).
    bounding_box : tuple or None
        ``((x0, x1), (y0, y1))`` WCS bounding box (pixel edges, e.g.
        ``(359.5, 1031.5)``), narrower than the array as MIRI's imager is;
        None: the whole array.  Pixels outside it hold ``outside_level``
        instead of the sky scene.
    outside_level : float
        Mean of the bright, structured, unflagged signal outside the
        bounding box (coronagraph and Lyot glow on MIRI), MJy/sr.
    non_science : bool
        Flag the pixels outside the bounding box NON_SCIENCE in DQ (the
        bit only, not DO_NOT_USE).
    row_noise : float
        RMS of 1/f row offsets (correlated along each row of each
        amplifier, not in ERR), MJy/sr; 0: none.
    n_amplifiers : int
        Amplifiers side by side along x, each with its own row offsets
        (4 for NIRCam).
    snowball_density : float
        Unflagged snowball residuals (round, radius 1.5-3 pixels) per
        pixel per exposure.
    """

    def __init__(
        self,
        *,
        n_exposures=4,
        shape=(512, 512),
        pixel_scale=0.031,
        psf_fwhm=2.1,
        n_stars=None,
        n_galaxies=None,
        exptime=1000.0,
        sky=0.2,
        sky_offset_rms=0.02,
        shift_error=0.15,
        rotation_error=0.01,
        dither_fraction=0.06,
        cr_density=1e-4,
        n_hot=None,
        crval=(53.16, -27.79),
        position_angle=30.0,
        offsets=None,
        moving_target=False,
        target_rate=(0.35, 0.35),
        target_snr=300.0,
        detectors=1,
        detector_gap=40.0,
        seed=1,
        psf="gaussian",
        psf_filter="F200W",
        saturation=None,
        n_saturated=0,
        instrument="NIRCAM",
        sky_gradient=0.0,
        bounding_box=None,
        outside_level=0.0,
        non_science=False,
        row_noise=0.0,
        n_amplifiers=4,
        snowball_density=0.0,
    ):
        if int(n_exposures) < 1:
            raise ValueError(f"n_exposures must be at least 1, got {n_exposures}")
        if len(shape) != 2 or min(shape) < 64:
            raise ValueError(f"shape must be (ny, nx) with both at least 64, got {shape}")
        if isinstance(detectors, bool) or int(detectors) != detectors or not 1 <= detectors <= 4:
            raise ValueError(f"detectors must be an integer from 1 to 4, got {detectors!r}")
        self.n_exposures = int(n_exposures)
        self.shape = tuple(int(s) for s in shape)
        self.detectors = int(detectors)
        self.detector_gap = float(detector_gap)
        area_scale = self.detectors * self.shape[0] * self.shape[1] / 512.0**2
        self.n_stars = int(n_stars if n_stars is not None else round(100 * area_scale))
        self.n_galaxies = int(n_galaxies if n_galaxies is not None else round(25 * area_scale))
        self.pixel_scale = float(pixel_scale)
        self.psf_fwhm = float(psf_fwhm)
        self.exptime = float(exptime)
        self.sky = float(sky)
        self.sky_offset_rms = float(sky_offset_rms)
        self.shift_error = float(shift_error)
        self.rotation_error = float(rotation_error)
        self.dither_fraction = float(dither_fraction)
        self.cr_density = float(cr_density)
        self.n_hot = int(n_hot if n_hot is not None else round(5 * area_scale / self.detectors))
        self.crval = tuple(float(c) for c in crval)
        self.position_angle = float(position_angle)
        self.offsets = offsets
        self.moving_target = bool(moving_target)
        if len(target_rate) != 2:
            raise ValueError(f"target_rate must be (east, north) arcsec/hour, got {target_rate!r}")
        self.target_rate = tuple(float(r) for r in target_rate)
        self.target_snr = float(target_snr)
        self.seed = int(seed)
        _set_psf_settings(self, psf, psf_filter, saturation, n_saturated)
        _set_detector_effects(self, instrument, sky_gradient, bounding_box, outside_level, non_science,
                              row_noise, n_amplifiers, snowball_density)



# --------------------------------------------------------------------------
# JWST-like PSF and saturation (options of SimulationSettings)
# --------------------------------------------------------------------------


def _set_psf_settings(settings, psf, psf_filter, saturation, n_saturated):
    """Validate and store the PSF and saturation options; for ``psf='jwst'`` build the stamp."""
    if psf not in ("gaussian", "jwst"):
        raise ValueError(f"psf must be 'gaussian' or 'jwst', got {psf!r}")
    if saturation is not None and not (np.isfinite(saturation) and saturation > 0):
        raise ValueError(f"saturation must be a positive number of MJy/sr or None, got {saturation!r}")
    if int(n_saturated) != n_saturated or n_saturated < 0:
        raise ValueError(f"n_saturated must be a non-negative integer, got {n_saturated!r}")
    if n_saturated and saturation is None:
        raise ValueError("n_saturated needs a saturation level")
    settings.psf = psf
    settings.psf_filter = str(psf_filter)
    settings.saturation = None if saturation is None else float(saturation)
    settings.n_saturated = int(n_saturated)
    settings.psf_stamp = None
    if psf == "jwst":
        settings.psf_stamp = psf_stamp(settings.psf_filter, pixel_scale=settings.pixel_scale)
        settings.psf_fwhm = settings.psf_stamp.fwhm


def _draw_stars(settings, image, x, y, flux_sb_pix):
    """Add stars with the settings' PSF (Gaussian or JWST-like) to ``image``."""
    if settings.psf_stamp is not None:
        render_psf_stars(image, x, y, flux_sb_pix, settings.psf_stamp)
    else:
        _render_stars(image, x, y, flux_sb_pix, settings.psf_fwhm / 2.3548)


def _peak_fraction(settings):
    """Largest fraction of a star's flux in one pixel (star centred on a pixel)."""
    if settings.psf_stamp is not None:
        return float(settings.psf_stamp.image.max())
    sigma = settings.psf_fwhm / 2.3548
    return float(erf(0.5 / (np.sqrt(2.0) * sigma)) ** 2)


def _add_saturated_stars(settings, sources, field_half_deg):
    """``sources`` with ``n_saturated`` bright stars appended (own random stream)."""
    if settings.n_saturated == 0:
        return sources
    rng = np.random.default_rng([settings.seed, 7919])
    n = settings.n_saturated
    xi = rng.uniform(-field_half_deg, field_half_deg, n)
    eta = rng.uniform(-field_half_deg, field_half_deg, n)
    ra, dec = from_tangent_plane(xi, eta, *settings.crval)
    pix_sr = (settings.pixel_scale / 206264.806) ** 2
    peak_sb = settings.saturation * 10 ** rng.uniform(np.log10(3.0), 2.0, n)
    flux = peak_sb / _peak_fraction(settings) * pix_sr * 1e6  # Jy
    extra = Table()
    extra["id"] = np.arange(len(sources) + 1, len(sources) + n + 1)
    extra["type"] = np.array(["star"] * n)
    extra["ra"], extra["dec"] = ra, dec
    extra["flux"] = flux
    extra["r_eff"] = np.zeros(n)
    extra["sersic_n"] = np.zeros(n)
    extra["axis_ratio"] = np.ones(n)
    extra["theta"] = np.zeros(n)
    extra["snr"] = flux / _point_source_sigma_jy(settings)
    from astropy.table import vstack

    out = vstack([sources, extra])
    for name in ("flux", "r_eff", "theta"):
        out[name].unit = sources[name].unit
    return out


def _psf_galaxy_stamp(r_eff_pix, n, q, theta_pix_deg, stamp, oversample=5):
    """Unit-flux Sersic galaxy convolved with the JWST-like PSF (pixel-sampled), odd stamp."""
    from scipy.signal import fftconvolve

    half = int(np.ceil(5 * r_eff_pix)) + stamp.half_size + 1
    size = 2 * half + 1
    fine = np.arange(size * oversample) / oversample - half + (0.5 / oversample - 0.5)
    fx, fy = np.meshgrid(fine, fine)
    model = Sersic2D(amplitude=1.0, r_eff=r_eff_pix, n=n, x_0=0.0, y_0=0.0, ellip=1 - q,
                     theta=np.deg2rad(theta_pix_deg))
    image = model(fx, fy).reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    o = stamp.oversample
    c = (stamp.image.shape[0] - 1) // 2
    psf = stamp.image[c % o::o, c % o::o]  # the pixel-integrated PSF at whole-pixel offsets
    image = fftconvolve(image, psf / psf.sum(), mode="same")
    image = np.clip(image, 0.0, None)
    return image / image.sum(), half


def _saturate(settings, model_sb, dq):
    """Flag (SATURATED | DO_NOT_USE) pixels whose noiseless surface brightness exceeds saturation."""
    if settings.saturation is None:
        return np.zeros(model_sb.shape, dtype=bool)
    saturated = model_sb > settings.saturation
    dq[saturated] |= PIXEL["SATURATED"] | PIXEL["DO_NOT_USE"]
    return saturated



# --------------------------------------------------------------------------
# Detector effects beyond the NIRCam default: MIRI imaging, background
# gradients, bounding box, 1/f row noise, snowballs.  They draw from their
# own random stream, so the default settings give the files they always did.

INSTRUMENTS = ("NIRCAM", "MIRI")


def _set_detector_effects(settings, instrument, sky_gradient, bounding_box, outside_level, non_science,
                          row_noise, n_amplifiers, snowball_density):
    """Validate and store the detector-effect settings on ``settings``."""
    instrument = str(instrument).upper()
    if instrument not in INSTRUMENTS:
        raise ValueError(f"instrument must be one of {INSTRUMENTS}, got {instrument!r}")
    for name, value in (("sky_gradient", sky_gradient), ("outside_level", outside_level),
                        ("row_noise", row_noise), ("snowball_density", snowball_density)):
        if not (np.isfinite(float(value)) and float(value) >= 0):
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if isinstance(n_amplifiers, bool) or int(n_amplifiers) != n_amplifiers or n_amplifiers < 1:
        raise ValueError(f"n_amplifiers must be a positive integer, got {n_amplifiers!r}")
    if bounding_box is not None:
        (x0, x1), (y0, y1) = (tuple(float(v) for v in iv) for iv in bounding_box)
        ny, nx = settings.shape
        if not (-0.5 <= x0 < x1 <= nx - 0.5 and -0.5 <= y0 < y1 <= ny - 0.5):
            raise ValueError(f"bounding_box must lie within the {nx} x {ny} array, got {bounding_box!r}")
        bounding_box = ((x0, x1), (y0, y1))
    settings.instrument = instrument
    settings.sky_gradient = float(sky_gradient)
    settings.bounding_box = bounding_box
    settings.outside_level = float(outside_level)
    settings.non_science = bool(non_science)
    settings.row_noise = float(row_noise)
    settings.n_amplifiers = int(n_amplifiers)
    settings.snowball_density = float(snowball_density)


def miri_imaging_settings(**overrides):
    """`SimulationSettings` of a MIRI imager (F770W-like) dither set.

    1032 x 1024 pixels of 0.11", PSF FWHM 2.45 pixels, a high background
    (8 MJy/sr) with a 2% gentle gradient in a different direction in each
    exposure, and a WCS bounding box (x 359.5-1027.5) narrower than the
    array, with bright structured signal (3x the sky) outside it, as the
    coronagraph and Lyot regions of the real detector hold.  Any keyword of
    `SimulationSettings` overrides these.
    """
    values = dict(
        instrument="MIRI", shape=(1024, 1032), pixel_scale=0.11, psf_fwhm=2.45, sky=8.0, sky_offset_rms=0.05,
        sky_gradient=0.02, bounding_box=((359.5, 1027.5), (-0.5, 1023.5)), outside_level=24.0,
        cr_density=2e-4, n_amplifiers=1,
    )
    values.update(overrides)
    # Source counts scale with the field inside the bounding box, not the array.
    ny, nx = values["shape"]
    (x0, x1), (y0, y1) = values["bounding_box"] or ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    area_scale = (x1 - x0) * (y1 - y0) / 512.0**2
    for name, per_512 in (("n_stars", 100), ("n_galaxies", 25)):
        if values.get(name) is None:
            values[name] = round(per_512 * area_scale)
    return SimulationSettings(**values)


def _effects_rng(settings):
    """The random stream of the detector effects (independent of the scene's)."""
    return np.random.default_rng([settings.seed, 14])


def _apply_bounding_box(settings, wcs):
    """Set the settings' bounding box on ``wcs`` (no change when there is none)."""
    if settings.bounding_box is not None:
        wcs.bounding_box = settings.bounding_box
    return wcs


def _outside_mask(settings):
    """True on pixels whose centres are outside the bounding box (all False without one)."""
    ny, nx = settings.shape
    outside = np.zeros((ny, nx), bool)
    if settings.bounding_box is None:
        return outside
    (x0, x1), (y0, y1) = settings.bounding_box
    x = np.arange(nx)
    y = np.arange(ny)
    outside[:, (x < x0) | (x > x1)] = True
    outside[(y < y0) | (y > y1), :] = True
    return outside


def _outside_signal(settings):
    """Bright structured signal outside the bounding box, MJy/sr, fixed on the detector.

    A ramp along y, a ripple, and two round bright spots (an occulter's
    glow), all around ``outside_level``; 0 inside the box.
    """
    ny, nx = settings.shape
    outside = _outside_mask(settings)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    pattern = 1.0 + 0.3 * (yy / ny - 0.5) + 0.15 * np.sin(2 * np.pi * xx / 57.0) * np.cos(2 * np.pi * yy / 83.0)
    cols = np.flatnonzero(outside.any(axis=0))
    if cols.size:
        cx = 0.5 * (cols.min() + cols.max())
        for cy in (0.3 * ny, 0.75 * ny):
            pattern += 2.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 12.0**2))
    return np.where(outside, settings.outside_level * pattern, 0.0)


def _background_gradient(settings, rng):
    """A planar gradient of peak-to-peak ``sky_gradient * sky`` in a random direction.

    Returns
    -------
    gradient : ndarray of float64 or float
        MJy/sr, zero at the centre of the bounding box (the mean over the
        science field); 0.0 when ``sky_gradient`` is 0.
    coefficients : tuple of float
        ``(gx, gy)``: MJy/sr per pixel along x and y.
    """
    if settings.sky_gradient == 0:
        return 0.0, (0.0, 0.0)
    ny, nx = settings.shape
    angle = rng.uniform(0, 2 * np.pi)
    amplitude = settings.sky_gradient * settings.sky
    # peak-to-peak across the array along the chosen direction
    span = abs(np.cos(angle)) * (nx - 1) + abs(np.sin(angle)) * (ny - 1)
    gx, gy = amplitude * np.cos(angle) / span, amplitude * np.sin(angle) / span
    # Zero at the centre of the bounding box: the truth's sky level is the
    # mean sky of the science field.
    (x0, x1), (y0, y1) = settings.bounding_box or ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    x = np.arange(nx) - 0.5 * (x0 + x1)
    y = np.arange(ny) - 0.5 * (y0 + y1)
    return gy * y[:, None] + gx * x[None, :], (float(gx), float(gy))


def _row_noise(settings, rng):
    """1/f row offsets per amplifier (correlated along each row), MJy/sr; 0.0 when off."""
    if settings.row_noise == 0:
        return 0.0
    ny, nx = settings.shape
    edges = np.linspace(0, nx, settings.n_amplifiers + 1).round().astype(int)
    noise = np.zeros((ny, nx))
    freq = np.fft.rfftfreq(ny)
    freq[0] = freq[1]
    for a0, a1 in zip(edges[:-1], edges[1:]):
        spectrum = (rng.normal(size=freq.size) + 1j * rng.normal(size=freq.size)) / np.sqrt(freq)
        series = np.fft.irfft(spectrum, n=ny)
        series *= settings.row_noise / series.std()
        noise[:, a0:a1] = series[:, None]
    return noise


def _snowballs(settings, rng, noise_e):
    """Pixels and amplitudes (e-) of unflagged snowball residuals: round disks of radius 1.5-3 pixels."""
    ny, nx = settings.shape
    n_events = rng.poisson(settings.snowball_density * nx * ny)
    xs, ys, amps = [], [], []
    for _ in range(n_events):
        radius = rng.uniform(1.5, 3.0)
        r = int(np.ceil(radius))
        xc = rng.integers(REF_BORDER + r, nx - REF_BORDER - r)
        yc = rng.integers(REF_BORDER + r, ny - REF_BORDER - r)
        level = noise_e * 10 ** rng.uniform(np.log10(20.0), np.log10(300.0))
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if np.hypot(dx, dy) <= radius:
                    xs.append(xc + dx)
                    ys.append(yc + dy)
                    amps.append(level)
    return np.array(xs, int), np.array(ys, int), np.array(amps)


def _instrument_names(settings, program):
    """Product name, detector name of detector ``d``, and the instrument header keywords."""
    if settings.instrument == "MIRI":
        keywords = {"INSTRUME": "MIRI", "FILTER": "F770W", "EXP_TYPE": "MIR_IMAGE"}
        return f"jw{program}-o001_t001_miri_f770w", (lambda d: "MIRIMAGE"), keywords
    # the filter of a JWST-like PSF, else F200W (the Gaussian PSF's nominal filter)
    nircam_filter = settings.psf_filter if settings.psf == "jwst" else "F200W"
    keywords = {"INSTRUME": "NIRCAM", "MODULE": "B", "CHANNEL": "SHORT", "FILTER": nircam_filter, "PUPIL": "CLEAR",
                "EXP_TYPE": "NRC_IMAGE"}
    return (f"jw{program}-o001_t001_nircam_clear-{nircam_filter.lower()}", (lambda d: f"NRCB{d + 1}"), keywords)


def _distortion(shape):
    """NIRCam-like smooth distortion: about 1-2 pixels at the detector corners."""
    half = max(shape) / 2.0
    return distortion_model(
        {"c2_0": 1.2 / half**2, "c1_1": -0.6 / half**2, "c3_0": 0.4 / half**3, "c1_2": 0.3 / half**3},
        {"c0_2": 0.9 / half**2, "c1_1": 0.5 / half**2, "c2_1": -0.4 / half**3, "c0_3": 0.3 / half**3},
        shape,
    )


def _dither_offsets(settings, rng):
    if settings.offsets is not None:
        offsets = [tuple(map(float, o)) for o in settings.offsets]
        if len(offsets) != settings.n_exposures:
            raise ValueError(f"offsets has {len(offsets)} entries for {settings.n_exposures} exposures")
        return offsets
    ny, nx = settings.shape
    pattern = [(0.0, 0.0), (1.0, 0.6), (-0.7, 1.0), (0.5, -1.0), (-1.0, -0.5), (0.2, 0.9), (0.9, -0.2), (-0.4, -0.9)]
    offsets = []
    for i in range(settings.n_exposures):
        if i < len(pattern):
            px, py = pattern[i]
        else:
            px, py = rng.uniform(-1, 1, 2)
        # Sub-pixel fractions make the dither sample the PSF, as real patterns do.
        offsets.append((px * settings.dither_fraction * nx + 0.37 * i, py * settings.dither_fraction * ny + 0.61 * i))
    return offsets


def _pixel_area_ratio(wcs, shape, nominal_scale_deg):
    """Relative pixel solid angle (the AREA array) from the WCS Jacobian on a grid."""
    ny, nx = shape
    step = max(8, min(nx, ny) // 32)
    gx = np.append(np.arange(0, nx, step), nx - 1).astype(float)
    gy = np.append(np.arange(0, ny, step), ny - 1).astype(float)
    xx, yy = np.meshgrid(gx, gy)
    ra0, dec0 = wcs.forward_transform(xx, yy)
    ra1, dec1 = wcs.forward_transform(xx + 0.5, yy)
    ra2, dec2 = wcs.forward_transform(xx, yy + 0.5)
    ref_ra, ref_dec = wcs.forward_transform((nx - 1) / 2.0, (ny - 1) / 2.0)
    x0, y0 = to_tangent_plane(ra0, dec0, ref_ra, ref_dec)
    x1, y1 = to_tangent_plane(ra1, dec1, ref_ra, ref_dec)
    x2, y2 = to_tangent_plane(ra2, dec2, ref_ra, ref_dec)
    area = 4.0 * np.abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)) / nominal_scale_deg**2
    from scipy.interpolate import RectBivariateSpline

    spline = RectBivariateSpline(gy, gx, area, kx=3, ky=3)
    return spline(np.arange(ny, dtype=float), np.arange(nx, dtype=float)).astype(np.float32)


def _make_sources(settings, rng, field_half_deg):
    """Star and galaxy truth on the sky around the field centre."""
    ra0, dec0 = settings.crval
    n_s, n_g = settings.n_stars, settings.n_galaxies
    # Sources fall within the union of the dithered footprints.
    xi = rng.uniform(-field_half_deg, field_half_deg, n_s + n_g)
    eta = rng.uniform(-field_half_deg, field_half_deg, n_s + n_g)
    ra, dec = from_tangent_plane(xi, eta, ra0, dec0)
    # Point-source fluxes: log-uniform from ~5 to ~2000 sigma of the PSF-weighted noise.
    sigma_jy = _point_source_sigma_jy(settings)
    star_flux = sigma_jy * 10 ** rng.uniform(np.log10(5.0), np.log10(2000.0), n_s)
    gal_flux = sigma_jy * 10 ** rng.uniform(np.log10(20.0), np.log10(2000.0), n_g)
    table = Table()
    table["id"] = np.arange(1, n_s + n_g + 1)
    table["type"] = np.array(["star"] * n_s + ["galaxy"] * n_g)
    table["ra"] = ra
    table["dec"] = dec
    table["flux"] = np.concatenate([star_flux, gal_flux])
    table["flux"].unit = "Jy"
    table["r_eff"] = np.concatenate([np.zeros(n_s), rng.uniform(2.5, 8.0, n_g)]) * settings.pixel_scale
    table["r_eff"].unit = "arcsec"
    table["sersic_n"] = np.concatenate([np.zeros(n_s), rng.uniform(0.8, 3.0, n_g)])
    table["axis_ratio"] = np.concatenate([np.ones(n_s), rng.uniform(0.4, 1.0, n_g)])
    table["theta"] = np.concatenate([np.zeros(n_s), rng.uniform(0, 180, n_g)])
    table["theta"].unit = "deg"
    table["snr"] = np.concatenate([star_flux, gal_flux]) / sigma_jy
    return table


def _sky_noise_sb(settings):
    """1-sigma noise per pixel of the sky, MJy/sr."""
    conv = PHOTMJSR / (GAIN * settings.exptime)  # MJy/sr per electron
    sky_e = settings.sky / conv
    return np.sqrt(sky_e + READ_NOISE_E**2) * conv


def _point_source_sigma_jy(settings):
    """Noise of an optimally weighted point-source measurement, Jy."""
    sigma_px = settings.psf_fwhm / 2.3548
    n_eff = 4.0 * np.pi * sigma_px**2
    pix_sr = (settings.pixel_scale / 206264.806) ** 2
    return _sky_noise_sb(settings) * np.sqrt(n_eff) * pix_sr * 1e6


def _render_stars(image, x, y, flux_sb_pix, sigma):
    """Add pixel-integrated Gaussian stars; ``flux_sb_pix`` is flux in MJy/sr * pixel."""
    ny, nx = image.shape
    half = int(np.ceil(6 * sigma)) + 1
    norm = 1.0 / (np.sqrt(2.0) * sigma)
    for xc, yc, f in zip(x, y, flux_sb_pix):
        ix, iy = int(round(xc)), int(round(yc))
        x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
        y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = np.arange(x0, x1 + 1) - 0.5 - xc
        ys = np.arange(y0, y1 + 1) - 0.5 - yc
        px = np.diff(0.5 * erf(xs * norm))
        py = np.diff(0.5 * erf(ys * norm))
        image[y0:y1, x0:x1] += f * np.outer(py, px)


def _galaxy_stamp(r_eff_pix, n, q, theta_pix_deg, psf_sigma, oversample=5):
    """Unit-flux Sersic galaxy convolved with the PSF, centred on an odd stamp."""
    half = int(np.ceil(5 * r_eff_pix + 4 * psf_sigma)) + 1
    size = 2 * half + 1
    fine = np.arange(size * oversample) / oversample - half + (0.5 / oversample - 0.5)
    fx, fy = np.meshgrid(fine, fine)
    model = Sersic2D(amplitude=1.0, r_eff=r_eff_pix, n=n, x_0=0.0, y_0=0.0, ellip=1 - q, theta=np.deg2rad(theta_pix_deg))
    image = model(fx, fy)
    image = image.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    image = gaussian_filter(image, psf_sigma, mode="constant")
    return image / image.sum(), half


def _render_galaxies(image, x, y, flux_sb_pix, stamps):
    ny, nx = image.shape
    for xc, yc, f, (stamp, half) in zip(x, y, flux_sb_pix, stamps):
        ix, iy = int(round(xc)), int(round(yc))
        # Sub-pixel placement by shifting the stamp with linear interpolation weights.
        from scipy.ndimage import shift as nd_shift

        shifted = nd_shift(stamp, (yc - iy, xc - ix), order=1, mode="constant")
        x0, x1 = ix - half, ix + half + 1
        y0, y1 = iy - half, iy + half + 1
        sx0, sy0 = max(0, -x0), max(0, -y0)
        sx1 = stamp.shape[1] - max(0, x1 - nx)
        sy1 = stamp.shape[0] - max(0, y1 - ny)
        if sx0 >= sx1 or sy0 >= sy1:
            continue
        image[max(y0, 0) : min(y1, ny), max(x0, 0) : min(x1, nx)] += f * shifted[sy0:sy1, sx0:sx1]


def _exposure_start(settings, i):
    """EXPSTART (MJD) of dither position ``i``: one exposure plus 60 s of overhead apart."""
    return 60300.0 + i * (settings.exptime + 60.0) / 86400.0


def _exposure_mid(settings, i):
    """EXPMID (MJD) of dither position ``i``."""
    return _exposure_start(settings, i) + 0.5 * settings.exptime / 86400.0


def _track_offsets(settings, n_positions):
    """Tangent-plane offsets (deg) of the target from its mean position at each EXPMID.

    The motion is linear in time, so the target's mean position over the
    exposures (what assign_mtwcs stacks on) is the offset origin.
    """
    hours = np.array([_exposure_mid(settings, i) for i in range(n_positions)]) * 24.0
    hours -= hours.mean()
    rate_deg = np.asarray(settings.target_rate) / 3600.0
    return hours * rate_deg[0], hours * rate_deg[1]


def _moving_target_track(settings, sources, n_positions, centre):
    """Sky positions of the moving target at each dither position's mid time.

    The mean position is picked without random numbers (so the pointing
    errors, stars, galaxies and sky levels are those of the same seed
    without a moving target; the noise differs once the target is drawn),
    on a grid around ``centre`` as the point whose track stays
    farthest from every star and galaxy: in the target frame the fixed
    sources sweep past the target, and a clean track makes its photometry a
    test of image3 rather than of blending.

    Parameters
    ----------
    settings : SimulationSettings
    sources : astropy.table.Table
        The fixed sources (``ra``, ``dec``).
    n_positions : int
        Number of dither positions.
    centre : tuple of float
        (RA, Dec) of the first detector's centre at the first dither
        position, degrees.

    Returns
    -------
    ra, dec : ndarray
        Target position at each dither position, degrees.
    """
    ra0, dec0 = settings.crval
    dxi, deta = _track_offsets(settings, n_positions)
    sxi, seta = to_tangent_plane(np.asarray(sources["ra"]), np.asarray(sources["dec"]), ra0, dec0)
    # Candidates within the central fifth of the first detector: inside
    # every dithered footprint, with room for the track.
    half = 0.2 * min(settings.shape) * settings.pixel_scale / 3600.0
    grid = np.linspace(-half, half, 9)
    cxi0, ceta0 = (float(v) for v in to_tangent_plane(centre[0], centre[1], ra0, dec0))
    best, best_xy = -np.inf, (0.0, 0.0)
    for cxi in cxi0 + grid:
        for ceta in ceta0 + grid:
            txi, teta = cxi + dxi, ceta + deta
            clearance = np.hypot(txi[:, None] - sxi, teta[:, None] - seta).min() if len(sxi) else 0.0
            if clearance > best:
                best, best_xy = clearance, (cxi, ceta)
    ra, dec = from_tangent_plane(best_xy[0] + dxi, best_xy[1] + deta, ra0, dec0)
    return np.atleast_1d(ra), np.atleast_1d(dec)


def _cosmic_rays(rng, shape, density, noise_e):
    """Pixel lists and amplitudes (e-) of residual cosmic-ray hits."""
    ny, nx = shape
    n_events = rng.poisson(density * nx * ny)
    ys, xs, amps = [], [], []
    for _ in range(n_events):
        x, y = rng.integers(REF_BORDER, nx - REF_BORDER), rng.integers(REF_BORDER, ny - REF_BORDER)
        peak = noise_e * 10 ** rng.uniform(np.log10(15.0), np.log10(1000.0))
        length = rng.integers(1, 4)
        dx, dy = (1, 0) if rng.random() < 0.5 else (0, 1)
        for k in range(length):
            xx, yy = x + k * dx, y + k * dy
            if xx < nx - REF_BORDER and yy < ny - REF_BORDER:
                xs.append(xx)
                ys.append(yy)
                amps.append(peak * (0.5 if k else 1.0))
    return np.array(xs, int), np.array(ys, int), np.array(amps)


def _moving_target_truth(settings, mt_ra, mt_dec, flux_jy):
    """Summary of the moving target for truth.json: flux, rate and mean position."""
    xi, eta = to_tangent_plane(mt_ra, mt_dec, mt_ra[0], mt_dec[0])
    mean_ra, mean_dec = from_tangent_plane(np.mean(xi), np.mean(eta), mt_ra[0], mt_dec[0])
    return {
        "flux_jy": float(flux_jy), "rate_arcsec_per_hour": list(settings.target_rate),
        "mean_ra": float(mean_ra), "mean_dec": float(mean_dec),
    }


def _moving_target_table(rows):
    """Per-exposure truth of the moving target: mid time, sky and true detector position, flux."""
    table = Table(rows=rows, names=("exposure", "expmid", "ra", "dec", "x", "y", "flux"),
                  dtype=(str, float, float, float, float, float, float))
    table["ra"].unit = table["dec"].unit = "deg"
    table["flux"].unit = "Jy"
    table.meta["comment"] = "x, y: 0-based pixel of the target on the exposure's true WCS"
    return table


def simulate_dither(output_dir, settings=None, **kwargs):
    """Write a simulated image3 dither set: ``_cal`` files, ASN and truth.

    Parameters
    ----------
    output_dir : str or Path
        Folder to write into (created).
    settings : SimulationSettings or None
        All parameters; keyword arguments build one when None.

    Returns
    -------
    dict
        ``asn`` (path of the association), ``cal`` (list of paths),
        ``truth`` (folder of truth files), ``product``, ``asn_id``.

    Notes
    -----
    Stages: (1) dithered true WCSs with distortion; (2) per-exposure header
    WCSs with pointing errors; (3) source truth on the sky; (4) for each
    exposure, render sources in MJy/sr on the true pixel solid angle, add
    sky, draw Poisson and read noise, compute variance arrays, inject
    cosmic rays and hot pixels, flag the reference border and bad pixels;
    (5) write ``_cal`` files, the ASN and the truth.  With a moving target,
    stage (3) also lays its track and stage (4) draws it, and the truth
    gains ``moving_target.ecsv`` (one row per exposure) and a
    ``moving_target`` entry in ``truth.json``.
    """
    settings = settings or SimulationSettings(**kwargs)
    out = Path(output_dir)
    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed)
    ny, nx = settings.shape
    scale_deg = settings.pixel_scale / 3600.0
    distortion = _distortion(settings.shape)
    offsets = _dither_offsets(settings, rng)
    ra0, dec0 = settings.crval
    pa = np.deg2rad(settings.position_angle)

    program = "01234"
    product, detector_name, instrument_keywords = _instrument_names(settings, program)
    effects_rng = _effects_rng(settings)
    outside = _outside_mask(settings)
    asn_id = "a3001"
    conv = PHOTMJSR / (GAIN * settings.exptime)  # MJy/sr per electron
    noise_e = np.sqrt(settings.sky / conv + READ_NOISE_E**2)
    psf_sigma = settings.psf_fwhm / 2.3548

    # Stage 1-2: WCSs.  A detector offset (dx, dy) moves the pointing the
    # other way on the sky; rotate it by the position angle.
    # With several detectors, detector d sits (d - (D-1)/2) * (nx + gap)
    # pixels from the pointing centre along x; one pointing error per
    # dither position moves all of them rigidly about the pointing centre.
    det_dx = [(d - (settings.detectors - 1) / 2.0) * (nx + settings.detector_gap) for d in range(settings.detectors)]
    true_wcs, header_wcs, errors, positions = [], [], [], []
    for i, (dx, dy) in enumerate(offsets):
        exi = (-dx * np.cos(pa) + dy * np.sin(pa)) * scale_deg
        eeta = (dx * np.sin(pa) + dy * np.cos(pa)) * scale_deg
        crval = tuple(float(c) for c in from_tangent_plane(-exi, -eeta, ra0, dec0))
        if i == 0:
            shift, rot = np.zeros(2), 0.0
        else:
            shift = rng.uniform(-settings.shift_error, settings.shift_error, 2)
            rot = float(rng.uniform(-settings.rotation_error, settings.rotation_error))
        c, s = np.cos(np.deg2rad(rot)), np.sin(np.deg2rad(rot))
        for d in range(settings.detectors):
            det_crval = crval
            if settings.detectors > 1:
                centre = imaging_wcs(settings.shape, crval, settings.pixel_scale, settings.position_angle)
                det_crval = tuple(float(v) for v in centre.forward_transform((nx - 1) / 2.0 + det_dx[d], (ny - 1) / 2.0))
            wcs = imaging_wcs(settings.shape, det_crval, settings.pixel_scale, settings.position_angle, distortion=distortion)
            _apply_bounding_box(settings, wcs)
            true_wcs.append(wcs)
            header_wcs.append(tangent_plane_correction(wcs, crval[0], crval[1], [[c, -s], [s, c]], shift / 3600.0))
            errors.append({"crval": det_crval, "shift_arcsec": shift.tolist(), "rotation_deg": rot})
            positions.append((i, d))

    # Stage 3: sources over the union of footprints.
    extent = 0.5 * max(nx, ny) * scale_deg * np.sqrt(2) + max(np.hypot(*o) for o in offsets) * scale_deg
    if settings.detectors > 1:
        extent += max(abs(v) for v in det_dx) * scale_deg
    sources = _make_sources(settings, rng, extent)
    sources = _add_saturated_stars(settings, sources, extent)
    star_saturated = np.zeros(len(sources), dtype=bool)
    if settings.moving_target:
        mt_ra, mt_dec = _moving_target_track(settings, sources, len(offsets), errors[0]["crval"])
        mt_flux = settings.target_snr * _point_source_sigma_jy(settings)
    sky_offsets = np.concatenate([[0.0], rng.normal(0.0, settings.sky_offset_rms, len(true_wcs) - 1)])
    stamps = [
        _galaxy_stamp(row["r_eff"] / settings.pixel_scale, row["sersic_n"], row["axis_ratio"],
                      row["theta"] - settings.position_angle, psf_sigma)
        if settings.psf_stamp is None else
        _psf_galaxy_stamp(row["r_eff"] / settings.pixel_scale, row["sersic_n"], row["axis_ratio"],
                          row["theta"] - settings.position_angle, settings.psf_stamp)
        for row in sources[sources["type"] == "galaxy"]
    ]
    pix_sr = scale_deg**2 * (np.pi / 180.0) ** 2

    cal_paths, outlier_rows, exposures_truth, mt_rows = [], [], [], []
    for k, wcs in enumerate(true_wcs):
        i, d = positions[k]
        detector = detector_name(d)
        root = f"jw{program}001001_01101_{i + 1:05d}_{detector.lower()}"
        area = _pixel_area_ratio(wcs, settings.shape, scale_deg)
        image = np.zeros(settings.shape, dtype=np.float64)
        x, y = wcs.backward_transform(sources["ra"], sources["dec"])
        flux_sb_pix = np.asarray(sources["flux"]) * 1e-6 / pix_sr  # MJy/sr * pixel
        is_star = np.asarray(sources["type"] == "star")
        _draw_stars(settings, image, x[is_star], y[is_star], flux_sb_pix[is_star])
        _render_galaxies(image, x[~is_star], y[~is_star], flux_sb_pix[~is_star], stamps)
        if settings.moving_target:
            # The target at this exposure's mid time, a star-like PSF.
            tx, ty = wcs.backward_transform(mt_ra[i], mt_dec[i])
            _draw_stars(settings, image, [tx], [ty], [mt_flux * 1e-6 / pix_sr])
            mt_rows.append((root, float(_exposure_mid(settings, i)), float(mt_ra[i]), float(mt_dec[i]),
                            float(tx), float(ty), float(mt_flux)))
        # Flux per pixel -> surface brightness on the true pixel solid angle.
        image /= area
        level = settings.sky + sky_offsets[k]
        gradient, gradient_coeffs = _background_gradient(settings, effects_rng)
        model_e = (image + level + gradient) / conv
        if outside.any():
            model_e[outside] = _outside_signal(settings)[outside] / conv
        observed_e = rng.poisson(np.clip(model_e, 0, None)).astype(np.float64)
        observed_e += rng.normal(0.0, READ_NOISE_E, settings.shape)
        sci = observed_e * conv
        var_poisson = np.clip(sci, 0, None) * conv
        var_rnoise = np.full(settings.shape, (READ_NOISE_E * conv) ** 2)
        var_flat = (FLAT_ERROR * np.clip(sci, 0, None)) ** 2

        cx, cy, camp = _cosmic_rays(rng, settings.shape, settings.cr_density, noise_e)
        np.add.at(sci, (cy, cx), camp * conv)
        hx = rng.integers(REF_BORDER, nx - REF_BORDER, settings.n_hot)
        hy = rng.integers(REF_BORDER, ny - REF_BORDER, settings.n_hot)
        hamp = noise_e * 10 ** rng.uniform(np.log10(30.0), np.log10(500.0), settings.n_hot)
        sci[hy, hx] += hamp * conv
        sx, sy, samp = _snowballs(settings, effects_rng, noise_e)
        np.add.at(sci, (sy, sx), samp * conv)
        sci += _row_noise(settings, effects_rng)
        for kind, xs, ys in (("cosmic_ray", cx, cy), ("hot_pixel", hx, hy), ("snowball", sx, sy)):
            for xx, yy in zip(xs, ys):
                outlier_rows.append((root, kind, int(xx), int(yy)))

        dq = np.zeros(settings.shape, np.uint32)
        border = np.ones(settings.shape, bool)
        border[REF_BORDER:-REF_BORDER, REF_BORDER:-REF_BORDER] = False
        dq[border] |= PIXEL["REFERENCE_PIXEL"] | PIXEL["DO_NOT_USE"]
        n_bad = int(2e-4 * nx * ny)
        bx = rng.integers(REF_BORDER, nx - REF_BORDER, n_bad)
        by = rng.integers(REF_BORDER, ny - REF_BORDER, n_bad)
        dq[by, bx] |= PIXEL["DEAD"] | PIXEL["DO_NOT_USE"]
        saturated = _saturate(settings, image + level, dq)
        if saturated.any():
            ix, iy = np.round(x).astype(int), np.round(y).astype(int)
            on = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
            star_saturated[on] |= saturated[iy[on], ix[on]]
        if settings.non_science:
            dq[outside] |= PIXEL["NON_SCIENCE"]
        err = np.sqrt(var_poisson + var_rnoise + var_flat)
        bad = (dq & PIXEL["DO_NOT_USE"]) > 0
        # Real _cal files carry NaN wherever DO_NOT_USE is set.
        for array in (sci, err, var_poisson, var_rnoise, var_flat):
            array[bad] = np.nan

        exp_start = _exposure_start(settings, i)
        meta = {
            "TELESCOP": "JWST", **instrument_keywords, "DETECTOR": detector,
            "DATAMODL": "ImageModel", "PROGRAM": program, "OBSERVTN": "001", "VISIT": "001",
            "VISITGRP": "01", "SEQ_ID": "1", "ACT_ID": "01", "EXPOSURE": f"{i + 1:05d}",
            "OBS_ID": f"V{program}001001P0000000001101",
            "TARGNAME": "SIMULATED-FIELD", "TARGTYPE": "MOVING" if settings.moving_target else "FIXED",
            "TARG_RA": ra0, "TARG_DEC": dec0,
            "EXPTIME": settings.exptime, "EFFEXPTM": settings.exptime, "DURATION": settings.exptime,
            "EXPSTART": exp_start, "EXPMID": exp_start + 0.5 * settings.exptime / 86400.0,
            "EXPEND": exp_start + settings.exptime / 86400.0,
            "DATE-OBS": "2023-12-18", "TIME-OBS": f"00:{i:02d}:00.000",
            "PATT_NUM": i + 1, "NUMDTHPT": settings.n_exposures,
            "BUNIT": "MJy/sr", "PHOTMJSR": PHOTMJSR, "PHOTUJA2": PHOTMJSR * 1e12 / 4.25452e10,
            "PIXAR_SR": pix_sr, "PIXAR_A2": settings.pixel_scale**2,
            "SIMULATD": True,
        }
        if settings.moving_target:
            meta["MT_RA"] = float(mt_ra[i])
            meta["MT_DEC"] = float(mt_dec[i])
        exposure = Exposure(
            data=sci.astype(np.float32), err=err.astype(np.float32), dq=dq, wcs=header_wcs[k], meta=meta,
            var_poisson=var_poisson.astype(np.float32), var_rnoise=var_rnoise.astype(np.float32),
            var_flat=var_flat.astype(np.float32), area=area,
        )
        path = out / f"{root}_cal.fits"
        io.write_exposure(path, exposure)
        io.write_wcs_file(truth_dir / f"{root}_true_wcs.asdf", wcs, settings.shape)
        cal_paths.append(path)
        exposures_truth.append({
            "root": root, "offset_pix": list(offsets[i]), "sky_level": float(level),
            "sky_offset": float(sky_offsets[k]), **errors[k],
        })
        if settings.sky_gradient:
            exposures_truth[-1]["sky_gradient"] = list(gradient_coeffs)

    asn = {
        "asn_type": "image3", "asn_rule": "candidate_Asn_Lv3Image", "asn_id": asn_id,
        "program": program, "target": "t001", "asn_pool": "simulated_pool",
        "products": [{"name": product, "members": [
            {"expname": p.name, "exptype": "science", "exposerr": None} for p in cal_paths
        ]}],
    }
    asn_path = out / f"jw{program}-o001_20231218t000000_image3_00001_asn.json"
    asn_path.write_text(json.dumps(asn, indent=2) + "\n")
    if settings.saturation is not None:  # only then, so the default truth is unchanged
        sources["saturated"] = star_saturated & np.asarray(sources["type"] == "star")
    io.write_table(truth_dir / "sources.ecsv", sources)
    io.write_table(truth_dir / "outliers.ecsv", Table(rows=outlier_rows, names=("exposure", "kind", "x", "y")) if outlier_rows
                   else Table(names=("exposure", "kind", "x", "y"), dtype=(str, str, int, int)))
    truth = {
        "product": product, "asn_id": asn_id, "pixel_scale": settings.pixel_scale,
        "psf_fwhm": settings.psf_fwhm, "sky": settings.sky, "noise_sigma": float(_sky_noise_sb(settings)),
        "point_source_sigma_jy": float(_point_source_sigma_jy(settings)), "shape": list(settings.shape),
        "seed": settings.seed, "exposures": exposures_truth,
    }
    if settings.psf == "jwst":
        truth["psf"] = {"model": "jwst", "filter": settings.psf_filter,
                        "fwhm_pix": float(settings.psf_fwhm)}
    if settings.saturation is not None:
        truth["saturation"] = settings.saturation
    if settings.moving_target:
        # Only with a moving target, so the default truth files are unchanged.
        truth["moving_target"] = _moving_target_truth(settings, mt_ra, mt_dec, mt_flux)
        io.write_table(truth_dir / "moving_target.ecsv", _moving_target_table(mt_rows))
    io.write_json(truth_dir / "truth.json", truth)
    return {"asn": asn_path, "cal": cal_paths, "truth": truth_dir, "product": product, "asn_id": asn_id}


def main(argv=None):
    """Command-line entry point: ``calimage3-simulate OUTDIR [options]``."""
    parser = argparse.ArgumentParser(description="Simulate a JWST-like image3 dither set with known truth.")
    parser.add_argument("output_dir", help="folder to write the _cal files, ASN and truth/ into")
    parser.add_argument("-n", "--n-exposures", type=int, default=4)
    parser.add_argument("--size", type=int, default=512, help="detector size in pixels (2048 for NIRCam)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--moving-target", action="store_true",
                        help="a moving-target observation: TARGTYPE MOVING, MT_RA/MT_DEC, the target drawn moving")
    parser.add_argument("--target-rate", type=float, nargs=2, default=(0.35, 0.35), metavar=("EAST", "NORTH"),
                        help="moving-target rate on the sky, arcsec/hour (default: 0.35 0.35)")
    parser.add_argument("--detectors", type=int, default=1,
                        help="detectors per exposure, side by side, sharing one pointing error")
    parser.add_argument("--psf", choices=("gaussian", "jwst"), default="gaussian",
                        help="star PSF: Gaussian, or the diffraction PSF of a JWST-like pupil")
    parser.add_argument("--psf-filter", default="F200W", help="filter of the jwst PSF (default: F200W)")
    parser.add_argument("--pixel-scale", type=float, default=0.031, help="arcsec per pixel (default: 0.031)")
    parser.add_argument("--saturation", type=float, default=None,
                        help="saturation level, MJy/sr: brighter pixels are NaN with DQ SATURATED|DO_NOT_USE")
    parser.add_argument("--n-saturated", type=int, default=0, help="extra stars that saturate")
    parser.add_argument("--miri", action="store_true",
                        help="a MIRI F770W-like set (1032x1024, 0.11\"/px, high background with gradients, "
                             "bounding box narrower than the array); --size, --psf and --pixel-scale are then ignored")
    args = parser.parse_args(argv)
    common = dict(n_exposures=args.n_exposures, seed=args.seed, moving_target=args.moving_target,
                  target_rate=args.target_rate, detectors=args.detectors, saturation=args.saturation,
                  n_saturated=args.n_saturated)
    if args.miri:
        result = simulate_dither(args.output_dir, miri_imaging_settings(**common))
    else:
        result = simulate_dither(args.output_dir, shape=(args.size, args.size), psf=args.psf,
                                 psf_filter=args.psf_filter, pixel_scale=args.pixel_scale, **common)
    print(f"wrote {len(result['cal'])} exposures and {result['asn']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
