"""The SCI header's WCS stands in for the gwcs only where it is exact."""

import numpy as np
import pytest

from calimage3.fits_wcs import exact_fits_wcs
from calimage3.wcs_tools import distortion_model, imaging_wcs, output_wcs, sip_header

SHAPE = (400, 500)


def _grid_points(shape, n=25):
    ny, nx = shape
    x, y = np.meshgrid(np.linspace(-0.5, nx - 0.5, n), np.linspace(-0.5, ny - 0.5, n))
    return x.ravel(), y.ravel()


@pytest.mark.parametrize("rotation", [0.0, 37.0, 181.0])
def test_mosaic_header_reproduces_the_gwcs(rotation):
    """A resample grid's header (pure TAN) maps pixels to the sky as its gwcs does, to 1e-6 pixel."""
    exposures = [imaging_wcs(SHAPE, (53.16 + 0.001 * i, -27.79), 0.031, rotation) for i in range(3)]
    grid, shape = output_wcs(exposures, [SHAPE] * 3)
    header = sip_header(grid, shape)
    fits_wcs = exact_fits_wcs(header)
    assert fits_wcs is not None
    x, y = _grid_points(shape)
    ra_g, dec_g = grid(x, y)
    ra_f, dec_f = fits_wcs.pixel_to_world_values(x, y)
    scale_deg = 0.031 / 3600
    sep = np.hypot((ra_f - ra_g) * np.cos(np.deg2rad(dec_g)), dec_f - dec_g)
    assert sep.max() < 1e-6 * scale_deg
    assert header["SIPMXERR"] < 1e-4


def test_distorted_wcs_keeps_the_gwcs():
    """With SIP terms (an exposure's distortion) the header is only an approximation: None."""
    distortion = distortion_model({"c2_0": 2e-5, "c0_2": -1.5e-5}, {"c1_1": 2e-5}, SHAPE)
    wcs = imaging_wcs(SHAPE, (53.16, -27.79), 0.031, 20.0, distortion=distortion)
    header = sip_header(wcs, SHAPE)
    assert "A_ORDER" in header
    assert exact_fits_wcs(header) is None


def test_header_without_recorded_error_or_too_coarse_is_not_trusted():
    header = sip_header(imaging_wcs(SHAPE, (10.0, 5.0), 0.031), SHAPE)
    assert exact_fits_wcs(header) is not None
    loose = header.copy()
    loose["SIPMXERR"] = 0.005  # a fit within 0.01 pixel, not exact
    assert exact_fits_wcs(loose) is None
    missing = header.copy()
    del missing["SIPMXERR"]
    assert exact_fits_wcs(missing) is None
    other = header.copy()
    other["CTYPE1"], other["CTYPE2"] = "RA---SIN", "DEC--SIN"
    assert exact_fits_wcs(other) is None
