"""Files exchanged with the JWST data models (stdatamodels): reading theirs, writing ours."""

import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

datamodels = pytest.importorskip("stdatamodels.jwst.datamodels")

from calimage3 import io  # noqa: E402
from calimage3.exposure import Exposure  # noqa: E402
from calimage3.wcs_tools import footprint, imaging_wcs  # noqa: E402

SHAPE = (40, 50)
PIXEL_SCALE = 0.031  # arcsec
# Pixels spread over the image where WCSs are compared, (x, y) zero-based.
GRID_X, GRID_Y = (a.ravel() for a in np.meshgrid(np.linspace(0, 49, 6), np.linspace(0, 39, 5)))


def _wcs():
    return imaging_wcs(SHAPE, (53.16, -27.79), PIXEL_SCALE, 20.0)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "data": rng.normal(0.3, 0.02, SHAPE).astype(np.float32),
        "err": np.full(SHAPE, 0.02, np.float32),
        "dq": rng.choice(np.array([0, 1, 4], np.uint32), SHAPE),
        "var_poisson": np.full(SHAPE, 3e-4, np.float32),
        "var_rnoise": np.full(SHAPE, 1e-4, np.float32),
        "var_flat": np.full(SHAPE, 1e-6, np.float32),
    }


def _max_sky_offset(wcs_a, wcs_b):
    """Largest difference in RA or Dec over ``GRID_X, GRID_Y``, degrees."""
    ra_a, dec_a = wcs_a(GRID_X, GRID_Y)
    ra_b, dec_b = wcs_b(GRID_X, GRID_Y)
    return max(np.max(np.abs(ra_a - ra_b)), np.max(np.abs(dec_a - dec_b)))


@pytest.fixture
def imagemodel_file(tmp_path):
    """A ``_cal`` written by stdatamodels' ImageModel (the layout of MAST files)."""
    model = datamodels.ImageModel(**_arrays())
    model.meta.wcs = _wcs()
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = "NRCB1"
    model.meta.instrument.filter = "F200W"
    model.meta.exposure.type = "NRC_IMAGE"
    model.meta.photometry.conversion_megajanskys = 0.45
    path = tmp_path / "jw01234001001_01101_00001_nrcb1_cal.fits"
    model.save(path)
    model.close()
    return path


@pytest.fixture
def no_stdatamodels(monkeypatch):
    """Make ``from stdatamodels.jwst import datamodels`` fail, as when it is not installed."""
    monkeypatch.setitem(sys.modules, "stdatamodels.jwst.datamodels", None)


def _open_strict(path):
    model = datamodels.open(path, strict_validation=True)
    model.validate()
    return model


def test_imagemodel_file_arrays_read(imagemodel_file):
    """Every array of a stdatamodels ImageModel file is read unchanged."""
    exposure = io.read_exposure(imagemodel_file)
    for name, array in _arrays().items():
        np.testing.assert_array_equal(getattr(exposure, name), array)
    assert exposure.meta["INSTRUME"] == "NIRCAM" and exposure.meta["PHOTMJSR"] == 0.45


def test_imagemodel_file_wcs_read_exactly(imagemodel_file):
    """The meta.wcs gwcs of an ImageModel file maps pixels to the same sky positions (<1e-10 deg)."""
    exposure = io.read_exposure(imagemodel_file)
    assert exposure.wcs_source == "asdf"
    assert _max_sky_offset(exposure.wcs, _wcs()) < 1e-10


def test_stdatamodels_reader_when_plain_asdf_gives_no_gwcs(imagemodel_file, monkeypatch):
    """When plain asdf gives no gwcs the stdatamodels ImageModel reader supplies it (<1e-10 deg)."""
    monkeypatch.setattr(io, "_gwcs_from_asdf_hdu", lambda hdul, path: None)
    exposure = io.read_exposure(imagemodel_file)
    assert exposure.wcs_source == "stdatamodels"
    assert _max_sky_offset(exposure.wcs, _wcs()) < 1e-10


