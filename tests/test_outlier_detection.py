"""Tests of calimage3.outlier_detection: sectioned median, derivative test, DQ flags."""

import time

import numpy as np
import pytest

from calimage3.dqflags import PIXEL
from calimage3.exposure import Exposure
from calimage3.outlier_detection import (
    abs_derivative,
    apply_outlier_flags,
    compute_weight_threshold,
    flag_outliers,
    median_in_sections,
    parse_pair,
    typical_weight,
)
from calimage3.resample import blot, drizzle_single
from calimage3.wcs_tools import imaging_wcs, output_wcs, to_tangent_plane


def test_parse_pair():
    """JWST pair strings and 2-sequences become float pairs; anything else is rejected by name."""
    assert parse_pair("5.0 4.0") == (5.0, 4.0)
    assert parse_pair("1.2, 0.7") == (1.2, 0.7)
    assert parse_pair((3, 2)) == (3.0, 2.0)
    with pytest.raises(ValueError, match="snr: expected two numbers, got '5.0'"):
        parse_pair("5.0", "snr")
    with pytest.raises(ValueError, match="scale: expected two numbers"):
        parse_pair("a b", "scale")


def test_weight_threshold_is_clipped_mean():
    """The threshold is maskpt x the 3-sigma-clipped mean of the non-zero weights."""
    weight = np.zeros((10, 10))
    weight[:, :8] = 4.0
    weight[0, 0] = 1000.0  # clipped
    weight[1, 1] = np.nan  # ignored
    assert compute_weight_threshold(weight, 0.7) == pytest.approx(2.8)
    assert compute_weight_threshold(np.zeros((3, 3)), 0.7) == 0.0


def test_median_excludes_low_weight():
    """A single whose weight is below maskpt x its typical weight is left out of the median."""
    shape = (4, 6)
    singles = [np.full(shape, v, np.float32) for v in (1.0, 2.0, 10.0)]
    weights = [np.ones(shape, np.float32) for _ in range(3)]
    weights[2][1, 2] = 0.5  # < 0.7 x 1: the 10 is excluded there
    weights[1][:, 0] = 0.0  # no data from single 1 in column 0
    singles[0][3, 5] = np.nan
    median = median_in_sections(singles, weights, maskpt=0.7)
    assert median.dtype == np.float32 and median.shape == shape
    assert median[0, 3] == 2.0  # median of 1, 2, 10
    assert median[1, 2] == 1.5  # median of 1, 2
    assert median[2, 0] == 5.5  # median of 1, 10
    assert median[3, 5] == 6.0  # median of 2, 10


@pytest.mark.parametrize("rows", [1, 7, 256])
def test_median_of_cutout_singles_equals_median_of_full_grid_singles(rows):
    """Singles drizzled onto their part of the grid only: the same median and counts as full-grid singles."""
    rng = np.random.default_rng(4)
    shape = (40, 50)
    boxes = [(0, 25, 0, 30), (10, 40, 15, 50), (5, 35, 5, 45), (39, 40, 49, 50)]
    full, cut, wfull, wcut, origins = [], [], [], [], []
    for y0, y1, x0, x1 in boxes:
        sci = np.full(shape, np.nan, np.float32)
        wht = np.zeros(shape, np.float32)
        sci[y0:y1, x0:x1] = rng.normal(1.0, 0.1, (y1 - y0, x1 - x0))
        wht[y0:y1, x0:x1] = rng.uniform(0.5, 1.5, (y1 - y0, x1 - x0))
        full.append(sci)
        wfull.append(wht)
        cut.append(sci[y0:y1, x0:x1].copy())
        wcut.append(wht[y0:y1, x0:x1].copy())
        origins.append((y0, x0))
    expected = median_in_sections(full, wfull, with_count=True, rows_per_section=rows)
    got = median_in_sections(cut, wcut, with_count=True, rows_per_section=rows, origins=origins, shape=shape)
    threaded = median_in_sections(cut, wcut, with_count=True, rows_per_section=rows, origins=origins,
                                  shape=shape, threads=2)
    np.testing.assert_array_equal(threaded[0], expected[0])
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[1].max() == 3 and got[1][39, 49] == 2
    with pytest.raises(ValueError, match="do not fit in the grid"):
        median_in_sections(cut, wcut, origins=[(30, 0)] + origins[1:], shape=shape)


