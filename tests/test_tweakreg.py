"""Tests of tweakreg source detection and relative alignment."""

import numpy as np
import pytest
from astropy.table import Table
from scipy.special import erf

from calimage3 import io
from calimage3 import tweakreg
from calimage3.dqflags import good_pixel_mask
from calimage3.simulate import simulate_dither
from calimage3 import source_detection
from calimage3.source_detection import circular_peaks, detect_sources
from calimage3.tweakreg import (
    AlignmentResult,
    TangentPlaneCorrector,
    align_exposures,
)
from calimage3.wcs_tools import (
    from_tangent_plane,
    imaging_wcs,
    tangent_plane_correction,
    to_tangent_plane,
)

SHAPE = (300, 300)
SCALE = 0.031  # arcsec / pixel
FWHM = 2.2  # pixels
RA0, DEC0 = 53.16, -27.78
PA = 30.0
DITHERS = [(0.0, 0.0), (9.3, 4.1), (-6.2, 10.5), (4.7, -8.8)]  # pixels, ~3% of the field
# Header pointing errors: (xi, eta) shift in arcsec and position-angle error in deg.
ERRORS = [(0.0, 0.0, 0.0), (0.15, -0.10, 0.010), (-0.25, 0.20, -0.020), (0.10, 0.28, 0.005)]
# The JWST defaults (searchrad 2", separation 1", tolerance 0.7") suit a
# 2k NIRCam detector; in a 9" field with ~80 stars a 1" separation would
# discard most stars as "confused", so the matching scales are shrunk.
MATCH = dict(searchrad=0.5, separation=0.2, tolerance=0.1)


def _render(x, y, flux, rng, shape=SHAPE, fwhm=FWHM, noise=1.0, background=5.0):
    """Pixel-integrated circular Gaussians plus white noise."""
    ny, nx = shape
    s = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    cx = 0.5 * erf((np.arange(nx + 1)[None, :] - 0.5 - x[:, None]) / (np.sqrt(2.0) * s))
    cy = 0.5 * erf((np.arange(ny + 1)[None, :] - 0.5 - y[:, None]) / (np.sqrt(2.0) * s))
    image = np.diff(cy, axis=1).T @ (np.diff(cx, axis=1) * flux[:, None])
    return (image + background + rng.normal(0.0, noise, shape)).astype(np.float32)


def _rotation(deg):
    """tweakwcs-convention rotation matrix."""
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])


@pytest.fixture(scope="module")
def dither_set():
    """Four exposures of one star field; true WCSs, perturbed header WCSs, catalogs."""
    rng = np.random.default_rng(42)
    half = 0.5 * SHAPE[1] * SCALE / 3600.0 * 1.15
    xi = rng.uniform(-half, half, 110)
    eta = rng.uniform(-half, half, 110)
    ra, dec = from_tangent_plane(xi, eta, RA0, DEC0)
    flux = 10 ** rng.uniform(2.0, 3.5, xi.size)
    exposures = []
    for (dx, dy), (exi, eeta, epa) in zip(DITHERS, ERRORS):
        cxi, ceta = dx * SCALE / 3600.0, dy * SCALE / 3600.0
        true = imaging_wcs(SHAPE, tuple(map(float, from_tangent_plane(cxi, ceta, RA0, DEC0))), SCALE, PA)
        header_crval = from_tangent_plane(cxi + exi / 3600.0, ceta + eeta / 3600.0, RA0, DEC0)
        header = imaging_wcs(SHAPE, tuple(map(float, header_crval)), SCALE, PA + epa)
        x, y = true.backward_transform(ra, dec)
        near = (x > -4) & (x < SHAPE[1] + 3) & (y > -4) & (y < SHAPE[0] + 3)
        image = _render(x[near], y[near], flux[near], rng)
        on = near & (x > 0) & (x < SHAPE[1] - 1) & (y > 0) & (y < SHAPE[0] - 1)
        exposures.append(
            dict(image=image, true=true, header=header, ra=ra[on], dec=dec[on], x=x[on], y=y[on])
        )
    catalogs = [detect_sources(e["image"]) for e in exposures]
    return exposures, catalogs