def test_plain_asdf_reader_without_stdatamodels(imagemodel_file, no_stdatamodels):
    """Without stdatamodels the gwcs is still read with plain asdf + gwcs (<1e-10 deg)."""
    exposure = io.read_exposure(imagemodel_file)
    assert exposure.wcs_source == "asdf"
    assert _max_sky_offset(exposure.wcs, _wcs()) < 1e-10


def test_sip_fallback_without_any_gwcs_reader(tmp_path, monkeypatch, no_stdatamodels):
    """With neither asdf nor stdatamodels giving a gwcs, the SCI-header SIP WCS is used (<1e-7 deg)."""
    path = tmp_path / "jw01234001001_01101_00001_nrcb1_crf.fits"
    io.write_exposure(path, Exposure(wcs=_wcs(), meta={}, **_arrays()))
    monkeypatch.setattr(io, "_gwcs_from_asdf_hdu", lambda hdul, path: None)
    exposure = io.read_exposure(path)
    assert exposure.wcs_source == "sip"
    assert _max_sky_offset(exposure.wcs, _wcs()) < 1e-7  # 0.01 pixel SIP fit, ~9e-8 deg


@pytest.fixture
def crf_file(tmp_path):
    """A ``_crf`` written by `io.write_exposure` from synthetic arrays."""
    meta = {"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "DETECTOR": "NRCB1", "FILTER": "F200W",
            "PUPIL": "CLEAR", "EXP_TYPE": "NRC_IMAGE", "EFFEXPTM": 1000.0, "PHOTMJSR": 0.45,
            "PIXAR_SR": 2.26e-14, "PIXAR_A2": 0.000961, "S_TWKREG": "COMPLETE", "S_SKYMAT": "COMPLETE",
            "S_OUTLIR": "COMPLETE", "BKGLEVEL": 0.12, "BKGSUB": False}
    path = tmp_path / "jw01234001001_01101_00001_nrcb1_a3001_crf.fits"
    io.write_exposure(path, Exposure(wcs=_wcs(), meta=meta, area=np.ones(SHAPE, np.float32), **_arrays()))
    return path


def test_crf_opens_as_valid_imagemodel(crf_file):
    """Our _crf opens as an ImageModel that passes strict schema validation, arrays intact."""
    with _open_strict(crf_file) as model:
        assert type(model).__name__ == "ImageModel" and model.meta.model_type == "ImageModel"
        for name, array in _arrays().items():
            np.testing.assert_array_equal(getattr(model, name), array)
        assert model.meta.cal_step.outlier_detection == "COMPLETE"
        assert model.meta.background.level == 0.12
        assert _max_sky_offset(model.meta.wcs, _wcs()) < 1e-10


def test_strict_validation_catches_invalid_values(tmp_path):
    """A filter name outside the JWST schema fails strict validation (the check above is real)."""
    path = tmp_path / "bad_crf.fits"
    io.write_exposure(path, Exposure(wcs=_wcs(), meta={"INSTRUME": "NIRCAM", "FILTER": "F999W"}, **_arrays()))
    with pytest.raises(Exception, match="F999W"):
        _open_strict(path)


def test_step_status_outside_schema_is_mapped_or_left_out(tmp_path):
    """'FAILED: reason' is written as FAILED and an unknown status is left out, so the file validates."""
    path = tmp_path / "status_crf.fits"
    meta = {"S_TWKREG": "FAILED: too few matches", "S_SKYMAT": "DONE"}
    io.write_exposure(path, Exposure(wcs=_wcs(), meta=meta, **_arrays()))
    header = fits.getheader(path, 0)
    assert header["S_TWKREG"] == "FAILED" and "S_SKYMAT" not in header
    with _open_strict(path) as model:
        assert model.meta.cal_step.tweakreg == "FAILED"


