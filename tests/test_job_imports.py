"""Jobs import only what they use: gwcs with asdf's extensions, and photutils, each cost a large part of a second per process."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calimage3 import io
from calimage3.wcs_tools import distortion_model, imaging_wcs

SCRIPTS = Path(__file__).parents[1] / "scripts"


# Imported when asdf loads its extensions (to read or write any ASDF tree);
# importing asdf itself is cheap (astropy.table does it).
ASDF_EXTENSIONS = "asdf_astropy.extensions"


def _modules_after(code):
    """Modules (and their top-level packages) imported by ``code`` run in a fresh interpreter."""
    probe = f"import sys; sys.path.insert(0, {str(SCRIPTS)!r})\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    names = set(out.strip().splitlines()[-1].split())
    return names | {n.split(".")[0] for n in names}


@pytest.mark.parametrize("script", ["outlier_single", "outlier_median", "outlier_flag", "resample_exposure", "resample"])
def test_per_exposure_and_combine_jobs_need_no_gwcs(script):
    assert not {ASDF_EXTENSIONS, "gwcs", "photutils"} & _modules_after(f"import {script}")


def test_alignment_job_does_not_import_photutils():
    assert "photutils" not in _modules_after("import tweakreg_align")


def _three_star_mosaic(path, wcs, shape):
    rng = np.random.default_rng(5)
    data = rng.normal(0.0, 0.01, shape).astype(np.float32)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for x, y in ((40.3, 50.7), (90.1, 30.4), (70.6, 95.2)):
        data += (2.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.1**2))).astype(np.float32)
    arrays = {"data": data, "err": np.full(shape, 0.01, np.float32), "wht": np.ones(shape, np.float32)}
    io.write_i2d(path, arrays, wcs, {"EFFEXPTM": 300.0, "PHOTMJSR": 0.4})


def _run_catalog(tmp_path, wcs, shape):
    """Run the catalog job on a three-star mosaic with ``wcs``; its modules and the catalog."""
    _three_star_mosaic(tmp_path / "m_i2d.fits", wcs, shape)
    code = (f"from source_catalog import source_catalog\n"
            f"source_catalog({str(tmp_path / 'm_i2d.fits')!r}, {str(tmp_path / 'm_cat.ecsv')!r}, "
            f"{str(tmp_path / 'm_segm.fits')!r}, snr_threshold=5.0, bkg_boxsize=40)")
    modules = _modules_after(code)
    table = io.read_table(tmp_path / "m_cat.ecsv")
    assert len(table) == 3
    ra, dec = wcs(np.asarray(table["xcentroid"]), np.asarray(table["ycentroid"]))
    np.testing.assert_allclose(table["sky_centroid"].ra.deg, ra, atol=1e-10)
    np.testing.assert_allclose(table["sky_centroid"].dec.deg, dec, atol=1e-10)
    segm_wcs, _, _ = io.read_exposure_wcs(tmp_path / "m_segm.fits")
    assert segm_wcs(10.0, 20.0) == pytest.approx(wcs(10.0, 20.0), abs=1e-12)
    return modules


def test_catalog_of_a_tan_mosaic_loads_no_asdf_extensions(tmp_path):
    """On a mosaic whose header WCS is exact, the catalog job neither parses nor writes a gwcs."""
    shape = (120, 130)
    assert ASDF_EXTENSIONS not in _run_catalog(tmp_path, imaging_wcs(shape, (30.0, -5.0), 0.031, 10.0), shape)


def test_catalog_of_a_distorted_mosaic_uses_its_gwcs(tmp_path):
    """A mosaic grid with distortion (a user's output_wcs) has only a SIP header: the gwcs gives the positions."""
    shape = (120, 130)
    distortion = distortion_model({"c2_0": 2e-4, "c0_2": -1.5e-4}, {"c1_1": 2e-4}, shape)
    wcs = imaging_wcs(shape, (30.0, -5.0), 0.031, 10.0, distortion=distortion)
    assert ASDF_EXTENSIONS in _run_catalog(tmp_path, wcs, shape)
