"""Pixels outside the WCS bounding box or flagged NON_SCIENCE are never used nor flagged."""

import numpy as np
from astropy.io import fits
import pytest

from calimage3 import io
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


def _write_with_bbox(path, bbox):
    """A small exposure whose gwcs carries ``bbox`` (a gwcs bounding_box value)."""
    from calimage3.exposure import Exposure

    shape = (40, 50)
    wcs = imaging_wcs(shape, (10.0, 20.0), 0.031)
    wcs.bounding_box = bbox
    exposure = Exposure(data=np.zeros(shape, np.float32), err=np.ones(shape, np.float32),
                        dq=np.zeros(shape, np.uint32), wcs=wcs, meta={"BUNIT": "MJy/sr"}, name=path.name)
    io.write_exposure(path, exposure)
    return wcs, shape


@pytest.mark.parametrize("bbox", [((3.5, 44.5), (-0.5, 39.5)), ((-0.5, 49.5), (5.5, 30.2)), None])
def test_bounding_box_range_read_without_gwcs_equals_gwcs(tmp_path, bbox):
    """The detection jobs read the box from the ASDF YAML as plain data; it must be the gwcs' own."""
    from calimage3.pixmap import input_range

    path = tmp_path / "x_cal.fits"
    wcs, shape = _write_with_bbox(path, bbox)
    with fits.open(path) as hdul:
        edges = io._bounding_box_edges_from_asdf(io._asdf_extension_bytes(hdul))
    expected = input_range(shape, io.read_exposure_wcs(path)[0])
    if bbox is not None:
        assert edges == tuple(tuple(float(v) for v in pair) for pair in bbox)
        assert expected == input_range(shape, None, edges=bbox)
    assert io.read_bounding_box_range(path) == expected


def test_bounding_box_range_of_miri_read_without_gwcs(tmp_path):
    """MIRI's box (x 359.5-1027.5 of 1032 columns), as the simulator writes it."""
    from calimage3.pixmap import input_range
    from calimage3.simulate import miri_imaging_settings, simulate_dither

    sim = simulate_dither(tmp_path, miri_imaging_settings(n_exposures=1, seed=2))
    cal = sorted(tmp_path.glob("*_cal.fits"))[0]
    with fits.open(cal) as hdul:
        assert io._bounding_box_edges_from_asdf(io._asdf_extension_bytes(hdul)) is not None
    wcs, shape, _ = io.read_exposure_wcs(cal)
    assert io.read_bounding_box_range(cal) == input_range(shape, wcs)
    assert io.read_bounding_box_range(cal)[0] == 360


def test_bounding_box_in_an_unknown_form_falls_back_to_gwcs():
    raw = b"#ASDF 1.0.0\n%YAML 1.1\n--- !core/asdf-1.1.0\nwcs: !<tag:stsci.edu:gwcs/wcs-1.2.0>\n" \
          b"  steps:\n  - transform: !transform/shift-1.2.0\n      bounding_box: !transform/property/bounding_box-1.2.0\n" \
          b"        intervals: {a: [0, 1], b: [0, 1]}\n...\n"
    assert io._bounding_box_edges_from_asdf(raw) is None
    assert io._bounding_box_edges_from_asdf(raw.replace(b"a: [0, 1], b:", b"x0: [0, 1], x1:")) == ((0.0, 1.0), (0.0, 1.0))
    assert io._bounding_box_edges_from_asdf(b"no yaml here") is None
