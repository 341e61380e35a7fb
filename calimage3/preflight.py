"""Checks on the inputs before any job starts.

The workflow calls `check_inputs` while building its DAG, so a missing
member, a corrupt file, a ``_cal`` without a WCS, an association without
science members or an exposure that overlaps no other stops the run with
one clear message naming the file, before any output exists.
"""

from pathlib import Path

import numpy as np

from . import io
from .association import single_exposure_association
from .assign_mtwcs import is_moving_target
from .wcs_tools import footprint, polygon_overlap_area

__all__ = ["check_inputs", "non_overlapping"]


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
    wcs_list, shapes, metas = [], [], []
    for member in asn.members:
        wcs, shape, meta = io.read_exposure_wcs(member.path)
        wcs_list.append(wcs)
        shapes.append(shape)
        metas.append(meta)
    try:
        is_moving_target(metas)
    except ValueError as exc:
        raise io.InputFileError(asn.path or path, str(exc)) from None
    lonely = non_overlapping([footprint(w, s) for w, s in zip(wcs_list, shapes)])
    if lonely:
        names = ", ".join(asn.members[i].path.name for i in lonely)
        raise io.InputFileError(asn.path or path, f"exposure(s) overlapping no other exposure on the sky: {names}")
    return asn
