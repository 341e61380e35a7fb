"""Tests of calimage3.resample: drizzle co-add, weights, variances, blot."""

import numpy as np
import pytest

from calimage3.dqflags import PIXEL
from calimage3.exposure import Exposure
from drizzle.resample import Drizzle

from calimage3.resample import (
    KERNELS,
    ExposureContribution,
    MosaicCombiner,
    ResampledImage,
    _clean_variance,
    _drizzle_inputs,
    blot,
    build_driz_weight,
    drizzle_exposure,
    drizzle_single,
    exposure_time_weight,
)
from calimage3.wcs_tools import imaging_wcs, output_wcs, to_tangent_plane

RA0, DEC0, SCALE = 150.0, 2.0, 0.031  # degrees, degrees, arcsec/pixel
SHAPE = (128, 128)
STAR = (RA0 + 3.0e-4, DEC0 - 2.0e-4)
# (dx, dy) pointing offsets in pixels and rotation in degrees of the three dithers
DITHERS = [(0.0, 0.0, 0.0), (3.37, -2.61, 0.3), (-4.21, 5.43, -0.2)]


def _dither_wcs():
    cosd = np.cos(np.deg2rad(DEC0))
    return [
        imaging_wcs(SHAPE, (RA0 + dx * SCALE / 3600 / cosd, DEC0 + dy * SCALE / 3600), SCALE, rot)
        for dx, dy, rot in DITHERS
    ]


def _gaussian_sb(wcs, shape, flux, sigma_arcsec, sub=5):
    """Pixel-averaged surface brightness of a Gaussian star (flux per arcsec**2)."""
    y, x = np.indices(shape, dtype=float)
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    image = np.zeros(shape)
    for dy in offsets:
        for dx in offsets:
            ra, dec = wcs.forward_transform(x + dx, y + dy)
            xi, eta = to_tangent_plane(ra, dec, *STAR)
            r2 = (xi**2 + eta**2) * 3600.0**2
            image += np.exp(-r2 / (2 * sigma_arcsec**2))
    return image / sub**2 * flux / (2 * np.pi * sigma_arcsec**2)


def _exposure(wcs, data, var_rnoise=1e-4, var_poisson=2e-4, var_flat=0.0, exptime=100.0):
    shape = data.shape
    vr = np.full(shape, var_rnoise, np.float32)
    vp = np.full(shape, var_poisson, np.float32)
    vf = np.full(shape, var_flat, np.float32)
    return Exposure(
        data=np.asarray(data, np.float32), err=np.sqrt(vr + vp + vf), dq=np.zeros(shape, np.uint32),
        wcs=wcs, meta={"EXPTIME": exptime}, var_rnoise=vr, var_poisson=vp, var_flat=vf,
    )


@pytest.fixture(scope="module")
def star_set():
    """Three dithered exposures of one Gaussian star (flux 1000, sigma 0.06") on sky 0.5."""
    wcss = _dither_wcs()
    exposures = [_exposure(w, _gaussian_sb(w, SHAPE, 1000.0, 0.06) + 0.5) for w in wcss]
    return wcss, exposures


def _shift_wcs(shape, dx, dy):
    """WCS whose pixel (i, j) sees the sky of pixel (i + dx, j + dy) of the reference."""
    ny, nx = shape
    return imaging_wcs(shape, (RA0, DEC0), SCALE, 0.0, crpix=((nx - 1) / 2 - dx, (ny - 1) / 2 - dy))


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_flux_and_position_conserved(star_set, ratio):
    """Total star flux (sum x output pixel area) is kept to < 0.5 % and its centroid to 0.02 pix."""
    wcss, exposures = star_set
    out_wcs, out_shape = output_wcs(wcss, [SHAPE] * 3, pixel_scale_ratio=ratio)
    resampler = ResampledImage(out_wcs, out_shape)
    for exp in exposures:
        resampler.add_exposure(exp, sky_level=0.5)
    out = resampler.finalize()
    data = np.nan_to_num(out["data"])
    flux_out = data.sum() * (SCALE * ratio) ** 2
    flux_in = (exposures[0].data - 0.5).sum() * SCALE**2
    assert flux_in == pytest.approx(1000.0, rel=1e-3)
    assert flux_out == pytest.approx(flux_in, rel=5e-3)
    y, x = np.indices(out_shape)
    xs, ys = out_wcs.backward_transform(*STAR)
    assert abs((data * x).sum() / data.sum() - xs) < 0.02
    assert abs((data * y).sum() / data.sum() - ys) < 0.02
    # Surface brightness, not flux per pixel: the peak is the same at both scales.
    assert np.nanmax(out["data"]) == pytest.approx(np.max(exposures[0].data) - 0.5, rel=0.1)


