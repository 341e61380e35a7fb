"""Checks on the inputs before any job starts.

The workflow calls `check_inputs` while building its DAG, so bad input
stops the run with one clear message naming the file, before any output
exists.  `check_campaign` does the same for every association of a
campaign (``--config asns=GLOB``) and checks that they can share one
output folder.

What is checked, in order:

1. the association: JSON, image3, exactly one product, science members,
   product name, ``asn_id`` and exposure roots that are plain file-name
   stems (no ``..``, no leading dot, no path separator), so that no path
   built from them leaves the output folder;
2. each member file, from its headers only (`check_member_file`): it
   exists, its size is what its headers declare (a truncated file is
   named without reading its data), it is readable FITS with a 2-D SCI
   image whose unit is MJy/sr, and it has a WCS and a sky footprint;
3. each association: one instrument, filter and pupil (unless
   ``allow_mixed_filters``), moving-target keywords that agree, and every
   exposure overlapping another on the sky;
4. the campaign: product names that differ and are not the shared
   folders, and one file for each exposure root.

Step 2 is what costs (opening every member); with ``cache_dir`` its
findings are kept in ``cache_dir/.calimage3/preflight.json``, keyed by the
file's resolved path, size, modification time and `CHECK_VERSION`, so a
later start reads only files that changed.  The FITS checksums of MAST
files are verified by the first job that reads the data
(`calimage3.io.read_exposure`, `calimage3.layout.checksum_records`).
"""

import glob
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from . import io
from .association import single_exposure_association
from .assign_mtwcs import targtype_is_moving
from .sky_geometry import polygon_overlap_area

__all__ = [
    "check_inputs",
    "check_campaign",
    "check_member_file",
    "resolve_asn_paths",
    "non_overlapping",
    "CHECK_VERSION",
    "CACHE_FILE",
]

# Top-level folders of a campaign output that no product may be named.
RESERVED_FOLDERS = ("work", "logs", "benchmarks")
# Bump when `check_member_file` checks more or records other keywords:
# every cached finding is then checked again.
CHECK_VERSION = 3
# The cache of member checks, relative to the output folder.
CACHE_FILE = ".calimage3/preflight.json"
# Keywords of each member the association checks need (recorded in the cache).
MEMBER_KEYWORDS = ("INSTRUME", "FILTER", "PUPIL", "BUNIT", "TARGTYPE", "MT_RA", "MT_DEC", "FILENAME")
# Keywords that must agree among the members of one product; the filter
# keywords may differ with allow_mixed_filters.
_SAME_INSTRUMENT = ("INSTRUME",)
_SAME_FILTER = ("FILTER", "PUPIL")
# SCI units the stage combines: JWST _cal files are in MJy/sr.
_SURFACE_BRIGHTNESS = "MJy/sr"
# Keywords the steps read as numbers (exposure times summed, times blended,
# photometric keywords) and as text (dates blended): when present, they
# must have that type, or a late job would fail on them.
_NUMBER_KEYWORDS = (
    "EXPTIME", "EFFEXPTM", "DURATION", "TMEASURE", "XPOSURE", "TELAPSE", "EXPSTART", "EXPMID", "EXPEND",
    "MJD-BEG", "MJD-END", "MJD-AVG", "TDB-BEG", "TDB-END", "TDB-MID", "PIXAR_SR", "PIXAR_A2", "PHOTMJSR", "PHOTUJA2",
)
_TEXT_KEYWORDS = ("DATE-OBS", "TIME-OBS", "DATE-BEG", "DATE-END")


def _unit_problem(bunit):
    """Why ``bunit`` is not MJy/sr, or None when it is (any spelling astropy reads as exactly MJy/sr)."""
    if bunit is None:
        return "SCI has no BUNIT: its unit is unknown (the stage combines MJy/sr, as in _cal files)"
    text = str(bunit).strip()
    if text == _SURFACE_BRIGHTNESS:
        return None
    import astropy.units as u  # only for unusual spellings: the import costs 0.2 s

    target = u.MJy / u.sr
    unit = None
    for fmt in ("fits", "generic"):
        try:
            unit = u.Unit(text, format=fmt)
            break
        except ValueError:
            continue
    if unit is not None and unit.is_equivalent(target) and math.isclose(unit.to(target), 1.0, rel_tol=1e-12):
        return None
    hint = " (a _rate file? the stage combines _cal files)" if "DN" in text.upper() else ""
    return f"SCI BUNIT is {text!r}, not a surface brightness in MJy/sr{hint}"


