"""Fuzzing one member's headers and bytes: the input check or the job readers name the file, or all pass.

Each example damages one member of a 3-exposure association (a keyword
deleted or given a value of another type, a structural card rewritten,
the file truncated, garbage written over part of an HDU or appended) and
runs what a workflow start and its jobs would: `check_inputs`, then, if
that passes, the readers the science jobs use (`read_exposure` with
checksum verification, `read_exposure_wcs`).  Every outcome must be a
pass or an `InputFileError` naming the damaged file; anything else (a
bare exception from deep inside a library) fails the test.  The member
carries FITS checksums, as MAST files do, so damage to data that no
header check can see is caught by the first job that reads it.
"""

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from astropy.io import fits
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from calimage3 import io
from calimage3.preflight import check_inputs
from calimage3.simulate import simulate_dither

# Keywords the input check and the job readers use, by HDU.
KEYWORDS = [(0, k) for k in ("INSTRUME", "FILTER", "PUPIL", "TARGTYPE", "MT_RA", "EXPTIME", "EFFEXPTM", "EXPSTART",
                              "DATE-OBS")] + \
           [("SCI", k) for k in ("BUNIT", "S_REGION", "CTYPE1", "CRVAL1", "CRPIX2", "CD1_1", "EXTNAME", "PIXAR_SR",
                                 "PHOTMJSR")]
# Cards that fix the layout, rewritten in the raw bytes (astropy would not write them wrong).
STRUCTURAL = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT", "END")

values = st.one_of(
    st.integers(-10**9, 10**9),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)
mutations = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(KEYWORDS), st.booleans()),
    st.tuples(st.just("set"), st.sampled_from(KEYWORDS), st.booleans(), values),
    st.tuples(st.just("card"), st.integers(0, 8), st.sampled_from(STRUCTURAL),
              st.binary(min_size=0, max_size=70)),
    st.tuples(st.just("truncate"), st.floats(0.0, 0.9999)),
    st.tuples(st.just("garbage"), st.integers(0, 8), st.booleans(), st.floats(0.0, 1.0),
              st.binary(min_size=1, max_size=200)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=6000)),
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Three small overlapping exposures; the first carries FITS checksums. Returns (folder, asn name, target name)."""
    folder = tmp_path_factory.mktemp("fuzz")
    sim = simulate_dither(folder, n_exposures=3, shape=(128, 128), n_stars=30, n_galaxies=2, seed=11)
    target = Path(sim["cal"][0])
    with fits.open(target) as hdul:
        hdul.writeto(target, overwrite=True, checksum=True)
    return folder, Path(sim["asn"]).name, target.name


def _layout(path):
    with fits.open(path) as hdul:
        return [hdul.fileinfo(i) for i in range(len(hdul))]


def _apply(path, mutation):
    """Damage ``path`` in place as ``mutation`` says."""
    kind = mutation[0]
    if kind in ("delete", "set"):
        # an edited header with its checksums updated, or left stale (they then fail verification)
        (ext, key), update_checksums = mutation[1], mutation[2]
        with fits.open(path) as hdul:
            header = hdul[ext].header
            if kind == "delete":
                assume(key in header)
                del header[key]
            else:
                try:
                    header[key] = mutation[3]
                except (ValueError, TypeError):
                    assume(False)  # astropy will not write such a value: not a file one can meet
            hdul.writeto(path, overwrite=True, checksum=update_checksums, output_verify="silentfix")
        return
    raw = bytearray(path.read_bytes())
    layout = _layout(path)
    if kind == "card":
        _, index, key, text = mutation
        assume(index < len(layout))
        start, end = layout[index]["hdrLoc"], layout[index]["datLoc"]
        cards = [start + i for i in range(0, end - start, 80) if raw[start + i:start + i + 8].rstrip() == key.encode()]
        assume(cards)
        pos = cards[0] + (0 if key == "END" else 10)
        raw[pos:pos + len(text)] = text
    elif kind == "truncate":
        raw = raw[: int(mutation[1] * len(raw))]
    elif kind == "garbage":
        _, index, in_header, where, junk = mutation
        assume(index < len(layout))
        info = layout[index]
        start, length = (info["hdrLoc"], info["datLoc"] - info["hdrLoc"]) if in_header else \
            (info["datLoc"], info["datSpan"])
        assume(length > 0)
        pos = start + int(where * max(length - len(junk), 0))
        raw[pos:pos + len(junk)] = junk
    else:
        raw += mutation[1]
    path.write_bytes(bytes(raw))


def _named(exc, name):
    return isinstance(exc, io.InputFileError) and re.search(re.escape(name), str(exc))


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(mutation=mutations)
@example(mutation=("card", 7, "END", b"\x00"))  # found by this test: the data read as more header
@example(mutation=("truncate", 0.5))
@example(mutation=("set", ("SCI", "BUNIT"), True, "DN/s"))
@example(mutation=("garbage", 1, False, 0.5, b"\xff" * 64))  # data damage only the checksum sees
def test_damaged_member_is_named_or_harmless(pristine, mutation):
    """Every damaged member is refused by the check or the readers naming it, or reads as a complete exposure."""
    folder, asn_name, target_name = pristine
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "data"
        shutil.copytree(folder, work, ignore=shutil.ignore_patterns("truth"))
        target = work / target_name
        before = target.read_bytes()
        _apply(target, mutation)
        assume(target.read_bytes() != before)
        try:
            check_inputs(work / asn_name, cache_dir=Path(tmp) / "out")
        except Exception as exc:  # noqa: BLE001 - the point is which exceptions come out
            assert _named(exc, target_name), f"{mutation!r}: {type(exc).__name__}: {exc}"
            event(f"{mutation[0]}: refused by the check")
            return
        try:
            exposure = io.read_exposure(target, verify_checksums=True)
            io.read_exposure_wcs(target)
        except Exception as exc:  # noqa: BLE001
            assert _named(exc, target_name), f"{mutation!r} passed the check, then {type(exc).__name__}: {exc}"
            event(f"{mutation[0]}: refused by a reader")
            return
        event(f"{mutation[0]}: read as a complete exposure")
        assert exposure.data.shape == exposure.err.shape == (128, 128)
