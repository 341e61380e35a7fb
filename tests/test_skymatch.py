"""Tests of sky statistics and sky matching of overlapping exposures."""

import tracemalloc

import numpy as np
import pytest
import yaml
from jsonschema import Draft202012Validator
from scipy import stats

from astropy.table import Table

from calimage3 import io
from calimage3.association import exposure_root
from calimage3.dqflags import good_pixel_mask
from calimage3.simulate import simulate_dither
from calimage3.skymatch import (
    SkyMatcher,
    _Footprint,
    _overlap_region,
    match_sky,
    sky_statistic,
    user_sky_levels,
)
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
    outline = _Footprint(shape_j, wcs_j, CRVAL, 20).outline_in(_Footprint(shape_i, wcs_i, CRVAL, 20))
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


# --- parameters: each changes the result as the JWST docs say --------------------


def _flat(value=1.0, shape=(8, 8), block=5.0):
    """A flat image of ``value`` whose first 2 rows (25% of pixels) hold ``block``."""
    image = np.full(shape, value)
    image[:2] = block
    return image


def test_binwidth_moves_histogram_mode():
    """Wider bins (1 sigma instead of 0.1) pull the Gamma(5) mode from its peak, 4, towards the mean, 5."""
    values = _gamma_quantiles()
    narrow = sky_statistic(values, skystat="mode", binwidth=0.1).value
    wide = sky_statistic(values, skystat="mode", binwidth=1.0).value
    assert narrow == pytest.approx(4.0, abs=0.02)
    assert 4.1 < wide < 5.0


def test_upper_excludes_bright_pixels_from_sky():
    """upper=2 leaves the 5.0 block out of the sky of an image of 1.0: mean 2.0 becomes 1.0."""
    wcs = [_wcs(0, 0, shape=(8, 8))]
    kwargs = dict(skymethod="local", skystat="mean", nclip=0)
    assert match_sky([_flat()], wcs, **kwargs).levels[0] == pytest.approx(2.0)
    assert match_sky([_flat()], wcs, upper=2.0, **kwargs).levels[0] == pytest.approx(1.0)


def test_lower_excludes_faint_pixels_from_sky():
    """lower=0 leaves a -3.0 block out of the sky of an image of 1.0: mean 0.0 becomes 1.0."""
    wcs = [_wcs(0, 0, shape=(8, 8))]
    kwargs = dict(skymethod="local", skystat="mean", nclip=0)
    assert match_sky([_flat(block=-3.0)], wcs, **kwargs).levels[0] == pytest.approx(0.0)
    assert match_sky([_flat(block=-3.0)], wcs, lower=0.0, **kwargs).levels[0] == pytest.approx(1.0)


def test_dqbits_exclude_flagged_pixels():
    """DO_NOT_USE pixels are left out by the default dqbits and by 0, used when that bit is good or DQ is ignored."""
    wcs = [_wcs(0, 0, shape=(8, 8))]
    dq = np.zeros((8, 8), np.uint32)
    dq[:2] = 1  # DO_NOT_USE on the 5.0 block
    kwargs = dict(skymethod="local", skystat="mean", nclip=0)
    assert match_sky([_flat()], wcs, dq=[dq], **kwargs).levels[0] == pytest.approx(1.0)
    assert match_sky([_flat()], wcs, dq=[dq], dqbits=0, **kwargs).levels[0] == pytest.approx(1.0)
    assert match_sky([_flat()], wcs, dq=[dq], dqbits="~NON_SCIENCE", **kwargs).levels[0] == pytest.approx(2.0)
    assert match_sky([_flat()], wcs, dq=[dq], dqbits=None, **kwargs).levels[0] == pytest.approx(2.0)


def test_stepsize_follows_distorted_outline():
    """stepsize=20 keeps the overlap 2 pixels inside a distorted edge; corners only (None) cut across it."""
    shape_i, shape_j = (300, 340), (280, 360)
    dist_i = distortion_model({"c2_0": 5e-5, "c1_1": -3e-5}, {"c0_2": 4e-5}, shape_i)
    dist_j = distortion_model({"c2_0": -4e-5}, {"c1_1": 5e-5, "c0_2": -3e-5}, shape_j)
    wcs_i = _wcs(0.0, 0.0, 0.0, shape=shape_i, distortion=dist_i)
    wcs_j = _wcs(110.0, -70.0, 25.0, shape=shape_j, distortion=dist_j)
    y, x = np.indices(shape_i, dtype=float)
    xj, yj = wcs_j.backward_transform(*wcs_i.forward_transform(x, y))
    depth = np.minimum(_distance_inside(x, y, shape_i), _distance_inside(xj, yj, shape_j))
    shallowest = {}
    for stepsize in (None, 20):
        foot_i, foot_j = _Footprint(shape_i, wcs_i, CRVAL, stepsize), _Footprint(shape_j, wcs_j, CRVAL, stepsize)
        rows, cols, inside = _overlap_region(*foot_j.outline_in(foot_i), shape_i)
        region = np.zeros(shape_i, bool)
        region[rows, cols] = inside
        shallowest[stepsize] = depth[region].min()
    assert foot_j.ra.size == 2 * (18 + 14)  # 360/20 and 280/20 intervals per edge
    assert shallowest[20] > 1.9
    assert shallowest[None] < 1.5


