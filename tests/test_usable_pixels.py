"""Pixels outside the WCS bounding box or flagged NON_SCIENCE are never used nor flagged."""

import numpy as np
import pytest

from calimage3.dqflags import PIXEL
from calimage3.outlier_detection import flag_outliers, flag_outliers_unresampled
from calimage3.skymatch import SkyMatcher
from calimage3.usable import in_bounding_box, usable_pixel_mask
from calimage3.wcs_tools import imaging_wcs


def test_non_science_refused_whatever_good_bits():
    """NON_SCIENCE is unusable even when good_bits accept it; other bits follow good_bits."""
    dq = np.array([[0, PIXEL["NON_SCIENCE"], PIXEL["DO_NOT_USE"], PIXEL["SATURATED"]]], np.uint32)
    assert usable_pixel_mask(dq, good_bits="~DO_NOT_USE").tolist() == [[True, False, False, True]]
    assert usable_pixel_mask(dq, good_bits="~0").tolist() == [[True, False, True, True]]
    assert usable_pixel_mask(dq, good_bits=None).tolist() == [[True, False, True, True]]
    assert usable_pixel_mask(dq, good_bits=0).tolist() == [[True, False, False, False]]


def test_bounding_box_alone_suffices():
    """Pixels whose centres are outside the gwcs bounding box are unusable with no DQ flag at all."""
    wcs = imaging_wcs((6, 10), (10.0, 20.0), 0.1)
    wcs.bounding_box = ((2.5, 7.5), (-0.5, 4.5))
    usable = usable_pixel_mask(np.zeros((6, 10), np.uint32), wcs=wcs)
    expected = np.zeros((6, 10), bool)
    expected[0:5, 3:8] = True
    np.testing.assert_array_equal(usable, expected)
    np.testing.assert_array_equal(in_bounding_box((6, 10), (3, 7, 0, 4)), expected)
    with pytest.raises(ValueError, match="input_range"):
        in_bounding_box((6, 10), (7, 3, 0, 4))


def test_no_outlier_flag_outside_usable_pixels():
    """A bright structured region that is unusable (outside the box, or NON_SCIENCE) gets no OUTLIER flag."""
    rng = np.random.default_rng(2)
    shape = (40, 60)
    sci = rng.normal(0.0, 1.0, shape)
    blot = np.zeros(shape)
    sci[:, :15] += 200.0 + 50.0 * np.sin(np.arange(15) / 2.0)  # bright structured, in this exposure only
    sci[20, 40] += 100.0  # a cosmic ray in the science region
    dq = np.zeros(shape, np.uint32)
    dq[30:, 15:25] = PIXEL["NON_SCIENCE"]
    sci[30:, 15:25] += 300.0
    usable = usable_pixel_mask(dq, input_range=(15, 59, 0, 39))
    err = np.ones(shape)
    for mask in (flag_outliers(sci, err, blot, usable=usable, backg_boxsize=16, flux_box=5),
                 flag_outliers_unresampled(sci, err, blot, usable=usable, backg_boxsize=16)):
        assert not mask[~usable].any()
        assert mask[20, 40]
    assert flag_outliers(sci, err, blot)[:, :15].all()  # what JWST's test alone does there


def test_skymatch_ignores_signal_outside_the_bounding_box():
    """A bright unflagged region outside an image's bounding box does not enter its sky statistic."""
    wcs = imaging_wcs((20, 20), (10.0, 20.0), 0.1)
    wcs.bounding_box = ((4.5, 19.5), (-0.5, 19.5))
    data = np.full((20, 20), 1.0)
    data[:, :5] = 50.0
    matcher = SkyMatcher([wcs], [(20, 20)], skymethod="local", skystat="mean", nclip=0)
    matcher.add_image(0, data, dq=np.zeros((20, 20), np.uint32))
    assert matcher.evaluate().levels[0] == pytest.approx(1.0)
