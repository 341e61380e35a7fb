"""Tests of file reading and writing in the JWST layout."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from calimage3 import io
from calimage3.association import exposure_root, parse_association, single_exposure_association
from calimage3.exposure import Exposure
from calimage3.wcs_tools import imaging_wcs


def _exposure(shape=(64, 80)):
    rng = np.random.default_rng(0)
    data = rng.normal(0.2, 0.01, shape).astype(np.float32)
    return Exposure(
        data=data, err=np.full(shape, 0.01, np.float32), dq=np.zeros(shape, np.uint32),
        wcs=imaging_wcs(shape, (30.0, -5.0), 0.031, 10.0),
        meta={"EXPTIME": 100.0, "PHOTMJSR": 0.4, "PIXAR_SR": 2.26e-14, "TARGTYPE": "FIXED"},
        var_rnoise=np.full(shape, 1e-4, np.float32),
    )


def test_exposure_round_trip(tmp_path):
    """Arrays, metadata and the gwcs survive a write and read."""
    exp = _exposure()
    path = tmp_path / "jw00001001001_01101_00001_nrca1_cal.fits"
    io.write_exposure(path, exp)
    back = io.read_exposure(path)
    assert back.wcs_source == "asdf"
    np.testing.assert_array_equal(back.data, exp.data)
    np.testing.assert_array_equal(back.var_rnoise, exp.var_rnoise)
    assert back.meta["PHOTMJSR"] == 0.4 and back.meta["EXPTIME"] == 100.0
    ra, dec = back.wcs(10.0, 20.0)
    assert (ra, dec) == pytest.approx(exp.wcs(10.0, 20.0), abs=1e-12)


def test_rendered_wcs_is_written_as_the_wcs_itself(tmp_path):
    """A _crf written from a rendered WCS has the SCI keywords and gwcs of one written from the WCS."""
    exp = _exposure()
    direct, copied = tmp_path / "direct_crf.fits", tmp_path / "copied_crf.fits"
    io.write_exposure(direct, exp)
    io.write_rendered_wcs(tmp_path / "wcs.fits", exp.wcs, exp.shape, info={"S_TWKREG": "COMPLETE", "TWKDX": 0.25})
    rendered = io.read_rendered_wcs(tmp_path / "wcs.fits")
    assert rendered.info == {"S_TWKREG": "COMPLETE", "TWKDX": 0.25}
    exp.wcs = None  # not needed once rendered
    io.write_exposure(copied, exp, rendered_wcs=rendered)
    assert fits.getheader(copied, "SCI") == fits.getheader(direct, "SCI")
    assert "A_ORDER" in fits.getheader(copied, "SCI") or "CTYPE1" in fits.getheader(copied, "SCI")
    assert fits.getdata(copied, "ASDF").tobytes() == fits.getdata(direct, "ASDF").tobytes()
    back = io.read_exposure(copied)
    assert back.wcs_source == "asdf"
    assert back.wcs(10.0, 20.0) == pytest.approx(_exposure().wcs(10.0, 20.0), abs=1e-12)


def test_rendered_grid_wcs_gives_the_same_i2d(tmp_path):
    """An _i2d written from a rendered grid WCS (pixel area included) equals one written from the gwcs."""
    shape = (50, 60)
    wcs = imaging_wcs(shape, (30.0, -5.0), 0.031, 10.0)
    arrays = {"data": np.ones(shape, np.float32), "wht": np.ones(shape, np.float32),
              "con": np.ones((1,) + shape, np.int32)}
    meta = {"EFFEXPTM": 300.0, "TELESCOP": "JWST"}
    io.write_i2d(tmp_path / "direct_i2d.fits", arrays, wcs, meta)
    io.write_rendered_wcs(tmp_path / "grid.fits", wcs, shape, pixel_area=True)
    grid = io.read_rendered_wcs(tmp_path / "grid.fits")
    assert grid.shape == shape and grid.info == {}
    io.write_i2d(tmp_path / "copied_i2d.fits", arrays, None, meta, rendered_wcs=grid)
    direct, copied = (fits.getheader(tmp_path / f"{n}_i2d.fits", "SCI") for n in ("direct", "copied"))
    assert dict(copied) == dict(direct) and copied["PIXAR_SR"] > 0 and "S_REGION" in copied
    assert (fits.getdata(tmp_path / "copied_i2d.fits", "ASDF").tobytes()
            == fits.getdata(tmp_path / "direct_i2d.fits", "ASDF").tobytes())
    with pytest.raises(ValueError, match="differs from the mosaic"):
        io.write_i2d(tmp_path / "bad_i2d.fits", {"data": np.ones((5, 5), np.float32)}, None, meta, rendered_wcs=grid)
    assert not (tmp_path / "bad_i2d.fits").exists()


def test_segmentation_from_the_i2d_rendered_wcs(tmp_path):
    """The _segm written from the _i2d's own WCS keywords and ASDF bytes equals one written from the gwcs."""
    shape = (50, 60)
    wcs = imaging_wcs(shape, (30.0, -5.0), 0.031, 10.0)
    arrays = {"data": np.ones(shape, np.float32), "err": np.ones(shape, np.float32),
              "wht": np.ones(shape, np.float32), "con": np.ones((1,) + shape, np.int32)}
    io.write_i2d(tmp_path / "m_i2d.fits", arrays, wcs, {"EFFEXPTM": 300.0, "PHOTMJSR": 0.4})
    back, rendered, meta = io.read_i2d_rendered(tmp_path / "m_i2d.fits", arrays=("wht",))
    assert set(back) == {"data", "wht"} and meta["PHOTMJSR"] == 0.4
    assert not {"PHOTMJSR", "PIXAR_SR", "BUNIT", "NAXIS1"} & set(rendered.sci_keywords)
    segm = np.arange(np.prod(shape), dtype=np.int32).reshape(shape) % 7
    io.write_segmentation(tmp_path / "direct_segm.fits", segm, wcs, {"FILTER": "F200W"})
    io.write_segmentation(tmp_path / "copied_segm.fits", segm, None, {"FILTER": "F200W"}, rendered_wcs=rendered)
    direct, copied = (fits.getheader(tmp_path / f"{n}_segm.fits", "SCI") for n in ("direct", "copied"))
    assert copied == direct and "S_REGION" in copied and "SIPMXERR" in copied
    assert fits.getheader(tmp_path / "copied_segm.fits")["FILTER"] == "F200W"
    back_wcs, _, _ = io.read_exposure_wcs(tmp_path / "copied_segm.fits")
    assert back_wcs(10.0, 20.0) == pytest.approx(wcs(10.0, 20.0), abs=1e-12)
    with pytest.raises(ValueError, match="differs from the map"):
        io.write_segmentation(tmp_path / "bad_segm.fits", segm[:5], None, {}, rendered_wcs=rendered)
    assert not (tmp_path / "bad_segm.fits").exists()