def _wcs_error_pix(wcs, exposure):
    """RMS distance (pixels) between true star pixels and where ``wcs`` puts them."""
    x, y = wcs.backward_transform(exposure["ra"], exposure["dec"])
    return float(np.sqrt(np.mean((x - exposure["x"]) ** 2 + (y - exposure["y"]) ** 2)))


# ---------------------------------------------------------------- detection


def test_detect_sources_recovers_bright_star_positions():
    """Bright isolated stars are all found within 0.05 pixel of the truth."""
    rng = np.random.default_rng(5)
    grid = np.arange(15.0, 300.0, 20.0)
    gx, gy = np.meshgrid(grid, grid)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    image = _render(x, y, np.full(x.size, 3000.0), rng)
    cat = detect_sources(image, brightest=None)
    assert len(cat) == x.size
    dist = np.hypot(cat["x"][:, None] - x[None, :], cat["y"][:, None] - y[None, :])
    err = dist.min(axis=1)
    assert len(np.unique(dist.argmin(axis=1))) == x.size
    print(f"\ndetect_sources: {x.size} stars, centroid RMS {np.sqrt(np.mean(err**2)):.4f} pix, "
          f"max {err.max():.4f} pix")
    assert err.max() < 0.05


def test_detect_sources_dao_finder_recovers_positions():
    """The DAOStarFinder option finds the same stars as accurately."""
    rng = np.random.default_rng(6)
    x = np.array([40.3, 120.7, 200.1, 75.5])
    y = np.array([50.6, 160.2, 90.9, 210.4])
    image = _render(x, y, np.full(4, 2000.0), rng, shape=(256, 256))
    cat = detect_sources(image, starfinder="dao")
    order = np.argsort(cat["x"])
    assert len(cat) == 4
    np.testing.assert_allclose(cat["x"][order], np.sort(x), atol=0.05)
    np.testing.assert_allclose(cat["y"][order], y[np.argsort(x)], atol=0.05)


def test_detect_sources_sorts_brightest_first_and_limits_count():
    """Sources come brightest first and ``brightest`` caps the count."""
    rng = np.random.default_rng(7)
    x = np.array([30.0, 90.0, 150.0, 210.0])
    y = np.array([128.0, 128.0, 128.0, 128.0])
    flux = np.array([500.0, 4000.0, 1500.0, 2500.0])
    cat = detect_sources(_render(x, y, flux, rng, shape=(256, 256)), brightest=3)
    assert len(cat) == 3
    np.testing.assert_allclose(cat["x"], [90.0, 210.0, 150.0], atol=0.05)
    assert np.all(np.diff(cat["flux"]) < 0)


def test_detect_sources_returns_empty_table_for_pure_noise():
    """An image without stars gives an empty table with the x, y, flux columns."""
    image = np.random.default_rng(8).normal(0.0, 1.0, (128, 128))
    cat = detect_sources(image)
    assert len(cat) == 0
    assert cat.colnames == ["x", "y", "flux"]


def test_detect_sources_ignores_masked_and_nan_pixels():
    """Stars under the mask or in NaN pixels are not detected; others are."""
    rng = np.random.default_rng(9)
    x = np.array([40.0, 128.0, 200.0])
    y = np.array([40.0, 128.0, 200.0])
    image = _render(x, y, np.full(3, 2000.0), rng, shape=(256, 256))
    image[190:211, 190:211] = np.nan
    mask = np.zeros(image.shape, dtype=bool)
    mask[30:51, 30:51] = True
    cat = detect_sources(image, mask=mask)
    assert len(cat) == 1
    assert abs(cat["x"][0] - 128.0) < 0.05 and abs(cat["y"][0] - 128.0) < 0.05


