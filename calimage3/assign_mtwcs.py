"""assign_mtwcs: a common WCS frame for moving-target exposures.

For a moving target (TARGTYPE ``MOVING``) each exposure records the
target's position at that exposure (``MT_RA``, ``MT_DEC``).  The step
shifts every exposure's WCS so the target lands at the mean of those
positions (``MT_AVRA``, ``MT_AVDEC``); the exposures then stack on the
target instead of the stars.  For fixed targets it does nothing.

As in JWST's ``Image3Pipeline``, moving-target exposures get assign_mtwcs
*instead of* tweakreg: fitting the stars would move every WCS back onto
the sky frame and smear the target.  tweakreg passes their WCSs through
with ``S_TWKREG = SKIPPED`` and `MOVING_TARGET_REASON` in ``TWKREASN``.
"""

import numpy as np

from .sky_geometry import from_tangent_plane, to_tangent_plane

__all__ = ["MOVING_TARGET_REASON", "targtype_is_moving", "is_moving_target", "moving_target_wcs_assigned",
           "assign_moving_target_wcs"]

# Why tweakreg leaves moving-target exposures alone (its TWKREASN keyword):
# as in JWST's Image3Pipeline, assign_mtwcs runs instead of tweakreg, since
# aligning on the stars would undo the alignment on the target.
MOVING_TARGET_REASON = "moving target: assign_mtwcs used"


def targtype_is_moving(meta):
    """True when an exposure's TARGTYPE says moving target (any case, blanks ignored)."""
    return str(meta.get("TARGTYPE", "")).strip().upper() == "MOVING"


def moving_target_wcs_assigned(info_list):
    """True when assign_mtwcs moved these WCSs onto a moving target (``S_MTWCS`` COMPLETE)."""
    return any(str(info.get("S_MTWCS", "")).strip().upper() == "COMPLETE" for info in info_list)


def is_moving_target(meta_list):
    """True when every exposure is a moving-target exposure with MT_RA/MT_DEC.

    Raises
    ------
    ValueError
        When only some exposures are marked moving, or a moving exposure
        lacks its target position.
    """
    moving = [targtype_is_moving(m) for m in meta_list]
    if not any(moving):
        return False
    if not all(moving):
        raise ValueError("association mixes moving-target and fixed-target exposures")
    for m in meta_list:
        if m.get("MT_RA") is None or m.get("MT_DEC") is None:
            raise ValueError(f"{m.get('FILENAME', 'exposure')}: TARGTYPE is MOVING but MT_RA/MT_DEC are missing")
    return True


def assign_moving_target_wcs(wcs_list, mt_ra, mt_dec):
    """Shift each WCS so the moving target sits at its mean position.

    Parameters
    ----------
    wcs_list : list of gwcs.WCS
        One WCS per exposure.
    mt_ra, mt_dec : array-like
        Target position at each exposure, degrees.

    Returns
    -------
    wcs_list : list of gwcs.WCS
        Corrected WCSs (new objects).
    mt_avra, mt_avdec : float
        Mean target position, degrees.

    Notes
    -----
    The mean is taken in the tangent plane at the first target position, and
    each exposure is shifted in the plane tangent at the mean, so the result
    is exact for any separation that fits in an image.
    """
    # Imported here: the rest of this module (is_moving_target) runs in the
    # input checks at every Snakemake start, which should not import gwcs.
    from .wcs_tools import tangent_plane_correction

    mt_ra = np.atleast_1d(np.asarray(mt_ra, dtype=float))
    mt_dec = np.atleast_1d(np.asarray(mt_dec, dtype=float))
    if not (len(wcs_list) == len(mt_ra) == len(mt_dec)):
        raise ValueError("assign_moving_target_wcs: one MT_RA/MT_DEC per WCS is required")
    xi, eta = to_tangent_plane(mt_ra, mt_dec, mt_ra[0], mt_dec[0])
    avra, avdec = (float(v) for v in from_tangent_plane(np.mean(xi), np.mean(eta), mt_ra[0], mt_dec[0]))
    txi, teta = to_tangent_plane(mt_ra, mt_dec, avra, avdec)
    corrected = [
        tangent_plane_correction(wcs, avra, avdec, np.eye(2), [-dxi, -deta])
        for wcs, dxi, deta in zip(wcs_list, txi, teta)
    ]
    return corrected, avra, avdec