def test_sip_fallback_when_asdf_missing(tmp_path, caplog):
    """Without an ASDF extension the SIP header WCS is used, and the log says so."""
    exp = _exposure()
    path = tmp_path / "a_cal.fits"
    io.write_exposure(path, exp)
    with fits.open(path) as hdul:
        del hdul["ASDF"]
        hdul.writeto(tmp_path / "b_cal.fits")
    with caplog.at_level("INFO"):
        back = io.read_exposure(tmp_path / "b_cal.fits")
    assert back.wcs_source == "sip"
    assert "SIP approximation" in caplog.text
    assert back.wcs(10.0, 20.0) == pytest.approx(exp.wcs(10.0, 20.0), abs=0.003 * 0.031 / 3600)


def test_sip_fallback_when_asdf_has_unknown_tags(tmp_path):
    """An ASDF block whose WCS this environment cannot deserialize falls back to SIP."""
    exp = _exposure()
    path = tmp_path / "a_cal.fits"
    io.write_exposure(path, exp)
    with fits.open(path) as hdul:
        hdul["ASDF"] = io._asdf_hdu({"meta": {"wcs": {"not": "a gwcs"}}})
        hdul.writeto(tmp_path / "c_cal.fits")
    assert io.read_exposure(tmp_path / "c_cal.fits").wcs_source == "sip"