def test_detect_sources_drops_stars_cut_by_the_edge():
    """A star centred half a pixel from the edge is dropped unless recenter=False."""
    rng = np.random.default_rng(10)
    x = np.array([0.6, 128.0])
    y = np.array([100.0, 128.0])
    image = _render(x, y, np.full(2, 2000.0), rng, shape=(256, 256))
    assert len(detect_sources(image)) == 1
    raw = detect_sources(image, recenter=False)
    assert len(raw) == 2 and raw["x"].min() < 2.0



def _photutils_peaks(data, threshold, radius, mask=None):
    """(x, y) of photutils' own ``find_peaks`` search (the star finders' peaks)."""
    import warnings

    from photutils.detection import find_peaks
    from photutils.utils import NoDetectionsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        table = find_peaks(data, threshold, min_separation=radius, mask=mask)
    if table is None:
        return np.empty((0, 2), dtype=int)
    return np.transpose((table["x_peak"], table["y_peak"]))


@pytest.mark.parametrize("radius", [1.0, 1.5, 2.0, 2.5, 3.0, 4.7, 5.5, 6.25, 12.0])
def test_circular_peaks_are_photutils_peaks(radius):
    """Same peaks, same order as photutils find_peaks, with ties, NaNs, masks and edges."""
    rng = np.random.default_rng(int(radius * 100))
    for trial in range(12):
        shape = tuple(rng.integers(6, 160, 2))
        data = rng.normal(0.0, 1.0, shape)
        if trial % 3 == 0:
            data = np.round(data, 1)  # plateaus of equal values
        if trial % 4 == 1:
            data[rng.random(shape) < 0.02] = np.nan
        mask = rng.random(shape) < 0.05 if trial % 2 else None
        threshold = rng.uniform(0.3, 2.0)
        expected = _photutils_peaks(data, threshold, radius, mask)
        assert np.array_equal(circular_peaks(data, threshold, radius, mask=mask), expected), trial


def test_circular_peaks_on_a_star_field_with_saturated_stars(tmp_path):
    """On a JWST-PSF exposure (saturated cores masked), convolved as the finder does: photutils' peaks."""
    from photutils.detection import IRAFStarFinder
    from scipy.ndimage import convolve

    sim = simulate_dither(tmp_path, n_exposures=1, shape=(512, 512), psf="jwst", seed=5)
    e = io.read_exposure(sim["cal"][0])
    bad = ~good_pixel_mask(e.dq) | ~np.isfinite(e.data)
    assert bad.sum() > 100  # saturated cores, hot pixels, the reference border
    work = np.where(bad, 0.0, e.data - np.nanmedian(e.data[~bad]))
    finder = IRAFStarFinder(1.0, 2.5)
    convolved = convolve(work, finder.kernel.data, mode="constant", cval=0.0)
    noise = 1.4826 * np.median(np.abs(convolved[~bad] - np.median(convolved[~bad])))
    for nsigma in (3.0, 5.0, 10.0):
        expected = _photutils_peaks(convolved, nsigma * noise, finder.min_separation, bad)
        found = circular_peaks(convolved, nsigma * noise, finder.min_separation, mask=bad)
        assert len(found) > 20
        assert np.array_equal(found, expected), nsigma


@pytest.mark.parametrize("starfinder", ["iraf", "dao"])
def test_detect_sources_is_unchanged_by_the_fast_peak_search(tmp_path, monkeypatch, starfinder):
    """detect_sources gives the same table whether the peaks come from circular_peaks or photutils."""
    sim = simulate_dither(tmp_path, n_exposures=1, shape=(512, 512), psf="jwst", seed=6)
    e = io.read_exposure(sim["cal"][0])
    args = (e.data, e.err, ~good_pixel_mask(e.dq))
    fast = detect_sources(*args, starfinder=starfinder, brightest=None)
    monkeypatch.setattr(source_detection, "circular_peaks", _photutils_peaks)
    reference = detect_sources(*args, starfinder=starfinder, brightest=None)
    assert len(fast) > 20
    for name in ("x", "y", "flux"):
        assert np.array_equal(fast[name], reference[name])