def test_match_down_false_matches_up(dither):
    """match_down=False gives levels <= 0 that differ from match_down=True by a constant."""
    images, wcs_list, _ = dither
    down = match_sky(images, wcs_list, skystat="mean", stride=2).levels
    up = match_sky(images, wcs_list, skystat="mean", stride=2, match_down=False).levels
    assert up.max() == 0.0 and (up <= 0).all()
    np.testing.assert_allclose(down - up, OFFSETS.max() - OFFSETS.min(), rtol=0, atol=STRIDE2_ATOL)


# --- SkyMatcher: one image at a time ----------------------------------------------


def test_matcher_in_any_order_equals_match_sky(dither):
    """Adding the images one by one, in reverse order, gives exactly the levels of match_sky."""
    images, wcs_list, _ = dither
    expected = match_sky(images, wcs_list, skymethod="global+match", skystat="mean", stride=2)
    matcher = SkyMatcher(wcs_list, [im.shape for im in images], skymethod="global+match", skystat="mean", stride=2)
    for k in reversed(range(len(images))):
        matcher.add_image(k, images[k])
    np.testing.assert_array_equal(matcher.evaluate().levels, expected.levels)


def test_matcher_keeps_no_image_memory():
    """After four add_image calls the matcher holds less than a tenth of one image: no pixel array is kept."""
    rng = np.random.default_rng(3)
    shape = (512, 512)
    wcs_list = [_wcs(dx, 0.0, shape=shape) for dx in (0.0, 100.0, 200.0, 300.0)]
    matcher = SkyMatcher(wcs_list, [shape] * 4, skystat="mean")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(4):
            matcher.add_image(k, SKY + rng.normal(0.0, NOISE, shape))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 0.1 * 512 * 512 * 8  # numbers and WCS inverses only
    assert matcher.evaluate().valid.all()


def test_matcher_needs_every_image():
    """evaluate() before all images are added, or adding one twice, raises a clear error."""
    wcs_list = [_wcs(0, 0, shape=(8, 8)), _wcs(2, 0, shape=(8, 8))]
    matcher = SkyMatcher(wcs_list, [(8, 8), (8, 8)], skystat="mean")
    matcher.add_image(0, np.ones((8, 8)))
    with pytest.raises(ValueError, match="image 0 was already added"):
        matcher.add_image(0, np.ones((8, 8)))
    with pytest.raises(ValueError, match=r"images \[1\] were never added"):
        matcher.evaluate()
    with pytest.raises(ValueError, match=r"images\[1\] has shape \(4, 4\), expected \(8, 8\)"):
        matcher.add_image(1, np.ones((4, 4)))


def test_stepsize_and_user_method_rejected_by_match_sky():
    """stepsize must be a positive integer; skymethod 'user' points to user_sky_levels."""
    img, wcs = [np.zeros((8, 8))], [_wcs(0, 0, shape=(8, 8))]
    with pytest.raises(ValueError, match="stepsize must be a positive integer or None, got 0"):
        match_sky(img, wcs, stepsize=0)
    with pytest.raises(ValueError, match="skymethod 'user' takes its levels from a skylist"):
        match_sky(img, wcs, skymethod="user")


# --- skymethod 'user' and skylist -------------------------------------------------

NAMES = ["data/jw01_nrca1_cal.fits", "data/jw02_nrca1_cal.fits"]


def test_user_sky_levels_by_exposure_root():
    """Listed levels are matched to exposures by root, whatever the order, folder or suffix."""
    levels = user_sky_levels(NAMES, ["jw02_nrca1_crf.fits", "/x/jw01_nrca1_cal.fits"], [0.25, 0.125])
    np.testing.assert_array_equal(levels, [0.125, 0.25])