def test_missing_file_is_named(tmp_path):
    """Reading a missing file names it."""
    with pytest.raises(io.InputFileError, match="nope_cal.fits: file does not exist"):
        io.read_exposure(tmp_path / "nope_cal.fits")


def test_corrupt_fits_is_named(tmp_path):
    """A file that is not FITS fails with its name and the reason."""
    path = tmp_path / "bad_cal.fits"
    path.write_bytes(b"SIMPLE  = garbage" * 10)
    with pytest.raises(io.InputFileError, match="bad_cal.fits: not a readable FITS file"):
        io.read_exposure(path)


def test_file_without_wcs_is_rejected(tmp_path):
    """A _cal with neither gwcs nor FITS WCS is an error naming the file."""
    path = tmp_path / "nowcs_cal.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((8, 8), np.float32), name="SCI"),
                  fits.ImageHDU(np.zeros((8, 8), np.float32), name="ERR")]).writeto(path)
    with pytest.raises(io.InputFileError, match="nowcs_cal.fits: no WCS"):
        io.read_exposure(path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    """A writer that fails leaves neither the product nor a temporary file."""
    target = tmp_path / "product.fits"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_parse_association_keeps_science_members(tmp_path):
    """Only science members are combined, with paths relative to the ASN folder."""
    content = {"asn_id": "a3001", "asn_type": "image3", "products": [{"name": "prod", "members": [
        {"expname": "jw1_nrca1_cal.fits", "exptype": "science"},
        {"expname": "jw2_nrca1_cal.fits", "exptype": "background"}]}]}
    asn = parse_association(content, base_dir=tmp_path)
    assert asn.roots == ["jw1_nrca1"]
    assert asn.members[0].path == tmp_path / "jw1_nrca1_cal.fits"


def test_association_without_science_members(tmp_path):
    """An ASN with no science members is rejected with the file named."""
    path = tmp_path / "x_asn.json"
    path.write_text(json.dumps({"asn_id": "a1", "products": [{"name": "p", "members": [
        {"expname": "a_cal.fits", "exptype": "background"}]}]}))
    with pytest.raises(io.InputFileError, match="x_asn.json: association has no science members"):
        io.read_association(path)


def test_single_exposure_product_name():
    """A lone _cal gives a product named after its exposure root."""
    asn = single_exposure_association("/data/jw01_nrcb1_cal.fits")
    assert asn.single and asn.product == "jw01_nrcb1"
    assert exposure_root("jw01_nrcb1_crf.fits") == "jw01_nrcb1"


def test_command_line_overrides_get_schema_types():
    """String leaves from --config step={...} become numbers, booleans and nulls per the schema."""
    import yaml

    from calimage3.config import coerce_types

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "schema.yaml").read_text())
    config = {"source_catalog": {"snr_threshold": "4.0", "deblend": "true"},
              "outlier_detection": {"snr": "6.0 4.5"}, "resample": {"rotation": "null"}}
    coerce_types(config, schema)
    assert config["source_catalog"] == {"snr_threshold": 4.0, "deblend": True}
    assert config["outlier_detection"]["snr"] == "6.0 4.5"
    assert config["resample"]["rotation"] is None


def test_provenance_keywords_and_summary():
    """Provenance records versions, a stable parameter hash and input checksums."""
    from calimage3.provenance import format_provenance, parameter_hash, provenance_keywords

    assert parameter_hash({"a": 1, "b": 2}) == parameter_hash({"b": 2, "a": 1})
    assert parameter_hash({"a": 1}) != parameter_hash({"a": 2})
    keywords = provenance_keywords("resample", {"pixfrac": 1.0}, [("x_crf.fits", "ab" * 32)])
    assert keywords["PRVSTEP"] == "resample" and keywords["PRVIN001"] == "x_crf.fits"
    text = format_provenance(keywords)
    assert "x_crf.fits  sha256 " + "ab" * 32 in text and '"pixfrac": 1.0' in text


