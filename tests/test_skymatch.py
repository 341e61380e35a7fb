"""Tests of sky statistics and sky matching of overlapping exposures."""

import numpy as np
import pytest
from scipy import stats

from calimage3 import io
from calimage3.dqflags import good_pixel_mask
from calimage3.simulate import simulate_dither
from calimage3.skymatch import _Footprint, _overlap_region, match_sky, sky_statistic
from calimage3.wcs_tools import distortion_model, from_tangent_plane, imaging_wcs

CRVAL = (53.16, -27.78)
SCALE = 0.031  # arcsec / pixel
SHAPE = (704, 768)  # (ny, nx): not square, to catch x/y swaps
SKY = 0.2  # MJy/sr
OFFSETS = np.array([0.0, 0.015, -0.01, 0.03])  # MJy/sr, per exposure
NOISE = 0.01  # MJy/sr
# Tolerance of matches on every 2nd pixel: twice the stride-1 statistical
# error; the worst case over 20 noise realisations was 1.5e-4.
STRIDE2_ATOL = 2.5e-4
# Pointing offsets in pixels (about 25% of the image) and position angles.
DITHERS = [(0.0, 0.0, 0.0), (192.0, 45.0, 0.0), (52.0, 170.0, 0.0), (180.0, 188.0, 15.0)]


def _wcs(dx, dy, rotation=0.0, shape=SHAPE, distortion=None):
    """Imaging WCS whose pointing is moved by (dx, dy) reference pixels."""
    ra, dec = from_tangent_plane(-dx * SCALE / 3600.0, dy * SCALE / 3600.0, *CRVAL)
    return imaging_wcs(shape, (float(ra), float(dec)), SCALE, rotation, distortion=distortion)


def _sources(n=90, seed=11):
    """Gaussian stars and galaxies scattered over the mosaic: (ra, dec, peak MJy/sr, sigma pix)."""
    rng = np.random.default_rng(seed)
    xi = rng.uniform(-10.0, 18.0, n) / 3600.0
    eta = rng.uniform(-10.0, 18.0, n) / 3600.0
    ra, dec = from_tangent_plane(-xi, eta, *CRVAL)
    return ra, dec, 10 ** rng.uniform(-1.5, 0.5, n), rng.uniform(0.8, 4.0, n)


def _render(wcs, shape, sources):
    """Noise-free source model of one exposure, MJy/sr."""
    out = np.zeros(shape)
    x0, y0 = wcs.backward_transform(*sources[:2])
    for xs, ys, amp, sig in zip(x0, y0, *sources[2:]):
        r = int(np.ceil(7 * sig))
        xa, xb = max(int(xs) - r, 0), min(int(xs) + r + 1, shape[1])
        ya, yb = max(int(ys) - r, 0), min(int(ys) + r + 1, shape[0])
        if xa >= xb or ya >= yb:
            continue
        yy, xx = np.mgrid[ya:yb, xa:xb]
        out[ya:yb, xa:xb] += amp * np.exp(-((xx - xs) ** 2 + (yy - ys) ** 2) / (2 * sig**2))
    return out


@pytest.fixture(scope="module")
def dither():
    """Four overlapping 448x512 exposures: sky + offset + sources + noise, with truth."""
    rng = np.random.default_rng(2024)
    src = _sources()
    dist = distortion_model({"c2_0": 4e-6, "c1_1": -2e-6}, {"c0_2": 3e-6}, SHAPE)
    images, wcs_list, models = [], [], []
    for k, ((dx, dy, rot), off) in enumerate(zip(DITHERS, OFFSETS)):
        wcs = _wcs(dx, dy, rot, distortion=dist if k == 3 else None)
        model = _render(wcs, SHAPE, src)
        images.append((SKY + off + model + rng.normal(0.0, NOISE, SHAPE)).astype(np.float32))
        wcs_list.append(wcs)
        models.append(model)
    # Sources brighter than 0.05 sigma, for tests that mask them out.
    source_free = [m < 0.05 * NOISE for m in models]
    return images, wcs_list, source_free