def test_circular_peaks_rejects_bad_parameters():
    with pytest.raises(ValueError, match="positive"):
        circular_peaks(np.ones((8, 8)), 0.0, 2.0)
    with pytest.raises(ValueError, match="positive"):
        circular_peaks(np.ones((8, 8)), 1.0, 0.0)
    assert circular_peaks(np.full((8, 8), 5.0), 1.0, 2.0).shape == (0, 2)  # constant: no peaks

@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(snr_threshold=0.0), "snr_threshold"),
        (dict(kernel_fwhm=-1.0), "kernel_fwhm"),
        (dict(bkg_boxsize=2.5), "bkg_boxsize"),
        (dict(brightest=0), "brightest"),
        (dict(starfinder="sextractor"), "starfinder"),
        (dict(sharplo=1.0, sharphi=0.5), "sharplo"),
        (dict(mask=np.zeros((3, 3), bool)), "mask"),
    ],
)
def test_detect_sources_rejects_bad_parameters(kwargs, match):
    """Invalid settings raise ValueError naming the parameter."""
    with pytest.raises(ValueError, match=match):
        detect_sources(np.zeros((32, 32)), **kwargs)


# ---------------------------------------------------------------- corrector


def test_corrector_applies_shift_in_arcsec_east():
    """A (1, 0) arcsec correction moves every pixel 1 arcsec east."""
    wcs = imaging_wcs((100, 100), (RA0, DEC0), SCALE, PA)
    corrector = TangentPlaneCorrector(wcs, RA0, DEC0, (100, 100))
    assert corrector.tanp_center_pixel_scale == pytest.approx(SCALE, rel=1e-6)
    corrector.set_correction(np.eye(2), [1.0, 0.0])
    x, y = np.array([0.0, 50.0, 99.0]), np.array([0.0, 20.0, 99.0])
    xi0, eta0 = to_tangent_plane(*wcs.forward_transform(x, y), RA0, DEC0)
    xi1, eta1 = to_tangent_plane(*corrector.wcs.forward_transform(x, y), RA0, DEC0)
    np.testing.assert_allclose((xi1 - xi0) * 3600.0, 1.0, atol=1e-8)
    np.testing.assert_allclose((eta1 - eta0) * 3600.0, 0.0, atol=1e-8)
    np.testing.assert_allclose(corrector.tanp_to_det(*corrector.det_to_tanp(x, y)), [x, y],
                               atol=1e-8)


# ---------------------------------------------------------------- alignment


def test_align_exposures_recovers_true_wcs(dither_set):
    """Aligned WCSs put the true stars within 0.02 pixel RMS of where they are."""
    exposures, catalogs = dither_set
    results = align_exposures(catalogs, [e["header"] for e in exposures], [SHAPE] * 4, **MATCH)
    assert [r.status for r in results] == ["COMPLETE"] * 4
    assert [r.is_reference for r in results] == [True, False, False, False]
    print()
    for i, (e, r, (exi, eeta, epa)) in enumerate(zip(exposures, results, ERRORS)):
        before = _wcs_error_pix(e["header"], e)
        after = _wcs_error_pix(r.wcs, e)
        print(f"exposure {i + 1}: {len(catalogs[i])} sources, {r.nmatch} matches, "
              f"error before {before:.3f} pix, after {after:.4f} pix RMS; fit RMS {r.rms:.4f} pix")
        assert after < 0.02
        # The correction undoes the injected error.
        assert r.shift == pytest.approx((-exi, -eeta), abs=0.005)
        assert r.rotation == pytest.approx(-epa, abs=0.008)
        if i > 0:
            assert r.nmatch >= 50
            assert 0 < r.rms < 0.1