def test_s_region_parsing():
    """S_REGION polygons parse with or without the frame word; anything else gives None."""
    from calimage3.io import parse_s_region

    np.testing.assert_array_equal(parse_s_region("POLYGON ICRS  1.5 -2.0 3 4 5 6 7 8"),
                                  [[1.5, -2.0], [3, 4], [5, 6], [7, 8]])
    assert parse_s_region("POLYGON 1 2 3 4 5 6").shape == (3, 2)
    for bad in (None, "", "CIRCLE ICRS 1 2 3", "POLYGON ICRS 1 2 3 4", "POLYGON ICRS 1 2 3 4 5 x"):
        assert parse_s_region(bad) is None


def test_footprint_from_s_region_matches_wcs_corners(tmp_path, small_dither):
    """The preflight footprint read from S_REGION is the WCS's corner footprint (to 1e-9 deg)."""
    from calimage3.wcs_tools import footprint

    path = small_dither["cal"][0]
    polygon, shape, meta = io.read_exposure_footprint(path)
    wcs, wshape, _ = io.read_exposure_wcs(path)
    assert shape == wshape and "S_REGION" in fits.getheader(path, "SCI")
    np.testing.assert_allclose(polygon, footprint(wcs, shape), atol=1e-9)
    # Without S_REGION the WCS is used
    stripped = tmp_path / path.name
    with fits.open(path) as hdul:
        del hdul["SCI"].header["S_REGION"]
        hdul.writeto(stripped)
    np.testing.assert_allclose(io.read_exposure_footprint(stripped)[0], polygon, atol=1e-9)


def test_image_sections_read_rows_on_demand(tmp_path):
    """open_image_sections: slices read just those rows, native-endian; whole-image reads work too."""
    data = np.arange(60 * 7, dtype=np.float32).reshape(60, 7)
    io.write_image(tmp_path / "img.fits", {"SCI": data, "WHT": np.ones_like(data)})
    with io.open_image_sections(tmp_path / "img.fits", ("SCI", "WHT")) as views:
        sci = views["SCI"]
        assert sci.shape == (60, 7) and sci.dtype == np.float32 and sci.dtype.isnative
        band = sci[10:20]
        assert isinstance(band, np.ndarray) and band.dtype.isnative
        np.testing.assert_array_equal(band, data[10:20])
        np.testing.assert_array_equal(np.asarray(views["WHT"]), 1.0)
        assert np.shape(sci) == (60, 7)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int32])
def test_image_sections_read_column_ranges_whole_rows_at_a_time(tmp_path, monkeypatch, dtype):
    """A [rows, columns] section narrower than the image: the same values, read in bands of whole rows."""
    data = (np.arange(300 * 41) % 977).astype(dtype).reshape(300, 41)
    io.write_image(tmp_path / "img.fits", {"SCI": data})
    monkeypatch.setattr(io, "_SECTION_BAND_ROWS", 64)
    with io.open_image_sections(tmp_path / "img.fits", ("SCI",)) as views:
        sci = views["SCI"]
        reads = []
        real = type(sci._hdu.section).__getitem__
        monkeypatch.setattr(type(sci._hdu.section), "__getitem__",
                            lambda self, key: reads.append(key) or real(self, key))
        for key in [np.s_[10:290, 3:30], np.s_[:, 5:6], np.s_[0:300, 0:40], np.s_[-50:, -7:],
                    np.s_[100:100, 2:9], np.s_[250:400, 30:50]]:
            reads.clear()
            part = sci[key]
            assert part.dtype == np.dtype(dtype) and part.dtype.isnative and part.flags.c_contiguous
            np.testing.assert_array_equal(part, data[key])
            rows = len(range(*key[0].indices(300)))
            assert len(reads) == -(-rows // 64)  # one read per band of 64 rows, not one per row
        np.testing.assert_array_equal(sci[np.s_[5:9, 0:41]], data[5:9])  # full width: astropy's own read
        np.testing.assert_array_equal(sci[np.s_[5:9:2, 1:4]], data[5:9:2, 1:4])  # steps: astropy's own read