# --- sky_statistic ------------------------------------------------------------


def _gamma_quantiles(n=100_000, k=5.0):
    """Noise-free sample of a Gamma(k) distribution (mode k-1, mean k)."""
    return stats.gamma.ppf((np.arange(n) + 0.5) / n, k)


def test_mode_finds_peak_of_skewed_distribution():
    """The histogram mode of a Gamma(5) sample is its peak, 4, not its mean, 5."""
    assert sky_statistic(_gamma_quantiles(), skystat="mode").value == pytest.approx(4.0, abs=0.02)


def test_midpt_and_median_agree_on_smooth_sample():
    """midpt (histogram median) equals the clipped median within 1% of a bin."""
    values = _gamma_quantiles()
    midpt = sky_statistic(values, skystat="midpt").value
    median = sky_statistic(values, skystat="median").value
    assert midpt == pytest.approx(median, abs=0.01 * 0.1 * np.sqrt(5.0))
    assert median == pytest.approx(stats.gamma.median(5.0), abs=0.02)


def test_mean_without_clipping_is_plain_mean():
    """nclip=0 returns the plain mean and the count of finite values."""
    result = sky_statistic([1.0, 2.0, 3.0, np.nan, 10.0], skystat="mean", nclip=0)
    assert result == (4.0, 4)


def test_clipping_rejects_outlier():
    """A single 1000 among 50 values near 1 is clipped away."""
    values = np.append(1.0 + 0.01 * np.arange(50), 1000.0)
    result = sky_statistic(values, skystat="mean")
    assert result.npix == 50
    assert result.value == pytest.approx(1.245)


def test_lower_upper_limits_select_values():
    """Only values in [lower, upper] enter the statistic."""
    result = sky_statistic([-5.0, 1.0, 2.0, 3.0, 50.0], skystat="median", lower=0.0, upper=10.0, nclip=0)
    assert result == (2.0, 3)


def test_no_usable_values_gives_nan():
    """An empty or all-NaN input gives (nan, 0)."""
    value, npix = sky_statistic([np.nan, np.nan])
    assert np.isnan(value) and npix == 0


def test_constant_values_give_that_value():
    """Identical values give that value for every statistic."""
    for skystat in ("mode", "median", "mean", "midpt"):
        assert sky_statistic(np.full(100, 0.25), skystat=skystat).value == pytest.approx(0.25)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"skystat": "average"}, "skystat must be one of"),
        ({"nclip": -1}, "nclip must be a non-negative integer, got -1"),
        ({"nclip": 2.5}, "nclip must be a non-negative integer"),
        ({"lsigma": 0.0}, "lsigma must be a positive number, got 0.0"),
        ({"usigma": -3.0}, "usigma must be a positive number"),
        ({"binwidth": 0}, "binwidth must be a positive number, got 0"),
        ({"lower": 1.0, "upper": 0.5}, r"lower \(1.0\) must be smaller than upper \(0.5\)"),
        ({"upper": np.nan}, "upper must be a finite number or None"),
    ],
)
def test_sky_statistic_rejects_bad_parameters(kwargs, message):
    """Bad statistic settings raise ValueError naming the parameter and value."""
    with pytest.raises(ValueError, match=message):
        sky_statistic([1.0, 2.0], **kwargs)


# --- match_sky ----------------------------------------------------------------


@pytest.mark.parametrize("skystat", ["median", "mean"])
def test_match_recovers_offsets_to_one_percent_of_noise(dither, skystat):
    """'match' at stride 1 finds the offsets to < 1e-4 MJy/sr (1% of the noise)."""
    images, wcs_list, _ = dither
    result = match_sky(images, wcs_list, skystat=skystat, stride=1)
    np.testing.assert_allclose(result.levels, OFFSETS - OFFSETS.min(), rtol=0, atol=1e-4)
    assert result.levels.min() == 0.0
    assert result.valid.all() and result.notes == []


