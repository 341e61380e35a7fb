"""calimage3.background: Background2D images by matrix products, equal to photutils'."""

import warnings

import numpy as np
import pytest
from photutils.background import Background2D

from calimage3 import background as cb
from calimage3.background import background_images


def _image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    data = 10.0 + 2e-3 * xx + 3.0 * np.sin(yy / 90.0) + rng.normal(0.0, 1.0, shape)
    for y, x in rng.uniform(0, 1, (5, 2)) * shape:  # a few stars
        data += 200.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0)
    return data.astype(dtype)


def _check(bkg, rtol=1e-10):
    if cb._BkgZoomInterpolator is not None:  # photutils 3: the fast path is used
        assert cb._fast_path_ok(bkg)
    background, rms = background_images(bkg)
    for fast, ref in ((background, bkg.background), (rms, bkg.background_rms)):
        ref = np.asarray(ref)
        assert fast.shape == ref.shape
        assert fast.dtype == ref.dtype
        # float32 images are rounded from float64 sums: allow one float32 step.
        tol = rtol if ref.dtype == np.float64 else max(rtol, np.finfo(ref.dtype).eps)
        scale = max(np.abs(ref).max(), 1.0)
        assert np.abs(fast.astype(float) - ref).max() <= tol * scale
    return background, rms


@pytest.mark.parametrize(
    "shape, box, dtype",
    [
        ((256, 256), (64, 64), np.float64),  # multiple of the box
        ((300, 257), (50, 40), np.float64),  # partial edge boxes, non-square box
        ((1000, 777), (33, 100), np.float64),
        ((130, 420), (130, 60), np.float64),  # a single mesh row
        ((300, 257), (50, 40), np.float32),
        ((512, 480), (64, 32), np.float32),
    ],
)
def test_matches_photutils(shape, box, dtype):
    _check(Background2D(_image(shape, dtype), box))


def test_coverage_mask_and_bad_pixels():
    data = _image((300, 257), np.float64, seed=1)
    coverage = np.zeros(data.shape, bool)
    coverage[:70, :90] = True
    mask = np.zeros(data.shape, bool)
    mask[200:220, 100:160] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg = Background2D(data, (50, 40), mask=mask, coverage_mask=coverage, fill_value=-3.0)
    background, rms = _check(bkg)
    assert np.all(background[coverage] == -3.0) and np.all(rms[coverage] == -3.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_constant_mesh(dtype):
    data = np.full((200, 150), 7.5, dtype=dtype)
    coverage = np.zeros(data.shape, bool)
    coverage[0, :10] = True
    bkg = Background2D(data, (40, 50), coverage_mask=coverage)
    background, rms = _check(bkg, rtol=0.0)
    assert np.all(background[~coverage] == 7.5) and np.all(rms == 0.0)


def test_one_box_for_the_whole_image():
    data = _image((120, 90), np.float64, seed=2)
    _check(Background2D(data, data.shape, exclude_percentile=100.0))


def test_fallback_for_other_interpolators(monkeypatch):
    interpolators = pytest.importorskip("photutils.background.interpolators")
    idw = getattr(interpolators, "BkgIDWInterpolator", None)
    if idw is None:
        pytest.skip("photutils has no BkgIDWInterpolator")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in photutils 3
        bkg = Background2D(_image((200, 180), np.float64), (40, 45), interpolator=idw())

    def fail(*args, **kwargs):
        raise AssertionError("the zoom operators must not be used for IDW")

    monkeypatch.setattr(cb, "_axis_operator", fail)
    background, rms = background_images(bkg)
    np.testing.assert_array_equal(background, bkg.background)
    np.testing.assert_array_equal(rms, bkg.background_rms)