def test_weight_ivm_and_exptime():
    """ivm weight is 1/var_rnoise (1/err**2 without it), exptime weight the exposure time; bad DQ is 0."""
    err = np.full((2, 2), 2.0, np.float32)
    dq = np.array([[0, PIXEL["DO_NOT_USE"]], [PIXEL["SATURATED"], PIXEL["NON_SCIENCE"]]], np.uint32)
    var_rnoise = np.array([[0.25, 0.25], [0.5, np.nan]], np.float32)
    ivm = build_driz_weight(err, dq, var_rnoise=var_rnoise)
    np.testing.assert_allclose(ivm, [[4.0, 0.0], [2.0, 0.0]])
    assert ivm.dtype == np.float32
    np.testing.assert_allclose(build_driz_weight(err, dq), [[0.25, 0.0], [0.25, 0.0]])
    np.testing.assert_allclose(
        build_driz_weight(err, dq, weight_type="exptime", exptime=300.0), [[300.0, 0.0], [300.0, 0.0]]
    )
    assert exposure_time_weight({"EXPTIME": 10.0, "EFFEXPTM": 12.0, "TMEASURE": 9.0}) == 9.0
    assert exposure_time_weight({}) == 1.0


def test_weight_bad_input():
    """Unknown weight_type and non-positive exptime are rejected by name."""
    err = np.ones((2, 2), np.float32)
    dq = np.zeros((2, 2), np.uint32)
    with pytest.raises(ValueError, match="weight_type: .*'ivm-foo'"):
        build_driz_weight(err, dq, weight_type="ivm-foo")
    with pytest.raises(ValueError, match="exptime: .*-1"):
        build_driz_weight(err, dq, weight_type="exptime", exptime=-1)


def test_weights_set_the_mean():
    """Two same-grid exposures combine as the inverse-variance (ivm) or time-weighted mean."""
    wcs = _shift_wcs(SHAPE, 0, 0)
    a = _exposure(wcs, np.full(SHAPE, 1.0), var_rnoise=1.0, exptime=100.0)
    b = _exposure(wcs, np.full(SHAPE, 4.0), var_rnoise=0.25, exptime=300.0)
    for weight_type, expected, wht in (("ivm", (1 * 1 + 4 * 4) / 5, 5.0), ("exptime", 3.25, 400.0)):
        resampler = ResampledImage(wcs, SHAPE, weight_type=weight_type)
        resampler.add_exposure(a)
        resampler.add_exposure(b)
        out = resampler.finalize()
        assert out["data"][64, 64] == pytest.approx(expected, rel=1e-5)
        assert out["wht"][64, 64] == pytest.approx(wht, rel=1e-5)


def test_context_bits():
    """Bit k of the context marks exposure k; 33 exposures need a second plane."""
    wcs = _shift_wcs((8, 8), 0, 0)
    out_wcs = _shift_wcs((8, 40), 0, 0)
    resampler = ResampledImage(out_wcs, (8, 40), fillval=0.0)
    for k in range(33):
        # exposure k covers output columns k .. k+7
        resampler.add_exposure(_exposure(wcs, np.ones((8, 8))), pixmap=_identity(8, 8, dx=k))
    out = resampler.finalize()
    con = out["con"]
    assert con.dtype == np.int32 and con.shape == (2, 8, 40)
    assert con[0, 4, 0] == 1  # only exposure 0
    assert con[0, 4, 1] == 0b11  # exposures 0 and 1
    assert con[0, 4, 7] == 0xFF  # exposures 0..7
    assert con[1, 4, 39] == 1 and con[0, 4, 39] == 0  # only exposure 32
    assert con[0].view(np.uint32)[4, 31] == 0xFF000000  # exposures 24..31
    assert out["data"][4, 39] == 1.0


