"""APCORR and ABVEGAOFFSET reference files: reading (real formats) and jwst's row selection."""

import os

import asdf
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from calimage3 import io
from calimage3.reference_data import (
    apcorr_aperture_params,
    catalog_reference_params,
    select_abvega_offset,
    select_apcorr_rows,
)

NIRCAM = {"INSTRUME": "NIRCAM", "FILTER": "F090W", "PUPIL": "CLEAR", "DETECTOR": "NRCB1", "PXSCLRT": 0.5}


def _nircam_apcorr(path):
    """A NIRCam-format APCORR file (FITS, APCORR binary table, ascii filter/pupil) with two filters."""
    rows = []
    for filt, scale in (("F090W", 1.0), ("F200W", 1.6)):
        for ee, r, corr in ((0.1, 0.4, 9.5), (0.3, 0.8, 3.2), (0.5, 1.1, 1.9), (0.7, 1.8, 1.35), (0.8, 2.9, 1.2)):
            rows.append((filt, "CLEAR", ee, r * scale, corr, 9.0 * scale, 14.0 * scale))
    rows.append(("F090W", "MASKBAR", 0.5, 7.0, 7.0, 1.0, 2.0))
    cols = [
        fits.Column("filter", "12A", array=[r[0] for r in rows]),
        fits.Column("pupil", "15A", array=[r[1] for r in rows]),
        *[fits.Column(name, "E", array=np.array([r[k] for r in rows], np.float32))
          for k, name in enumerate(("eefraction", "radius", "apcorr", "skyin", "skyout"), start=2)],
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name="APCORR")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def _abvegaoffset(path, rows, names=("filter", "pupil", "abvega_offset")):
    """An ABVEGAOFFSET-format file: ASDF with an ``abvega_offset`` table."""
    asdf.AsdfFile({"abvega_offset": Table(rows=rows, names=names)}).write_to(path)
    return path


def test_read_apcorr_fits_table(tmp_path):
    """The APCORR binary table comes back with its columns, strings stripped."""
    table = io.read_apcorr(_nircam_apcorr(tmp_path / "apcorr.fits"))
    assert table.colnames == ["filter", "pupil", "eefraction", "radius", "apcorr", "skyin", "skyout"]
    assert len(table) == 11 and set(table["pupil"]) == {"CLEAR", "MASKBAR"}


def test_nircam_rows_by_filter_and_pupil_scaled_by_pixel_scale_ratio(tmp_path):
    """F090W/CLEAR rows give radii and sky annulus divided by PXSCLRT, corrections as tabulated."""
    rows = select_apcorr_rows(io.read_apcorr(_nircam_apcorr(tmp_path / "apcorr.fits")), NIRCAM)
    assert len(rows) == 5
    radii, corr, skyin, skyout, note = apcorr_aperture_params(rows, [30, 50, 70], pixel_scale_ratio=0.5)
    np.testing.assert_allclose(radii, [1.6, 2.2, 3.6], rtol=1e-6)
    np.testing.assert_allclose(corr, [3.2, 1.9, 1.35], rtol=1e-6)
    assert (skyin, skyout) == pytest.approx((18.0, 28.0)) and note == ""


def test_energy_between_rows_is_interpolated(tmp_path):
    """aperture_ee 40 lies halfway between the 30 and 50 rows; 95 is outside the table."""
    rows = select_apcorr_rows(io.read_apcorr(_nircam_apcorr(tmp_path / "apcorr.fits")), NIRCAM)
    radii, corr, _, _, note = apcorr_aperture_params(rows, [30, 40, 70])
    assert radii[1] == pytest.approx(0.95, rel=1e-5) and corr[1] == pytest.approx(2.55, rel=1e-5)
    assert "40" in note
    with pytest.raises(ValueError, match="outside the APCORR table"):
        apcorr_aperture_params(rows, [30, 50, 95])