def test_align_exposures_moves_a_group_rigidly(dither_set):
    """Exposures sharing a group_id get one correction that fixes both."""
    exposures, catalogs = dither_set
    errors = [(np.eye(2), (0.0, 0.0)), (_rotation(0.01), (0.2, -0.1)),
              (_rotation(-0.015), (-0.1, 0.25)), (_rotation(-0.015), (-0.1, 0.25))]
    headers = [
        tangent_plane_correction(e["true"], RA0, DEC0, m, np.asarray(s) / 3600.0)
        for e, (m, s) in zip(exposures, errors)
    ]
    results = align_exposures(catalogs, headers, [SHAPE] * 4, group_ids=[1, 2, 3, 3], **MATCH)
    assert [r.status for r in results] == ["COMPLETE"] * 4
    assert results[2].shift == results[3].shift
    assert results[2].rotation == results[3].rotation
    assert results[2].rotation == pytest.approx(0.015, abs=0.003)
    for e, r in zip(exposures, results):
        assert _wcs_error_pix(r.wcs, e) < 0.02


def test_align_exposures_with_expanded_refcat_is_self_consistent(dither_set):
    """With expand_refcat the reference is picked by overlap and all agree with it."""
    exposures, catalogs = dither_set
    results = align_exposures(catalogs, [e["header"] for e in exposures], [SHAPE] * 4,
                              expand_refcat=True, **MATCH)
    assert [r.status for r in results] == ["COMPLETE"] * 4
    assert sum(r.is_reference for r in results) == 1
    ref = next(i for i, r in enumerate(results) if r.is_reference)
    # Sky positions each aligned WCS gives the true star pixels, against the reference's.
    ra_ref, dec_ref = results[ref].wcs.forward_transform(exposures[ref]["x"], exposures[ref]["y"])
    for e, r in zip(exposures, results):
        common, i_ref, i_e = np.intersect1d(exposures[ref]["ra"], e["ra"], return_indices=True)
        ra, dec = r.wcs.forward_transform(e["x"][i_e], e["y"][i_e])
        dx = (ra - ra_ref[i_ref]) * np.cos(np.deg2rad(dec)) * 3600.0 / SCALE
        dy = (dec - dec_ref[i_ref]) * 3600.0 / SCALE
        assert common.size > 40
        assert np.sqrt(np.mean(dx**2 + dy**2)) < 0.02


def test_align_exposures_skips_exposure_with_too_few_sources(dither_set):
    """An exposure with fewer than minobj sources keeps its WCS; others align."""
    exposures, catalogs = dither_set
    headers = [e["header"] for e in exposures]
    catalogs = [catalogs[0], catalogs[1][:5], catalogs[2], catalogs[3]]
    results = align_exposures(catalogs, headers, [SHAPE] * 4, minobj=15, **MATCH)
    assert [r.status for r in results] == ["COMPLETE", "SKIPPED", "COMPLETE", "COMPLETE"]
    assert results[1].wcs is headers[1]
    assert "5 sources" in results[1].message and "minobj=15" in results[1].message
    assert np.isnan(results[1].rms) and results[1].nmatch == 0
    assert _wcs_error_pix(results[2].wcs, exposures[2]) < 0.02


def test_align_exposures_skips_catalog_that_does_not_match(dither_set):
    """A catalog unrelated to the others fails to match and is SKIPPED alone."""
    exposures, catalogs = dither_set
    rng = np.random.default_rng(11)
    unrelated = Table({"x": rng.uniform(0, 299, 90), "y": rng.uniform(0, 299, 90)})
    headers = [e["header"] for e in exposures]
    results = align_exposures([*catalogs[:3], unrelated], headers, [SHAPE] * 4, **MATCH)
    assert [r.status for r in results] == ["COMPLETE", "COMPLETE", "COMPLETE", "SKIPPED"]
    assert results[3].wcs is headers[3]
    assert "not enough matches" in results[3].message


def test_align_exposures_skips_all_when_only_one_exposure_is_usable(dither_set):
    """With a single exposure with enough sources, nothing is aligned."""
    exposures, catalogs = dither_set
    headers = [e["header"] for e in exposures]
    results = align_exposures([catalogs[0], catalogs[1][:3]], headers[:2], [SHAPE] * 2, **MATCH)
    assert [r.status for r in results] == ["SKIPPED", "SKIPPED"]
    assert "fewer than two" in results[0].message
    assert results[0].wcs is headers[0]