def test_match_with_jwst_defaults(dither):
    """Default settings (histogram mode, every pixel) match to < 0.5 sigma: the mode is noisy."""
    images, wcs_list, _ = dither
    result = match_sky(images, wcs_list)
    np.testing.assert_allclose(result.levels, OFFSETS - OFFSETS.min(), rtol=0, atol=0.5 * NOISE)


@pytest.fixture(scope="module")
def simulated():
    """Four simulated 512x512 _cal exposures (seed 11) read back, with true WCSs and truth."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate_dither(tmp, n_exposures=4, shape=(512, 512), seed=11)
        truth = io.read_json(sim["truth"] / "truth.json")
        images, masks, wcs_list = [], [], []
        for path, exposure in zip(sim["cal"], truth["exposures"]):
            model = io.read_exposure(path)
            images.append(model.data)
            masks.append(good_pixel_mask(model.dq) & np.isfinite(model.data))
            wcs_list.append(io.read_wcs_file(sim["truth"] / f"{exposure['root']}_true_wcs.asdf")[0])
    offsets = np.array([e["sky_offset"] for e in truth["exposures"]])
    return images, masks, wcs_list, offsets, truth["noise_sigma"]


def test_match_on_simulated_dither_to_one_percent_of_noise(simulated):
    """On the simulator, 'match' with the clipped mean finds the relative offsets to < 1% of sigma."""
    images, masks, wcs_list, offsets, sigma = simulated
    result = match_sky(images, wcs_list, masks, skystat="mean", nclip=5, lsigma=4.0, usigma=4.0)
    relative = result.levels - result.levels[0]
    np.testing.assert_allclose(relative, offsets - offsets[0], rtol=0, atol=0.01 * sigma)
    assert result.valid.all() and len(result.pairs) == 6


def _distance_inside(x, y, shape):
    """Distance of points (x, y) to the outer pixel edges of an image; negative outside."""
    ny, nx = shape
    return np.minimum.reduce([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y])


@pytest.mark.parametrize("stride", [1, 3])
def test_overlap_region_matches_brute_force_mapping(stride):
    """The rasterized overlap is every pixel mapped into the other image at least 2 pixels inside both."""
    shape_i, shape_j = (300, 340), (280, 360)
    dist_i = distortion_model({"c2_0": 5e-5, "c1_1": -3e-5}, {"c0_2": 4e-5}, shape_i)
    dist_j = distortion_model({"c2_0": -4e-5}, {"c1_1": 5e-5, "c0_2": -3e-5}, shape_j)
    wcs_i = _wcs(0.0, 0.0, 0.0, shape=shape_i, distortion=dist_i)
    wcs_j = _wcs(110.0, -70.0, 25.0, shape=shape_j, distortion=dist_j)
    outline = _Footprint(shape_j, wcs_j, CRVAL).outline_in(_Footprint(shape_i, wcs_i, CRVAL))
    rows, cols, inside = _overlap_region(*outline, shape_i, stride=stride)
    region = np.zeros(shape_i, bool)
    region[rows, cols] = inside

    # Brute force: every pixel of i through both WCSs.  Both have the same
    # pixel scale to ~2% over the field, so j-pixel distances are i-pixel ones.
    y, x = np.indices(shape_i, dtype=float)
    xj, yj = wcs_j.backward_transform(*wcs_i.forward_transform(x, y))
    depth = np.minimum(_distance_inside(x, y, shape_i), _distance_inside(xj, yj, shape_j))
    on_grid = (x % stride == 0) & (y % stride == 0)
    assert not region[depth < 2.0 - 0.1].any()
    assert region[(depth > 2.0 + 0.1) & on_grid].all()
    assert not region[~on_grid].any()
    assert 0.2 < region.sum() * stride**2 / region.size < 0.8


def test_match_pair_table(dither):
    """All six pairs overlap; each pair's sky difference is the offset difference."""
    images, wcs_list, _ = dither
    result = match_sky(images, wcs_list, skystat="median", stride=2)
    pairs = result.pairs
    assert len(pairs) == 6 and pairs["used"].all()
    assert (pairs["npix_i"] > 5000).all() and (pairs["npix_j"] > 5000).all()
    diff = pairs["sky_i"] - pairs["sky_j"]
    expected = OFFSETS[pairs["i"]] - OFFSETS[pairs["j"]]
    np.testing.assert_allclose(diff, expected, rtol=0, atol=5 * NOISE / np.sqrt(5000))