def test_miri_rows_by_filter_and_subarray():
    """MIRI selects by filter and subarray, not pupil."""
    table = Table(rows=[("F770W", "FULL", 0.5, 2.0, 2.1, 10.0, 15.0),
                        ("F770W", "SUB256", 0.5, 2.5, 2.2, 10.0, 15.0)],
                  names=("filter", "subarray", "eefraction", "radius", "apcorr", "skyin", "skyout"))
    rows = select_apcorr_rows(table, {"INSTRUME": "MIRI", "FILTER": "F770W", "SUBARRAY": "SUB256"})
    assert len(rows) == 1 and rows["radius"][0] == 2.5


def test_missing_configuration_is_an_error(tmp_path):
    """No APCORR row for the mosaic's filter names the selector."""
    table = io.read_apcorr(_nircam_apcorr(tmp_path / "apcorr.fits"))
    with pytest.raises(ValueError, match="no rows for .*F444W"):
        select_apcorr_rows(table, {**NIRCAM, "FILTER": "F444W"})


def test_abvegaoffset_asdf_by_filter_and_pupil(tmp_path):
    """The ABVEGAOFFSET row of F200W/CLEAR; FGS selects by detector; two matches are an error."""
    path = _abvegaoffset(tmp_path / "abvega.asdf", [("F090W", "CLEAR", 0.51), ("F200W", "CLEAR", 1.69),
                                                    ("F200W", "F187N", 9.0)])
    table = io.read_abvegaoffset(path)
    assert select_abvega_offset(table, {**NIRCAM, "FILTER": "F200W"}) == pytest.approx(1.69)
    fgs = Table(rows=[("GUIDER1", 0.1), ("GUIDER2", 0.2)], names=("detector", "abvega_offset"))
    assert select_abvega_offset(fgs, {"INSTRUME": "FGS", "DETECTOR": "GUIDER2"}) == 0.2
    dup = Table(rows=[("F090W", "CLEAR", 0.5), ("F090W", "CLEAR", 0.6)], names=table.colnames)
    with pytest.raises(ValueError, match="2 rows"):
        select_abvega_offset(dup, NIRCAM)


def test_reference_file_takes_precedence_over_abvega_offset(tmp_path):
    """catalog_reference_params: the file's offset replaces the number; APCORR rows and ratio pass on."""
    apcorr = io.read_apcorr(_nircam_apcorr(tmp_path / "apcorr.fits"))
    abvega = io.read_abvegaoffset(_abvegaoffset(tmp_path / "v.asdf", [("F090W", "CLEAR", 0.51)]))
    out = catalog_reference_params(NIRCAM, apcorr=apcorr, abvegaoffset=abvega, apcorr_name="a.fits",
                                   abvegaoffset_name="v.asdf", abvega_offset=2.0)
    assert out["abvega_offset"] == pytest.approx(0.51) and "v.asdf" in out["abvega_source"]
    assert out["pixel_scale_ratio"] == 0.5 and len(out["apcorr_table"]) == 5
    assert "a.fits" in out["apcorr_source"] and "pupil=CLEAR" in out["apcorr_source"]
    assert catalog_reference_params(NIRCAM, abvega_offset=2.0)["abvega_offset"] == 2.0


def test_unreadable_reference_file_names_the_file(tmp_path):
    """A file that is neither FITS nor ASDF is an InputFileError naming it."""
    bad = tmp_path / "junk.fits"
    bad.write_text("not a reference file")
    with pytest.raises(io.InputFileError, match="junk.fits"):
        io.read_apcorr(bad)