def test_align_exposures_needs_two_exposures(dither_set):
    """A lone exposure is returned SKIPPED with its own WCS."""
    exposures, catalogs = dither_set
    (result,) = align_exposures(catalogs[:1], [exposures[0]["header"]], [SHAPE])
    assert isinstance(result, AlignmentResult)
    assert result.status == "SKIPPED" and "two exposures" in result.message
    assert result.wcs is exposures[0]["header"]


# ------------------------------------------- alignment at the JWST defaults

JWST_SHAPE = (512, 512)


@pytest.fixture(scope="module")
def decoy_pair():
    """Two exact catalogs of a 5x5 star grid (3" apart); exposure 2 has decoys.

    Five stars of the reference have no counterpart in exposure 2; instead
    a source lies 0.5" east of each (within the JWST 0.7" tolerance).
    Header of exposure 2: shift (0.15", -0.1"), rotation 0.01 deg.
    """
    rng = np.random.default_rng(21)
    g = (np.arange(5) - 2) * 3.0 / 3600.0
    gxi, geta = np.meshgrid(g, g)
    xi = gxi.ravel() + rng.uniform(-0.2, 0.2, 25) / 3600.0
    eta = geta.ravel() + rng.uniform(-0.2, 0.2, 25) / 3600.0
    true = [imaging_wcs(JWST_SHAPE, (RA0, DEC0), SCALE, PA),
            imaging_wcs(JWST_SHAPE, tuple(map(float, from_tangent_plane(2e-4, 1e-4, RA0, DEC0))),
                        SCALE, PA)]
    header = [true[0],
              tangent_plane_correction(true[1], RA0, DEC0, _rotation(0.01), (0.15 / 3600.0, -0.1 / 3600.0))]
    missing = np.zeros(25, bool)
    missing[[2, 8, 12, 16, 22]] = True
    ra, dec = from_tangent_plane(xi, eta, RA0, DEC0)
    decoy_ra, decoy_dec = from_tangent_plane(xi[missing] + 0.5 / 3600.0, eta[missing], RA0, DEC0)
    x0, y0 = true[0].backward_transform(ra, dec)
    x1, y1 = true[1].backward_transform(np.r_[ra[~missing], decoy_ra], np.r_[dec[~missing], decoy_dec])
    catalogs = [Table({"x": x0, "y": y0}), Table({"x": x1, "y": y1})]
    exposure = dict(ra=ra[~missing], dec=dec[~missing], x=x1[:20], y=y1[:20])
    return catalogs, header, exposure


def test_align_exposures_ignores_decoys_within_tolerance(decoy_pair):
    """Unpaired sources 0.5" from a reference star do not bias the JWST-default fit."""
    catalogs, header, exposure = decoy_pair
    results = align_exposures(catalogs, header, [JWST_SHAPE] * 2, minobj=15)
    assert [r.status for r in results] == ["COMPLETE", "COMPLETE"]
    # A single match at 0.7" also pairs the 5 decoys: a ~3 pixel error.
    assert results[1].nmatch == 20
    assert _wcs_error_pix(results[1].wcs, exposure) < 1e-3
    assert results[1].rotation == pytest.approx(-0.01, abs=1e-5)


def test_align_exposures_skips_fit_keeping_fewer_than_minobj(decoy_pair):
    """A fit left with fewer than minobj sources after clipping is SKIPPED."""
    catalogs, header, _ = decoy_pair
    moved = catalogs[1].copy()
    # One source off by 0.45 pixel: matched (within half a pixel), then clipped.
    moved["x"][0] += 0.45
    results = align_exposures([catalogs[0], moved], header, [JWST_SHAPE] * 2, minobj=20)
    assert results[1].status == "SKIPPED"
    assert results[1].wcs is header[1]
    assert "19 of 20 matches" in results[1].message and "minobj=20" in results[1].message