def test_match_up_makes_largest_zero(dither):
    """match_down=False shifts the levels so the highest sky gets 0."""
    images, wcs_list, _ = dither
    result = match_sky(images, wcs_list, skystat="midpt", stride=2, match_down=False)
    np.testing.assert_allclose(result.levels, OFFSETS - OFFSETS.max(), rtol=0, atol=STRIDE2_ATOL)
    assert result.levels.max() == 0.0


def test_local_sky_per_image(dither):
    """'local' returns sky + offset of each image within 3% of the noise sigma."""
    images, wcs_list, _ = dither
    result = match_sky(images, wcs_list, skymethod="local", skystat="median")
    np.testing.assert_allclose(result.levels, SKY + OFFSETS, rtol=0, atol=0.03 * NOISE)
    assert len(result.pairs) == 0


def test_local_sky_with_source_masks(dither):
    """Masking the sources removes their bias: 'local' is right within 1% of sigma."""
    images, wcs_list, source_free = dither
    result = match_sky(images, wcs_list, source_free, skymethod="local", skystat="median")
    np.testing.assert_allclose(result.levels, SKY + OFFSETS, rtol=0, atol=0.01 * NOISE)


def test_global_is_minimum_local_sky(dither):
    """'global' gives every image the smallest local sky."""
    images, wcs_list, source_free = dither
    local = match_sky(images, wcs_list, source_free, skymethod="local", skystat="median")
    result = match_sky(images, wcs_list, source_free, skymethod="global", skystat="median")
    np.testing.assert_array_equal(result.levels, np.full(4, local.levels.min()))
    assert result.levels[0] == pytest.approx(SKY + OFFSETS.min(), abs=0.01 * NOISE)


def test_global_plus_match_gives_absolute_skies(dither):
    """'global+match' = match offsets + the lowest sky: each image's own sky + offset."""
    images, wcs_list, source_free = dither
    result = match_sky(images, wcs_list, source_free, skymethod="global+match", skystat="median", stride=2)
    np.testing.assert_allclose(result.levels, SKY + OFFSETS, rtol=0, atol=STRIDE2_ATOL)
    matched = match_sky(images, wcs_list, source_free, skymethod="match", skystat="median", stride=2)
    floor = result.levels - matched.levels
    np.testing.assert_allclose(floor, floor[0], rtol=0, atol=1e-12)


def test_isolated_image_gets_zero_and_note(dither):
    """An exposure that overlaps nothing gets level 0, valid False and a note."""
    images, wcs_list, _ = dither
    far = _wcs(3000.0, 0.0)
    rng = np.random.default_rng(5)
    lonely = (SKY + 0.05 + rng.normal(0.0, NOISE, SHAPE)).astype(np.float32)
    result = match_sky(images + [lonely], wcs_list + [far], skystat="median", stride=2)
    np.testing.assert_allclose(result.levels[:4], OFFSETS - OFFSETS.min(), rtol=0, atol=STRIDE2_ATOL)
    assert result.levels[4] == 0.0
    assert result.valid.tolist() == [True, True, True, True, False]
    assert any("image 4 overlaps no other image" in note for note in result.notes)


