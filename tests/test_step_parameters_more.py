"""More step-parameter tests, catalog-column parity with JWST 3.0, and the _i2d mosaic keywords.

Every parameter below changes the result the way the JWST documentation
says; each test fails if its parameter were ignored.  Tests here are
``*_more`` tests in this file; others are named with their file.

outlier_detection
    weight_type     test_outlier_weight_type_sets_single_weights
                    (and test_step_parameters.py::test_weight_type_exptime_weights_are_exposure_time)
    pixfrac         test_outlier_pixfrac_and_kernel_shape_single_drops
    kernel          test_outlier_pixfrac_and_kernel_shape_single_drops
    fillval         test_step_parameters.py::test_outlier_fillval_fills_uncovered_singles
    maskpt          test_maskpt_lower_lets_more_pixels_into_the_median
                    (and test_outlier_detection.py::test_weight_threshold_is_clipped_mean)
    snr             test_snr_larger_flags_fewer_pixels
    scale           test_scale_larger_flags_fewer_pixels_on_gradients
    backg           test_backg_is_subtracted_before_the_comparison
                    (and test_outlier_detection.py::test_flag_outliers_thresholds)
    backg_boxsize   test_outlier_detection.py::test_background_gradient_difference_not_flagged
    flux_box, flux_tolerance
                    test_outlier_detection.py::test_undersampled_star_core_spared_cosmic_rays_kept
    good_bits       test_step_parameters.py::test_non_science_never_used_whatever_good_bits
    resample_data   (not covered here: handled separately)

resample
    pixfrac         test_pixfrac_smaller_gives_less_correlated_noise
                    (and test_step_parameters.py::test_pixfrac_shrinks_drops)
    kernel          test_each_kernel_shapes_a_drop_its_own_way (square, gaussian,
                    point, turbo, lanczos2, lanczos3), test_kernels_preserve_flux_of_a_smooth_source
                    (and test_step_parameters.py::test_point_kernel_vs_square)
    fillval         test_resample.py::test_nan_fill_and_numeric_fill
    weight_type     test_weight_type_sets_the_mosaic_weights (ivm and exptime)
                    (and test_resample.py::test_weight_ivm_and_exptime)
    output_shape    test_wcs_tools.py::test_output_wcs_user_scale_and_shape,
                    test_step_parameters.py::test_output_wcs_file_reproduces_the_grid
    crpix, crval    test_step_parameters.py::test_crpix_crval_place_the_reference_pixel
    rotation        test_step_parameters.py::test_rotation_sets_position_angle
    pixel_scale_ratio, pixel_scale
                    test_step_parameters.py::test_pixel_scale_ratio_and_pixel_scale

source_catalog
    bkg_boxsize     test_step_parameters.py::test_bkg_boxsize_follows_a_sky_gradient
    kernel_fwhm     test_step_parameters.py::test_kernel_fwhm_widens_segments
    snr_threshold   test_snr_threshold_higher_finds_fewer_and_smaller_sources
    npixels         test_step_parameters.py::test_npixels_drops_small_sources
    deblend         test_source_catalog.py::test_deblend_separates_two_close_stars,
                    test_segmentation_file_labels_are_the_catalog_labels
    aperture_ee1..3 test_step_parameters.py::test_aperture_ee_sets_enclosed_energy,
                    test_aperture_ee_orders_radii_and_fluxes
    ci1_star_threshold, ci2_star_threshold
                    test_each_ci_threshold_can_make_a_source_a_star
                    (and test_step_parameters.py::test_ci_star_thresholds_decide_is_extended)

Products: test_catalog_columns_are_jwst_3_columns,
test_segmentation_file_labels_are_the_catalog_labels and the ``mosaic`` tests
of the _i2d keywords (``calimage3.mosaic_metadata.mosaic_metadata``).
"""

import importlib.util
import warnings

import astropy.units as u
import numpy as np
import pytest
import workflow_runs
from astropy.io import fits

