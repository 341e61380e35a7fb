"""outlier_detection resample_data=False: exposures on one pixel grid, median of the inputs, no blot."""

import importlib.util

import numpy as np
import pytest
import workflow_runs
from astropy.io import fits

from calimage3 import io
from calimage3.dqflags import PIXEL
from calimage3.exposure import Exposure
from calimage3.wcs_tools import imaging_wcs

SHAPE = (60, 70)
SKY = 0.2


def _script(name):
    spec = importlib.util.spec_from_file_location(name, workflow_runs.REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def same_grid_exposures(tmp_path):
    """Three exposures of one star field on the same pixel grid; a cosmic ray in the second."""
    wcs = imaging_wcs(SHAPE, (53.0, -27.0), 0.031)
    y, x = np.indices(SHAPE)
    scene = SKY + 5.0 * np.exp(-((x - 30.3) ** 2 + (y - 25.6) ** 2) / (2 * 1.0**2))
    rng = np.random.default_rng(7)
    cal, wcs_files, roots = [], [], []
    for k in range(3):
        data = (scene + rng.normal(0, 0.01, SHAPE)).astype(np.float32)
        if k == 1:
            data[40, 12] += 3.0  # cosmic ray
        var = np.full(SHAPE, 1e-4, np.float32)
        root = f"jw01234001001_01101_0000{k + 1}_nrcb1"
        exposure = Exposure(data=data, err=np.sqrt(var), dq=np.zeros(SHAPE, np.uint32), wcs=wcs,
                            meta={"EXPTIME": 100.0, "EFFEXPTM": 100.0}, var_rnoise=var)
        cal.append(tmp_path / f"{root}_cal.fits")
        io.write_exposure(cal[-1], exposure)
        wcs_files.append(tmp_path / f"{root}_crf_wcs.fits")
        io.write_rendered_wcs(wcs_files[-1], wcs, SHAPE, info={"S_TWKREG": "COMPLETE"})
        roots.append(root)
    sky = tmp_path / "skymatch.json"
    io.write_json(sky, {"status": "COMPLETE", "method": "match", "subtract": False,
                        "levels": {r: SKY for r in roots}})
    return cal, wcs_files, sky


def test_median_of_inputs_flags_only_the_cosmic_ray(tmp_path, same_grid_exposures):
    """Without resampling, the median of the inputs flags the cosmic ray and nothing in the star."""
    cal, wcs_files, sky = same_grid_exposures
    single, median, flag = _script("outlier_single"), _script("outlier_median"), _script("outlier_flag")
    singles = [tmp_path / f"single{k}.fits" for k in range(3)]
    for c, s in zip(cal, singles):
        single.outlier_single(c, None, s, resample_data=False)
    with io.open_image_sections(singles[0], ("SCI",)) as views:
        first = np.asarray(views["SCI"])
    assert first.shape == SHAPE  # the exposure's own grid, the sky still in
    np.testing.assert_allclose(first, io.read_exposure(cal[0]).data, atol=1e-6)
    median.outlier_median(singles, tmp_path / "median.fits", sky)
    with io.open_image_sections(tmp_path / "median.fits", ("SCI",)) as views:
        # the sky levels are taken out in the median: here the sky-free scene
        expected = np.median([io.read_exposure(c).data - SKY for c in cal], axis=0)
        np.testing.assert_allclose(np.asarray(views["SCI"])[:, :10], expected[:, :10], atol=1e-6)
    crf = [tmp_path / f"crf{k}.fits" for k in range(3)]
    for c, w, out in zip(cal, wcs_files, crf):
        flag.outlier_flag(c, w, sky, tmp_path / "median.fits", None, out, resample_data=False)
    flagged = [(io.read_exposure(p, with_wcs=False).dq & PIXEL["OUTLIER"]) > 0 for p in crf]
    assert flagged[1][40, 12]
    assert sum(int(f.sum()) for f in flagged) == 1
    assert fits.getheader(crf[1])["S_OUTLIR"] == "COMPLETE"


def test_inputs_on_different_grids_are_rejected(tmp_path, same_grid_exposures):
    """resample_data=False with an exposure of another shape is a clear error naming the file."""
    cal, wcs_files, sky = same_grid_exposures
    single, flag = _script("outlier_single"), _script("outlier_flag")
    single.outlier_single(cal[0], None, tmp_path / "s0.fits", resample_data=False)
    with io.open_image_sections(tmp_path / "s0.fits", ("SCI",)) as views:
        io.write_image(tmp_path / "median.fits", {"SCI": np.asarray(views["SCI"])[:50]})
    with pytest.raises(io.InputFileError, match=cal[1].name):
        flag.outlier_flag(cal[1], wcs_files[1], sky, tmp_path / "median.fits", None, tmp_path / "crf.fits",
                          resample_data=False)
    assert not (tmp_path / "crf.fits").exists()
