"""Bad input stops the workflow before any job, naming the file and the problem."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.io import fits

from calimage3.simulate import simulate_dither

REPO = Path(__file__).resolve().parents[1]


def _run(asn, out):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--config", f"asn={asn}", f"output_dir={out}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def dither_copy(tmp_path, small_dither):
    """A private copy of the small simulated set that a test may damage."""
    data = tmp_path / "data"
    shutil.copytree(small_dither["asn"].parent, data)
    return data, data / small_dither["asn"].name, [data / p.name for p in small_dither["cal"]]


def _assert_clean_failure(proc, out, *fragments):
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for fragment in fragments:
        assert fragment in text, text[-3000:]
    leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert leftovers == []


def test_missing_member_file(tmp_path, dither_copy):
    """A member listed in the ASN but absent on disk is named."""
    _, asn, cals = dither_copy
    cals[2].unlink()
    proc = _run(asn, tmp_path / "out")
    _assert_clean_failure(proc, tmp_path / "out", cals[2].name, "file does not exist")


def test_corrupt_fits_member(tmp_path, dither_copy):
    """A truncated FITS member is named as unreadable."""
    _, asn, cals = dither_copy
    cals[1].write_bytes(cals[1].read_bytes()[:5000])
    proc = _run(asn, tmp_path / "out")
    _assert_clean_failure(proc, tmp_path / "out", cals[1].name, "not a readable FITS file")


def test_member_without_wcs(tmp_path, dither_copy):
    """A _cal with no WCS at all is named."""
    _, asn, cals = dither_copy
    with fits.open(cals[0]) as hdul:
        del hdul["ASDF"]
        for key in list(hdul["SCI"].header):
            if key.startswith(("CTYPE", "CRVAL", "CRPIX", "CD", "A_", "B_", "AP_", "BP_", "PC1_", "PC2_")):
                del hdul["SCI"].header[key]
        hdul.writeto(cals[0], overwrite=True)
    proc = _run(asn, tmp_path / "out")
    _assert_clean_failure(proc, tmp_path / "out", cals[0].name, "no WCS")


def test_asn_without_science_members(tmp_path, dither_copy):
    """An association whose members are all non-science is rejected."""
    _, asn, _ = dither_copy
    content = json.loads(asn.read_text())
    for member in content["products"][0]["members"]:
        member["exptype"] = "background"
    asn.write_text(json.dumps(content))
    proc = _run(asn, tmp_path / "out")
    _assert_clean_failure(proc, tmp_path / "out", asn.name, "no science members")


def test_non_overlapping_exposures(tmp_path):
    """An exposure that overlaps no other is named."""
    sim = simulate_dither(tmp_path / "data", n_exposures=3, shape=(128, 128), n_stars=20, n_galaxies=2,
                          offsets=[(0, 0), (20, 10), (3000, 0)])
    proc = _run(sim["asn"], tmp_path / "out")
    _assert_clean_failure(proc, tmp_path / "out", sim["cal"][2].name, "overlapping no other exposure")


def test_unknown_parameter_rejected(tmp_path, small_dither):
    """A misspelt step parameter is a configuration error naming it."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--config", f"asn={small_dither['asn']}",
           f"output_dir={tmp_path / 'out'}", "tweakreg={'snr_treshold': 5}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    _assert_clean_failure(proc, tmp_path / "out", "snr_treshold")


def test_wrong_parameter_type_rejected(tmp_path, small_dither):
    """A step parameter of the wrong type is a configuration error naming it."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--config", f"asn={small_dither['asn']}",
           f"output_dir={tmp_path / 'out'}", "resample={'pixfrac': 'wide'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    _assert_clean_failure(proc, tmp_path / "out", "'wide' is not of type 'number'", "pixfrac")


def test_missing_association_file(tmp_path):
    """An ASN path that does not exist is named."""
    proc = _run(tmp_path / "nowhere_asn.json", tmp_path / "out")
    _assert_clean_failure(proc, tmp_path / "out", "nowhere_asn.json: association file does not exist")


def test_no_input_given(tmp_path):
    """Running without asn= says how to pass it."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--config", f"output_dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    _assert_clean_failure(proc, tmp_path / "out", "pass --config asn=PATH")
