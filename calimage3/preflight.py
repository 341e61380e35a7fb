"""Checks on the inputs before any job starts.

The workflow calls `check_inputs` while building its DAG, so a missing
member, a corrupt file, a ``_cal`` without a WCS, an association without
science members or an exposure that overlaps no other stops the run with
one clear message naming the file, before any output exists.
`check_campaign` does the same for every association of a campaign
(``--config asns=GLOB``) and checks that they can share one output folder.
"""

import glob
from pathlib import Path

import numpy as np

from . import io
from .association import single_exposure_association
from .assign_mtwcs import is_moving_target
from .sky_geometry import polygon_overlap_area

__all__ = ["check_inputs", "check_campaign", "resolve_asn_paths", "non_overlapping"]

# Top-level folders of a campaign output that no product may be named.
RESERVED_FOLDERS = ("work", "logs", "benchmarks")


def non_overlapping(footprints):
    """Indices of footprints that overlap no other footprint.

    Parameters
    ----------
    footprints : list of ndarray, shape (4, 2)
        Sky polygons (RA, Dec) in degrees.

    Returns
    -------
    list of int
        Empty when every footprint overlaps at least one other (or there is
        only one).
    """
    n = len(footprints)
    if n < 2:
        return []
    overlaps = np.zeros(n, bool)
    for i in range(n):
        for j in range(i + 1, n):
            if polygon_overlap_area(footprints[i], footprints[j]) > 0:
                overlaps[i] = overlaps[j] = True
    return [i for i in range(n) if not overlaps[i]]


def check_inputs(asn_path):
    """Validate the workflow input and return its association.

    Parameters
    ----------
    asn_path : str or Path
        An image3 association (``.json``) or a single ``_cal.fits``.

    Returns
    -------
    calimage3.association.Association

    Raises
    ------
    calimage3.io.InputFileError
        Naming the file and what is wrong with it.
    """
    if not str(asn_path):
        raise io.InputFileError("config 'asn'", "no input given: pass --config asn=PATH (an image3 ASN JSON or one _cal.fits)")
    path = Path(asn_path)
    if path.suffix.lower() == ".json":
        asn = io.read_association(path)
    elif path.name.lower().endswith((".fits", ".fits.gz")):
        asn = single_exposure_association(path)
    else:
        raise io.InputFileError(path, "input must be an image3 association (.json) or a _cal.fits file")
    # Footprints from the S_REGION keywords: the gwcs of every member would
    # be read at each start of Snakemake (a no-op rerun, each cluster job).
    footprints, metas = [], []
    for member in asn.members:
        polygon, _, meta = io.read_exposure_footprint(member.path)
        footprints.append(polygon)
        metas.append(meta)
    try:
        asn.moving_target = is_moving_target(metas)
    except ValueError as exc:
        raise io.InputFileError(asn.path or path, str(exc)) from None
    lonely = non_overlapping(footprints)
    if lonely:
        names = ", ".join(asn.members[i].path.name for i in lonely)
        raise io.InputFileError(asn.path or path, f"exposure(s) overlapping no other exposure on the sky: {names}")
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
        Sorted within each entry, in the order of the entries; no duplicates.

    Raises
    ------
    calimage3.io.InputFileError
        When an entry (a glob, folder or file) matches no association file.
    """
    entries = [asns] if isinstance(asns, str) else list(asns or [])
    entries = [str(e) for e in entries if str(e).strip()]
    if not entries:
        raise io.InputFileError("config 'asns'", "no associations given: pass --config asns=GLOB (ASN JSON files)")
    paths = []
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
            if p.resolve() not in [q.resolve() for q in paths]:
                paths.append(p)
    return paths


def check_campaign(asns, *, skip_bad=False):
    """Validate every association of a campaign and return them.

    Parameters
    ----------
    asns : str or list of str
        As for `resolve_asn_paths`.
    skip_bad : bool
        Leave out, rather than stop at, an association that `check_inputs`
        refuses (one broken association must not stop a campaign).

    Returns
    -------
    associations : list of calimage3.association.Association
        One per file that passed `check_inputs`.
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
    """
    associations, rejected = [], {}
    for path in resolve_asn_paths(asns):
        try:
            associations.append(check_inputs(path))
        except io.InputFileError as exc:
            if not skip_bad:
                raise
            rejected[str(path)] = str(exc)
    if not associations:
        reasons = "; ".join(rejected.values())
        raise io.InputFileError("config 'asns'", f"every association was refused: {reasons}")
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
            known = files.setdefault(member.root, member.path)
            if Path(known).resolve() != Path(member.path).resolve():
                raise io.InputFileError(source, f"exposure {member.root!r} is {member.path} here but {known} "
                                                f"in another association")
    return associations, rejected