def test_align_exposures_skips_fit_with_rms_above_tolerance(decoy_pair, monkeypatch):
    """A fit whose RMS exceeds the tolerance (pairs scrambled here) is SKIPPED."""
    catalogs, header, _ = decoy_pair

    def scrambled(self, refcat, imcat, **kwargs):
        n = min(len(refcat), len(imcat))
        return np.arange(n), np.roll(np.arange(n), 1)

    monkeypatch.setattr(tweakreg._IterativeMatch, "__call__", scrambled)
    results = align_exposures(catalogs, header, [JWST_SHAPE] * 2, searchrad=50.0, minobj=15)
    assert results[1].status == "SKIPPED"
    assert results[1].wcs is header[1]
    assert "exceeds tolerance=0.7" in results[1].message


def test_align_exposures_simulated_field_at_jwst_defaults(tmp_path):
    """A simulated 512x512 dither set aligns to 0.02 pixel RMS at the JWST defaults."""
    sim = simulate_dither(tmp_path, n_exposures=4, shape=JWST_SHAPE, seed=18)
    stars = io.read_table(sim["truth"] / "sources.ecsv")
    catalogs, headers, truths = [], [], []
    for path in sim["cal"]:
        e = io.read_exposure(path)
        catalogs.append(detect_sources(e.data, e.err, ~good_pixel_mask(e.dq)))
        headers.append(e.wcs)
        truths.append(io.read_wcs_file(sim["truth"] / f"{path.name[:-9]}_true_wcs.asdf")[0])
    results = align_exposures(catalogs, headers, [JWST_SHAPE] * 4)
    assert [r.status for r in results] == ["COMPLETE"] * 4
    print()
    for i, (true, r) in enumerate(zip(truths, results)):
        xt, yt = true.backward_transform(stars["ra"], stars["dec"])
        on = (xt > 0) & (xt < JWST_SHAPE[1] - 1) & (yt > 0) & (yt < JWST_SHAPE[0] - 1)
        exposure = dict(ra=stars["ra"][on], dec=stars["dec"][on], x=xt[on], y=yt[on])
        before, after = _wcs_error_pix(headers[i], exposure), _wcs_error_pix(r.wcs, exposure)
        print(f"exposure {i + 1}: {len(catalogs[i])} sources, {r.nmatch} matches, error before "
              f"{before:.3f} pix, after {after:.4f} pix RMS; fit RMS {r.rms:.4f} pix")
        assert after < 0.02
        assert r.nmatch >= 15 or r.is_reference


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fitgeometry="affine"), "fitgeometry"),
        (dict(separation=0.5, tolerance=0.7), "separation"),
        (dict(searchrad=0.0), "searchrad"),
        (dict(nclip=-1), "nclip"),
        (dict(sigma=0.0), "sigma"),
        (dict(minobj=2, fitgeometry="general"), "minobj"),
        (dict(xoffset=float("nan")), "xoffset"),
        (dict(group_ids=[1]), "group_ids"),
    ],
)
def test_align_exposures_rejects_bad_parameters(kwargs, match):
    """Invalid settings raise ValueError naming the parameter."""
    wcs = imaging_wcs((10, 10), (RA0, DEC0), SCALE)
    cat = Table({"x": [1.0], "y": [2.0]})
    with pytest.raises(ValueError, match=match):
        align_exposures([cat, cat], [wcs, wcs], [(10, 10)] * 2, **kwargs)


def test_align_exposures_rejects_mismatched_lengths():
    """Catalogs, WCSs and shapes must come one per exposure."""
    wcs = imaging_wcs((10, 10), (RA0, DEC0), SCALE)
    cat = Table({"x": [1.0], "y": [2.0]})
    with pytest.raises(ValueError, match="equal lengths"):
        align_exposures([cat, cat], [wcs], [(10, 10)] * 2)
