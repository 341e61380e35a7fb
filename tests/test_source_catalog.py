"""Tests of source detection and photometry on a synthetic mosaic with known truth."""

import numpy as np
import pytest
import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.modeling.models import Sersic2D
from astropy.table import Table
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.segmentation import deblend_sources, detect_sources
from scipy import ndimage
from scipy.ndimage import gaussian_filter
from scipy.spatial import KDTree
from scipy.special import erf

from calimage3.source_catalog import (
    _aperture_sums,
    _cutouts,
    _daofind_stats,
    _deblend,
    _encircled_energy,
    _multi_peak_labels,
    _radius_at,
    _star_curves,
    encircled_energy_radii,
    flux_to_abmag,
    gaussian_ee_radii,
    make_source_catalog,
    smooth,
)
from calimage3.wcs_tools import imaging_wcs

SHAPE = (300, 300)
SCALE = 0.031  # arcsec / pixel
CRVAL = (53.16, -27.78)
PIXAR_SR = (SCALE / 206264.806) ** 2
FWHM = 2.5  # PSF FWHM, pixels
SIGMA = FWHM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
NOISE = 0.02  # MJy/sr per pixel
SKY = 0.3  # MJy/sr, flat
PAD = 50  # sources are rendered on a padded canvas, then cropped
# Matched-filter (PSF-weighted) noise of a point source, MJy/sr * pixel:
# SNR = flux / (NOISE * sqrt(4 pi sigma^2)).
PSF_NOISE = NOISE * np.sqrt(4.0 * np.pi * SIGMA**2)
TO_JY = 1.0e6 * PIXAR_SR


def _add_star(canvas, x, y, flux):
    """Pixel-integrated Gaussian star of total ``flux`` (MJy/sr * pixel) at canvas (x, y)."""
    half = int(np.ceil(6 * SIGMA)) + 1
    ix, iy = int(round(x)), int(round(y))
    norm = 1.0 / (np.sqrt(2.0) * SIGMA)
    px = np.diff(0.5 * erf((np.arange(ix - half, ix + half + 2) - 0.5 - x) * norm))
    py = np.diff(0.5 * erf((np.arange(iy - half, iy + half + 2) - 0.5 - y) * norm))
    canvas[iy - half : iy + half + 1, ix - half : ix + half + 1] += flux * np.outer(py, px)


def _add_galaxy(canvas, x, y, flux, r_eff, q, theta, oversample=5):
    """Exponential-disc (Sersic n=1) galaxy convolved with the PSF."""
    half = int(np.ceil(5 * r_eff + 4 * SIGMA)) + 1
    ix, iy = int(round(x)), int(round(y))
    size = 2 * half + 1
    fine = np.arange(size * oversample) / oversample - half + (0.5 / oversample - 0.5)
    fx, fy = np.meshgrid(fine + ix - x, fine + iy - y)
    model = Sersic2D(1.0, r_eff, 1.0, 0.0, 0.0, 1.0 - q, np.deg2rad(theta))(fx, fy)
    stamp = model.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    stamp = gaussian_filter(stamp, SIGMA, mode="constant")
    canvas[iy - half : iy + half + 1, ix - half : ix + half + 1] += flux * stamp / stamp.sum()


