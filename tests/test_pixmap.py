"""Coarse-grid pixel maps (calimage3.pixmap) against the full WCS evaluation."""

import numpy as np
import pytest

from calimage3 import io
from calimage3.exposure import Exposure
from calimage3.pixmap import coarse_pixel_map, expand_pixel_map, full_pixel_map, input_range, pixel_map_footprint
from calimage3.resample import blot, drizzle_single
from calimage3.wcs_tools import distortion_model, imaging_wcs, output_wcs

SHAPE = (1000, 1100)  # not a multiple of the grid step: the last interval is short


def _distorted_wcs(shape=SHAPE, rotation=30.0):
    """A NIRCam-like distortion: ~10 pixels at the corners, terms up to 5th order."""
    coeffs_x = {"c2_0": 2e-5, "c1_1": -1.5e-5, "c0_2": 8e-6, "c3_0": 1.5e-8, "c1_2": -1e-8, "c5_0": 3e-14}
    coeffs_y = {"c0_2": 1.8e-5, "c1_1": 1e-5, "c2_1": 1.2e-8, "c0_3": -9e-9, "c0_5": -2e-14}
    dist = distortion_model(coeffs_x, coeffs_y, shape, degree=5, inverse_degree=6)
    return imaging_wcs(shape, (53.1, -27.8), 0.031, rotation, distortion=dist)


@pytest.fixture(scope="module")
def maps():
    """A distorted exposure mapped onto a rotated grid of 0.7x its pixel size: full and gridded."""
    wcs = _distorted_wcs()
    grid, grid_shape = output_wcs([wcs], [SHAPE], pixel_scale_ratio=0.7, rotation=0.0)
    full = full_pixel_map(wcs, grid, SHAPE)
    return wcs, grid, grid_shape, full


def test_distortion_is_strong(maps):
    """The test distortion bends the map by pixels, so interpolation has something to get wrong."""
    wcs, grid, _, full = maps
    corner_shift = np.hypot(*(full[-1, -1] - full[0, 0]))
    undistorted = imaging_wcs(SHAPE, (53.1, -27.8), 0.031, 30.0)
    plain = full_pixel_map(undistorted, grid, SHAPE)
    assert np.nanmax(np.abs(plain - full)) > 3.0 and corner_shift > 1000


@pytest.mark.parametrize("step", [8, 16, 32])
def test_gridded_map_within_0p01_pixel_of_full_evaluation(maps, step):
    """Every pixel of the interpolated map is within 0.01 output pixel of the full evaluation."""
    wcs, grid, grid_shape, full = maps
    fast = expand_pixel_map(coarse_pixel_map(wcs, grid, SHAPE, step, output_shape=grid_shape))
    assert fast.shape == full.shape
    assert np.max(np.abs(fast - full)) < 0.01


def test_nodes_are_reproduced_exactly_and_cubics_interpolated_exactly():
    """Lagrange interpolation returns node values and is exact for cubic polynomials."""

    class Cubic:  # a "WCS" pair whose composition is a cubic in x and y
        bounding_box = None

        def forward_transform(self, x, y):
            return x, y

        def backward_transform(self, x, y):
            return 0.5 * x + 1e-4 * x**2 - 1e-7 * x**3 + 0.3 * y, 2.0 * y - 1e-6 * y**3 + 1e-5 * x * y

    shape = (70, 45)
    coarse = coarse_pixel_map(Cubic(), Cubic(), shape, grid_step=16)
    assert list(coarse.nodes_x) == [0, 16, 32, 44] and list(coarse.nodes_y) == [0, 16, 32, 48, 64, 69]
    fast = expand_pixel_map(coarse)
    y, x = np.indices(shape, dtype=float)
    xo, yo = Cubic().backward_transform(x, y)
    np.testing.assert_allclose(fast[..., 0], xo, atol=1e-9)
    np.testing.assert_allclose(fast[..., 1], yo, atol=1e-9)


def test_undefined_nodes_blank_only_their_neighbourhood():
    """A node where the WCS is undefined (NaN) blanks only pixels whose stencil uses it."""

    class Identity:
        bounding_box = None

        def forward_transform(self, x, y):
            return x, y

        def backward_transform(self, x, y):
            x = np.where((x == 128) & (y == 96), np.nan, x)
            return x, y

    shape = (200, 240)
    fast = expand_pixel_map(coarse_pixel_map(Identity(), Identity(), shape, grid_step=16))
    blank = np.isnan(fast[..., 0])
    # 4-node stencils use the bad node for pixels within the two grid
    # intervals on either side of it, x in (96, 160) and y in (64, 128),
    # except on the other nodes' own rows and columns (where it weighs 0).
    rows = np.array([r for r in range(65, 128) if r not in (80, 112)])
    cols = np.array([c for c in range(97, 160) if c not in (112, 144)])
    expected = np.zeros(shape, bool)
    expected[np.ix_(rows, cols)] = True
    np.testing.assert_array_equal(blank, expected)
    y, x = np.indices(shape)
    np.testing.assert_allclose(fast[..., 0][~blank], x[~blank], atol=1e-9)
    assert not np.isnan(fast[..., 1]).any()