from calimage3 import io
from calimage3.exposure import Exposure
from calimage3.mosaic_metadata import mosaic_metadata
from calimage3.outlier_detection import flag_outliers, median_in_sections
from calimage3.resample import KERNELS, ResampledImage, drizzle_exposure, drizzle_single
from calimage3.source_catalog import make_source_catalog
from calimage3.wcs_tools import imaging_wcs, output_wcs, pixel_area_keywords, s_region

RA0, DEC0, SCALE = 150.0, 2.0, 0.031
PIXAR_SR = (SCALE / 206264.806) ** 2


def _script(name):
    spec = importlib.util.spec_from_file_location(name, workflow_runs.REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wcs(shape, scale=SCALE):
    return imaging_wcs(shape, (RA0, DEC0), scale)


def _exposure(data, *, exptime=100.0, var_rnoise=1e-4):
    data = np.asarray(data, np.float32)
    var = np.full(data.shape, var_rnoise, np.float32)
    return Exposure(data=data, err=np.sqrt(2 * var), dq=np.zeros(data.shape, np.uint32), wcs=_wcs(data.shape),
                    meta={"EXPTIME": exptime}, var_rnoise=var, var_poisson=var,
                    var_flat=np.zeros(data.shape, np.float32))


def _shifted_pixmap(shape, dx=0.0, dy=0.0, scale=1.0):
    """Input pixel (i, j) -> output (scale i + dx, scale j + dy)."""
    y, x = np.indices(shape, dtype=float)
    return np.dstack([scale * x + dx, scale * y + dy])


def _rotated_pixmap(n, angle_deg, shift):
    """Input pixels turned by ``angle_deg`` about the centre and shifted by ``shift`` (x, y) pixels."""
    y, x = np.indices((n, n), dtype=float)
    c, a = (n - 1) / 2.0, np.deg2rad(angle_deg)
    xo = c + np.cos(a) * (x - c) - np.sin(a) * (y - c) + shift[0]
    yo = c + np.sin(a) * (x - c) + np.cos(a) * (y - c) + shift[1]
    return np.dstack([xo, yo])


def _drizzle(image, pixmap, **kwargs):
    """One exposure drizzled onto a grid of its own shape; the finalized arrays."""
    resampler = ResampledImage(_wcs(image.shape), image.shape, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gaussian/lanczos are "not flux-conserving"
        resampler.add_exposure(_exposure(image), pixmap=pixmap)
    return resampler.finalize()


# ---------------------------------------------------------------- outlier_detection


def test_outlier_weight_type_sets_single_weights():
    """Singles weigh by exposure time with 'exptime' (ratio 300/100) and by 1/VAR_RNOISE with 'ivm' (ratio 1/4)."""
    shape = (12, 12)
    a = _exposure(np.ones(shape), exptime=100.0, var_rnoise=1e-4)
    b = _exposure(np.ones(shape), exptime=300.0, var_rnoise=4e-4)
    pixmap = _shifted_pixmap(shape)
    inner = np.s_[2:-2, 2:-2]
    for weight_type, ratio in (("exptime", 3.0), ("ivm", 0.25)):
        _, wht_a = drizzle_single(a, _wcs(shape), shape, pixmap=pixmap, weight_type=weight_type)
        _, wht_b = drizzle_single(b, _wcs(shape), shape, pixmap=pixmap, weight_type=weight_type)
        np.testing.assert_allclose(wht_b[inner] / wht_a[inner], ratio, rtol=1e-5)


@pytest.mark.parametrize("kernel, pixfrac, covered", [("square", 1.0, 1.0), ("square", 0.5, 0.25),
                                                      ("point", 1.0, 0.25)])
def test_outlier_pixfrac_and_kernel_shape_single_drops(kernel, pixfrac, covered):
    """On a 2x finer grid a single gets weight everywhere with square drops of pixfrac 1, in 1 pixel of 4 otherwise."""
    data, wht = drizzle_single(_exposure(np.full((20, 20), 2.0)), _wcs((40, 40), SCALE / 2), (40, 40),
                               pixmap=_shifted_pixmap((20, 20), scale=2.0), kernel=kernel, pixfrac=pixfrac)
    inner = np.s_[4:-4, 4:-4]
    assert np.mean(wht[inner] > 0) == covered
    np.testing.assert_allclose(data[inner][wht[inner] > 0], 2.0, rtol=1e-6)


def test_maskpt_lower_lets_more_pixels_into_the_median():
    """maskpt scales the weight threshold: a single at half its typical weight is left out at 0.7, kept at 0.4."""
    shape = (10, 10)
    singles = [np.full(shape, v, np.float32) for v in (1.0, 2.0, 10.0)]
    weights = [np.ones(shape, np.float32) for _ in singles]
    weights[2][4:6, 4:6] = 0.5  # a few low-weight pixels: the typical (clipped mean) weight stays 1
    low = np.s_[4:6, 4:6]
    strict = median_in_sections(singles, weights, maskpt=0.7)
    loose = median_in_sections(singles, weights, maskpt=0.4)
    assert np.all(strict[low] == 1.5)  # median of 1 and 2: the 10 is out
    assert np.all(loose[low] == 2.0)   # median of 1, 2 and 10
    assert np.all(strict[0, :] == 2.0) and np.all(loose[0, :] == 2.0)  # full-weight pixels: same either way


def test_snr_larger_flags_fewer_pixels():
    """snr1 sets which isolated differences are flagged; snr2 which neighbours of a flagged pixel join it."""
    blot = np.zeros((5, 25))
    err = np.ones_like(blot)
    sci = blot.copy()
    for k, diff in enumerate((4.5, 5.5, 6.5, 7.5, 8.5)):  # isolated pixels, 5 columns apart
        sci[2, 2 + 5 * k] = diff
    sci[1, 22] = 3.5  # next to the 8.5 pixel

    def flagged(snr):
        return {tuple(p) for p in np.argwhere(flag_outliers(sci, err, blot, snr=snr, scale="0 0"))}

    assert flagged("5.0 4.0") == {(2, 7), (2, 12), (2, 17), (2, 22)}
    assert flagged("7.0 4.0") == {(2, 17), (2, 22)}
    assert flagged("9.0 4.0") == set()
    # A lower snr2 lets the 3.5-sigma neighbour of a flagged pixel be flagged too.
    assert flagged("7.0 3.0") == {(2, 17), (2, 22), (1, 22)}


def test_scale_larger_flags_fewer_pixels_on_gradients():
    """scale x |blot derivative| raises the threshold on a star's edge, not on flat sky."""
    blot = np.zeros((6, 18))
    blot[:, 8:] = 100.0  # a sharp edge: derivative 100 in columns 7 and 8
    err = np.ones_like(blot)
    sci = blot.copy()
    sci[:, 7] += 25.0   # interpolation errors on the edge
    sci[:, 8] -= 30.0
    sci[3, 14] += 30.0  # a cosmic ray on flat signal

    def columns(scale):
        mask = flag_outliers(sci, err, blot, snr="5.0 4.0", scale=scale)
        assert mask[3, 14]  # the cosmic ray is flagged whatever the scale
        mask[3, 14] = False
        return sorted(set(np.nonzero(mask)[1]))

    assert columns("0.0 0.0") == [7, 8]
    assert columns("0.2 0.25") == [8]  # 30 > 0.2*100 + 5, but 25 > 0.25*100 + 4 fails
    assert columns("1.2 0.7") == []    # the JWST default protects the whole edge


def test_backg_is_subtracted_before_the_comparison():
    """With sci 3 above the blot everywhere, backg=3 leaves only the cosmic ray; backg=0 or -3 flag everything."""
    blot = np.full((7, 7), 10.0)
    err = np.full_like(blot, 0.5)
    sci = blot + 3.0
    sci[3, 3] += 20.0
    assert flag_outliers(sci, err, blot, backg=0.0).all()   # 3 > 5 * 0.5
    assert flag_outliers(sci, err, blot, backg=-3.0).all()  # |3 + 3| > 2.5: backg is subtracted, not added
    only = flag_outliers(sci, err, blot, backg=3.0)
    assert {tuple(p) for p in np.argwhere(only)} == {(3, 3)}


# ---------------------------------------------------------------- resample


def test_pixfrac_smaller_gives_less_correlated_noise():
    """White noise drizzled with pixfrac=1 is correlated between neighbours; small drops keep it uncorrelated."""
    n = 64
    noise = np.random.default_rng(5).normal(0.0, 1.0, (n, n))
    pixmap = _shifted_pixmap((n, n), 0.3, 0.3)  # drop centres 0.3 pixel off the output centres
    corr, std = {}, {}
    for pixfrac in (1.0, 0.5, 0.2):
        out = _drizzle(noise, pixmap, pixfrac=pixfrac)["data"][4:-4, 4:-4]
        corr[pixfrac] = np.corrcoef(out[:, :-1].ravel(), out[:, 1:].ravel())[0, 1]
        std[pixfrac] = np.std(out)
    assert corr[1.0] > 0.3 and corr[0.5] < corr[1.0] - 0.15 and abs(corr[0.2]) < 0.08
    # Correlated pixels average the noise down; uncorrelated ones keep the input's sigma.
    assert std[1.0] < 0.7 and std[0.2] == pytest.approx(1.0, rel=0.05)


def _delta_footprints():
    """A single bright pixel drizzled with each kernel onto a turned, shifted grid of the same scale."""
    n = 24
    delta = np.zeros((n, n))
    delta[12, 12] = 1.0
    pixmap = _rotated_pixmap(n, 20.0, (0.3, 0.45))
    return {kernel: np.nan_to_num(_drizzle(delta, pixmap, kernel=kernel)["data"]) for kernel in KERNELS}


def test_each_kernel_shapes_a_drop_its_own_way():
    """point: one pixel; square/turbo: a few (turbo ignores the turn); gaussian: wider; lanczos: negative lobes."""
    out = _delta_footprints()
    size = {k: int(np.count_nonzero(np.abs(v) > 1e-6)) for k, v in out.items()}
    assert size["point"] == 1
    assert 4 <= size["turbo"] <= 6 and 4 <= size["square"] <= 6
    assert size["gaussian"] > size["square"] and size["lanczos3"] > size["lanczos2"] > size["square"]
    for kernel in ("point", "square", "turbo", "gaussian"):
        assert out[kernel].min() >= 0.0, kernel
    for kernel in ("lanczos2", "lanczos3"):
        assert out[kernel].min() < -0.01, kernel
    # Every kernel gives a different image: none is silently replaced by another.
    names = list(out)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(out[a], out[b], atol=1e-4), (a, b)


@pytest.mark.parametrize("kernel", ["square", "turbo", "gaussian", "lanczos2", "lanczos3"])
def test_kernels_preserve_flux_of_a_smooth_source(kernel):
    """A smooth source (sigma 3 pixels, flux 100) keeps its flux to 0.1% on a turned, shifted grid."""
    n = 48
    y, x = np.indices((n, n), dtype=float)
    source = 100.0 * np.exp(-((x - 23.6) ** 2 + (y - 24.2) ** 2) / 18.0) / (18.0 * np.pi)
    out = _drizzle(source, _rotated_pixmap(n, 20.0, (0.3, 0.45)), kernel=kernel)
    assert np.nansum(out["data"]) == pytest.approx(100.0, rel=1e-3)


def test_weight_type_sets_the_mosaic_weights():
    """Mosaic of 1 (100 s) and 4 (300 s): 'exptime' weighs 1:3 (mean 3.25, WHT 400 s); 'ivm' by 1/VAR_RNOISE."""
    shape = (12, 12)
    pixmap = _shifted_pixmap(shape)
    inner = np.s_[2:-2, 2:-2]
    cases = (("exptime", 3.25, 400.0), ("ivm", 1.6, 1.25e4))  # ivm: weights 1e4 and 2.5e3
    for weight_type, mean, total in cases:
        resampler = ResampledImage(_wcs(shape), shape, weight_type=weight_type)
        resampler.add_exposure(_exposure(np.ones(shape), exptime=100.0, var_rnoise=1e-4), pixmap=pixmap)
        resampler.add_exposure(_exposure(np.full(shape, 4.0), exptime=300.0, var_rnoise=4e-4), pixmap=pixmap)
        out = resampler.finalize()
        np.testing.assert_allclose(out["data"][inner], mean, rtol=1e-5)
        np.testing.assert_allclose(out["wht"][inner], total, rtol=1e-5)


# ---------------------------------------------------------------- source_catalog

NOISE = 0.02


def _stars(shape, stars, fwhm=2.5, seed=1):
    """Gaussian stars ((x, y, flux in MJy/sr x pixel)) plus white noise of NOISE."""
    sigma = fwhm / 2.3548
    y, x = np.indices(shape, dtype=float)
    image = np.random.default_rng(seed).normal(0.0, NOISE, shape)
    for sx, sy, flux in stars:
        image += flux / (2 * np.pi * sigma**2) * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / (2 * sigma**2))
    return image


def _catalog(data, **kwargs):
    return make_source_catalog(data, np.full(data.shape, NOISE), _wcs(data.shape), pixar_sr=PIXAR_SR,
                               psf_fwhm=2.5, **kwargs)


def test_snr_threshold_higher_finds_fewer_and_smaller_sources():
    """A faint star is found at snr_threshold=3, not at 10; the bright star's segment shrinks as the threshold rises."""
    data = _stars((96, 96), [(30.0, 48.0, 40.0), (70.0, 48.0, 2.0)])
    low, _ = _catalog(data, snr_threshold=3.0, npixels=5)
    high, _ = _catalog(data, snr_threshold=10.0, npixels=5)
    assert len(low) == 2 and len(high) == 1
    assert abs(high["xcentroid"][0] - 30.0) < 0.2
    bright_low = low[np.argmin(np.abs(low["xcentroid"] - 30.0))]
    assert high["isophotal_area"][0] <= bright_low["isophotal_area"] - 5 * u.pix**2


def test_each_ci_threshold_can_make_a_source_a_star():
    """is_extended needs CI_50_30 > ci1 AND CI_70_50 > ci2 (JWST): raising either threshold alone makes a star."""
    data = _stars((64, 64), [(32.0, 32.0, 40.0)])
    base, _ = _catalog(data)
    ci1, ci2 = float(base["CI_50_30"][0]), float(base["CI_70_50"][0])
    # A point source: ~ (ee2 / ee1) and ~ (ee3 / ee2), whatever the pixel sampling does to the second.
    assert ci1 == pytest.approx(5 / 3, abs=0.05) and 1.3 < ci2 < 1.6
    extended = {}
    for t1, t2 in ((ci1 - 0.1, ci2 - 0.1), (ci1 + 0.1, ci2 - 0.1), (ci1 - 0.1, ci2 + 0.1)):
        cat, _ = _catalog(data, ci1_star_threshold=t1, ci2_star_threshold=t2)
        extended[(t1 > ci1, t2 > ci2)] = bool(cat["is_extended"][0])
    assert extended == {(False, False): True, (True, False): False, (False, True): False}


def test_aperture_ee_orders_radii_and_fluxes():
    """Larger encircled energies give larger radii and larger fluxes, in the order of aperture_ee1 < ee2 < ee3."""
    data = _stars((80, 80), [(40.0, 40.0, 40.0)], fwhm=6.0)
    small, _ = make_source_catalog(data, None, _wcs(data.shape), pixar_sr=PIXAR_SR, psf_fwhm=6.0,
                                   aperture_ee1=20, aperture_ee2=30, aperture_ee3=40)
    large, _ = make_source_catalog(data, None, _wcs(data.shape), pixar_sr=PIXAR_SR, psf_fwhm=6.0,
                                   aperture_ee1=60, aperture_ee2=70, aperture_ee3=80)
    r_small = small.meta["aperture_params"]["aperture_radii"]
    r_large = large.meta["aperture_params"]["aperture_radii"]
    assert np.all(np.diff(r_small) > 0) and np.all(np.diff(r_large) > 0) and r_large[0] > r_small[-1]
    fluxes = [small["aper20_flux"][0], small["aper30_flux"][0], small["aper40_flux"][0],
              large["aper60_flux"][0], large["aper70_flux"][0], large["aper80_flux"][0]]
    assert all(a < b for a, b in zip(fluxes, fluxes[1:]))


# The 54 columns of the JWST 3.0 source catalog for aperture_ee = (30, 50, 70), in
# JWST's order, with their units (None: no unit); read from jwst 3.0.0's
# source_catalog module.
_MAGS = [f"aper{e}_{k}{s}" for k in ("abmag", "vegamag") for e in (30, 50, 70, "_total") for s in ("", "_err")]
JWST_COLUMNS = (
    [("label", None), ("xcentroid", None), ("ycentroid", None), ("sky_centroid", None),
     ("aper_bkg_flux", u.Jy), ("aper_bkg_flux_err", u.Jy)]
    + [(f"aper{e}_flux{s}", u.Jy) for e in (30, 50, 70, "_total") for s in ("", "_err")]
    + [(name, None) for name in _MAGS]
    + [("CI_50_30", None), ("CI_70_50", None), ("CI_70_30", None), ("is_extended", None),
       ("sharpness", None), ("roundness", None), ("nn_label", None), ("nn_dist", u.pix),
       ("isophotal_flux", u.Jy), ("isophotal_flux_err", u.Jy), ("isophotal_abmag", None),
       ("isophotal_abmag_err", None), ("isophotal_vegamag", None), ("isophotal_vegamag_err", None),
       ("isophotal_area", u.pix**2), ("semimajor_sigma", u.pix), ("semiminor_sigma", u.pix),
       ("ellipticity", u.dimensionless_unscaled), ("orientation", u.deg), ("sky_orientation", u.deg),
       ("sky_bbox_ll", None), ("sky_bbox_ul", None), ("sky_bbox_lr", None), ("sky_bbox_ur", None)]
)


def test_catalog_columns_are_jwst_3_columns():
    """Names, order and units of the catalog columns are JWST 3.0's, with rows or without."""
    assert len(JWST_COLUMNS) == 54
    data = _stars((64, 64), [(20.0, 30.0, 40.0), (44.0, 34.0, 30.0)])
    full, _ = _catalog(data)
    empty, _ = _catalog(np.random.default_rng(0).normal(0.0, NOISE, (48, 48)), snr_threshold=50.0)
    for cat in (full, empty):
        assert cat.colnames == [name for name, _ in JWST_COLUMNS]
        for name, unit in JWST_COLUMNS:
            assert getattr(cat[name], "unit", None) == unit, name
    assert full["aper_total_abmag"].info.description.startswith("Total aperture-corrected AB magnitude based")


def test_segmentation_file_labels_are_the_catalog_labels(tmp_path):
    """The written _segm.fits holds exactly the _cat.ecsv labels, each under its source's centroid (deblended too)."""
    shape = (96, 96)
    data = _stars(shape, [(20.0, 20.0, 30.0), (70.0, 30.0, 40.0), (47.0, 70.0, 30.0), (53.0, 70.0, 30.0)])
    wcs = _wcs(shape)
    arrays = {"data": data.astype(np.float32), "err": np.full(shape, NOISE, np.float32),
              "wht": np.ones(shape, np.float32)}
    io.write_i2d(tmp_path / "a_i2d.fits", arrays, wcs, {"PIXAR_SR": PIXAR_SR, "FILTER": "F200W"})
    _script("source_catalog").source_catalog(tmp_path / "a_i2d.fits", tmp_path / "a_cat.ecsv",
                                             tmp_path / "a_segm.fits", deblend=True, npixels=5)
    catalog = io.read_table(tmp_path / "a_cat.ecsv")
    with fits.open(tmp_path / "a_segm.fits") as hdul:
        segm = np.asarray(hdul["SCI"].data)
    labels = np.asarray(catalog["label"])
    assert len(labels) == 4  # the pair 6 pixels apart is deblended
    np.testing.assert_array_equal(np.unique(segm[segm > 0]), np.sort(labels))
    ix = np.round(np.asarray(catalog["xcentroid"])).astype(int)
    iy = np.round(np.asarray(catalog["ycentroid"])).astype(int)
    np.testing.assert_array_equal(segm[iy, ix], labels)


# ---------------------------------------------------------------- _i2d keywords (mosaic)


def _exposure_meta(exposure, detector, start, *, tmeasure=True):
    """Keywords of one detector file of one 100 s exposure (JWST group_id keywords included)."""
    meta = {"PROGRAM": "01234", "OBSERVTN": "001", "VISIT": "001", "VISITGRP": "01", "SEQ_ID": "1",
            "ACT_ID": "01", "EXPOSURE": f"{exposure:05d}", "PATT_NUM": exposure, "DETECTOR": detector,
            "FILTER": "F200W", "TARGNAME": "FIELD", "EXPTIME": 100.0, "EFFEXPTM": 90.0, "DURATION": 110.0,
            "EXPSTART": start, "EXPMID": start + 0.0006, "EXPEND": start + 0.0012, "DATE-OBS": "2023-12-18",
            "TIME-OBS": f"00:{exposure:02d}:00.000", "MT_RA": 150.0 + exposure * 1e-5, "PIXAR_SR": PIXAR_SR,
            "TWKSHFTX": 0.01 * exposure, "TWKREASN": "", "TWKREF": exposure == 1, "S_TWKREG": "COMPLETE",
            "BKGLEVEL": 0.1 * exposure, "PRVSTEP": "outlier_detection", "NPRVINP": 3}
    if tmeasure:
        meta["TMEASURE"] = 80.0
    return meta


def _mosaic_meta(metas, scale=SCALE):
    wcs = _wcs((40, 40), scale)
    grid = {**pixel_area_keywords(wcs, (40, 40)), "S_REGION": s_region(wcs, (40, 40))}
    return mosaic_metadata(metas, grid, {"pixfrac": 0.8, "kernel": "square"})


def test_mosaic_exposure_times_sum_distinct_exposures():
    """Two exposures on two detectors each: times are summed once per exposure (JWST group_id), not per file."""
    metas = [_exposure_meta(e, d, 60300.0 + 0.01 * e) for e in (1, 2) for d in ("NRCA1", "NRCA2")]
    meta = _mosaic_meta(metas)
    assert meta["EXPTIME"] == 200.0 and meta["EFFEXPTM"] == 180.0 and meta["XPOSURE"] == 180.0
    assert meta["DURATION"] == 220.0 and meta["TELAPSE"] == 220.0 and meta["TMEASURE"] == 160.0
    assert meta["NDRIZ"] == 2 and meta["NDRIZIM"] == 4
    assert meta["EXPSTART"] == 60300.01 and meta["EXPEND"] == pytest.approx(60300.02 + 0.0012)
    assert meta["EXPMID"] == pytest.approx(np.mean([m["EXPMID"] for m in metas]))
    assert meta["TIME-OBS"] == "00:01:00.000" and meta["DATE-OBS"] == "2023-12-18"
    # TMEASURE is summed only when every exposure has it (JWST leaves it unset otherwise).
    metas[2].pop("TMEASURE")
    metas[3].pop("TMEASURE")
    assert "TMEASURE" not in _mosaic_meta(metas)
    # Files without exposure identity are each their own exposure.
    bare = [{"EXPTIME": 50.0}, {"EXPTIME": 70.0}]
    assert _mosaic_meta(bare)["EXPTIME"] == 120.0 and _mosaic_meta(bare)["NDRIZ"] == 2


def test_mosaic_drops_per_exposure_keywords():
    """Keywords that differ between exposures, and per-file ones (TWK*, sky, provenance), are not in the mosaic."""
    metas = [_exposure_meta(e, d, 60300.0 + 0.01 * e) for e in (1, 2) for d in ("NRCA1", "NRCA2")]
    meta = _mosaic_meta(metas)
    for key in ("EXPOSURE", "PATT_NUM", "MT_RA", "TWKSHFTX", "TWKREASN", "TWKREF", "BKGLEVEL", "PRVSTEP", "NPRVINP"):
        assert key not in meta, key
    assert meta["DETECTOR"] == "MULTIPLE" and meta["FILTER"] == "F200W" and meta["TARGNAME"] == "FIELD"
    assert meta["PROGRAM"] == "01234" and meta["S_TWKREG"] == "COMPLETE"
    # One exposure on one detector: its identity describes the mosaic and stays (TWK* still do not).
    single = _mosaic_meta([_exposure_meta(3, "NRCB1", 60300.0)])
    assert single["EXPOSURE"] == "00003" and single["PATT_NUM"] == 3 and single["DETECTOR"] == "NRCB1"
    assert single["EFFEXPTM"] == 90.0 and not any(k.startswith("TWK") for k in single)


def test_mosaic_pixel_scale_ratio_is_output_over_input_scale():
    """PXSCLRT (JWST meta.resample.pixel_scale_ratio) is the output pixel scale over the input's."""
    metas = [_exposure_meta(1, "NRCA1", 60300.0)]
    assert _mosaic_meta(metas, scale=SCALE / 2)["PXSCLRT"] == pytest.approx(0.5, rel=1e-6)
    assert _mosaic_meta(metas)["PXSCLRT"] == pytest.approx(1.0, rel=1e-6)


def test_mosaic_keywords_reach_the_i2d(tmp_path):
    """resample() writes the combined keywords: summed times, NDRIZ, no per-exposure identity."""
    resample_script = _script("resample")
    grid_wcs, grid_shape = output_wcs([_wcs((24, 24))], [(24, 24)])
    io.write_rendered_wcs(tmp_path / "grid.fits", grid_wcs, grid_shape, pixel_area=True)
    paths = []
    for k, (exposure, detector) in enumerate(((1, "NRCA1"), (1, "NRCA2"), (2, "NRCA1"))):
        contribution = drizzle_exposure(_exposure(np.ones((24, 24))), grid_wcs, grid_shape)
        arrays, keywords = contribution.to_arrays()
        meta = {**_exposure_meta(exposure, detector, 60300.0 + 0.01 * exposure), **keywords,
                "CTB_NAME": f"f{k}_crf.fits", "CTB_SHA": "0", "CTB_SKY": 0.0}
        paths.append(tmp_path / f"f{k}_contribution.fits")
        io.write_image(paths[-1], arrays, meta=meta)
    resample_script.resample(paths, tmp_path / "grid.fits", tmp_path / "m_i2d.fits", fillval="NAN")
    _, _, meta = io.read_i2d(tmp_path / "m_i2d.fits")
    assert meta["EFFEXPTM"] == 180.0 and meta["XPOSURE"] == 180.0 and meta["DURATION"] == 220.0
    assert meta["TELAPSE"] == 220.0 and meta["NDRIZ"] == 2 and meta["NDRIZIM"] == 3
    assert meta["DETECTOR"] == "MULTIPLE" and "EXPOSURE" not in meta and "TWKSHFTX" not in meta
    # stdatamodels reads them where JWST's resample puts them.
    datamodels = pytest.importorskip("stdatamodels.jwst.datamodels")
    with datamodels.open(tmp_path / "m_i2d.fits", strict_validation=True) as model:
        model.validate()
        assert model.meta.resample.pointings == 2 and model.meta.instrument.detector == "MULTIPLE"
        assert model.meta.exposure.exposure_time == 180.0 and model.meta.exposure.effective_exposure_time == 180.0
        assert model.meta.exposure.duration == 220.0 and model.meta.exposure.measurement_time == 160.0
        assert model.meta.resample.pixel_scale_ratio == pytest.approx(1.0)