def _image(canvas, rng):
    """Crop the padded canvas and add sky and Gaussian noise (float32 MJy/sr)."""
    model = canvas[PAD:-PAD, PAD:-PAD]
    return (SKY + model + rng.normal(0.0, NOISE, model.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def mosaic():
    """300x300 mosaic: 40 stars (SNR 10-500) and 8 exponential discs on a jittered grid."""
    rng = np.random.default_rng(7)
    grid = np.stack(np.meshgrid(np.arange(24.0, 290.0, 40.0), np.arange(24.0, 290.0, 40.0)), -1)
    cells = grid.reshape(-1, 2)[rng.permutation(49)][:48] + rng.uniform(-4, 4, (48, 2))
    star_xy, gal_xy = cells[:40], cells[40:]
    snr = 10 ** rng.uniform(1.0, np.log10(500.0), 40)
    star_flux = snr * PSF_NOISE
    canvas = np.zeros((SHAPE[0] + 2 * PAD, SHAPE[1] + 2 * PAD))
    for (x, y), f in zip(star_xy, star_flux):
        _add_star(canvas, x + PAD, y + PAD, f)
    for x, y in gal_xy:
        _add_galaxy(canvas, x + PAD, y + PAD, rng.uniform(150, 300) * PSF_NOISE,
                    rng.uniform(4.0, 7.0), rng.uniform(0.6, 1.0), rng.uniform(0, 180))
    data = _image(canvas, rng)
    err = np.full(SHAPE, NOISE, dtype=np.float32)
    wcs = imaging_wcs(SHAPE, CRVAL, SCALE)
    cat, segm = make_source_catalog(data, err, wcs, pixar_sr=PIXAR_SR)
    return dict(data=data, err=err, wcs=wcs, star_xy=star_xy, snr=snr,
                star_flux_jy=star_flux * TO_JY, gal_xy=gal_xy, cat=cat, segm=segm)


def _match(cat, xy):
    """Distance (pix) and row of the nearest catalog source to each true position."""
    pos = np.column_stack([cat["xcentroid"], cat["ycentroid"]])
    return KDTree(pos).query(xy)


def test_recovers_stars_above_20_sigma_with_default_threshold(mosaic):
    """At snr_threshold=3 (JWST: 3x the unsmoothed RMS on the smoothed image) >=95% of SNR>=20 stars are found."""
    dist, _ = _match(mosaic["cat"], mosaic["star_xy"])
    bright = mosaic["snr"] >= 20
    assert np.mean(dist[bright] < 1.0) >= 0.95


def test_recovers_stars_above_10_sigma_with_lower_threshold(mosaic):
    """At snr_threshold=2 >=95% of SNR>=10 stars are found and nothing spurious is."""
    m = mosaic
    cat, _ = make_source_catalog(m["data"], m["err"], m["wcs"], pixar_sr=PIXAR_SR, snr_threshold=2.0)
    dist, _ = _match(cat, m["star_xy"])
    assert np.mean(dist < 1.0) >= 0.95
    truth = np.vstack([m["star_xy"], m["gal_xy"]])
    spurious, _ = KDTree(truth).query(np.column_stack([cat["xcentroid"], cat["ycentroid"]]))
    assert np.all(spurious < 3.0)


def test_pixel_and_sky_centroids_within_0p1_pixel(mosaic):
    """Median centroid error of the stars is below 0.1 pixel, in pixels and on the sky."""
    m = mosaic
    dist, row = _match(m["cat"], m["star_xy"])
    found = dist < 1.0
    assert np.median(dist[found]) < 0.1
    ra, dec = m["wcs"](m["star_xy"][found, 0], m["star_xy"][found, 1])
    sep = m["cat"]["sky_centroid"][row[found]].separation(SkyCoord(ra, dec, unit="deg"))
    assert np.median(sep.to_value(u.arcsec)) / SCALE < 0.1


def test_total_flux_matches_truth(mosaic):
    """aper_total_flux / true flux: median within 2%, each SNR>=150 star within 4%."""
    m = mosaic
    dist, row = _match(m["cat"], m["star_xy"])
    found = dist < 1.0
    ratio = m["cat"]["aper_total_flux"][row].to_value(u.Jy) / m["star_flux_jy"]
    assert abs(np.median(ratio[found]) - 1.0) < 0.02
    bright = found & (m["snr"] >= 150)
    assert bright.sum() >= 5
    assert np.all(np.abs(ratio[bright] - 1.0) < 0.04)


def test_aperture_radii_measured_from_mosaic_stars(mosaic):
    """The radii come from the mosaic's stars and enclose 30/50/70% of a pixelated PSF."""
    params = mosaic["cat"].meta["aperture_params"]
    assert params["method"] == "psf_stars" and params["n_psf_stars"] >= 5
    canvas = np.zeros((41, 41))
    _add_star(canvas, 20.3, 19.8, 1.0)
    ee = [aperture_photometry(canvas, CircularAperture((20.3, 19.8), r), method="exact")
          ["aperture_sum"][0] for r in params["aperture_radii"]]
    np.testing.assert_allclose(ee, [0.30, 0.50, 0.70], atol=0.015)
    # Measured (total over background-subtracted aperture flux): 100 / ee for a Gaussian.
    np.testing.assert_allclose(params["aperture_corrections"], [100 / 30, 2.0, 100 / 70], rtol=0.01)


def test_stars_compact_and_galaxies_extended(mosaic):
    """Bright stars are not extended and >=60% of galaxies are, with thresholds for a Gaussian PSF."""
    m = mosaic
    r1, r2, r3 = m["cat"].meta["aperture_params"]["aperture_radii"]
    # Halfway between a point source (5/3, 7/5) and a flat source ((r2/r1)^2, (r3/r2)^2).
    ci1 = 0.5 * (5 / 3 + (r2 / r1) ** 2)
    ci2 = 0.5 * (7 / 5 + (r3 / r2) ** 2)
    cat, _ = make_source_catalog(m["data"], m["err"], m["wcs"], pixar_sr=PIXAR_SR,
                                 ci1_star_threshold=ci1, ci2_star_threshold=ci2)
    dist, row = _match(cat, m["star_xy"])
    bright = (dist < 1.0) & (m["snr"] >= 30)
    assert not np.any(cat["is_extended"][row[bright]])
    assert abs(np.median(cat["CI_50_30"][row[bright]]) - 5 / 3) < 0.03
    gdist, grow = _match(cat, m["gal_xy"])
    assert np.all(gdist < 1.5)
    assert np.mean(cat["is_extended"][grow]) >= 0.6


def test_segmentation_labels_match_table(mosaic):
    """The segmentation is int32, has the image shape, and holds exactly the table's labels."""
    cat, segm = mosaic["cat"], mosaic["segm"]
    assert segm.dtype == np.int32 and segm.shape == SHAPE
    np.testing.assert_array_equal(np.unique(segm[segm > 0]), np.sort(np.asarray(cat["label"])))
    ix = np.round(np.asarray(cat["xcentroid"])).astype(int)
    iy = np.round(np.asarray(cat["ycentroid"])).astype(int)
    np.testing.assert_array_equal(segm[iy, ix], cat["label"])


def test_columns_units_and_meta(mosaic):
    """JWST column names, units (Jy, pix, deg), SkyCoord columns, and metadata."""
    cat = mosaic["cat"]
    for name in ("label", "xcentroid", "sky_centroid", "aper_bkg_flux", "aper30_flux",
                 "aper70_flux_err", "aper_total_flux", "aper_total_abmag", "aper50_vegamag",
                 "CI_50_30", "CI_70_50", "CI_70_30", "is_extended", "sharpness", "roundness",
                 "nn_label", "nn_dist", "isophotal_flux", "isophotal_abmag", "isophotal_area",
                 "semimajor_sigma", "semiminor_sigma", "ellipticity", "orientation",
                 "sky_orientation", "sky_bbox_ll", "sky_bbox_ul", "sky_bbox_lr", "sky_bbox_ur"):
        assert name in cat.colnames, name
    assert cat["aper_total_flux"].unit == u.Jy and cat["isophotal_flux"].unit == u.Jy
    assert cat["nn_dist"].unit == u.pix and cat["isophotal_area"].unit == u.pix**2
    assert cat["sky_orientation"].unit == u.deg
    assert isinstance(cat["sky_bbox_ur"], SkyCoord)
    assert cat["is_extended"].dtype == bool
    assert cat.meta["pixar_sr"] == PIXAR_SR and cat.meta["bkg_boxsize"] == list(SHAPE)
    np.testing.assert_allclose(
        cat["aper_total_abmag"], -2.5 * np.log10(cat["aper_total_flux"].to_value(u.Jy)) + 8.9)
    assert np.all(np.isnan(cat["aper_total_vegamag"]))  # abvega_offset=None


def test_nearest_neighbour_columns(mosaic):
    """nn_label/nn_dist name the closest other source."""
    cat = mosaic["cat"]
    pos = np.column_stack([cat["xcentroid"], cat["ycentroid"]])
    d = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(cat["nn_dist"].value, d.min(axis=1))
    np.testing.assert_array_equal(cat["nn_label"], np.asarray(cat["label"])[d.argmin(axis=1)])


@pytest.mark.parametrize("rotation", [0.0, 30.0])
def test_sky_orientation_is_position_angle_of_major_axis(rotation):
    """A source elongated along +y has its major axis at the position angle of +y."""
    yy, xx = np.mgrid[0:80, 0:80]
    data = 5.0 * np.exp(-((xx - 40.2) ** 2 / (2 * 1.5**2) + (yy - 39.7) ** 2 / (2 * 4.0**2)))
    wcs = imaging_wcs(data.shape, CRVAL, SCALE, rotation=rotation)
    cat, _ = make_source_catalog(data + SKY, None, wcs, pixar_sr=PIXAR_SR, psf_fwhm=FWHM)
    assert len(cat) == 1
    assert abs((cat["orientation"][0].to_value(u.deg) % 180) - 90.0) < 0.5
    pa = cat["sky_orientation"][0].to_value(u.deg) % 180
    assert abs(((pa - rotation) + 90) % 180 - 90) < 0.5


def test_deblend_separates_two_close_stars():
    """Two equal stars 6 pixels apart are one source without deblending and two with it."""
    rng = np.random.default_rng(3)
    canvas = np.zeros((100 + 2 * PAD, 100 + 2 * PAD))
    truth = np.array([[47.0, 50.2], [53.0, 50.2]])
    for x, y in truth:
        _add_star(canvas, x + PAD, y + PAD, 300 * PSF_NOISE)
    data = _image(canvas, rng)
    wcs = imaging_wcs(data.shape, CRVAL, SCALE)
    merged, _ = make_source_catalog(data, None, wcs, pixar_sr=PIXAR_SR, psf_fwhm=FWHM)
    split, segm = make_source_catalog(data, None, wcs, pixar_sr=PIXAR_SR, psf_fwhm=FWHM, deblend=True)
    assert len(merged) == 1 and len(split) == 2
    assert set(np.unique(segm)) == {0, 1, 2}
    dist, _ = _match(split, truth)
    assert np.all(dist < 0.3)


def test_empty_catalog_for_pure_noise():
    """Pure noise gives a table with all the columns and no rows, and an all-zero segmentation."""
    data = np.random.default_rng(0).normal(SKY, NOISE, (64, 64))
    wcs = imaging_wcs(data.shape, CRVAL, SCALE)
    cat, segm = make_source_catalog(data, None, wcs, pixar_sr=PIXAR_SR, snr_threshold=10.0)
    assert len(cat) == 0 and "aper_total_flux" in cat.colnames and "sky_centroid" in cat.colnames
    assert cat["aper_total_flux"].unit == u.Jy
    assert segm.shape == data.shape and segm.dtype == np.int32 and not segm.any()


def test_zero_weight_pixels_take_no_part():
    """A star where wht == 0 is not detected and its pixels stay background."""
    rng = np.random.default_rng(4)
    canvas = np.zeros((100 + 2 * PAD, 100 + 2 * PAD))
    _add_star(canvas, 30 + PAD, 50 + PAD, 300 * PSF_NOISE)
    _add_star(canvas, 75 + PAD, 50 + PAD, 300 * PSF_NOISE)
    data = _image(canvas, rng)
    wht = np.ones(data.shape)
    wht[:, 60:] = 0.0
    wcs = imaging_wcs(data.shape, CRVAL, SCALE)
    cat, segm = make_source_catalog(data, None, wcs, wht=wht, pixar_sr=PIXAR_SR, psf_fwhm=FWHM)
    assert len(cat) == 1 and abs(cat["xcentroid"][0] - 30.0) < 0.2
    assert not segm[:, 60:].any()


def test_vega_magnitudes_use_abvega_offset():
    """Vega magnitude = AB magnitude - abvega_offset."""
    rng = np.random.default_rng(5)
    canvas = np.zeros((80 + 2 * PAD, 80 + 2 * PAD))
    _add_star(canvas, 40 + PAD, 40 + PAD, 200 * PSF_NOISE)
    data = _image(canvas, rng)
    wcs = imaging_wcs(data.shape, CRVAL, SCALE)
    cat, _ = make_source_catalog(data, None, wcs, pixar_sr=PIXAR_SR, psf_fwhm=FWHM, abvega_offset=1.8)
    np.testing.assert_allclose(cat["aper70_vegamag"], cat["aper70_abmag"] - 1.8)
    np.testing.assert_allclose(cat["isophotal_vegamag"], cat["isophotal_abmag"] - 1.8)
    assert np.isnan(cat["nn_dist"][0]) and cat["nn_label"][0] == -1  # a single source


def test_flux_to_abmag():
    """3631 Jy is AB 0; a 10% error is 2.5 log10(1.1) mag; non-positive flux is NaN."""
    mag, err = flux_to_abmag([3631.0, 1e-6, -1.0] * u.Jy, [363.1, 0.0, 1.0] * u.Jy)
    np.testing.assert_allclose(mag[:2], [0.0, 23.9], atol=1e-3)
    np.testing.assert_allclose(err[0], 2.5 * np.log10(1.1))
    assert np.isnan(mag[2]) and np.isnan(err[2])


def test_gaussian_ee_radii():
    """r(EE) = sigma sqrt(-2 ln(1 - EE)): 1.1774 sigma holds half the energy."""
    r = gaussian_ee_radii(2.0 * np.sqrt(2.0 * np.log(2.0)), [30, 50, 70])
    np.testing.assert_allclose(r, [0.84456, 1.17741, 1.55176], rtol=1e-4)


def test_encircled_energy_radii_on_noiseless_stars():
    """On noiseless stars the returned radii enclose the requested energies."""
    canvas = np.zeros((120, 120))
    pos = np.array([[30.2, 30.7], [80.6, 35.1], [40.9, 85.4], [90.0, 90.3]])
    for x, y in pos:
        _add_star(canvas, x, y, 5.0)
    eec = encircled_energy_radii(canvas, pos, [20, 50, 80], norm_radius=10.0, radius_step=0.05)
    assert eec.n_stars == 4
    ee = aperture_photometry(canvas, [CircularAperture(pos, r) for r in eec.radii], method="exact")
    # Stars at different pixel phases differ by a few 0.1%: compare with their median.
    np.testing.assert_allclose([np.median(ee[f"aperture_sum_{k}"]) / 5.0 for k in range(3)],
                               [0.20, 0.50, 0.80], atol=0.002)


def test_explicit_psf_fwhm_and_apcorr_table():
    """psf_fwhm sets Gaussian radii; an APCORR-like table sets radii and corrections."""
    rng = np.random.default_rng(6)
    canvas = np.zeros((80 + 2 * PAD, 80 + 2 * PAD))
    _add_star(canvas, 40 + PAD, 40 + PAD, 200 * PSF_NOISE)
    data = _image(canvas, rng)
    wcs = imaging_wcs(data.shape, CRVAL, SCALE)
    cat, _ = make_source_catalog(data, None, wcs, pixar_sr=PIXAR_SR, psf_fwhm=3.0)
    params = cat.meta["aperture_params"]
    assert params["method"] == "psf_fwhm"
    np.testing.assert_allclose(params["aperture_radii"], gaussian_ee_radii(3.0, [30, 50, 70]))
    table = Table({"eefraction": [0.3, 0.5, 0.7], "radius": [1.0, 1.5, 2.0],
                   "apcorr": [3.0, 1.9, 1.3], "skyin": [8.0] * 3, "skyout": [12.0] * 3})
    cat, _ = make_source_catalog(data, None, wcs, pixar_sr=PIXAR_SR, apcorr_table=table)
    params = cat.meta["aperture_params"]
    assert params["method"] == "apcorr_table" and params["bkg_aperture_outer_radius"] == 12.0
    np.testing.assert_allclose(cat["aper_total_flux"], 1.3 * cat["aper70_flux"])


def test_refuses_aperture_correction_with_too_few_stars():
    """With one star there is no correction: aper_total_* NaN, method 'refused', kernel_fwhm radii."""
    rng = np.random.default_rng(8)
    canvas = np.zeros((80 + 2 * PAD, 80 + 2 * PAD))
    _add_star(canvas, 40 + PAD, 40 + PAD, 200 * PSF_NOISE)
    data = _image(canvas, rng)
    wcs = imaging_wcs(data.shape, CRVAL, SCALE)
    cat, _ = make_source_catalog(data, None, wcs, pixar_sr=PIXAR_SR, kernel_fwhm=2.2)
    params = cat.meta["aperture_params"]
    assert params["method"] == "refused" and params["n_psf_stars"] == 0
    assert "5 needed" in params["note"]
    np.testing.assert_allclose(params["aperture_radii"], gaussian_ee_radii(2.2, [30, 50, 70]))
    assert len(cat) == 1 and np.isfinite(cat["aper70_flux"][0])
    assert np.isnan(cat["aper_total_flux"][0]) and np.isnan(cat["aper_total_abmag"][0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pixar_sr=-1.0), "pixar_sr"),
        (dict(pixar_sr=PIXAR_SR, aperture_ee2=20), "aperture_ee1 < aperture_ee2"),
        (dict(pixar_sr=PIXAR_SR, aperture_ee3=100), "between 0 and 100"),
        (dict(pixar_sr=PIXAR_SR, npixels=2.5), "npixels"),
        (dict(pixar_sr=PIXAR_SR, kernel_fwhm=0.0), "kernel_fwhm"),
        (dict(pixar_sr=PIXAR_SR, wht=np.ones((3, 3))), "wht must have the shape"),
        (dict(pixar_sr=PIXAR_SR, ci1_star_threshold=np.nan), "ci1_star_threshold"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, match):
    """Bad settings raise ValueError naming the parameter."""
    data = np.zeros((20, 20))
    with pytest.raises(ValueError, match=match):
        make_source_catalog(data, None, imaging_wcs(data.shape, CRVAL, SCALE), **kwargs)


# ----------------------------------------------------- fast paths equal the photutils ones


def _reference_aperture_sums(data, positions, radii, error=None, mask=None):
    """The aperture_photometry formulation that _aperture_sums replaces."""
    apertures = [CircularAperture(positions, r) for r in radii]
    clean = np.where(mask, 0.0, data) if mask is not None else data
    err = None if error is None else (np.where(mask, 0.0, error) if mask is not None else error)
    phot = aperture_photometry(clean, apertures, error=err, method="exact")
    sums = np.column_stack([np.asarray(phot[f"aperture_sum_{i}"], float) for i in range(len(radii))])
    errs = (np.column_stack([np.asarray(phot[f"aperture_sum_err_{i}"], float)
                             for i in range(len(radii))]) if err is not None
            else np.full_like(sums, np.nan))
    if mask is not None and mask.any():
        cover = aperture_photometry(mask.astype(float), apertures, method="center")
        hit = np.column_stack([np.asarray(cover[f"aperture_sum_{i}"]) > 0 for i in range(len(radii))])
        sums[hit] = np.nan
        errs[hit] = np.nan
    return sums, errs


def test_aperture_sums_equal_aperture_photometry():
    """Sums and errors equal photutils' bit for bit: edges, off-image, masked pixels."""
    rng = np.random.default_rng(11)
    data = rng.normal(size=(60, 70))
    error = rng.uniform(0.5, 1.5, data.shape)
    mask = np.zeros(data.shape, bool)
    mask[40:44, 10:13] = True
    pos = np.column_stack([rng.uniform(-5, 75, 80), rng.uniform(-5, 65, 80)])
    pos[:4] = [[-1000.0, -1000.0], [11.3, 41.2], [0.0, 0.0], [69.4, 59.6]]
    radii = [0.4, 1.3, 2.75, 6.0]
    for m in (None, mask):
        got = _aperture_sums(data, pos, radii, error, m)
        want = _reference_aperture_sums(data, pos, radii, error, m)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    assert np.isnan(got[0][1]).all() and np.isnan(got[0][0]).all()


def test_deblend_leaves_single_peak_segments_to_no_one():
    """Deblending only the multi-peak segments gives photutils' full result."""
    rng = np.random.default_rng(12)
    yy, xx = np.mgrid[:200, :220]
    image = rng.normal(size=yy.shape)
    for _ in range(60):
        x0, y0, s = rng.uniform(0, 220), rng.uniform(0, 200), rng.uniform(0.8, 3.0)
        image += rng.uniform(3, 200) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    conv = gaussian_filter(image, 1.0)
    full = deblend_sources(conv, detect_sources(conv, 1.0, 5), 5, n_levels=32, contrast=0.001,
                           mode="exponential", connectivity=8, relabel=True, progress_bar=False)
    segm = detect_sources(conv, 1.0, 5)
    sent = _multi_peak_labels(conv, segm, 10)
    assert 0 < sent.size < np.count_nonzero(segm.areas >= 10)
    np.testing.assert_array_equal(_deblend(conv, segm, 5).data, full.data)


def test_encircled_energy_prefix_gives_the_same_radii():
    """The curve measured only as far as needed gives the radii of the full curve."""
    rng = np.random.default_rng(13)
    yy, xx = np.mgrid[:120, :120]
    canvas = rng.normal(0.0, 1e-3, yy.shape)
    # Stars: 4 ordinary, one whose aperture leaves the image (kept), one centred
    # off the image (its smallest apertures miss the image: dropped), one with
    # a masked pixel in its normalisation aperture (dropped).
    pos = np.array([[30.2, 30.7], [80.6, 35.1], [40.9, 85.4], [90.0, 90.3], [5.0, 20.0],
                    [-1.0, 60.0], [60.2, 60.1]])
    for x, y in pos:
        canvas += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * SIGMA**2)) / (2 * np.pi * SIGMA**2)
    mask = np.zeros(canvas.shape, bool)
    mask[58:61, 58:60] = True
    full = encircled_energy_radii(canvas, pos, [30, 50, 70], norm_radius=8.0, mask=mask)
    part = _encircled_energy(canvas, pos, [30, 50, 70], norm_radius=8.0, mask=mask, upto=0.5)
    assert full.n_stars == part.n_stars == 5
    assert part.curve.size < full.curve.size
    np.testing.assert_array_equal(part.radii, full.radii)
    np.testing.assert_array_equal(part.curve, full.curve[: part.curve.size])
    assert _radius_at(part.curve, part.radius_grid, 0.5) == _radius_at(full.curve,
                                                                       full.radius_grid, 0.5)