def _catalog_job():
    """scripts/source_catalog.py as a module (its plain function, without Snakemake)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "source_catalog_job", Path(__file__).parents[1] / "scripts" / "source_catalog.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def _two_star_i2d(path):
    """A small NIRCam F090W/CLEAR mosaic with two stars."""
    from calimage3.wcs_tools import imaging_wcs

    rng = np.random.default_rng(3)
    yy, xx = np.indices((128, 128))
    data = 0.2 + rng.normal(0, 0.01, (128, 128))
    for x, y in ((40.3, 50.1), (90.7, 80.4)):
        data += 30.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2))
    io.write_i2d(path, {"data": data.astype(np.float32), "err": np.full((128, 128), 0.01, np.float32),
                        "wht": np.ones((128, 128), np.float32)},
                 imaging_wcs((128, 128), (53.16, -27.78), 0.031),
                 {**NIRCAM, "TELESCOP": "JWST", "EXP_TYPE": "NRC_IMAGE"})
    return path


def test_catalog_job_uses_apcorr_and_abvegaoffset_files(tmp_path):
    """The catalog job takes radii, corrections and Vega offset from the files and says so in the meta."""
    job = _catalog_job()
    i2d = _two_star_i2d(tmp_path / "m_i2d.fits")
    apcorr = _nircam_apcorr(tmp_path / "apcorr.fits")
    abvega = _abvegaoffset(tmp_path / "abvega.asdf", [("F090W", "CLEAR", 0.51)])
    cat_path, segm_path = tmp_path / "m_cat.ecsv", tmp_path / "m_segm.fits"
    job.source_catalog(i2d, cat_path, segm_path, override_apcorr=str(apcorr), override_abvegaoffset=str(abvega),
                       npixels=5, abvega_offset=None)
    cat = io.read_table(cat_path)
    params = cat.meta["aperture_params"]
    assert params["method"] == "apcorr_table" and "apcorr.fits" in cat.meta["apcorr_source"]
    np.testing.assert_allclose(params["aperture_radii"], [1.6, 2.2, 3.6], rtol=1e-6)  # PXSCLRT 0.5
    np.testing.assert_allclose(cat["aper_total_flux"].value, 1.35 * cat["aper70_flux"].value, rtol=1e-5)
    np.testing.assert_allclose(cat["aper70_vegamag"], cat["aper70_abmag"] - 0.51, rtol=1e-6)
    assert "abvega.asdf" in cat.meta["abvega_source"] and len(cat) == 2


def _crds_mapping(path, text):
    """Write a CRDS mapping and add its sha1sum as `crds sync` leaves it."""
    import subprocess
    import sys

    path.write_text(text)
    subprocess.run([sys.executable, "-m", "crds.refactoring.checksum", str(path)], check=True, capture_output=True,
                   env={**os.environ, "CRDS_MODE": "local", "CRDS_SERVER_URL": "https://crds-offline.invalid"})


def _local_crds_cache(root):
    """A local CRDS cache (as `crds sync` makes it) with NIRCam APCORR and ABVEGAOFFSET rules and files."""
    maps, refs, conf = root / "mappings" / "jwst", root / "references" / "jwst" / "nircam", root / "config" / "jwst"
    for folder in (maps, refs, conf):
        folder.mkdir(parents=True)
    header = "'derived_from' : 'calimage3 test', 'observatory' : 'JWST',"
    _crds_mapping(maps / "jwst_0001.pmap", f"header = {{{header} 'mapping' : 'PIPELINE', 'name' : 'jwst_0001.pmap', "
                  "'parkey' : ('META.INSTRUMENT.NAME',)}\nselector = {'NIRCAM' : 'jwst_nircam_0001.imap'}\n")
    _crds_mapping(maps / "jwst_nircam_0001.imap",
                  f"header = {{{header} 'instrument' : 'NIRCAM', 'mapping' : 'INSTRUMENT', "
                  "'name' : 'jwst_nircam_0001.imap', 'parkey' : ('REFTYPE',)}\n"
                  "selector = {'apcorr' : 'jwst_nircam_apcorr_0001.rmap', "
                  "'abvegaoffset' : 'jwst_nircam_abvegaoffset_0001.rmap'}\n")
    for reftype, name in (("apcorr", "jwst_nircam_apcorr_0042.fits"), ("abvegaoffset", "jwst_nircam_abvegaoffset_0007.asdf")):
        _crds_mapping(maps / f"jwst_nircam_{reftype}_0001.rmap",
                      f"header = {{{header} 'filekind' : '{reftype.upper()}', 'instrument' : 'NIRCAM', "
                      f"'mapping' : 'REFERENCE', 'name' : 'jwst_nircam_{reftype}_0001.rmap', "
                      "'parkey' : (('META.EXPOSURE.TYPE',),)}\n"
                      f"selector = Match({{'NRC_IMAGE' : '{name}'}})\n")
    (conf / "server_config").write_text(repr({
        "observatory": "jwst", "operational_context": "jwst_0001.pmap", "edit_context": "jwst_0001.pmap",
        "checked_context": "jwst_0001.pmap", "effective_mode": "local", "bad_files": "", "bad_files_list": [],
        "crds_version": {"str": "14"}, "download_metadata": {}, "reference_url": {}, "mapping_url": {},
        "force_remote_mode": False, "last_synced": "2026-01-01 00:00:00",
    }))
    _nircam_apcorr(refs / "jwst_nircam_apcorr_0042.fits")
    _abvegaoffset(refs / "jwst_nircam_abvegaoffset_0007.asdf", [("F090W", "CLEAR", 0.51)])


def test_catalog_job_picks_reference_files_from_a_local_crds_cache(tmp_path, monkeypatch):
    """With CRDS_PATH set (no server), the job uses the APCORR and ABVEGAOFFSET files the cache's rules select."""
    pytest.importorskip("crds", reason="the crds package is in the test extra")
    _local_crds_cache(tmp_path / "crds")
    monkeypatch.setenv("CRDS_PATH", str(tmp_path / "crds"))
    monkeypatch.delenv("CRDS_CONTEXT", raising=False)
    job = _catalog_job()
    i2d = _two_star_i2d(tmp_path / "m_i2d.fits")
    job.source_catalog(i2d, tmp_path / "m_cat.ecsv", tmp_path / "m_segm.fits", npixels=5, abvega_offset=None)
    cat = io.read_table(tmp_path / "m_cat.ecsv")
    assert cat.meta["aperture_params"]["method"] == "apcorr_table"
    assert "jwst_nircam_apcorr_0042.fits (CRDS)" in cat.meta["apcorr_source"]
    assert "jwst_nircam_abvegaoffset_0007.asdf (CRDS)" in cat.meta["abvega_source"]
    np.testing.assert_allclose(cat["aper_total_flux"].value, 1.35 * cat["aper70_flux"].value, rtol=1e-5)
    np.testing.assert_allclose(cat["aper70_vegamag"], cat["aper70_abmag"] - 0.51, rtol=1e-6)


def test_crds_lookup_without_cache_or_match_says_why(tmp_path, monkeypatch):
    """No CRDS_PATH: nothing picked, with the reason; a cache whose rules do not match: the reason names the cache."""
    from calimage3.reference_data import crds_parameters

    monkeypatch.delenv("CRDS_PATH", raising=False)
    found, missing = io.crds_reference_files({"META.INSTRUMENT.NAME": "NIRCAM"}, ["apcorr"])
    assert found == {} and "CRDS_PATH" in missing["apcorr"]
    pytest.importorskip("crds", reason="the crds package is in the test extra")
    _local_crds_cache(tmp_path / "crds")
    monkeypatch.setenv("CRDS_PATH", str(tmp_path / "crds"))
    params = crds_parameters({**NIRCAM, "EXP_TYPE": "NRC_CORON"})
    assert params["META.INSTRUMENT.FILTER"] == "F090W" and params["META.EXPOSURE.TYPE"] == "NRC_CORON"
    found, missing = io.crds_reference_files(params, ["apcorr"])
    assert found == {} and str(tmp_path / "crds") in missing["apcorr"]
