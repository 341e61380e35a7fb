"""The jwst side-by-side comparison of the benchmark (bench/compare_jwst.py) on known inputs."""

import importlib.util

import numpy as np
import pytest
import workflow_runs
from astropy.wcs import WCS

from calimage3.dqflags import PIXEL


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_jwst", workflow_runs.REPO / "bench" / "compare_jwst.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mosaic(shift_x=0.0, scale=1.0, n=120, seed=0):
    """A TAN mosaic with 9 Gaussian stars of 1 mJy (0.03"/pixel), optionally shifted and scaled."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [53.0, -27.0]
    wcs.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    wcs.wcs.cdelt = [-0.03 / 3600, 0.03 / 3600]
    xs, ys = np.meshgrid([30.0, 60.0, 90.0], [30.0, 60.0, 90.0])
    ra, dec = wcs.all_pix2world(xs.ravel(), ys.ravel(), 0)
    pixar_sr = (np.deg2rad(0.03 / 3600)) ** 2
    y, x = np.indices((n, n))
    sigma = 2.0 / 2.3548
    sci = np.random.default_rng(seed).normal(0.0, 1e-4, (n, n))
    for xc, yc in zip(xs.ravel() + shift_x, ys.ravel()):
        # 1 mJy in MJy/sr: flux / pixel area, spread as a unit-sum Gaussian
        sci += scale * 1e-3 / 1e6 / pixar_sr * np.exp(-((x - xc) ** 2 + (y - yc) ** 2) / (2 * sigma**2)) \
            / (2 * np.pi * sigma**2)
    truth = {"type": np.array(["star"] * 9), "ra": ra, "dec": dec, "flux": np.full(9, 1e-3), "snr": np.full(9, 100.0)}
    return {"sci": sci, "wht": np.ones((n, n)), "wcs": wcs}, truth


def test_identical_mosaics_agree_and_a_flux_scale_is_measured(compare):
    """Same mosaic: ratio 1 and zero offset; a 5% brighter one: ratio 1.05; a 0.5-pixel shift: 15 mas."""
    ours, truth = _mosaic()
    same = compare.compare_mosaics(ours, ours, truth, psf_fwhm=2.0)
    assert same["flux_ratio"]["median"] == pytest.approx(1.0, abs=1e-9)
    assert same["ours_over_truth"]["median"] == pytest.approx(1.0, abs=0.02)
    brighter, _ = _mosaic(scale=1.05, seed=0)
    assert compare.compare_mosaics(ours, brighter, truth, psf_fwhm=2.0)["flux_ratio"]["median"] == pytest.approx(
        1.05, abs=0.005)
    shifted, _ = _mosaic(shift_x=0.5, seed=0)
    offset = compare.compare_mosaics(ours, shifted, truth, psf_fwhm=2.0)["offset_jwst_minus_ours"]
    assert offset["median_abs_mas"] == pytest.approx(15.0, abs=1.5)


def test_outlier_flag_overlap(compare):
    """Flag counts, overlap and recall of injected outliers from two DQ arrays."""
    flag = PIXEL["OUTLIER"] | PIXEL["DO_NOT_USE"]
    ours = np.zeros((10, 10), np.uint32)
    jwst = np.zeros((10, 10), np.uint32)
    ours[1, 1] = ours[2, 2] = flag
    jwst[2, 2] = jwst[3, 3] = flag
    jwst[5, 5] = PIXEL["DO_NOT_USE"]  # unusable before the step: not counted
    counts = compare.compare_outlier_flags(ours, jwst, truth_xy=([1, 2], [1, 2]))
    assert counts["usable"] == 99 and counts["flagged_both"] == 1 and counts["flagged_either"] == 3
    assert counts["truth_flagged_ours"] == 2 and counts["truth_flagged_jwst"] == 1
    summary = compare.summarize_outliers({"a": counts})
    assert summary["jaccard"] == pytest.approx(1 / 3) and summary["truth_recall_jwst"] == 0.5