def test_daofind_stats_from_cutouts_equal_full_image_convolution():
    """Sharpness and roundness as from the DAOFind kernel convolved over the whole image."""
    rng = np.random.default_rng(14)
    data = rng.normal(size=(50, 60))
    xy = np.column_stack([rng.uniform(-2, 61, 40), rng.uniform(-2, 51, 40)])
    xy[0] = [-1000.0, -1000.0]
    fwhm = 2.0
    sharp, rnd = _daofind_stats(data, xy, fwhm)
    # Reference: the kernel of _daofind_stats convolved over the full image.
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    rmax = max(2.0, 1.5 * sigma)
    size = 2 * int(rmax) + 1
    c = size // 2
    yy, xx = np.mgrid[0:size, 0:size]
    kmask = (np.hypot(xx - c, yy - c) <= rmax).astype(float)
    gauss = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2.0 * sigma**2)) * kmask
    npix = kmask.sum()
    kernel = (gauss - gauss.sum() / npix) / (np.sum(gauss**2) - np.sum(gauss) ** 2 / npix) * kmask
    conv = ndimage.convolve(data, kernel, mode="constant", cval=0.0)
    cut, cut_conv = _cutouts(data, xy, size), _cutouts(conv, xy, size)
    peak, conv_peak = cut[:, c, c], cut_conv[:, c, c]
    with np.errstate(divide="ignore", invalid="ignore"):
        want = (peak - (np.sum(cut * kmask, axis=(1, 2)) - peak) / (npix - 1)) / conv_peak
    np.testing.assert_array_equal(sharp, want)
    cc = cut_conv.copy()
    cc[:, c, c] = 0.0
    sum2 = (-cc[:, 0 : c + 1, c + 1 :].sum(axis=(1, 2)) + cc[:, 0:c, 0 : c + 1].sum(axis=(1, 2))
            - cc[:, c:, 0:c].sum(axis=(1, 2)) + cc[:, c + 1 :, c:].sum(axis=(1, 2)))
    sum4 = np.abs(cc).sum(axis=(1, 2))
    sum4[sum4 == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_array_equal(rnd, 2.0 * sum2 / sum4)


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")  # astropy: NaN left
@pytest.mark.parametrize("fwhm", [1.0, 2.0, 2.5, 3.3])
def test_smooth_equals_astropy_convolve(fwhm):
    """The separable smoothing is astropy's masked, normalised Gaussian convolution (JWST's kernel)."""
    from astropy.convolution import Gaussian2DKernel, convolve
    from astropy.stats import gaussian_fwhm_to_sigma

    rng = np.random.default_rng(3)
    data = rng.normal(size=(120, 97))
    mask = rng.random(data.shape) < 0.05
    mask[40:60, :20] = True  # a block reaching the edge
    data[rng.random(data.shape) < 0.01] = np.nan
    data[90:, 80:] = np.nan  # wider than the kernel: nothing usable near its middle
    kernel = Gaussian2DKernel(fwhm * gaussian_fwhm_to_sigma)
    kernel.normalize(mode="integral")
    for m in (None, mask):
        expected = convolve(data, kernel, mask=m, normalize_kernel=True)
        got = smooth(data, fwhm, m)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13, equal_nan=True)
    clean = rng.normal(size=(50, 40))
    np.testing.assert_allclose(smooth(clean, fwhm), convolve(clean, kernel, normalize_kernel=True), rtol=0, atol=1e-13)
    # the data's and the weights' passes in two threads: the same numbers
    for m in (None, mask):
        np.testing.assert_array_equal(smooth(data, fwhm, m, threads=2), smooth(data, fwhm, m))


