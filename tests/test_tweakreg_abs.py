"""Tests of tweakreg exposure groups, failure isolation and absolute astrometry."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from calimage3 import io
from calimage3.dqflags import good_pixel_mask
from calimage3.simulate import simulate_dither
from calimage3.source_detection import detect_sources
from calimage3.tweakreg import (
    align_exposures,
    align_to_reference_catalog,
    exposure_group_id,
    reference_catalog_path,
)
from calimage3.wcs_tools import imaging_wcs, tangent_plane_correction

_spec = importlib.util.spec_from_file_location(
    "tweakreg_align_script", Path(__file__).parents[1] / "scripts" / "tweakreg_align.py")
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)
tweakreg_align = _script.tweakreg_align

SHAPE = (512, 512)
# A pointing error common to every exposure: relative alignment cannot see it.
COMMON_SHIFT = (0.35, -0.25)  # arcsec (east, north)
COMMON_ROT = 0.01  # degrees


def _detect(path):
    e = io.read_exposure(path)
    return detect_sources(e.data, e.err, ~good_pixel_mask(e.dq)), e


def _true_error_pix(wcs, true, stars, shape):
    """RMS distance (pixels) between where ``wcs`` and the true WCS put the stars on the detector."""
    xt, yt = true.backward_transform(stars["ra"], stars["dec"])
    on = (xt > 0) & (xt < shape[1] - 1) & (yt > 0) & (yt < shape[0] - 1)
    x, y = wcs.backward_transform(stars["ra"][on], stars["dec"][on])
    return float(np.sqrt(np.mean((x - xt[on]) ** 2 + (y - yt[on]) ** 2)))


def _rotate(deg):
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


@pytest.fixture(scope="module")
def common_offset_set(tmp_path_factory):
    """Four simulated exposures whose WCSs all carry the same extra pointing error."""
    sim = simulate_dither(tmp_path_factory.mktemp("abs"), n_exposures=4, shape=SHAPE, seed=18)
    stars = io.read_table(sim["truth"] / "sources.ecsv")
    stars = stars[stars["type"] == "star"]
    catalogs, headers, truths = [], [], []
    ra0, dec0 = 53.16, -27.79
    for path in sim["cal"]:
        cat, e = _detect(path)
        catalogs.append(cat)
        headers.append(tangent_plane_correction(e.wcs, ra0, dec0, _rotate(COMMON_ROT),
                                                np.asarray(COMMON_SHIFT) / 3600.0))
        truths.append(io.read_wcs_file(sim["truth"] / f"{path.name[:-9]}_true_wcs.asdf")[0])
    return sim, stars, catalogs, headers, truths


# ------------------------------------------------------------- exposure groups


def test_exposure_group_id_follows_jwst_exposure_numbers():
    """Program, observation, visit, visit group, sequence, activity and exposure form the id."""
    meta = {"PROGRAM": "01234", "OBSERVTN": "001", "VISIT": "001", "VISITGRP": "01",
            "SEQ_ID": "1", "ACT_ID": "01", "EXPOSURE": "00002", "DETECTOR": "NRCB1"}
    assert exposure_group_id(meta) == "jw01234001001_01101_00002"
    assert exposure_group_id({**meta, "DETECTOR": "NRCB2"}) == exposure_group_id(meta)
    assert exposure_group_id({k: v for k, v in meta.items() if k != "VISIT"}) is None


def test_two_detectors_of_an_exposure_move_as_one(tmp_path):
    """Simulated detector pairs share a group: one correction each, both aligned to truth."""
    sim = simulate_dither(tmp_path, n_exposures=3, shape=(384, 384), seed=5, detectors=2)
    assert len(sim["cal"]) == 6
    stars = io.read_table(sim["truth"] / "sources.ecsv")
    catalogs, headers, metas, truths = [], [], [], []
    for path in sim["cal"]:
        cat, e = _detect(path)
        catalogs.append(cat)
        headers.append(e.wcs)
        metas.append(e.meta)
        truths.append(io.read_wcs_file(sim["truth"] / f"{path.name[:-9]}_true_wcs.asdf")[0])
    group_ids = [exposure_group_id(m) for m in metas]
    assert len(set(group_ids)) == 3 and group_ids[0] == group_ids[1]
    results = align_exposures(catalogs, headers, [(384, 384)] * 6, group_ids=group_ids)
    assert [r.status for r in results] == ["COMPLETE"] * 6
    print()
    for k in range(0, 6, 2):
        a, b = results[k], results[k + 1]
        assert a.shift == b.shift and a.rotation == b.rotation
        for i in (k, k + 1):
            before = _true_error_pix(headers[i], truths[i], stars, (384, 384))
            after = _true_error_pix(results[i].wcs, truths[i], stars, (384, 384))
            print(f"{sim['cal'][i].name}: error before {before:.3f} pix, after {after:.4f} pix")
            # ~20 matched stars per detector pair: 0.03 pixel (0.02 with 4x as many).
            assert after < 0.03
            assert before > 1.0 or k == 0  # exposure 1 is the error-free reference


# ------------------------------------------------------------ failure handling


def test_mismatched_exposure_never_enters_the_expanded_refcat(common_offset_set):
    """With expand_refcat an unmatched catalog is SKIPPED, kept out of the reference, others aligned."""
    _, stars, catalogs, headers, truths = common_offset_set
    rng = np.random.default_rng(3)
    unrelated = Table({"x": rng.uniform(0, 511, 80), "y": rng.uniform(0, 511, 80)})
    # At the JWST default tolerance (0.7") 80 random sources find 15 chance pairs
    # with a fit RMS below the tolerance, which JWST's checks accept too.
    results = align_exposures([*catalogs[:2], unrelated, catalogs[3]], headers, [SHAPE] * 4,
                              expand_refcat=True, searchrad=0.5, separation=0.2, tolerance=0.1)
    assert [r.status for r in results] == ["COMPLETE", "COMPLETE", "SKIPPED", "COMPLETE"]
    assert [r.in_refcat for r in results] == [True, True, False, True]
    assert results[2].wcs is headers[2]
    # Aligned relative to each other: the common offset remains, so compare exposures 1 and 4.
    ref = _true_error_pix(results[0].wcs, truths[0], stars, SHAPE)
    assert abs(_true_error_pix(results[3].wcs, truths[3], stars, SHAPE) - ref) < 0.05


def test_script_marks_exposure_without_sources_skipped(common_offset_set, tmp_path):
    """An exposure with no sources keeps its WCS, with S_TWKREG=SKIPPED and the reason."""
    sim, _, catalogs, headers, _ = common_offset_set
    sources, wcs_in, outs = [], [], []
    for k, (cat, wcs) in enumerate(zip(catalogs, headers)):
        sources.append(tmp_path / f"e{k}_sources.ecsv")
        io.write_table(sources[-1], cat[:0] if k == 1 else cat)
        wcs_in.append(tmp_path / f"e{k}_wcs.asdf")
        io.write_wcs_file(wcs_in[-1], wcs, SHAPE, info={"S_MTWCS": "SKIPPED"})
        outs.append(tmp_path / f"e{k}_tweakreg.asdf")
    tweakreg_align(sources, wcs_in, outs, cal_paths=sim["cal"])
    infos = [io.read_wcs_file(p)[2] for p in outs]
    assert [i["S_TWKREG"] for i in infos] == ["COMPLETE", "SKIPPED", "COMPLETE", "COMPLETE"]
    assert "0 sources" in infos[1]["TWKREASN"] and "minobj=15" in infos[1]["TWKREASN"]
    x = np.array([10.0, 300.0])
    np.testing.assert_allclose(io.read_wcs_file(outs[1])[0].forward_transform(x, x),
                               headers[1].forward_transform(x, x), rtol=0, atol=1e-12)
    assert "TWKABS" not in infos[0]


# ------------------------------------------------------------ absolute astrometry


def test_absolute_alignment_recovers_common_offset(common_offset_set):
    """Relative then absolute alignment puts every exposure within 0.05 pixel of the truth."""
    _, stars, catalogs, headers, truths = common_offset_set
    relative = align_exposures(catalogs, headers, [SHAPE] * 4)
    assert [r.status for r in relative] == ["COMPLETE"] * 4
    result = align_to_reference_catalog(catalogs, [r.wcs for r in relative], [SHAPE] * 4,
                                        stars["ra"], stars["dec"])
    assert result.status == "COMPLETE", result.message
    assert result.shift == pytest.approx((-COMMON_SHIFT[0], -COMMON_SHIFT[1]), abs=0.01)
    print(f"\n{result.message}")
    for r, wcs, true in zip(relative, result.wcs_list, truths):
        before = _true_error_pix(r.wcs, true, stars, SHAPE)
        after = _true_error_pix(wcs, true, stars, SHAPE)
        print(f"error after relative {before:.3f} pix, after absolute {after:.4f} pix")
        assert before > 5.0
        assert after < 0.05


def test_absolute_alignment_skips_with_too_few_reference_sources(common_offset_set):
    """Fewer than abs_minobj reference stars in the field: SKIPPED, WCSs unchanged."""
    _, stars, catalogs, headers, _ = common_offset_set
    result = align_to_reference_catalog(catalogs, headers, [SHAPE] * 4, stars["ra"][:10],
                                        stars["dec"][:10], abs_minobj=15)
    assert result.status == "SKIPPED"
    assert "fewer than abs_minobj=15" in result.message
    assert all(a is b for a, b in zip(result.wcs_list, headers))


def test_abs_searchrad_too_small_for_offset_skips(common_offset_set):
    """An offset beyond abs_searchrad and abs_tolerance cannot be matched: SKIPPED."""
    _, stars, catalogs, headers, _ = common_offset_set
    relative = align_exposures(catalogs, headers, [SHAPE] * 4)
    result = align_to_reference_catalog(catalogs, [r.wcs for r in relative], [SHAPE] * 4,
                                        stars["ra"], stars["dec"], abs_searchrad=0.05,
                                        abs_tolerance=0.05, abs_use2dhist=False)
    assert result.status == "SKIPPED"


def test_script_records_absolute_fit_in_headers(common_offset_set, tmp_path):
    """With abs_refcat (FITS) the headers carry the fit; with '' (default) nothing changes."""
    sim, stars, catalogs, headers, truths = common_offset_set
    refcat = tmp_path / "gaia.fits"
    Table({"ra": stars["ra"], "dec": stars["dec"]}).write(refcat)
    sources, wcs_in = [], []
    for k, (cat, wcs) in enumerate(zip(catalogs, headers)):
        sources.append(tmp_path / f"e{k}_sources.ecsv")
        io.write_table(sources[-1], cat)
        wcs_in.append(tmp_path / f"e{k}_wcs.asdf")
        io.write_wcs_file(wcs_in[-1], wcs, SHAPE, info={})
    plain = [tmp_path / f"e{k}_plain.asdf" for k in range(4)]
    fitted = [tmp_path / f"e{k}_abs.asdf" for k in range(4)]
    tweakreg_align(sources, wcs_in, plain, cal_paths=sim["cal"], abs_refcat="")
    tweakreg_align(sources, wcs_in, fitted, cal_paths=sim["cal"], abs_refcat=str(refcat))
    relative = align_exposures(catalogs, headers, [SHAPE] * 4)
    x = np.array([20.0, 256.0, 490.0])
    for k in range(4):
        wcs_plain, _, info_plain = io.read_wcs_file(plain[k])
        wcs_abs, _, info = io.read_wcs_file(fitted[k])
        np.testing.assert_allclose(wcs_plain.forward_transform(x, x),
                                   relative[k].wcs.forward_transform(x, x), rtol=0, atol=1e-12)
        assert "TWKABS" not in info_plain
        assert info["TWKABS"] == "COMPLETE" and info["TWKABSCT"] == "gaia.fits"
        # abs_refcat sets expand_refcat, so the relative reference (and the
        # residual offset the absolute fit removes) is the best-overlapping exposure's.
        assert np.hypot(info["TWKAXSHF"], info["TWKAYSHF"]) > 0.2
        assert info["TWKANMAT"] >= 15 and 0 < info["TWKARMS"] < 0.01
        assert _true_error_pix(wcs_abs, truths[k], stars, SHAPE) < 0.05


@pytest.mark.parametrize("name", ["GAIADR3", "gaiadr2", " GAIADR1 "])
def test_web_catalog_names_ask_for_a_file(name):
    """abs_refcat names JWST would query on the web raise an error asking for a file."""
    with pytest.raises(ValueError, match="web query.*give its path"):
        reference_catalog_path(name)


def test_empty_abs_refcat_turns_absolute_alignment_off():
    """'' and None mean no absolute alignment."""
    assert reference_catalog_path("") is None and reference_catalog_path(None) is None


def test_absolute_alignment_rejects_bad_parameters():
    """Invalid abs_* settings raise ValueError naming the parameter."""
    wcs = imaging_wcs((10, 10), (53.16, -27.79), 0.031)
    cat = Table({"x": [1.0], "y": [2.0]})
    with pytest.raises(ValueError, match="abs_fitgeometry"):
        align_to_reference_catalog([cat], [wcs], [(10, 10)], [53.16], [-27.79],
                                   abs_fitgeometry="affine")
    with pytest.raises(ValueError, match="abs_searchrad"):
        align_to_reference_catalog([cat], [wcs], [(10, 10)], [53.16], [-27.79], abs_searchrad=0)
