"""Tests of assign_mtwcs."""

import numpy as np
import pytest

from calimage3.assign_mtwcs import assign_moving_target_wcs, is_moving_target
from calimage3.wcs_tools import imaging_wcs


def test_moving_target_lands_on_mean_position():
    """After assign_mtwcs the target's pixel in every exposure maps to the mean target position."""
    wcs = [imaging_wcs((100, 100), (20.0, 10.0), 0.05) for _ in range(3)]
    drift = np.array([0.0, 0.3, 0.6]) / 3600
    mt_ra, mt_dec = 20.0 + drift, 10.0 + drift
    target_pixels = [w.backward_transform(r, d) for w, r, d in zip(wcs, mt_ra, mt_dec)]
    corrected, avra, avdec = assign_moving_target_wcs(wcs, mt_ra, mt_dec)
    assert avra == pytest.approx(20.0 + 0.3 / 3600, abs=1e-9)
    for w, (x, y) in zip(corrected, target_pixels):
        ra, dec = w.forward_transform(x, y)
        assert ra == pytest.approx(avra, abs=1e-9) and dec == pytest.approx(avdec, abs=1e-9)


def test_fixed_target_is_not_moving():
    """Exposures of a fixed target are left alone."""
    assert not is_moving_target([{"TARGTYPE": "FIXED"}, {}])


def test_moving_target_needs_positions():
    """A moving-target exposure without MT_RA is a clear error."""
    with pytest.raises(ValueError, match="MT_RA/MT_DEC are missing"):
        is_moving_target([{"TARGTYPE": "MOVING", "FILENAME": "a_cal.fits"}])


def test_mixed_targets_rejected():
    """Mixing moving and fixed exposures is an error."""
    with pytest.raises(ValueError, match="mixes moving-target"):
        is_moving_target([{"TARGTYPE": "MOVING", "MT_RA": 1, "MT_DEC": 1}, {"TARGTYPE": "FIXED"}])
