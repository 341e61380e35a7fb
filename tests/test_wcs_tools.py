"""Tests of WCS construction, correction and geometry."""

import numpy as np
import pytest

from calimage3.wcs_tools import (
    distortion_model,
    footprint,
    imaging_wcs,
    local_pixel_scale,
    output_wcs,
    pixel_map,
    polygon_overlap_area,
    sip_header,
    tangent_plane_correction,
    to_tangent_plane,
)

SHAPE = (400, 300)


def _wcs(rotation=25.0, crval=(150.1, 2.2)):
    dist = distortion_model({"c2_0": 4e-6, "c1_1": -2e-6, "c3_0": 5e-9}, {"c0_2": 3e-6, "c2_1": 4e-9}, SHAPE)
    return imaging_wcs(SHAPE, crval, 0.031, rotation, distortion=dist)


def test_distortion_inverse_round_trips():
    """The fitted inverse distortion undoes the forward model to < 1e-3 pixel."""
    wcs = _wcs()
    x, y = np.meshgrid(np.linspace(0, 299, 7), np.linspace(0, 399, 9))
    xb, yb = wcs.backward_transform(*wcs.forward_transform(x, y))
    assert np.max(np.hypot(xb - x, yb - y)) < 1e-3


def test_pixel_scale_and_orientation():
    """The WCS has the requested scale and the +y axis at the requested position angle."""
    wcs = imaging_wcs(SHAPE, (10.0, -30.0), 0.05, rotation=40.0)
    assert local_pixel_scale(wcs, 149.5, 199.5) * 3600 == pytest.approx(0.05, rel=1e-6)
    ra, dec = wcs.forward_transform(np.array([149.5, 149.5]), np.array([199.5, 209.5]))
    xi, eta = to_tangent_plane(ra, dec, ra[0], dec[0])
    assert np.rad2deg(np.arctan2(xi[1] - xi[0], eta[1] - eta[0])) == pytest.approx(40.0, abs=1e-6)


def test_tangent_plane_shift_moves_sky_positions():
    """A pure shift in the tangent plane moves every pixel by that many degrees."""
    wcs = _wcs()
    ra0, dec0 = wcs.forward_transform(150.0, 200.0)
    shifted = tangent_plane_correction(wcs, ra0, dec0, np.eye(2), [1.0 / 3600, -2.0 / 3600])
    ra1, dec1 = shifted.forward_transform(150.0, 200.0)
    xi, eta = to_tangent_plane(ra1, dec1, ra0, dec0)
    assert xi * 3600 == pytest.approx(1.0, abs=1e-9)
    assert eta * 3600 == pytest.approx(-2.0, abs=1e-9)
    x, y = shifted.backward_transform(ra1, dec1)
    assert (x, y) == pytest.approx((150.0, 200.0), abs=1e-4)


def test_overlap_area_of_identical_and_disjoint_footprints():
    """Identical footprints overlap fully; far-apart ones not at all."""
    a = footprint(_wcs(), SHAPE)
    area = (300 * 0.031 / 3600) * (400 * 0.031 / 3600)
    assert polygon_overlap_area(a, a) == pytest.approx(area, rel=2e-3)
    b = footprint(_wcs(crval=(150.2, 2.2)), SHAPE)
    assert polygon_overlap_area(a, b) == 0.0


def test_output_wcs_covers_inputs():
    """The default output grid contains every input corner and keeps the input scale."""
    w1, w2 = _wcs(), _wcs(crval=(150.1 + 3.0 / 3600, 2.2 + 2.0 / 3600))
    out, shape = output_wcs([w1, w2], [SHAPE, SHAPE])
    for w in (w1, w2):
        corners = footprint(w, SHAPE)
        x, y = out.backward_transform(corners[:, 0], corners[:, 1])
        assert np.all(x > -1.0) and np.all(x < shape[1]) and np.all(y > -1.0) and np.all(y < shape[0])
    assert local_pixel_scale(out, 0, 0) * 3600 == pytest.approx(0.031, rel=2e-3)


def test_output_wcs_user_scale_and_shape():
    """pixel_scale and output_shape (nx, ny) are obeyed."""
    out, shape = output_wcs([_wcs()], [SHAPE], pixel_scale=0.05, rotation=0.0, output_shape=(120, 80))
    assert shape == (80, 120)
    assert local_pixel_scale(out, 60, 40) * 3600 == pytest.approx(0.05, rel=1e-6)


def test_gridded_pixel_map_matches_full_evaluation():
    """The interpolated pixel map agrees with the full one to better than 0.01 pixel."""
    w1 = _wcs()
    out, shape = output_wcs([w1], [SHAPE], rotation=0.0)
    full = pixel_map(w1, out, SHAPE)
    fast = pixel_map(w1, out, SHAPE, grid_step=16)
    assert np.nanmax(np.abs(full - fast)) < 0.01


def test_sip_header_reproduces_gwcs():
    """The SIP approximation in the SCI header is within 0.01 pixel of the gwcs."""
    from astropy.wcs import WCS

    wcs = _wcs()
    fw = WCS(sip_header(wcs, SHAPE))
    x, y = np.meshgrid(np.linspace(0, 299, 5), np.linspace(0, 399, 5))
    ra, dec = wcs.forward_transform(x, y)
    xs, ys = fw.all_world2pix(ra, dec, 0)
    assert np.max(np.hypot(xs - x, ys - y)) < 0.01


def test_tangent_plane_matches_astropy_tan_projection():
    """The closed-form gnomonic projection equals astropy's TAN models, near the poles and RA 0 too."""
    from astropy.modeling import models

    from calimage3.sky_geometry import from_tangent_plane, to_tangent_plane

    rng = np.random.default_rng(3)
    xi, eta = rng.uniform(-0.5, 0.5, (2, 200))
    for ref in ((30.0, -5.0), (359.9, 89.5), (0.01, -89.9), (180.0, 0.0)):
        to_plane = models.RotateCelestial2Native(*ref, 180.0) | models.Sky2Pix_TAN()
        from_plane = models.Pix2Sky_TAN() | models.RotateNative2Celestial(*ref, 180.0)
        ra, dec = from_plane(xi, eta)
        ra_ours, dec_ours = from_tangent_plane(xi, eta, *ref)
        np.testing.assert_allclose(((ra_ours - ra + 180) % 360 - 180) * np.cos(np.deg2rad(dec)), 0, atol=1e-12)
        np.testing.assert_allclose(dec_ours, dec, atol=1e-12)
        np.testing.assert_allclose(np.stack(to_tangent_plane(ra, dec, *ref)), np.stack(to_plane(ra, dec)), atol=1e-12)
    assert np.isnan(to_tangent_plane(210.0, 0.0, 30.0, 0.0)[0])  # the far side has no projection


def test_footprint_follows_the_bounding_box():
    """A bounding box narrower than the array (MIRI's imager) sets the footprint corners, clipped to the array."""
    from calimage3.wcs_tools import footprint

    shape = (50, 60)
    wcs = imaging_wcs(shape, (10.0, 20.0), 0.1)
    full = footprint(wcs, shape)
    np.testing.assert_allclose(full, np.column_stack(wcs.forward_transform([-0.5, 59.5, 59.5, -0.5],
                                                                           [-0.5, -0.5, 49.5, 49.5])))
    wcs.bounding_box = ((19.5, 80.0), (-0.5, 49.5))
    narrow = footprint(wcs, shape)
    np.testing.assert_allclose(narrow, np.column_stack(wcs.forward_transform([19.5, 59.5, 59.5, 19.5],
                                                                             [-0.5, -0.5, 49.5, 49.5])))