class _OneReaderAtATime:
    """An array view that, like `calimage3.io.ImageSection`, reads through one shared file handle:
    it fails when two threads read at once."""

    active = 0

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.ndim = array.ndim

    def __getitem__(self, item):
        type(self).active += 1
        try:
            assert type(self).active == 1, "two threads read through shared file handles at once"
            time.sleep(0.002)
            return self.array[item]
        finally:
            type(self).active -= 1


def test_threaded_median_reads_one_band_at_a_time():
    rng = np.random.default_rng(8)
    singles = [rng.normal(1.0, 0.1, (64, 20)).astype(np.float32) for _ in range(3)]
    weights = [np.ones((64, 20), np.float32) for _ in range(3)]
    expected = median_in_sections(singles, weights, rows_per_section=4)
    views = [_OneReaderAtATime(a) for a in singles]
    wviews = [_OneReaderAtATime(a) for a in weights]
    got = median_in_sections(views, wviews, rows_per_section=4, threads=2, typical_weights=[1.0] * 3)
    np.testing.assert_array_equal(got, expected)


def test_median_count_is_the_number_of_singles_used():
    """with_count: each pixel's count of singles that entered its median (low weight and NaN excluded)."""
    shape = (2, 3)
    singles = [np.full(shape, v, np.float32) for v in (1.0, 2.0, 4.0)]
    weights = [np.ones(shape, np.float32) for _ in range(3)]
    weights[0][0, 0] = 0.0
    singles[1][1, 2] = np.nan
    median, count = median_in_sections(singles, weights, with_count=True)
    assert count.dtype == np.uint8
    assert count.tolist() == [[2, 3, 3], [3, 3, 2]]
    assert median[0, 0] == 3.0 and median[1, 2] == 2.5


def test_median_subtracts_each_singles_offset():
    """offsets (the sky levels of singles drizzled with their sky in) come off each single before the median,
    as if the exposures had been sky-subtracted before drizzling."""
    rng = np.random.default_rng(3)
    shape, levels = (40, 30), [0.3, -0.1, 0.7, 0.25]
    scene = rng.normal(1.0, 0.2, shape).astype(np.float32)
    singles = [scene + np.float32(level) + rng.normal(0, 0.01, shape).astype(np.float32) for level in levels]
    weights = [rng.uniform(0.5, 1.5, shape).astype(np.float32) for _ in levels]
    weights[2][:5] = 0.0  # not covered: the offset does not matter there
    subtracted = [s - np.float32(level) for s, level in zip(singles, levels)]
    expected = median_in_sections(subtracted, weights, rows_per_section=7)
    got = median_in_sections(singles, weights, rows_per_section=7, offsets=levels)
    np.testing.assert_array_equal(got, expected)
    assert abs(np.nanmedian(got - scene)) < 0.01  # the scene, not scene plus a mean sky
    with pytest.raises(ValueError, match="offsets"):
        median_in_sections(singles, weights, offsets=levels[:2])


def test_median_nan_where_nothing_contributes():
    """Pixels with no usable single are NaN."""
    singles = [np.ones((3, 3), np.float32), np.full((3, 3), 3.0, np.float32)]
    weights = [np.ones((3, 3)), np.ones((3, 3))]
    weights[0][0, 0] = weights[1][0, 0] = 0.0
    median = median_in_sections(singles, weights)
    assert np.isnan(median[0, 0])
    assert np.all(median.ravel()[1:] == 2.0)