def _identity(ny, nx, dx=0.0, dy=0.0):
    y, x = np.indices((ny, nx), dtype=float)
    return np.dstack([x + dx, y + dy])


@pytest.mark.parametrize(
    ("shift", "n_exp", "method", "factor"),
    [
        (0.0, 1, "jwst", 1.0),
        (0.0, 3, "jwst", 1.0 / 3),
        (0.5, 1, "jwst", 1.0),
        (0.0, 3, "squared_weights", 1.0 / 3),
        (0.5, 1, "squared_weights", 0.25),
        (0.3, 1, "squared_weights", (0.7**2 + 0.3**2) ** 2),
    ],
)
def test_variance_propagation(shift, n_exp, method, factor):
    """Uniform variance on a same-scale grid gives var/N (jwst) or var*sum(a**2)/N (squared)."""
    shape = (32, 32)
    wcs = _shift_wcs(shape, 0, 0)
    resampler = ResampledImage(wcs, shape, variance_method=method)
    for _ in range(n_exp):
        exp = _exposure(wcs, np.ones(shape), var_rnoise=0.01, var_poisson=0.04, var_flat=0.0009)
        resampler.add_exposure(exp, pixmap=_identity(*shape, dx=shift, dy=shift))
    out = resampler.finalize()
    inner = np.s_[5:25, 5:25]
    np.testing.assert_allclose(out["var_rnoise"][inner], 0.01 * factor, rtol=1e-4)
    np.testing.assert_allclose(out["var_poisson"][inner], 0.04 * factor, rtol=1e-4)
    np.testing.assert_allclose(out["var_flat"][inner], 0.0009 * factor, rtol=1e-4)
    np.testing.assert_allclose(out["err"][inner], np.sqrt(0.0509 * factor), rtol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernels_run(kernel):
    """Every drizzle kernel resamples a flat image to the same flat level."""
    shape = (32, 32)
    wcs = _shift_wcs(shape, 0, 0)
    resampler = ResampledImage(wcs, shape, kernel=kernel, pixfrac=1.0)
    resampler.add_exposure(_exposure(wcs, np.full(shape, 3.0)), pixmap=_identity(*shape, 0.25, 0.4))
    out = resampler.finalize()
    assert np.nanmedian(out["data"][8:24, 8:24]) == pytest.approx(3.0, rel=1e-3)


def test_nan_fill_and_numeric_fill():
    """Output pixels no input reaches are NaN by default and fillval when a number is given."""
    shape = (16, 16)
    wcs = _shift_wcs(shape, 0, 0)
    for fillval, check in (("NAN", np.isnan), ("INDEF", np.isnan), (-7.5, lambda v: v == -7.5)):
        resampler = ResampledImage(wcs, (16, 24), fillval=fillval)
        resampler.add_exposure(_exposure(wcs, np.ones(shape)), pixmap=_identity(*shape))
        out = resampler.finalize()
        assert np.all(check(out["data"][:, 17:]))
        assert np.all(out["data"][:, :15] == 1.0)
        assert np.all(out["wht"][:, 17:] == 0)
        assert np.all(np.isnan(out["err"][:, 17:]))


def test_bad_pixels_and_nans_do_not_propagate():
    """DO_NOT_USE pixels and NaN data get zero weight and leave no NaN in covered output."""
    shape = (16, 16)
    wcs = _shift_wcs(shape, 0, 0)
    exp = _exposure(wcs, np.full(shape, 2.0))
    exp.dq[5, 5] = PIXEL["DO_NOT_USE"]
    exp.data[5, 5] = 1e6
    exp.data[7, 7] = np.nan
    exp.var_rnoise[7, 7] = np.nan
    exp2 = _exposure(wcs, np.full(shape, 2.0))
    resampler = ResampledImage(wcs, shape)
    resampler.add_exposure(exp, pixmap=_identity(*shape))
    resampler.add_exposure(exp2, pixmap=_identity(*shape))
    out = resampler.finalize()
    assert np.all(out["data"] == 2.0)
    assert out["wht"][5, 5] == pytest.approx(1e4) and out["wht"][6, 6] == pytest.approx(2e4)
    assert out["con"][0, 5, 5] == 2 and out["con"][0, 6, 6] == 3
    assert np.all(np.isfinite(out["err"]))


def test_sky_subtraction_and_single():
    """drizzle_single subtracts sky_level and returns (data, wht) of one exposure."""
    shape = (16, 16)
    wcs = _shift_wcs(shape, 0, 0)
    data, wht = drizzle_single(_exposure(wcs, np.full(shape, 5.0)), wcs, shape, sky_level=1.5)
    assert data.dtype == np.float32 and wht.dtype == np.float32
    np.testing.assert_allclose(data, 3.5)
    np.testing.assert_allclose(wht, 1e4, rtol=1e-5)


def test_blot_reproduces_smooth_image():
    """Blotting the drizzled co-add of a smooth source back onto an exposure reproduces it to < 2 %."""
    wcss = _dither_wcs()
    exposures = [_exposure(w, _gaussian_sb(w, SHAPE, 1000.0, 0.4, sub=1) + 0.5) for w in wcss]
    out_wcs, out_shape = output_wcs(wcss, [SHAPE] * 3)
    resampler = ResampledImage(out_wcs, out_shape)
    for exp in exposures:
        resampler.add_exposure(exp)
    coadd = resampler.finalize()["data"]
    blotted = blot(coadd, out_wcs, wcss[1], SHAPE)
    assert blotted.shape == SHAPE and blotted.dtype == np.float32
    inner = np.s_[10:-10, 10:-10]
    rel = np.abs(blotted[inner] / exposures[1].data[inner] - 1)
    assert rel.max() < 0.02


def test_blot_fill_outside():
    """Target pixels that fall off the median frame get fillval."""
    shape = (16, 16)
    big = _shift_wcs(shape, 0, 0)
    target = _shift_wcs(shape, 8, 0)  # half of the target lies right of the median
    out = blot(np.ones(shape, np.float32), big, target, shape, fillval=-1.0)
    assert np.all(out[:, :6] == 1.0)
    assert np.all(out[:, 9:] == -1.0)


def test_bad_parameters():
    """Bad kernel, pixfrac, fillval, weight_type and variance_method are rejected by name."""
    wcs = _shift_wcs((4, 4), 0, 0)
    with pytest.raises(ValueError, match="kernel: .*'tophat'"):
        ResampledImage(wcs, (4, 4), kernel="tophat")
    with pytest.raises(ValueError, match="pixfrac: .*1.5"):
        ResampledImage(wcs, (4, 4), pixfrac=1.5)
    with pytest.raises(ValueError, match="fillval: .*'zero'"):
        ResampledImage(wcs, (4, 4), fillval="zero")
    with pytest.raises(ValueError, match="weight_type: .*'error'"):
        ResampledImage(wcs, (4, 4), weight_type="error")
    with pytest.raises(ValueError, match="variance_method: .*'exact'"):
        ResampledImage(wcs, (4, 4), variance_method="exact")
    with pytest.raises(ValueError, match="output_shape: .*"):
        ResampledImage(wcs, (0, 4))
    with pytest.raises(ValueError, match="interp: .*'cubic'"):
        blot(np.ones((4, 4)), wcs, wcs, (4, 4), interp="cubic")


def test_finalize_locks():
    """No exposure can be added after finalize, and finalize needs an exposure."""
    wcs = _shift_wcs((4, 4), 0, 0)
    resampler = ResampledImage(wcs, (4, 4))
    with pytest.raises(RuntimeError, match="no exposure"):
        resampler.finalize()
    resampler.add_exposure(_exposure(wcs, np.ones((4, 4))), pixmap=_identity(4, 4))
    resampler.finalize()
    with pytest.raises(RuntimeError, match="finalize"):
        resampler.add_exposure(_exposure(wcs, np.ones((4, 4))), pixmap=_identity(4, 4))
    with pytest.raises(ValueError, match="pixmap: shape"):
        ResampledImage(wcs, (4, 4)).add_exposure(
            _exposure(wcs, np.ones((4, 4))), pixmap=_identity(3, 4)
        )


# --------------------------------------------------------------------------
# per-exposure contributions + combiner == one drizzle of all exposures
# --------------------------------------------------------------------------
VAR_NAMES = ("var_rnoise", "var_poisson", "var_flat")


@pytest.fixture(scope="module")
def noisy_set():
    """Four dithered, rotated exposures with pixel-to-pixel variances, bad pixels and NaNs."""
    rng = np.random.default_rng(5)
    wcss = _dither_wcs() + [imaging_wcs(SHAPE, (RA0 - 2e-5, DEC0 + 3e-5), SCALE, 0.7)]
    exposures = []
    for k, wcs in enumerate(wcss):
        data = _gaussian_sb(wcs, SHAPE, 1000.0, 0.06, sub=1) + 0.5 + rng.normal(0, 0.01, SHAPE)
        exp = _exposure(wcs, data, exptime=100.0 * (k + 1))
        exp.var_rnoise = rng.uniform(0.5e-4, 2e-4, SHAPE).astype(np.float32)
        exp.var_poisson = rng.uniform(1e-4, 3e-4, SHAPE).astype(np.float32)
        exp.var_flat = rng.uniform(0, 1e-5, SHAPE).astype(np.float32)
        exp.dq[rng.integers(0, 128, 20), rng.integers(0, 128, 20)] = PIXEL["DO_NOT_USE"]
        exp.data[10 + k, 20] = np.nan
        exposures.append(exp)
    out_wcs, out_shape = output_wcs(wcss, [SHAPE] * 4)
    return exposures, out_wcs, out_shape


def _one_drizzle(exposures, out_wcs, out_shape, *, kernel, pixfrac, weight_type, method):
    """Reference: every exposure through ONE drizzle.Drizzle (the pre-split algorithm)."""
    driz = Drizzle(kernel=kernel, fillval="NAN", out_shape=out_shape,
                   out_img2=[None] * 3 if method == "squared_weights" else None, fillval2="NAN")
    vsum = {n: np.zeros(out_shape) for n in VAR_NAMES}
    vwht = {n: np.zeros(out_shape) for n in VAR_NAMES}
    for exp in exposures:
        sci, weight, kwargs = _drizzle_inputs(
            exp, out_wcs, sky_level=0.5, pixmap=None, grid_step=16, weight_type=weight_type,
            good_bits="~DO_NOT_USE+NON_SCIENCE", pixfrac=pixfrac)
        variances = [_clean_variance(getattr(exp, n), sci.shape, weight) for n in VAR_NAMES]
        if method == "squared_weights":
            driz.add_image(sci, data2=variances, **kwargs)
            continue
        driz.add_image(sci, **kwargs)
        resampled = {}
        for name, var in zip(VAR_NAMES, variances):
            single = Drizzle(kernel=kernel, fillval="NAN", out_shape=out_shape, disable_ctx=True)
            single.add_image(np.sqrt(var), **kwargs)
            resampled[name] = single.out_img.astype(np.float64) ** 2
        w = np.full(out_shape, kwargs["exptime"])
        if weight_type == "ivm":
            rn = resampled["var_rnoise"]
            w = np.where(np.isfinite(rn) & (rn > 0), 1.0 / rn, 1.0)
        for name, var in resampled.items():
            ok = np.isfinite(var) & (var >= 0)
            vsum[name][ok] += var[ok] * w[ok] ** 2
            vwht[name][ok] += w[ok]
    out = {"data": driz.out_img, "wht": driz.out_wht, "con": driz.out_ctx}
    for k, name in enumerate(VAR_NAMES):
        if method == "squared_weights":
            out[name] = np.where(driz.out_wht > 0, driz.out_img2[k], np.nan)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = np.where(vwht[name] > 0, vsum[name] / vwht[name] ** 2, np.nan)
    return out


@pytest.mark.filterwarnings("ignore:Kernel 'gaussian' is not a flux-conserving")
@pytest.mark.parametrize(
    ("kernel", "pixfrac", "weight_type", "method"),
    [
        ("square", 1.0, "ivm", "jwst"),
        ("square", 0.7, "exptime", "jwst"),
        ("turbo", 0.8, "ivm", "jwst"),
        ("gaussian", 1.0, "ivm", "jwst"),
        ("square", 1.0, "ivm", "squared_weights"),
    ],
)
def test_contributions_combine_to_one_drizzle(noisy_set, kernel, pixfrac, weight_type, method):
    """Per-exposure contributions, combined, equal one drizzle of all four exposures to 1e-5."""
    exposures, out_wcs, out_shape = noisy_set
    expected = _one_drizzle(exposures, out_wcs, out_shape, kernel=kernel, pixfrac=pixfrac,
                            weight_type=weight_type, method=method)
    combiner = MosaicCombiner(out_shape)
    for exp in exposures:
        combiner.add(drizzle_exposure(exp, out_wcs, out_shape, sky_level=0.5, kernel=kernel,
                                      pixfrac=pixfrac, weight_type=weight_type, variance_method=method))
    out = combiner.finalize()
    assert out["con"].dtype == np.int32 and set(np.unique(out["con"])) > {0, 1, 2, 4, 8}
    np.testing.assert_array_equal(out["con"], expected["con"])
    np.testing.assert_allclose(out["wht"], expected["wht"], rtol=1e-5)
    np.testing.assert_array_equal(np.isnan(out["data"]), np.isnan(expected["data"]))
    np.testing.assert_allclose(out["data"], expected["data"], rtol=1e-5, atol=1e-6, equal_nan=True)
    for name in VAR_NAMES:
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("method", ["jwst", "squared_weights"])
def test_combiner_threads_and_bands_do_not_change_the_mosaic(noisy_set, monkeypatch, method):
    """Adding in bands of 5 rows over 3 threads gives the mosaic of one pass, bit for bit."""
    import calimage3.resample as resample_module

    exposures, out_wcs, out_shape = noisy_set
    contributions = [drizzle_exposure(exp, out_wcs, out_shape, sky_level=0.5, variance_method=method)
                     for exp in exposures]
    results = []
    for rows, threads in ((10_000, 1), (5, 3)):
        monkeypatch.setattr(resample_module, "_ADD_ROWS", rows)
        combiner = MosaicCombiner(out_shape, threads=threads)
        for c in contributions:
            combiner.add(c)
        results.append(combiner.finalize())
    assert max(c.data.shape[0] for c in contributions) > 10  # several bands per contribution
    for name, array in results[0].items():
        np.testing.assert_array_equal(results[1][name], array)


def test_contribution_is_cut_to_the_exposure():
    """A 16x16 exposure on a 64x200 grid gives a ~26x26 cutout whatever the grid size."""
    wcs = _shift_wcs((16, 16), 0, 0)
    exp = _exposure(wcs, np.full((16, 16), 2.0))
    pixmap = _identity(16, 16, dx=100.0, dy=20.0)
    small = drizzle_exposure(exp, wcs, (64, 200), pixmap=pixmap)
    large = drizzle_exposure(exp, wcs, (640, 2000), pixmap=pixmap)
    assert small.bbox == large.bbox == (15, 41, 95, 121)
    assert small.data.shape == (26, 26) and small.data.dtype == np.float32
    np.testing.assert_array_equal(small.wht, large.wht)
    assert np.all(small.data[5:21, 5:21] == 2.0) and np.isnan(small.data[0, 0])
    assert np.all(small.con[5:21, 5:21]) and not small.con[0, 0]
    edge = drizzle_exposure(exp, wcs, (64, 200), pixmap=_identity(16, 16, dx=-8.0))
    assert edge.bbox == (0, 21, 0, 13)
    off = drizzle_exposure(exp, wcs, (64, 200), pixmap=_identity(16, 16, dx=500.0))
    assert off.bbox == (0, 0, 0, 0) and off.data.shape == (0, 0)
    # the pixel map is the caller's unless it hands it over: then it is shifted in place, same result
    assert np.array_equal(pixmap, _identity(16, 16, dx=100.0, dy=20.0))
    handed_over = drizzle_exposure(exp, wcs, (64, 200), pixmap=pixmap.copy(), overwrite_pixmap=True)
    assert handed_over.bbox == small.bbox
    for name in ("data", "wht", "con"):
        np.testing.assert_array_equal(getattr(handed_over, name), getattr(small, name))


def test_contribution_round_trips_through_arrays(noisy_set):
    """to_arrays/from_arrays keeps every array, the bbox and the settings."""
    exposures, out_wcs, out_shape = noisy_set
    contribution = drizzle_exposure(exposures[1], out_wcs, out_shape, sky_level=0.5)
    arrays, keywords = contribution.to_arrays()
    assert all(len(k) <= 8 for k in keywords) and arrays["con"].dtype == np.uint8
    back = ExposureContribution.from_arrays(arrays, keywords)
    assert back.bbox == contribution.bbox and back.exptime == 200.0
    assert (back.weight_type, back.variance_method) == ("ivm", "jwst")
    np.testing.assert_array_equal(back.con, contribution.con)
    for name in ("data", "wht", *VAR_NAMES):
        np.testing.assert_array_equal(getattr(back, name, None) if name in ("data", "wht")
                                      else back.variances[name], arrays[name])


def test_combiner_context_and_empty_contributions():
    """An exposure off the grid still takes its context bit; bits 31 and 32 land in planes 0 and 1."""
    wcs = _shift_wcs((4, 4), 0, 0)
    exp = _exposure(wcs, np.ones((4, 4)))
    combiner = MosaicCombiner((4, 4), fillval=-1.0)
    for k in range(33):
        dx = 0.0 if k in (0, 31, 32) else 100.0  # only exposures 0, 31 and 32 land on the grid
        combiner.add(drizzle_exposure(exp, wcs, (4, 4), pixmap=_identity(4, 4, dx=dx)))
    out = combiner.finalize()
    assert out["con"].shape == (2, 4, 4)
    assert out["con"][0].view(np.uint32)[2, 2] == (1 << 31) | 1 and out["con"][1, 2, 2] == 1
    assert out["data"][2, 2] == 1.0 and out["wht"][2, 2] == pytest.approx(3e4)


def test_combiner_bad_input():
    """Mixed weighting, a bbox off the grid and use after finalize are rejected."""
    wcs = _shift_wcs((4, 4), 0, 0)
    exp = _exposure(wcs, np.ones((4, 4)))
    combiner = MosaicCombiner((4, 4))
    with pytest.raises(RuntimeError, match="no exposure"):
        combiner.finalize()
    combiner.add(drizzle_exposure(exp, wcs, (4, 4), pixmap=_identity(4, 4)))
    with pytest.raises(ValueError, match="weight_type/variance_method 'exptime'"):
        combiner.add(drizzle_exposure(exp, wcs, (4, 4), pixmap=_identity(4, 4), weight_type="exptime"))
    with pytest.raises(ValueError, match="bbox"):
        combiner.add(drizzle_exposure(exp, wcs, (8, 8), pixmap=_identity(4, 4, dx=3.0)))
    combiner.finalize()
    with pytest.raises(RuntimeError, match="finalize"):
        combiner.add(drizzle_exposure(exp, wcs, (4, 4), pixmap=_identity(4, 4)))
    with pytest.raises(ValueError, match="variance_method: .*'exact'"):
        drizzle_exposure(exp, wcs, (4, 4), variance_method="exact")


def test_pixel_scale_ratio_from_subsampled_jacobian_matches_full_median():
    """The strided Jacobian median equals the every-pixel one on a distorted, rotated map."""
    from calimage3.resample import _pixel_scale_ratio

    ny, nx = 300, 400
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    u, v = (x - nx / 2) / nx, (y - ny / 2) / ny
    theta = np.deg2rad(20.0)
    xo = 0.62 * (np.cos(theta) * x - np.sin(theta) * y) + 3.0 * u**2 + 1.5 * u * v
    yo = 0.62 * (np.sin(theta) * x + np.cos(theta) * y) + 2.0 * v**3
    pixmap = np.dstack([xo, yo])
    det = np.abs(np.diff(xo, axis=1)[:-1] * np.diff(yo, axis=0)[:, :-1]
                 - np.diff(xo, axis=0)[:, :-1] * np.diff(yo, axis=1)[:-1])
    full = 1.0 / np.sqrt(np.median(det))
    assert _pixel_scale_ratio(pixmap) == pytest.approx(full, rel=1e-3)
    assert _pixel_scale_ratio(pixmap) == pytest.approx(1 / 0.62, rel=1e-2)