@pytest.fixture
def i2d_file(tmp_path):
    """An ``_i2d`` written by `io.write_i2d` from synthetic mosaic arrays and a HDRTAB."""
    arrays = _arrays(seed=1)
    arrays.pop("dq")
    arrays["con"] = np.ones((1, *SHAPE), np.int32)
    arrays["wht"] = np.full(SHAPE, 5.0, np.float32)
    meta = {"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "FILTER": "F200W", "PUPIL": "CLEAR",
            "EXP_TYPE": "NRC_IMAGE", "EFFEXPTM": 2000.0, "DURATION": 2100.0, "EXPSTART": 60300.0,
            "EXPMID": 60300.01, "EXPEND": 60300.02, "PHOTMJSR": 0.45, "S_TWKREG": "COMPLETE",
            "S_SKYMAT": "COMPLETE", "S_OUTLIR": "COMPLETE", "S_RESAMP": "COMPLETE", "PIXFRAC": 1.0,
            "RESWHT": "ivm"}
    hdrtab = Table({"FILENAME": ["a_crf.fits", "b_crf.fits"], "EFFEXPTM": [1000.0, 1000.0]})
    path = tmp_path / "jw01234-o001_t001_nircam_clear-f200w_i2d.fits"
    io.write_i2d(path, arrays, _wcs(), meta, hdrtab=hdrtab)
    return path, arrays


def test_i2d_opens_as_valid_imagemodel(i2d_file):
    """Our _i2d opens as an ImageModel with SCI/ERR/CON/WHT/VAR_* that passes strict validation."""
    path, arrays = i2d_file
    with _open_strict(path) as model:
        assert type(model).__name__ == "ImageModel"
        for name, array in arrays.items():
            np.testing.assert_array_equal(getattr(model, name), array)
        assert model.con.shape == (1, *SHAPE)


def test_i2d_wcs_is_our_gwcs(i2d_file):
    """The i2d meta.wcs is a gwcs mapping pixels as ours does (<1e-10 deg)."""
    with _open_strict(i2d_file[0]) as model:
        assert type(model.meta.wcs).__name__ == "WCS"
        assert _max_sky_offset(model.meta.wcs, _wcs()) < 1e-10


def test_i2d_pixel_area_keywords(i2d_file):
    """PIXAR_A2 is the squared pixel scale and PIXAR_SR the same area in steradians."""
    with _open_strict(i2d_file[0]) as model:
        area_a2 = model.meta.photometry.pixelarea_arcsecsq
        area_sr = model.meta.photometry.pixelarea_steradians
    assert area_a2 == pytest.approx(PIXEL_SCALE**2, rel=1e-6)
    assert area_sr == pytest.approx(area_a2 * (np.pi / 180.0 / 3600.0) ** 2, rel=1e-12)


def test_i2d_s_region_is_the_footprint(i2d_file):
    """S_REGION is an ICRS polygon through the four outer pixel corners (<1e-8 deg)."""
    with _open_strict(i2d_file[0]) as model:
        s_region = model.meta.wcsinfo.s_region
    assert s_region.startswith("POLYGON ICRS")
    corners = np.array(s_region.split()[2:], float).reshape(4, 2)
    np.testing.assert_allclose(corners, footprint(_wcs(), SHAPE), atol=1e-8)


def test_i2d_status_units_and_exposure_time_keywords(i2d_file):
    """Step statuses, BUNIT of SCI and ERR, and the exposure times land on their schema paths."""
    with _open_strict(i2d_file[0]) as model:
        steps = model.meta.cal_step
        assert (steps.tweakreg, steps.skymatch, steps.outlier_detection, steps.resample) == ("COMPLETE",) * 4
        assert model.meta.bunit_data == "MJy/sr" and model.meta.bunit_err == "MJy/sr"
        assert model.meta.exposure.exposure_time == 2000.0
        assert model.meta.exposure.effective_exposure_time == 2000.0
        assert model.meta.exposure.duration == 2100.0
        assert model.meta.exposure.mid_time == 60300.01
        assert model.meta.photometry.conversion_megajanskys == 0.45


def test_i2d_hdrtab_lists_inputs(i2d_file):
    """The HDRTAB extension holds one row per input exposure."""
    table = Table.read(i2d_file[0], hdu="HDRTAB")
    assert list(table["FILENAME"]) == ["a_crf.fits", "b_crf.fits"]
    assert list(table["EFFEXPTM"]) == [1000.0, 1000.0]