def test_median_sections_match_full_nanmedian(tmp_path):
    """Section-by-section median of on-disk memmaps equals np.nanmedian of the whole masked stack."""
    rng = np.random.default_rng(7)
    n, shape = 5, (53, 37)
    singles, weights, full = [], [], []
    for k in range(n):
        sci = rng.normal(0, 1, shape).astype(np.float32)
        sci[rng.random(shape) < 0.05] = np.nan
        wht = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        wht[rng.random(shape) < 0.1] = 0.0
        masked = np.where(wht >= compute_weight_threshold(wht, 0.7), sci, np.nan)
        masked[wht == 0] = np.nan
        full.append(masked)
        for name, arr, store in (("sci", sci, singles), ("wht", wht, weights)):
            path = tmp_path / f"{name}{k}.npy"
            np.save(path, arr)
            store.append(np.load(path, mmap_mode="r"))
    with pytest.warns(RuntimeWarning, match="All-NaN"):
        expected = np.nanmedian(np.stack(full), axis=0)
    assert np.isnan(expected).any()
    for rows in (1, 7, 53, 1000):
        got = median_in_sections(singles, weights, rows_per_section=rows)
        np.testing.assert_array_equal(got, expected.astype(np.float32))
    # The typical weights the single jobs store give the same median.
    stored = [typical_weight(np.asarray(w)) for w in weights]
    got = median_in_sections(singles, weights, typical_weights=stored)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_median_bad_input():
    """Mismatched lists, shapes and bad settings are rejected by name."""
    a = [np.ones((3, 3))]
    with pytest.raises(ValueError, match="weights: 2 weight images for 1 singles"):
        median_in_sections(a, a * 2)
    with pytest.raises(ValueError, match="maskpt: .*1.5"):
        median_in_sections(a, a, maskpt=1.5)
    with pytest.raises(ValueError, match="rows_per_section: .*0"):
        median_in_sections(a, a, rows_per_section=0)
    with pytest.raises(ValueError, match="image 1 has shapes"):
        median_in_sections(a + [np.ones((3, 4))], a * 2)


def test_abs_derivative():
    """The derivative is the largest absolute difference with the 4 neighbours; NaN neighbours are skipped."""
    arr = np.array([[0.0, 0.0, 0.0], [0.0, 5.0, 1.0], [0.0, 2.0, np.nan]])
    expected = np.array([[0.0, 5.0, 1.0], [5.0, 5.0, 4.0], [2.0, 3.0, np.nan]])
    np.testing.assert_array_equal(abs_derivative(arr), expected)


def test_flag_outliers_thresholds():
    """A pixel is flagged above scale1*deriv + snr1*err; neighbours join above the snr2/scale2 threshold."""
    blot_img = np.zeros((7, 7))
    err = np.ones((7, 7))
    sci = np.zeros((7, 7))
    sci[3, 3] = 5.5  # > 5 sigma: flagged
    sci[3, 4] = 4.5  # < 5 but > 4 sigma, next to a flagged pixel: flagged
    sci[0, 0] = 4.5  # > 4 sigma but isolated: not flagged
    sci[6, 6] = 4.9  # below snr1
    mask = flag_outliers(sci, err, blot_img, snr="5.0 4.0", scale="1.2 0.7")
    assert mask.dtype == bool
    assert set(zip(*np.nonzero(mask))) == {(3, 3), (3, 4)}
    # A background offset in sci is removed by backg.
    assert not flag_outliers(sci + 0.0, err, blot_img + 0.0, backg=1.0)[3, 4]
    assert flag_outliers(sci + 1.0, err, blot_img, backg=1.0).sum() == 2


def test_flag_outliers_derivative_protects_gradients():
    """A difference on a steep blot gradient is not flagged when scale1 x derivative covers it."""
    blot_img = np.zeros((5, 5))
    blot_img[2, 2] = 100.0
    sci = blot_img.copy()
    sci[2, 2] = 80.0  # 20-sigma difference at the peak, derivative 100
    err = np.ones((5, 5))
    assert not flag_outliers(sci, err, blot_img).any()
    assert flag_outliers(sci, err, blot_img, scale=(0.0, 0.0))[2, 2]