def test_disconnected_groups_are_reported():
    """Two separate overlapping pairs are matched within each pair, with a note."""
    rng = np.random.default_rng(8)
    shape = (64, 64)
    pointings = [(0.0, 0.0), (20.0, 0.0), (2000.0, 0.0), (2020.0, 0.0)]
    offsets = [0.0, 0.01, 0.02, 0.05]
    wcs_list = [_wcs(dx, dy, shape=shape) for dx, dy in pointings]
    images = [SKY + off + rng.normal(0.0, 1e-4, shape) for off in offsets]
    result = match_sky(images, wcs_list, skystat="mean", stride=1)
    levels = result.levels
    assert levels[1] - levels[0] == pytest.approx(0.01, abs=1e-4)
    assert levels[3] - levels[2] == pytest.approx(0.03, abs=1e-4)
    assert any("2 disconnected groups" in note for note in result.notes)


def test_masked_pixels_are_ignored(dither):
    """A masked block of garbage in one image does not change the match."""
    images, wcs_list, _ = dither
    bad = [im.copy() for im in images]
    bad[1][100:300, 50:400] = 1e4
    masks = [np.ones(SHAPE, bool) for _ in images]
    masks[1][100:300, 50:400] = False
    result = match_sky(bad, wcs_list, masks, skystat="median", stride=2)
    np.testing.assert_allclose(result.levels, OFFSETS - OFFSETS.min(), rtol=0, atol=STRIDE2_ATOL)


def test_subtract_returns_copies(dither):
    """subtract=True returns sky-subtracted float32 copies and leaves inputs alone."""
    images, wcs_list, _ = dither
    before = images[1].copy()
    result = match_sky(images, wcs_list, skymethod="local", skystat="median", subtract=True)
    np.testing.assert_array_equal(images[1], before)
    assert result.subtracted[1].dtype == np.float32
    np.testing.assert_allclose(result.subtracted[1], images[1] - result.levels[1], atol=1e-6)
    assert match_sky(images, wcs_list, skymethod="local").subtracted is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"skymethod": "best"}, "skymethod must be one of .*'best'"),
        ({"skystat": "max"}, "skystat must be one of .*'max'"),
        ({"stride": 0}, "stride must be a positive integer, got 0"),
        ({"match_down": "yes"}, "match_down must be True or False, got 'yes'"),
        ({"nclip": -2}, "nclip must be a non-negative integer, got -2"),
        ({"binwidth": -0.1}, "binwidth must be a positive number, got -0.1"),
        ({"lower": 2.0, "upper": 1.0}, r"lower \(2.0\) must be smaller than upper"),
    ],
)
def test_match_sky_rejects_bad_parameters(kwargs, message):
    """Bad settings raise ValueError naming the parameter and the value."""
    images = [np.zeros((8, 8))]
    with pytest.raises(ValueError, match=message):
        match_sky(images, [_wcs(0, 0, shape=(8, 8))], **kwargs)


def test_match_sky_rejects_inconsistent_inputs():
    """Mismatched lists, non-2-D images and bad masks raise clear errors."""
    wcs = _wcs(0, 0, shape=(8, 8))
    img = np.zeros((8, 8))
    with pytest.raises(ValueError, match="images must contain at least one image"):
        match_sky([], [])
    with pytest.raises(ValueError, match="wcs_list has 1 entries for 2 images"):
        match_sky([img, img], [wcs])
    with pytest.raises(ValueError, match=r"images\[0\] must be 2-D"):
        match_sky([np.zeros(8)], [wcs])
    with pytest.raises(ValueError, match=r"masks\[0\] has shape \(4, 4\)"):
        match_sky([img], [wcs], [np.ones((4, 4), bool)])
    with pytest.raises(ValueError, match=r"masks\[0\] must be boolean"):
        match_sky([img], [wcs], [np.ones((8, 8), np.uint32)])
