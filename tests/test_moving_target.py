"""End-to-end run on a simulated moving target: the mosaic is in the target's frame (assign_mtwcs)."""

import numpy as np
import pytest
import workflow_runs

from calimage3 import io
from calimage3.simulate import simulate_dither

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory):
    """Three 256x256 moving-target exposures without pointing errors, through the whole workflow."""
    base = tmp_path_factory.mktemp("moving_target")
    sim = simulate_dither(base / "data", n_exposures=3, shape=(256, 256), seed=2, moving_target=True,
                          shift_error=0.0, rotation_error=0.0)
    out = base / "out"
    workflow_runs.run_snakemake(f"asn={sim['asn']}", out, "qa_figures=false")
    arrays, wcs, meta = io.read_i2d(out / f"{sim['product']}_i2d.fits")
    return {"sim": sim, "out": out, "i2d_wcs": wcs, "i2d_meta": meta}


def _target_pixels(run):
    """Per exposure: the target's true detector pixel, mapped through the _crf WCS onto the mosaic."""
    rows = []
    for cal in run["sim"]["cal"]:
        root = cal.name.replace("_cal.fits", "")
        true_wcs, _, _ = io.read_wcs_file(run["sim"]["truth"] / f"{root}_true_wcs.asdf")
        crf_wcs, _, meta = io.read_exposure_wcs(run["out"] / f"{root}_{run['sim']['asn_id']}_crf.fits")
        x, y = true_wcs.backward_transform(meta["MT_RA"], meta["MT_DEC"])
        ra, dec = crf_wcs.forward_transform(x, y)
        rows.append((x, y, *run["i2d_wcs"].backward_transform(ra, dec), ra, dec, meta))
    return rows


def test_i2d_records_moving_target_wcs(mt_run):
    """The _i2d says S_MTWCS=COMPLETE and MT_AVRA/MT_AVDEC are the mean of the exposures' MT_RA/MT_DEC."""
    meta = mt_run["i2d_meta"]
    assert meta["S_MTWCS"] == "COMPLETE"
    mt = [io.read_exposure_wcs(p)[2] for p in mt_run["sim"]["cal"]]
    assert meta["MT_AVRA"] == pytest.approx(np.mean([m["MT_RA"] for m in mt]), abs=1e-9)
    assert meta["MT_AVDEC"] == pytest.approx(np.mean([m["MT_DEC"] for m in mt]), abs=1e-9)


def test_target_lands_on_one_mosaic_pixel(mt_run):
    """The target, 0.05"/exposure apart on the sky, falls on the same mosaic pixel (< 0.01 pix) from every exposure."""
    rows = _target_pixels(mt_run)
    detector = np.array([(r[0], r[1]) for r in rows])
    mosaic = np.array([(r[2], r[3]) for r in rows])
    # Dithers and the target's motion put it on detector pixels > 1 pixel apart ...
    assert np.ptp(detector, axis=0).max() > 1.0
    # ... yet lands on one mosaic pixel, at the mean target position.
    assert np.ptp(mosaic, axis=0).max() < 0.01
    meta = mt_run["i2d_meta"]
    for *_, ra, dec, _ in rows:
        assert abs(ra - meta["MT_AVRA"]) * 3600 * np.cos(np.deg2rad(dec)) < 1e-4
        assert abs(dec - meta["MT_AVDEC"]) * 3600 < 1e-4