def test_apply_outlier_flags():
    """Flagged pixels get OUTLIER | DO_NOT_USE; others and the input array are untouched."""
    dq = np.array([[0, PIXEL["SATURATED"]], [0, 0]], np.uint32)
    mask = np.array([[False, True], [True, False]])
    out = apply_outlier_flags(dq, mask)
    both = PIXEL["OUTLIER"] | PIXEL["DO_NOT_USE"]
    np.testing.assert_array_equal(out, [[0, PIXEL["SATURATED"] | both], [both, 0]])
    assert dq[1, 0] == 0 and out.dtype == np.uint32
    with pytest.raises(ValueError, match="mask: shape"):
        apply_outlier_flags(dq, np.zeros((3, 3), bool))


def _star_image(wcs, shape, star, sigma, oversample):
    """A Gaussian star of peak 1 (sigma in arcsec) at ``star`` (RA, Dec), averaged over ``oversample``² points per pixel."""
    y, x = np.indices(shape, dtype=float)
    image = np.zeros(shape)
    steps = (np.arange(oversample) + 0.5) / oversample - 0.5
    for dy in steps:
        for dx in steps:
            xi, eta = to_tangent_plane(*wcs.forward_transform(x + dx, y + dy), *star)
            image += np.exp(-(xi**2 + eta**2) * 3600**2 / (2 * sigma**2)) / oversample**2
    return image


def test_cosmic_ray_next_to_star_flagged_not_star():
    """End to end: a CR 7 pix from a bright undersampled star is flagged, the star is not."""
    ra0, dec0, scale, shape = 150.0, 2.0, 0.031, (96, 96)
    star = (ra0 + 2.0e-4, dec0 - 1.0e-4)
    cosd = np.cos(np.deg2rad(dec0))
    wcss = [
        imaging_wcs(shape, (ra0 + dx * scale / 3600 / cosd, dec0 + dy * scale / 3600), scale, rot)
        for dx, dy, rot in [(0.0, 0.0, 0.0), (3.37, -2.61, 0.3), (-4.21, 5.43, -0.2)]
    ]
    rng = np.random.default_rng(1)
    sky, read_var, sigma = 0.5, 1e-4, 0.04  # MJy/sr, (MJy/sr)**2, arcsec
    exposures = []
    for wcs in wcss:
        image = _star_image(wcs, shape, star, sigma, 5) * 50.0 / (2 * np.pi * sigma**2)  # peak ~4500 MJy/sr
        var = read_var + 4e-4 * image
        data = image + sky + rng.normal(0.0, 1.0, shape) * np.sqrt(var)
        exposures.append(Exposure(
            data=data.astype(np.float32), err=np.sqrt(var).astype(np.float32),
            dq=np.zeros(shape, np.uint32), wcs=wcs, var_rnoise=np.full(shape, read_var, np.float32),
        ))
    sx, sy = wcss[0].backward_transform(*star)
    peak = (int(round(sy)), int(round(sx)))
    cr = (peak[0], peak[1] + 7)
    exposures[0].data[cr] += 5.0  # 500 sigma of the read noise
    out_wcs, out_shape = output_wcs(wcss, [shape] * 3)
    singles = [drizzle_single(e, out_wcs, out_shape, sky_level=sky) for e in exposures]
    median = median_in_sections([s[0] for s in singles], [s[1] for s in singles])
    masks = []
    for exp, wcs in zip(exposures, wcss):
        blotted = blot(median, out_wcs, wcs, shape)
        masks.append(flag_outliers(exp.data, exp.err, blotted, backg=sky))
    assert set(zip(*np.nonzero(masks[0]))) == {cr}
    assert not masks[1].any() and not masks[2].any()
    # Without the derivative term the star core itself would be flagged.
    blotted = blot(median, out_wcs, wcss[0], shape)
    naive = flag_outliers(exposures[0].data, exposures[0].err, blotted, scale=(0, 0), backg=sky)
    assert naive[peak]


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_nanmedian_first_axis_equals_numpy(n):
    """The sort-based median equals np.nanmedian for odd/even counts, ties and all-NaN pixels."""
    import warnings

    from calimage3.outlier_detection import nanmedian_first_axis

    rng = np.random.default_rng(n)
    stack = rng.normal(size=(n, 40, 50)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.3] = np.nan
    stack[:, :3, :3] = np.nan  # no data
    stack[:, 5, 5] = 2.0  # ties
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(stack, axis=0)
    got = nanmedian_first_axis(stack)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_unresampled_single_is_the_sky_subtracted_exposure():
    """resample_data=False: the single is data - sky, NaN (weight 0) where unusable."""
    from calimage3.outlier_detection import unresampled_single

    data = np.full((4, 5), 3.0, np.float32)
    data[0, 0] = np.nan
    weight = np.ones((4, 5))
    weight[1, 1] = 0.0
    sci, wht = unresampled_single(data, weight, sky_level=0.5)
    assert sci[2, 2] == 2.5 and np.isnan(sci[0, 0]) and np.isnan(sci[1, 1])
    assert wht[0, 0] == 0 and wht[1, 1] == 0 and wht[2, 2] == 1