def test_star_curves_are_exact_areas_and_fill_masked_pixels_per_ring():
    """On a flat image every curve of growth is the aperture's exact area; a masked pixel outside
    the core is filled by its ring's mean (no change); one inside the core, the image's edge within
    the core, or a ring more than half masked voids the star; a star's curve is photutils' exact
    aperture sums, up to its flux."""
    grid = np.concatenate([np.arange(0.1, 6.0, 0.1), np.geomspace(6.0, 20.0, 12)])
    flat = np.full((120, 120), 2.0)
    xy = np.array([[60.3, 59.6], [40.0, 70.25], [2.0, 60.0]])  # the last: the image's edge 2.5 px away
    mask = np.zeros(flat.shape, bool)
    mask[59, 72] = True  # 11.7 px from the first star: outside its 6 px core
    mask[70, 41] = True  # 1 px from the second star: in its core
    curves = _star_curves(flat, mask, xy, grid, 6.0)
    np.testing.assert_allclose(curves[0], 2.0 * np.pi * grid**2, rtol=1e-12)
    assert np.all(np.isnan(curves[1:]))
    np.testing.assert_allclose(_star_curves(flat, None, xy[1:2], grid, 6.0)[0], 2.0 * np.pi * grid**2, rtol=1e-12)
    yy, xx = np.mgrid[0:120, 0:120]
    ring = np.abs(np.hypot(xx - 60.3, yy - 59.6) - 10.0) < 1.5  # all of the rings near 10 px, none of the core
    assert np.all(np.isnan(_star_curves(flat, ring, xy[:1], grid, 6.0)))
    partly = ring & (xx < 60) & (yy < 70)  # under half of each of them: filled from the rest
    np.testing.assert_allclose(_star_curves(flat, partly, xy[:1], grid, 6.0)[0], 2.0 * np.pi * grid**2, rtol=1e-12)

    sigma, flux = 1.5, 1000.0
    edges = np.arange(121) - 0.5
    fx = np.diff(erf((edges - 60.3) / (np.sqrt(2) * sigma))) / 2  # pixel-integrated Gaussian
    fy = np.diff(erf((edges - 59.6) / (np.sqrt(2) * sigma))) / 2
    star = flux * np.outer(fy, fx)
    curve = _star_curves(star, None, xy[:1], grid, 6.0)[0]
    exact = [aperture_photometry(star, CircularAperture(xy[0], r), method="exact")["aperture_sum"][0] for r in grid]
    np.testing.assert_allclose(curve, exact, rtol=1e-12)
    np.testing.assert_allclose(curve[-1], flux, rtol=1e-9)