@pytest.mark.parametrize(
    "listed, values, message",
    [
        (["jw01_nrca1_cal.fits"], [0.1], r"no sky value for exposure\(s\) \['jw02_nrca1'\] \(1 entries for 2"),
        (["jw01_nrca1_cal.fits", "jw02_nrca1_cal.fits", "jw03_nrca1_cal.fits"], [0.1, 0.2, 0.3],
         r"lists \['jw03_nrca1'\], not exposure\(s\) of this association \(3 entries for 2"),
        (["jw01_nrca1_cal.fits", "jw01_nrca1_crf.fits"], [0.1, 0.2], "exposure 'jw01_nrca1' is listed 2 times"),
        (["jw01_nrca1_cal.fits", "jw02_nrca1_cal.fits"], [0.1, np.nan], "sky value of 'jw02_nrca1' is not a finite"),
    ],
)
def test_user_sky_levels_rejects_mismatched_list(listed, values, message):
    """A missing, extra, repeated or non-finite entry raises ValueError naming the exposure."""
    with pytest.raises(ValueError, match=message):
        user_sky_levels(NAMES, listed, values)


def test_read_skylist_text_and_ecsv(tmp_path):
    """A two-column text file (with comments) and an ECSV table give the same names and values."""
    text = tmp_path / "sky.txt"
    text.write_text("# file  sky\njw01_nrca1_cal.fits 0.125  # first\n\njw02_nrca1_cal.fits -2.5e-2\n")
    ecsv = tmp_path / "sky.ecsv"
    io.write_table(ecsv, Table({"file": ["jw01_nrca1_cal.fits", "jw02_nrca1_cal.fits"], "sky": [0.125, -0.025]}))
    for path in (text, ecsv):
        names, values = io.read_skylist(path)
        assert names == ["jw01_nrca1_cal.fits", "jw02_nrca1_cal.fits"]
        np.testing.assert_array_equal(values, [0.125, -0.025])


@pytest.mark.parametrize(
    "content, message",
    [
        ("jw01_cal.fits 0.1 extra\n", "skylist line 1: expected a file name and a sky value"),
        ("# only a comment\n", "skylist has no entries"),
        ("jw01_cal.fits 0.1\njw02_cal.fits sky\n", "skylist line 2: sky value 'sky' is not a number"),
    ],
)
def test_read_skylist_rejects_bad_file(tmp_path, content, message):
    """A malformed skylist raises InputFileError naming the file and the line."""
    path = tmp_path / "sky.txt"
    path.write_text(content)
    with pytest.raises(io.InputFileError, match=f"sky.txt: {message}"):
        io.read_skylist(path)
    with pytest.raises(io.InputFileError, match="missing.txt: skylist file does not exist"):
        io.read_skylist(tmp_path / "missing.txt")


def test_schema_requires_skylist_for_user_method():
    """The config schema rejects skymethod 'user' without a skylist and accepts it with one."""
    with open("config/schema.yaml") as fh:
        section = yaml.safe_load(fh)["properties"]["skymatch"]
    validator = Draft202012Validator(section)
    assert not validator.is_valid({"skymethod": "user", "skylist": None})
    assert validator.is_valid({"skymethod": "user", "skylist": "sky.txt"})
    assert validator.is_valid({"skymethod": "match", "skylist": None, "stepsize": 64})
    assert not validator.is_valid({"skymethod": "match", "stepsize": 0})


# --- subtract ---------------------------------------------------------------------


def test_subtract_true_changes_data_false_only_records(tmp_path):
    """With subtract=True the level is taken out of the data (BKGSUB True); with False only BKGLEVEL records it."""
    sim = simulate_dither(tmp_path, n_exposures=2, shape=(64, 64), seed=3)
    cal = sim["cal"][0]
    wcs_path = tmp_path / "wcs.asdf"
    wcs, shape, _ = io.read_exposure_wcs(cal)
    io.write_wcs_file(wcs_path, wcs, shape)
    raw = io.read_exposure(cal).data
    results = {}
    for subtract in (False, True):
        sky = tmp_path / f"sky_{subtract}.json"
        io.write_json(sky, {"status": "COMPLETE", "method": "match", "subtract": subtract,
                            "levels": {exposure_root(cal): 0.25}})
        results[subtract] = io.read_aligned_exposure(cal, wcs_path, sky)
    recorded, still_in = results[False]
    subtracted, left = results[True]
    np.testing.assert_array_equal(recorded.data, raw)
    assert recorded.meta["BKGLEVEL"] == 0.25 and recorded.meta["BKGSUB"] is False and still_in == 0.25
    np.testing.assert_allclose(subtracted.data, raw - 0.25, rtol=0, atol=1e-6)
    assert subtracted.meta["BKGSUB"] is True and left == 0.0