def _plain_value(value):
    """A header value as JSON can keep it (numbers, strings, booleans); others as text."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def check_member_file(path):
    """Check one member from its headers and return what the association checks need.

    Parameters
    ----------
    path : str or Path
        A ``_cal`` file.

    Returns
    -------
    dict
        ``footprint`` (list of ``[RA, Dec]`` vertices, degrees), ``shape``
        (``[ny, nx]``) and ``meta`` (the `MEMBER_KEYWORDS` present):
        plain JSON values, as kept in the cache.

    Raises
    ------
    calimage3.io.InputFileError
        Missing file; a size that differs from what its headers declare
        (truncated); unreadable FITS; no 2-D SCI image; a SCI unit that is
        not MJy/sr; an exposure-time, date or photometric keyword of the
        wrong type; no WCS.  Only headers are read.
    """
    polygon, shape, meta = io.read_exposure_footprint(path)
    if len(shape) != 2 or min(shape) < 1:
        raise io.InputFileError(path, f"SCI image has shape {tuple(shape)}: no pixels")
    problem = _unit_problem(meta.get("BUNIT"))
    if problem:
        raise io.InputFileError(path, problem)
    for key in _NUMBER_KEYWORDS:
        value = meta.get(key)
        if key in meta and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise io.InputFileError(path, f"keyword {key} = {value!r} is not a finite number")
    for key in _TEXT_KEYWORDS:
        if key in meta and not isinstance(meta[key], str):
            raise io.InputFileError(path, f"keyword {key} = {meta[key]!r} is not text")
    return {
        "footprint": np.asarray(polygon, float).tolist(),
        "shape": [int(n) for n in shape],
        "meta": {k: _plain_value(meta[k]) for k in MEMBER_KEYWORDS if k in meta},
    }


def _valid_entry(entry):
    """True when a cached finding has the shape `check_member_file` gives (a damaged cache is not trusted)."""
    try:
        footprint = np.asarray(entry["footprint"], float)
        return (footprint.ndim == 2 and footprint.shape[0] >= 3 and footprint.shape[1] == 2
                and np.all(np.isfinite(footprint)) and len(entry["shape"]) == 2
                and isinstance(entry["meta"], dict) and isinstance(entry["size"], int)
                and isinstance(entry["mtime_ns"], int))
    except (KeyError, TypeError, ValueError):
        return False


class _MemberChecks:
    """`check_member_file` once per file, with findings cached by path, size and mtime.

    The cache (`CACHE_FILE` under the output folder) holds ``files``
    (resolved path -> finding, size, mtime) and ``overlapping``: digests
    of member sets whose footprints were found to overlap, so a warm
    start needs no polygon geometry either.
    """

    def __init__(self, cache_dir):
        self.cache_path = Path(cache_dir) / CACHE_FILE if cache_dir else None
        cached = io.read_check_cache(self.cache_path, CHECK_VERSION) if self.cache_path else {}
        files, overlapping = cached.get("files"), cached.get("overlapping")
        self.cached = files if isinstance(files, dict) else {}
        self.cached_overlapping = {d for d in overlapping if isinstance(d, str)} if isinstance(overlapping, list) else set()
        self.entries = {}
        self.overlapping = set()
        self.identity = {}  # member path as named -> (resolved path, size, mtime_ns)
        self.resolved_folders = {}
        self.files_read = 0

    def __call__(self, path):
        identity = io.file_identity(path, self.resolved_folders)
        if identity is None:
            raise io.InputFileError(path, "file does not exist")
        key, size, mtime_ns = identity
        self.identity[str(path)] = identity
        entry = self.entries.get(key)
        if entry is not None:
            return entry
        entry = self.cached.get(key)
        if not (isinstance(entry, dict) and entry.get("size") == size and entry.get("mtime_ns") == mtime_ns
                and _valid_entry(entry)):
            entry = dict(check_member_file(path), size=size, mtime_ns=mtime_ns)
            self.files_read += 1
        self.entries[key] = entry
        return entry

    def resolved(self, path):
        """The file a member path resolves to (after the member was checked)."""
        return self.identity[str(path)][0]

    def lonely(self, paths, entries):
        """`non_overlapping` of members ``paths`` (their findings: ``entries``); skipped for a set seen overlapping."""
        digest = hashlib.sha1(json.dumps(sorted(self.identity[str(p)] for p in paths)).encode()).hexdigest()
        if digest in self.cached_overlapping or digest in self.overlapping:
            self.overlapping.add(digest)
            return []
        lonely = non_overlapping([np.asarray(e["footprint"], float) for e in entries])
        if not lonely:
            self.overlapping.add(digest)
        return lonely

    def save(self, complete):
        """Keep the findings for the next start.

        After a complete check (``complete``), or when a cache already
        exists (the output folder is in use): a failed first check leaves
        the output folder untouched.  Nothing is written when nothing
        changed (a warm start), and a complete check drops the findings
        on files no longer in the input.
        """
        if self.cache_path is None:
            return
        if complete:
            files, overlapping = self.entries, self.overlapping
            if self.files_read == 0 and files.keys() == self.cached.keys() and overlapping == self.cached_overlapping:
                return
        elif self.cache_path.is_file() and (self.files_read or self.overlapping - self.cached_overlapping):
            files, overlapping = {**self.cached, **self.entries}, self.cached_overlapping | self.overlapping
        else:
            return
        io.write_check_cache(self.cache_path, CHECK_VERSION, {"files": files, "overlapping": sorted(overlapping)})


def _unit_vectors(polygon):
    ra, dec = np.radians(polygon[:, 0]), np.radians(polygon[:, 1])
    return np.column_stack((np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)))


def _bounding_caps(footprints):
    """Centre (unit vector) and angular radius (radians) of a cap holding each polygon."""
    centres, radii = [], []
    for polygon in footprints:
        vectors = _unit_vectors(np.asarray(polygon, float))
        centre = vectors.sum(axis=0)
        centre /= np.linalg.norm(centre)
        centres.append(centre)
        radii.append(float(np.max(np.arccos(np.clip(vectors @ centre, -1.0, 1.0)))))
    return np.array(centres), np.array(radii)


def non_overlapping(footprints):
    """Indices of footprints that overlap no other footprint.

    Parameters
    ----------
    footprints : list of ndarray, shape (n, 2)
        Convex sky polygons (RA, Dec) in degrees.

    Returns
    -------
    list of int
        Empty when every footprint overlaps at least one other (or there is
        only one).

    Notes
    -----
    Stages: (1) a cap (centre, radius) around each polygon; (2) for each
    polygon not yet known to overlap another, the area of its
    intersection with the others whose caps meet its cap, nearest first,
    until one is not empty.  A polygon found overlapping as the partner
    of an earlier one is not searched again, so a dither of ``n``
    exposures needs at most ``n`` area computations (all pairs only when
    nothing overlaps).
    """
    n = len(footprints)
    if n < 2:
        return []
    centres, radii = _bounding_caps(footprints)
    separation = np.arccos(np.clip(centres @ centres.T, -1.0, 1.0))
    near = separation <= (radii[:, None] + radii[None, :]) * (1 + 1e-9) + 1e-12
    polygons = [np.asarray(f, float) for f in footprints]
    overlaps = np.zeros(n, bool)
    for i in range(n):
        if overlaps[i]:
            continue
        for j in np.argsort(separation[i], kind="stable"):  # nearest first: usually the first one overlaps
            if j != i and near[i, j] and polygon_overlap_area(polygons[i], polygons[j]) > 0:
                overlaps[i] = overlaps[j] = True
                break
    return [i for i in range(n) if not overlaps[i]]


def _odd_members(asn, metas, keys):
    """``(keyword, members with a value other than the most common, that value, the common one)``, or None."""
    for key in keys:
        values = [str(m.get(key, "")).strip().upper() for m in metas]
        if len(set(values)) < 2:
            continue
        common = max(dict.fromkeys(values), key=values.count)  # ties: the first member's value wins
        odd = [(asn.members[k].path, v) for k, v in enumerate(values) if v != common]
        return key, odd, common
    return None


def _check_same_setup(asn, metas, source, allow_mixed_filters):
    """One instrument, filter and pupil among the members of one product."""
    keys = _SAME_INSTRUMENT if allow_mixed_filters else _SAME_INSTRUMENT + _SAME_FILTER
    found = _odd_members(asn, metas, keys)
    if found is None:
        return
    key, odd, common = found
    path, value = odd[0]
    others = f" (and {len(odd) - 1} more member(s))" if len(odd) > 1 else ""
    hint = "" if key in _SAME_INSTRUMENT else "; set allow_mixed_filters: true to combine them anyway"
    raise io.InputFileError(path, f"{key} is {value or 'missing'!r} but the other members of product "
                                  f"{asn.product!r} ({source}) have {common or 'none'!r}{others}: one product "
                                  f"combines one {key.lower()}{hint}")


def _check_moving_target(asn, metas, source):
    """True for a moving-target association; mixed or incomplete moving-target keywords name the file."""
    flags = [targtype_is_moving(m) for m in metas]
    if any(flags) and not all(flags):
        odd = sum(flags) * 2 <= len(flags)  # the minority (moving ones on a tie) is named
        k = flags.index(odd)
        state = "is MOVING" if odd else f"is {metas[k].get('TARGTYPE')!r}, not MOVING,"
        raise io.InputFileError(asn.members[k].path, f"TARGTYPE {state} unlike the other members of product "
                                                     f"{asn.product!r} ({source}): one association cannot mix "
                                                     f"moving-target and fixed-target exposures")
    moving = all(flags)  # as calimage3.assign_mtwcs.is_moving_target, naming the file at fault
    if moving:
        for member, meta in zip(asn.members, metas):
            for key in ("MT_RA", "MT_DEC"):
                value = meta.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise io.InputFileError(member.path, f"TARGTYPE is MOVING but {key} = {value!r} is not a "
                                                         f"position in degrees")
    return moving


def _check_association(asn_path, member_checks, allow_mixed_filters):
    if not str(asn_path):
        raise io.InputFileError("config 'asn'", "no input given: pass --config asn=PATH (an image3 ASN JSON or one _cal.fits)")
    path = Path(asn_path)
    if path.suffix.lower() == ".json":
        asn = io.read_association(path)
    elif path.name.lower().endswith((".fits", ".fits.gz")):
        try:
            asn = single_exposure_association(path)
        except ValueError as exc:
            raise io.InputFileError(path, str(exc)) from None
    else:
        raise io.InputFileError(path, "input must be an image3 association (.json) or a _cal.fits file")
    source = asn.path or path
    # Footprints from the S_REGION keywords: the gwcs of every member would
    # be read at each start of Snakemake (a no-op rerun, each cluster job).
    entries = [member_checks(member.path) for member in asn.members]
    metas = [e["meta"] for e in entries]
    _check_same_setup(asn, metas, source, allow_mixed_filters)
    asn.moving_target = _check_moving_target(asn, metas, source)
    asn.footprints = {member.root: entry["footprint"] for member, entry in zip(asn.members, entries)}
    lonely = member_checks.lonely([m.path for m in asn.members], entries)
    if lonely:
        names = ", ".join(asn.members[i].path.name for i in lonely)
        raise io.InputFileError(source, f"exposure(s) overlapping no other exposure on the sky: {names}")
    return asn


def check_inputs(asn_path, *, cache_dir=None, allow_mixed_filters=False):
    """Validate the workflow input and return its association.

    Parameters
    ----------
    asn_path : str or Path
        An image3 association (``.json``) or a single ``_cal.fits``.
    cache_dir : str or Path or None
        The output folder: findings on each member file are cached in
        ``cache_dir/.calimage3/preflight.json`` (`CACHE_FILE`), and a later
        call reads only members whose size or modification time changed.
        None: no cache.
    allow_mixed_filters : bool
        Let one product combine members of different FILTER or PUPIL
        (different instruments are always an error).

    Returns
    -------
    calimage3.association.Association

    Raises
    ------
    calimage3.io.InputFileError
        Naming the file (or association) and what is wrong with it; see
        the module docstring for the checks.
    """
    member_checks = _MemberChecks(cache_dir)
    try:
        asn = _check_association(asn_path, member_checks, allow_mixed_filters)
    except io.InputFileError:
        member_checks.save(complete=False)
        raise
    member_checks.save(complete=True)
    return asn


def resolve_asn_paths(asns):
    """The association files a campaign names, in a stable order.

    Parameters
    ----------
    asns : str or list of str
        A glob of ASN JSON files, a folder (its ``*_asn.json`` files), or a
        list of paths, globs and folders.

    Returns
    -------
    list of Path
        Sorted within each entry, in the order of the entries; no duplicates
        (two names of one file count once).

    Raises
    ------
    calimage3.io.InputFileError
        When an entry (a glob, folder or file) matches no association file.
    """
    entries = [asns] if isinstance(asns, str) else list(asns or [])
    entries = [str(e) for e in entries if str(e).strip()]
    if not entries:
        raise io.InputFileError("config 'asns'", "no associations given: pass --config asns=GLOB (ASN JSON files)")
    paths, seen = [], set()
    for entry in entries:
        if Path(entry).is_dir():
            found = sorted(Path(entry).glob("*_asn.json"))
            what = "folder has no *_asn.json association files"
        elif glob.has_magic(entry):
            found = sorted(Path(p) for p in glob.glob(entry))
            what = "glob matches no association file"
        else:
            found = [Path(entry)]  # a missing file is reported by check_inputs
            what = ""
        if not found:
            raise io.InputFileError(entry, what)
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(p)
    return paths


def check_campaign(asns, *, cache_dir=None, allow_mixed_filters=False, skip_bad=False):
    """Validate every association of a campaign and return them.

    Parameters
    ----------
    asns : str or list of str
        As for `resolve_asn_paths`.
    cache_dir : str or Path or None
        As for `check_inputs`: the output folder, where the findings on
        each member are cached; a member shared by several associations
        is read once.
    allow_mixed_filters : bool
        As for `check_inputs`.
    skip_bad : bool
        Leave out, rather than stop at, an association that the checks of
        `check_inputs` refuse (one broken association must not stop a
        campaign).

    Returns
    -------
    associations : list of calimage3.association.Association
        One per file that passed the checks of `check_inputs`.
    rejected : dict
        Association file -> why it was refused (empty unless ``skip_bad``).

    Raises
    ------
    calimage3.io.InputFileError
        For the first bad association or member (unless ``skip_bad``); when
        every association was refused; when two associations have the same
        product name (they would share one folder), a product is named like
        a top-level folder of the output, or one exposure root names two
        different files.

    Notes
    -----
    Linear in the number of members: each member file is checked once
    (and, with a warm cache, only stat'ed), and the campaign-wide checks
    are dictionary look-ups.
    """
    member_checks = _MemberChecks(cache_dir)
    associations, rejected = [], {}
    try:
        for path in resolve_asn_paths(asns):
            try:
                associations.append(_check_association(path, member_checks, allow_mixed_filters))
            except io.InputFileError as exc:
                if not skip_bad:
                    raise
                rejected[str(path)] = str(exc)
        if not associations:
            reasons = "; ".join(rejected.values())
            raise io.InputFileError("config 'asns'", f"every association was refused: {reasons}")
        _check_shared_output(associations, member_checks.resolved)
    except io.InputFileError:
        member_checks.save(complete=False)
        raise
    member_checks.save(complete=True)
    return associations, rejected


def _check_shared_output(associations, resolved_paths):
    """Product names that differ and are not shared folders; one file per exposure root.

    ``resolved_paths`` gives the file each member path (as named) resolves to.
    """
    products, files = {}, {}
    for asn in associations:
        source = asn.path or asn.members[0].path
        if asn.product in RESERVED_FOLDERS:
            raise io.InputFileError(source, f"product name {asn.product!r} is reserved for the shared "
                                            f"{asn.product}/ folder of a campaign")
        if asn.product in products:
            raise io.InputFileError(source, f"product {asn.product!r} is also the product of "
                                            f"{products[asn.product]}; each association needs its own product name")
        products[asn.product] = source
        for member in asn.members:
            resolved = resolved_paths(member.path)
            known = files.setdefault(member.root, (member.path, resolved))
            if known[1] != resolved:
                raise io.InputFileError(source, f"exposure {member.root!r} is {member.path} here but {known[0]} "
                                                f"in another association")