def test_unresampled_flagging_is_jwst_flag_crs():
    """resample_data=False: |sci - median| > snr1 * err only (no derivative term, snr2 unused)."""
    from calimage3.outlier_detection import flag_outliers_unresampled

    sci = np.array([[1.0, 1.6, 1.4, np.nan]])
    err = np.array([[0.1, 0.1, np.nan, 0.1]])
    median = np.ones((1, 4))
    mask = flag_outliers_unresampled(sci, err, median, snr="5.0 4.0")
    # 0.6 > 0.5 flagged; NaN err counts as 0 so 0.4 > 0 flagged; NaN sci never flagged
    assert mask.tolist() == [[False, True, True, False]]
    assert not flag_outliers_unresampled(sci, err, median, snr="7.0 1.0")[0, 1]


def test_neighbour_growth_is_a_3x3_binary_dilation():
    """The numpy 3x3 growth equals scipy.ndimage.binary_dilation, edges and tiny images included."""
    from scipy import ndimage

    from calimage3.outlier_detection import _dilate_3x3

    rng = np.random.default_rng(5)
    for shape in ((1, 1), (1, 6), (5, 2), (64, 80)):
        mask = rng.random(shape) < 0.05
        mask[0, 0] = mask[-1, -1] = True
        np.testing.assert_array_equal(_dilate_3x3(mask),
                                      ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool)))


def test_residual_background_reproduces_a_plane():
    """Box medians interpolated and extrapolated linearly give back a planar gradient exactly, outliers aside."""
    from calimage3.outlier_detection import residual_background

    y, x = np.indices((100, 130), dtype=float)
    plane = 0.3 + 0.002 * x - 0.001 * y
    noisy = plane.copy()
    noisy[50, 60] = 1e3  # an outlier does not move its box's median
    np.testing.assert_allclose(residual_background(noisy, 25), plane, atol=1e-9)
    assert residual_background(np.full((8, 8), np.nan), 4).tolist() == np.zeros((8, 8)).tolist()
    with pytest.raises(ValueError, match="backg_boxsize"):
        residual_background(noisy, 0)


def test_background_gradient_difference_not_flagged():
    """An exposure whose gradient differs from the median's by > 5 sigma at its edges: flagged by JWST's test, not with backg_boxsize."""
    rng = np.random.default_rng(4)
    shape = (200, 220)
    y, x = np.indices(shape, dtype=float)
    err = np.ones(shape)
    sci = rng.normal(0.0, 1.0, shape) + 12.0 * (x / 219.0 - 0.5)  # +-6 sigma across the exposure
    sci[100, 100] += 30.0
    blot_img = np.zeros(shape)
    assert flag_outliers(sci, err, blot_img).sum() > 500
    mask = flag_outliers(sci, err, blot_img, backg_boxsize=32)
    assert mask[100, 100]
    assert mask.sum() <= 3