def test_input_range_follows_bounding_box():
    """Drizzle's input range is the pixels whose centres are inside the WCS bounding box, edges included."""
    wcs = imaging_wcs((50, 60), (10.0, 20.0), 0.1)
    assert input_range((50, 60), wcs) == (0, 59, 0, 49)
    wcs.bounding_box = ((4.5, 50.2), (-0.5, 30.7))
    assert input_range((50, 60), wcs) == (5, 50, 0, 30)
    wcs.bounding_box = ((4.0, 47.5), (2.5, 40.0))  # MIRI-like half-pixel edges: pixel 48 is outside
    assert input_range((50, 60), wcs) == (4, 47, 3, 40)
    assert input_range((50, 60), None) == (0, 59, 0, 49)


def test_pixel_map_file_round_trip(tmp_path, maps):
    """write_pixel_map/read_pixel_map keep nodes, shapes and input range exactly."""
    wcs, grid, grid_shape, _ = maps
    coarse = coarse_pixel_map(wcs, grid, SHAPE, 16, output_shape=grid_shape)
    io.write_pixel_map(tmp_path / "pixmap.fits", coarse)
    back = io.read_pixel_map(tmp_path / "pixmap.fits")
    assert back.shape == SHAPE and back.output_shape == grid_shape
    assert back.input_range == coarse.input_range
    np.testing.assert_array_equal(back.x_out, coarse.x_out)
    np.testing.assert_array_equal(back.nodes_y, coarse.nodes_y)
    with pytest.raises(io.InputFileError, match="missing.fits"):
        io.read_pixel_map(tmp_path / "missing.fits")


def test_drizzle_from_stored_map_equals_drizzle_from_wcs(tmp_path):
    """A per-exposure job drizzling through the stored map gets what the WCS route gives."""
    shape = (200, 240)
    wcs = _distorted_wcs(shape)
    grid, grid_shape = output_wcs([wcs], [shape], rotation=0.0)
    rng = np.random.default_rng(3)
    exposure = Exposure(data=rng.normal(1.0, 0.1, shape).astype(np.float32),
                        err=np.full(shape, 0.1, np.float32), dq=np.zeros(shape, np.uint32), wcs=wcs,
                        meta={"EFFEXPTM": 100.0})
    from_wcs, wht_wcs = drizzle_single(exposure, grid, grid_shape, grid_step=16)
    io.write_pixel_map(tmp_path / "p.fits", coarse_pixel_map(wcs, grid, shape, 16, output_shape=grid_shape))
    coarse = io.read_pixel_map(tmp_path / "p.fits")
    exposure.wcs = None  # the job never has the WCS
    from_map, wht_map = drizzle_single(exposure, None, coarse.output_shape, pixmap=expand_pixel_map(coarse),
                                       input_range=coarse.input_range)
    np.testing.assert_array_equal(np.isnan(from_map), np.isnan(from_wcs))
    np.testing.assert_allclose(from_map, from_wcs, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(wht_map, wht_wcs, rtol=1e-5)


def test_blot_of_the_footprint_equals_blot_of_the_whole_image():
    """Blotting only the part of a large image a distorted exposure falls on, through the pixel map shifted
    onto that part, gives the blot of the whole image (the shift is exact; drizzle's blot rounds the
    positions to float32, so the values agree to that precision)."""
    rng = np.random.default_rng(5)
    exposure_wcs = _distorted_wcs((64, 80))
    grid_wcs = imaging_wcs((300, 260), (53.1, -27.8), 0.031, 10.0)
    image = rng.normal(1.0, 0.3, (300, 260)).astype(np.float32)
    pixmap = full_pixel_map(exposure_wcs, grid_wcs, (64, 80))
    pixmap[3, 4] = np.nan  # an undefined position stays undefined
    y0, y1, x0, x1 = pixel_map_footprint(pixmap, image.shape)
    assert 0 < y0 and y1 < 300 and 0 < x0 and x1 < 260  # a part of the image, not all of it
    inside = pixmap[np.isfinite(pixmap[..., 0])]
    assert inside[:, 0].min() - x0 >= 8 and x1 - inside[:, 0].max() >= 8
    whole = blot(image, None, None, (64, 80), pixmap=pixmap)
    shifted = pixmap - np.array([x0, y0], dtype=np.float64)
    part = blot(image[y0:y1, x0:x1], None, None, (64, 80), pixmap=shifted, overwrite_pixmap=True)
    np.testing.assert_allclose(part, whole, rtol=1e-4, atol=0)
    assert np.array_equal(np.isnan(part), np.isnan(whole)) and np.array_equal(part == 0, whole == 0)
    assert (shifted[3, 4] == -1.0).all()  # the handed-over map was edited in place
    # off the image entirely, or nothing defined: the whole image
    assert pixel_map_footprint(pixmap + 1000.0, image.shape) == (0, 300, 0, 260)
    assert pixel_map_footprint(np.full((4, 4, 2), np.nan), image.shape) == (0, 300, 0, 260)
    # near an edge the box is clipped to the image
    at_left_edge = pixmap - np.array([np.nanmin(pixmap[..., 0]), 0.0])
    width = np.nanmax(at_left_edge[..., 0])
    assert pixel_map_footprint(at_left_edge, image.shape)[2:] == (0, int(np.ceil(width)) + 8 + 1)
