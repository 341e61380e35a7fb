"""The input checks at each Snakemake start: cached by path, size and mtime; linear in the campaign size."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from calimage3 import io, preflight
from calimage3.preflight import CACHE_FILE, check_campaign, non_overlapping, resolve_asn_paths
from calimage3.sky_geometry import polygon_overlap_area


@pytest.fixture
def campaign(tmp_path, small_dither):
    """Two ASNs over a private copy of the small dither set, sharing two exposures: (glob, cal paths, out)."""
    data = tmp_path / "data"
    shutil.copytree(small_dither["asn"].parent, data)
    template = json.loads((data / small_dither["asn"].name).read_text())
    (data / small_dither["asn"].name).unlink()
    members = template["products"][0]["members"]
    for k, group in enumerate(((0, 1, 2), (1, 2, 3)), start=1):
        content = dict(template, asn_id=f"a300{k}",
                       products=[{"name": f"prod{k}", "members": [members[i] for i in group]}])
        (data / f"c{k}_asn.json").write_text(json.dumps(content))
    return f"{data}/*_asn.json", [data / p.name for p in small_dither["cal"]], tmp_path / "out"


@pytest.fixture
def footprint_reads(monkeypatch):
    """Count the member files the checks open (names, in order)."""
    reads = []
    real = io.read_exposure_footprint

    def counting(path):
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(io, "read_exposure_footprint", counting)
    return reads


def _summary(associations):
    return [(a.product, a.asn_id, a.roots, [str(m.path) for m in a.members], a.moving_target) for a in associations]


def test_cold_check_reads_each_file_once_and_caches(campaign, footprint_reads):
    """Four files in two ASNs (two shared) are read once each, and the cache holds the four."""
    pattern, cals, out = campaign
    check_campaign(pattern, cache_dir=out)
    assert sorted(footprint_reads) == sorted(p.name for p in cals)
    cached = io.read_check_cache(out / CACHE_FILE, preflight.CHECK_VERSION)
    assert sorted(cached["files"]) == sorted(str(p.resolve()) for p in cals)
    assert len(cached["overlapping"]) == 2  # one verdict per association


def test_warm_check_reads_no_fits_file(campaign, monkeypatch):
    """A second start with nothing changed opens no FITS file, redoes no geometry, returns the same associations."""
    pattern, _, out = campaign
    cold, _ = check_campaign(pattern, cache_dir=out)

    def refuse(*args, **kwargs):
        raise AssertionError("a FITS file was read on a warm start")

    monkeypatch.setattr(io, "read_exposure_footprint", refuse)
    monkeypatch.setattr(io, "_open_fits", refuse)
    monkeypatch.setattr(io, "fits_layout_problem", refuse)
    monkeypatch.setattr(fits, "open", refuse)
    monkeypatch.setattr(preflight, "non_overlapping", refuse)
    assert _summary(check_campaign(pattern, cache_dir=out)[0]) == _summary(cold)


def test_touched_file_is_rechecked(campaign, footprint_reads):
    """A member whose modification time changed is read again, and only it."""
    pattern, cals, out = campaign
    check_campaign(pattern, cache_dir=out)
    footprint_reads.clear()
    stat = cals[2].stat()
    os.utime(cals[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    check_campaign(pattern, cache_dir=out)
    assert footprint_reads == [cals[2].name]


@pytest.mark.parametrize("damage", ["truncate", "rate_unit"])
def test_newly_damaged_file_is_caught(campaign, damage):
    """A member damaged after a clean check is caught on the next start, named."""
    pattern, cals, out = campaign
    check_campaign(pattern, cache_dir=out)
    if damage == "truncate":
        cals[1].write_bytes(cals[1].read_bytes()[: cals[1].stat().st_size // 2])
        expected = "truncated"
    else:
        with fits.open(cals[1]) as hdul:
            hdul["SCI"].header["BUNIT"] = "DN/s"
            hdul.writeto(cals[1], overwrite=True)
        expected = "DN/s"
    with pytest.raises(io.InputFileError, match=f"{cals[1].name}: .*{expected}"):
        check_campaign(pattern, cache_dir=out)


def test_moved_footprint_is_rechecked(campaign):
    """A member replaced by one elsewhere on the sky fails the overlap check although its association passed before."""
    pattern, cals, out = campaign
    check_campaign(pattern, cache_dir=out)
    with fits.open(cals[0]) as hdul:
        hdul["SCI"].header["S_REGION"] = "POLYGON ICRS 120.0 10.0 120.01 10.0 120.01 10.01 120.0 10.01"
        hdul.writeto(cals[0], overwrite=True)
    with pytest.raises(io.InputFileError, match=f"overlapping no other exposure on the sky: {cals[0].name}"):
        check_campaign(pattern, cache_dir=out)


def test_failed_check_keeps_the_good_files_cached(campaign, footprint_reads):
    """After a failure in a used output folder, fixing the file makes the next start read only it."""
    pattern, cals, out = campaign
    check_campaign(pattern, cache_dir=out)
    good = cals[3].read_bytes()
    cals[3].write_bytes(good[:5000])
    with pytest.raises(io.InputFileError, match=cals[3].name):
        check_campaign(pattern, cache_dir=out)
    cals[3].write_bytes(good)
    footprint_reads.clear()
    check_campaign(pattern, cache_dir=out)
    assert footprint_reads == [cals[3].name]


def test_failed_first_check_writes_nothing(campaign):
    """A campaign refused on its first start leaves no output folder (not even the cache)."""
    pattern, cals, out = campaign
    cals[0].unlink()
    with pytest.raises(io.InputFileError, match="file does not exist"):
        check_campaign(pattern, cache_dir=out)
    assert not out.exists()


@pytest.mark.parametrize("content", [
    b"\x00\xffnot json",
    f'{{"version": {preflight.CHECK_VERSION}, "entries": '.encode(),
    b'["a list"]',
    f'{{"version": {preflight.CHECK_VERSION - 1}, "entries": {{}}}}'.encode(),
    f'{{"version": {preflight.CHECK_VERSION}, "entries": {{"files": [1, 2], "overlapping": 5}}}}'.encode(),
    f'{{"version": {preflight.CHECK_VERSION}, "entries": {{"files": {{"x": 1}}, "overlapping": [[1], {{}}]}}}}'.encode(),
    "entry",
])
def test_corrupt_cache_is_ignored(campaign, footprint_reads, content):
    """A damaged cache (bytes, truncated JSON, another version, a malformed entry) only costs a full check."""
    pattern, cals, out = campaign
    check_campaign(pattern, cache_dir=out)
    cache = out / CACHE_FILE
    if content == "entry":
        whole = json.loads(cache.read_text())
        first = sorted(whole["entries"]["files"])[0]
        whole["entries"]["files"][first]["footprint"] = [[0, "x"]]
        cache.write_text(json.dumps(whole))
        expected = [Path(first).name]
    else:
        cache.write_bytes(content)
        expected = sorted(p.name for p in cals)
    footprint_reads.clear()
    check_campaign(pattern, cache_dir=out)
    assert sorted(footprint_reads) == expected
    assert len(io.read_check_cache(cache, preflight.CHECK_VERSION)["files"]) == 4


def test_unwritable_cache_is_not_fatal(campaign):
    """When the cache cannot be written the check still passes."""
    pattern, _, out = campaign
    out.mkdir()
    (out / ".calimage3").write_text("a file where the cache folder goes")
    assert len(check_campaign(pattern, cache_dir=out)) == 2


def test_same_file_named_twice_counts_once(tmp_path, campaign):
    """Two names (a symlink) of one ASN file resolve to one association."""
    pattern, _, _ = campaign
    first = sorted(Path(p) for p in __import__("glob").glob(pattern))[0]
    link = tmp_path / "link_asn.json"
    link.symlink_to(first)
    assert resolve_asn_paths([str(first), str(link)]) == [first]


def _square(ra, dec, size):
    return np.array([[ra, dec], [ra + size, dec], [ra + size, dec + size], [ra, dec + size]])


def _lonely_by_all_pairs(footprints):
    n = len(footprints)
    hit = [any(polygon_overlap_area(footprints[i], footprints[j]) > 0 for j in range(n) if j != i) for i in range(n)]
    return [i for i in range(n) if not hit[i]]


@pytest.mark.parametrize("seed", range(5))
def test_non_overlapping_matches_all_pairs(seed):
    """The cap-pruned overlap check finds exactly the footprints the all-pairs check finds."""
    rng = np.random.default_rng(seed)
    footprints = [_square(ra, dec, 0.02) for ra, dec in zip(rng.uniform(359.9, 360.1, 25) % 360,
                                                             rng.uniform(-0.1, 0.1, 25))]
    assert non_overlapping(footprints) == _lonely_by_all_pairs(footprints)


def test_non_overlapping_computes_about_n_areas(monkeypatch):
    """A dither of 64 overlapping exposures needs at most 2n polygon intersections, not n(n-1)/2."""
    calls = []

    def counting(a, b):
        calls.append(1)
        return polygon_overlap_area(a, b)

    monkeypatch.setattr(preflight, "polygon_overlap_area", counting)
    footprints = [_square(53.0 + 0.001 * k, -27.8, 0.03) for k in range(64)]
    assert non_overlapping(footprints) == []
    assert len(calls) <= 2 * 64