def _undersampled_star_set(shift_cr=None):
    """Four dithered exposures of an undersampled star (FWHM 1.1 px); singles, median, and each exposure's blot."""
    ra0, dec0, scale, shape = 150.0, 2.0, 0.031, (64, 64)
    star = (ra0 + 1.0e-4, dec0 - 0.5e-4)
    cosd = np.cos(np.deg2rad(dec0))
    offsets = [(0.0, 0.0), (3.5, -2.5), (-4.25, 5.5), (2.75, 3.25)]  # half-pixel phases
    wcss = [imaging_wcs(shape, (ra0 + dx * scale / 3600 / cosd, dec0 + dy * scale / 3600), scale) for dx, dy in offsets]
    rng = np.random.default_rng(8)
    sigma = 1.1 / 2.3548 * scale  # arcsec
    exposures = []
    for wcs in wcss:
        image = _star_image(wcs, shape, star, sigma, 7) * 200.0  # peak ~100 MJy/sr
        var = 1e-3 + 1e-3 * image
        data = image + rng.normal(0.0, 1.0, shape) * np.sqrt(var)
        exposures.append(Exposure(data=data.astype(np.float32), err=np.sqrt(var).astype(np.float32),
                                  dq=np.zeros(shape, np.uint32), wcs=wcs,
                                  var_rnoise=np.full(shape, 1e-3, np.float32)))
    out_wcs, out_shape = output_wcs(wcss, [shape] * len(wcss))
    singles = [drizzle_single(e, out_wcs, out_shape) for e in exposures]
    median = median_in_sections([s[0] for s in singles], [s[1] for s in singles])
    blots = [blot(median, out_wcs, w, shape) for w in wcss]
    peaks = [tuple(int(round(v)) for v in w.backward_transform(*star)[::-1]) for w in wcss]
    return exposures, blots, peaks


def test_undersampled_star_core_spared_cosmic_rays_kept():
    """flux_box: the core of an undersampled star is not flagged (JWST's test flags it); cosmic rays on it and on the sky are."""
    exposures, blots, peaks = _undersampled_star_set()
    jwst = [flag_outliers(e.data, e.err, b) for e, b in zip(exposures, blots)]
    assert any(m[p[0] - 2:p[0] + 3, p[1] - 2:p[1] + 3].any() for m, p in zip(jwst, peaks))
    spared = [flag_outliers(e.data, e.err, b, flux_box=5, flux_tolerance=0.1) for e, b in zip(exposures, blots)]
    assert not any(m.any() for m in spared)
    # Where the median had only two singles (a peak there may be an outlier's half), JWST's test decides.
    for m_jwst, e, b in zip(jwst, exposures, blots):
        for count, expected in ((np.full(b.shape, 4.0), np.zeros_like(m_jwst)), (np.full(b.shape, 2.0), m_jwst)):
            got = flag_outliers(e.data, e.err, b, flux_box=5, flux_tolerance=0.1, blot_count=count)
            np.testing.assert_array_equal(got, expected)
    # Cosmic rays: one on the star's peak (half the star's flux), one on the sky.
    exp, b, (py, px) = exposures[0], blots[0], peaks[0]
    data = exp.data.copy()
    data[py, px] += 100.0
    data[10, 50] += 0.5  # 15 sigma of the sky noise
    mask = flag_outliers(data, exp.err, b, flux_box=5, flux_tolerance=0.1)
    assert mask[py, px] and mask[10, 50]
    # A tolerance above the ray's share of the star's flux lets it pass.
    assert not flag_outliers(data, exp.err, b, flux_box=5, flux_tolerance=0.6)[py, px]
    with pytest.raises(ValueError, match="flux_box: must be odd"):
        flag_outliers(data, exp.err, b, flux_box=4)
