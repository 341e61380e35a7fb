"""Input integrity: every bad input refused before any job, named; nothing written outside output_dir."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from calimage3 import io
from calimage3.association import _safe_name
from calimage3.preflight import _unit_problem, check_campaign, check_inputs, check_member_file

REPO = Path(__file__).resolve().parents[1]


def _run(input_item, out, *config_items):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--config", input_item, f"output_dir={out}",
           *config_items]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def dither_copy(tmp_path, small_dither):
    """A private copy of the small simulated set that a test may damage: (asn, cal paths)."""
    data = tmp_path / "data"
    shutil.copytree(small_dither["asn"].parent, data)
    return data / small_dither["asn"].name, [data / p.name for p in small_dither["cal"]]


def _files_under(folder):
    return [p for p in Path(folder).rglob("*") if p.is_file()] if Path(folder).exists() else []


def _assert_refused(proc, out, *fragments):
    """The run failed naming every fragment, and wrote nothing under ``out``."""
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for fragment in fragments:
        assert fragment in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert _files_under(out) == []


def _set_keyword(path, extension, key, value):
    with fits.open(path) as hdul:
        hdul[extension].header[key] = value
        hdul.writeto(path, overwrite=True)


# --------------------------------------------------------------------------
# One test per row of issue 15's table


def test_truncated_member_named_before_any_job(tmp_path, dither_copy):
    """A member cut to half its bytes stops the run before any job, naming the file and 'truncated'."""
    asn, cals = dither_copy
    cals[2].write_bytes(cals[2].read_bytes()[: cals[2].stat().st_size // 2])
    proc = _run(f"asn={asn}", tmp_path / "out")
    _assert_refused(proc, tmp_path / "out", cals[2].name, "truncated")


def test_rate_file_unit_refused(tmp_path, dither_copy):
    """A member whose SCI BUNIT is DN/s (a _rate file) is named with its unit."""
    asn, cals = dither_copy
    _set_keyword(cals[1], "SCI", "BUNIT", "DN/s")
    proc = _run(f"asn={asn}", tmp_path / "out")
    _assert_refused(proc, tmp_path / "out", cals[1].name, "'DN/s', not a surface brightness in MJy/sr")


def test_member_in_another_filter_refused(tmp_path, dither_copy):
    """One F444W member among F200W is named, with the switch that would allow it."""
    asn, cals = dither_copy
    _set_keyword(cals[3], 0, "FILTER", "F444W")
    proc = _run(f"asn={asn}", tmp_path / "out")
    _assert_refused(proc, tmp_path / "out", cals[3].name, "FILTER is 'F444W'", "allow_mixed_filters")


@pytest.mark.parametrize("mode", ["asn", "asns"])
def test_dotdot_product_refused(tmp_path, dither_copy, mode):
    """A product named '..' is refused in both modes and nothing is written in or beside output_dir."""
    asn, _ = dither_copy
    content = json.loads(asn.read_text())
    content["products"][0]["name"] = ".."
    asn.write_text(json.dumps(content))
    work = tmp_path / "runs"
    work.mkdir()
    proc = _run(f"{mode}={asn}", work / "out")
    _assert_refused(proc, work / "out", asn.name, "'..'")
    assert list(work.iterdir()) == []


@pytest.mark.slow
def test_killed_run_resumes_identical(tmp_path, dither_copy):
    """SIGKILL mid-run, --unlock, rerun: every product equals an uninterrupted run's; no partial file is left."""
    asn, _ = dither_copy
    config = ["--config", f"asn={asn}", "qa_figures=false", "tweakreg={'minobj': 8}"]
    base = [sys.executable, "-m", "snakemake", "--cores", "2"]
    whole = subprocess.run([*base, *config, f"output_dir={tmp_path / 'whole'}"], cwd=REPO, capture_output=True,
                           text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([*base, *config, f"output_dir={out}"], cwd=REPO, stdout=log, stderr=log,
                                start_new_session=True)
        deadline = time.monotonic() + 600
        while not list(out.glob("work/outlier_detection/*_single.fits")) and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(out.glob("*_i2d.fits")), "killed too late: the run had finished"

    locked = subprocess.run([*base, *config, f"output_dir={out}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    # Snakemake names the stale lock, or first the incomplete outputs of the killed jobs
    assert locked.returncode != 0
    assert "--unlock" in locked.stdout + locked.stderr or "--rerun-incomplete" in locked.stdout + locked.stderr
    subprocess.run([*base, "--unlock", *config, f"output_dir={out}"], cwd=REPO, check=True, capture_output=True,
                   timeout=300)
    resumed = subprocess.run([*base, "--rerun-incomplete", *config, f"output_dir={out}"], cwd=REPO,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert sorted(p.name for p in out.glob("*") if p.is_file()) == \
        sorted(p.name for p in (tmp_path / "whole").glob("*") if p.is_file())
    assert [p for p in out.rglob("*") if p.name.endswith(".part")] == []
    for product in sorted((tmp_path / "whole").glob("*.fits")):
        with fits.open(product) as ha, fits.open(out / product.name) as hb:
            assert [h.name for h in ha] == [h.name for h in hb]
            for hdu_a, hdu_b in zip(ha, hb):
                if hdu_a.name in ("PRIMARY", "ASDF", "HDRTAB") or hdu_a.data is None:
                    continue
                assert hdu_a.data.tobytes() == hdu_b.data.tobytes(), f"{product.name}[{hdu_a.name}] differs"
    cat = next((tmp_path / "whole").glob("*_cat.ecsv")).name
    rows = [[l for l in (d / cat).read_text().splitlines() if not l.startswith("#")] for d in (tmp_path / "whole", out)]
    assert rows[0] == rows[1]
    for path in out.rglob("*.fits"):
        assert io.fits_layout_problem(path) is None, path


def test_stale_partial_file_replaced(tmp_path):
    """A writer killed mid-write leaves .<name>.part; the rerun of its job replaces it and leaves none."""
    target = tmp_path / "x_crf.fits"
    (tmp_path / ".x_crf.fits.part").write_bytes(b"half a file")
    with io.atomic_path(target) as tmp:
        assert tmp == tmp_path / ".x_crf.fits.part" and not tmp.exists()
        tmp.write_text("complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_crf.fits"]


# --------------------------------------------------------------------------
# The checks themselves


def test_layout_check_reads_only_headers(dither_copy, monkeypatch):
    """The truncation check reads a few header blocks, not the data (under 10% of the file)."""
    _, cals = dither_copy
    path = cals[0]
    path.write_bytes(path.read_bytes()[:-2880 * 20])
    read = []
    real_open = open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            data = self.fh.read(n)
            read.append(len(data))
            return data

        def seek(self, *args):
            return self.fh.seek(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(io, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    assert "truncated" in io.fits_layout_problem(path)
    assert 0 < sum(read) < 0.1 * path.stat().st_size


@pytest.mark.parametrize("cut", [0, 100, 5000, -1, -2880])
def test_any_truncation_is_named(dither_copy, cut):
    """Empty, sub-block, mid-header, last-byte and last-block truncations are all caught from the headers."""
    _, cals = dither_copy
    raw = cals[0].read_bytes()
    cals[0].write_bytes(raw[:cut] if cut >= 0 else raw[:len(raw) + cut])
    with pytest.raises(io.InputFileError, match=f"{cals[0].name}: not a readable FITS file"):
        check_member_file(cals[0])


def test_garbage_after_last_hdu_is_named(dither_copy):
    """Bytes after the last HDU that are not an extension are refused; zero padding is not."""
    _, cals = dither_copy
    raw = cals[0].read_bytes()
    cals[0].write_bytes(raw + b"\0" * 2880)
    assert io.fits_layout_problem(cals[0]) is None
    cals[0].write_bytes(raw + b"garbage!" * 500)
    assert "not a FITS extension" in io.fits_layout_problem(cals[0])


@pytest.mark.parametrize("unit", ["MJy/sr", "MJy / sr", "MJy sr-1", "MJy.sr**-1", "MJy/steradian"])
def test_surface_brightness_spellings_accepted(unit):
    """Every spelling of exactly MJy/sr passes the unit check."""
    assert _unit_problem(unit) is None


@pytest.mark.parametrize("unit", ["DN/s", "Jy/sr", "MJy", "mJy/sr", "counts", "not a unit", None])
def test_other_units_refused(unit):
    """Count rates, other scales and fluxes (not per solid angle) are refused."""
    assert _unit_problem(unit)


def test_mixed_filters_allowed_with_switch(dither_copy):
    """allow_mixed_filters lets FILTER and PUPIL differ, never INSTRUME."""
    asn, cals = dither_copy
    _set_keyword(cals[3], 0, "FILTER", "F444W")
    _set_keyword(cals[2], 0, "PUPIL", "F164N")
    with pytest.raises(io.InputFileError, match="FILTER"):
        check_inputs(asn)
    assert len(check_inputs(asn, allow_mixed_filters=True).members) == 4
    _set_keyword(cals[1], 0, "INSTRUME", "MIRI")
    with pytest.raises(io.InputFileError, match=f"{cals[1].name}: INSTRUME is 'MIRI'"):
        check_inputs(asn, allow_mixed_filters=True)


@pytest.mark.parametrize(("extension", "key", "value", "message"), [
    (0, "EXPTIME", "long", "EXPTIME = 'long' is not a finite number"),
    (0, "EXPSTART", True, "EXPSTART = True is not a finite number"),
    ("SCI", "PHOTMJSR", "n/a", "PHOTMJSR = 'n/a' is not a finite number"),
    (0, "DATE-OBS", 2023, "DATE-OBS = 2023 is not text"),
])
def test_wrong_typed_keyword_named(dither_copy, extension, key, value, message):
    """A keyword a later step reads as a number (or text) with another type is named before any job."""
    asn, cals = dither_copy
    _set_keyword(cals[2], extension, key, value)
    with pytest.raises(io.InputFileError, match=re.escape(f"{cals[2].name}: keyword {message}")):
        check_inputs(asn)


def test_moving_target_keywords_name_the_member(dither_copy):
    """One moving member among fixed ones, or a moving set missing MT_RA, is named by file."""
    asn, cals = dither_copy
    _set_keyword(cals[2], 0, "TARGTYPE", "MOVING")
    with pytest.raises(io.InputFileError, match=f"{cals[2].name}: TARGTYPE is MOVING unlike the other members"):
        check_inputs(asn)
    for cal in cals:
        _set_keyword(cal, 0, "TARGTYPE", "MOVING")
        _set_keyword(cal, 0, "MT_RA", 53.16)
        _set_keyword(cal, 0, "MT_DEC", -27.79)
    assert check_inputs(asn).moving_target
    with fits.open(cals[1]) as hdul:
        del hdul[0].header["MT_DEC"]
        hdul.writeto(cals[1], overwrite=True)
    with pytest.raises(io.InputFileError, match=f"{cals[1].name}: TARGTYPE is MOVING but MT_DEC = None"):
        check_inputs(asn)


@pytest.mark.slow
def test_damage_that_passes_every_check_still_completes(tmp_path, dither_copy):
    """A member with optional keywords deleted and garbage in VAR_FLAT (no checksums to see it) runs to the end."""
    asn, cals = dither_copy
    with fits.open(cals[1]) as hdul:
        for key in ("EXPTIME", "DURATION", "TARGTYPE", "DATE-OBS"):
            del hdul[0].header[key]
        for key in ("S_REGION", "PIXAR_SR", "PIXAR_A2"):
            del hdul["SCI"].header[key]
        hdul.writeto(cals[1], overwrite=True)
        offset = hdul.fileinfo(hdul.index_of("VAR_FLAT"))["datLoc"] + 1000
    raw = bytearray(cals[1].read_bytes())
    raw[offset:offset + 64] = bytes(range(64))
    cals[1].write_bytes(bytes(raw))
    check_inputs(asn)
    out = tmp_path / "out"
    proc = _run(f"asn={asn}", out, "qa_figures=false", "tweakreg={'minobj': 8}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with fits.open(next(out.glob("*_i2d.fits"))) as hdul:
        assert np.isfinite(hdul["SCI"].data).any()
    assert len(list(out.glob("*_crf.fits"))) == 4


def test_several_products_named(tmp_path, dither_copy):
    """An image3 association with two products is refused naming both."""
    asn, _ = dither_copy
    content = json.loads(asn.read_text())
    members = content["products"][0]["members"]
    content["products"] = [{"name": "prod_a", "members": members[:2]}, {"name": "prod_b", "members": members[2:]}]
    asn.write_text(json.dumps(content))
    with pytest.raises(io.InputFileError, match=r"2 products \('prod_a', 'prod_b'\)"):
        check_inputs(asn)


@pytest.mark.parametrize("field", ["product", "asn_id", "expname"])
@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../escape", "sub\\dir", " "])
def test_names_that_leave_output_dir_refused(dither_copy, field, name):
    """Products, asn_ids and exposure roots that are not plain file-name stems are refused, naming the ASN."""
    asn, cals = dither_copy
    content = json.loads(asn.read_text())
    if field == "product":
        content["products"][0]["name"] = name
    elif field == "asn_id":
        content["asn_id"] = name
    else:
        target = cals[0].parent / f"{name}_cal.fits"
        if "/" in name or "\\" in name:
            pytest.skip("a member path may have folders; only its file name makes the exposure root")
        shutil.copy(cals[0], target)
        content["products"][0]["members"][0]["expname"] = target.name
    asn.write_text(json.dumps(content))
    with pytest.raises(io.InputFileError, match=asn.name):
        check_campaign([str(asn)])
    with pytest.raises(io.InputFileError, match=asn.name):
        check_inputs(asn)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(min_size=1, max_size=12))
def test_accepted_names_stay_inside_output_dir(name):
    """Any name the association accepts is one entry directly inside the output folder."""
    out = Path("/srv/out")
    try:
        _safe_name(name, "product")
    except ValueError:
        return
    for path in (out / name, out / f"{name}_i2d.fits", out / "work" / "tweakreg" / f"{name}_sources.ecsv"):
        assert Path(os.path.normpath(path)).parent in (out, out / "work" / "tweakreg")


# --------------------------------------------------------------------------
# FITS checksums


def _with_checksums(path):
    with fits.open(path) as hdul:
        hdul.writeto(path, overwrite=True, checksum=True)


def _flip_sci_byte(path):
    with fits.open(path) as hdul:
        offset = hdul.fileinfo(hdul.index_of("SCI"))["datLoc"] + 4000
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def test_checksum_mismatch_named_by_reader(dither_copy):
    """A byte changed in SCI data fails DATASUM in read_exposure, naming file and HDU; the switch reads it anyway."""
    _, cals = dither_copy
    _with_checksums(cals[0])
    io.read_exposure(cals[0], verify_checksums=True)  # intact: passes
    _flip_sci_byte(cals[0])
    check_member_file(cals[0])  # headers alone cannot see it
    with pytest.raises(io.InputFileError, match=f"{cals[0].name}: HDU 1 \\(SCI\\): its data do not match DATASUM"):
        io.read_exposure(cals[0], arrays=("data",), with_wcs=False, verify_checksums=True)
    assert io.read_exposure(cals[0], verify_checksums=False).data.shape == (256, 256)


def test_checksums_verified_once_per_file_as_it_is(tmp_path, dither_copy):
    """With a records folder, a member that passes its checksums is recorded, and later reads of the same
    file (same size and modification time) skip the verification; a file changed since is verified again."""
    _, cals = dither_copy
    _with_checksums(cals[0])
    records = tmp_path / "records"
    io.read_exposure(cals[0], verify_checksums=records)
    (record,) = records.iterdir()
    assert record.name == f"{cals[0].name}.json"
    assert json.loads(record.read_text())[1:] == [cals[0].stat().st_size, cals[0].stat().st_mtime_ns]
    # damage that keeps size and time is on record as verified: not read again (the first job saw the file)
    stat = cals[0].stat()
    _flip_sci_byte(cals[0])
    os.utime(cals[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    io.read_exposure(cals[0], arrays=("data",), with_wcs=False, verify_checksums=records)
    # a file written since is verified again
    os.utime(cals[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(io.InputFileError, match="its data do not match DATASUM"):
        io.read_exposure(cals[0], arrays=("data",), with_wcs=False, verify_checksums=records)


def test_members_with_checksums_run_to_the_end(tmp_path, dither_copy):
    """Intact members carrying CHECKSUM/DATASUM, as MAST serves them, give every product: the _crf,
    contributions and mosaic made from them do not carry the inputs' checksums (which would not match
    them and stopped the resample jobs that verify the _crf)."""
    asn, cals = dither_copy
    for cal in cals:
        _with_checksums(cal)
    out = tmp_path / "out"
    proc = _run(f"asn={asn}", out, "qa_figures=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    products = [*out.glob("*_crf.fits"), *out.glob("*_i2d.fits"), *out.glob("*_segm.fits")]
    assert len(list(out.glob("*_crf.fits"))) == len(cals) and len(products) == len(cals) + 2
    for path in products:
        with fits.open(path) as hdul:
            for hdu in hdul:
                assert "CHECKSUM" not in hdu.header and "DATASUM" not in hdu.header, (path.name, hdu.name)
    # each member verified by its first reader and recorded, the later jobs trusting the record
    recorded = {p.name for p in (out / "work" / "checksums").iterdir()}
    assert {f"{c.name}.json" for c in cals} <= recorded


def test_checksum_mismatch_stops_first_job(tmp_path, dither_copy):
    """A damaged member with checksums stops the run in the first job that reads it; no product is made."""
    asn, cals = dither_copy
    for cal in cals:
        _with_checksums(cal)
    _flip_sci_byte(cals[1])
    out = tmp_path / "out"
    proc = _run(f"asn={asn}", out, "qa_figures=false")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    log = "".join(p.read_text() for p in out.rglob("*.log"))
    assert f"{cals[1].name}: HDU 1 (SCI): its data do not match DATASUM" in log + text
    assert list(out.glob("*_crf.fits")) == [] and list(out.glob("*_i2d.fits")) == []
