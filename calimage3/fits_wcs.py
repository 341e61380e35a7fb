"""A product's FITS header WCS in place of its gwcs, where the two agree exactly.

A JWST product's SCI header carries a TAN(-SIP) approximation of the gwcs in
its ASDF extension, and ``SIPMXERR`` records the approximation's largest
error over the image, in pixels (gwcs ``to_fits_sip``).  A resampled
mosaic's gwcs is a plain tangent-plane projection, so its header needs no
SIP terms and reproduces it to rounding error.  Coordinates on such a
mosaic can then come from ``astropy.wcs`` without deserializing the gwcs,
whose asdf extensions take about a second to load in each process.
"""

import warnings

import numpy as np
from astropy.wcs import WCS, FITSFixedWarning

__all__ = ["exact_fits_wcs"]

# Keywords that add distortion to a TAN header (SIP, lookup tables).
_DISTORTION_KEYWORDS = ("A_ORDER", "B_ORDER", "AP_ORDER", "BP_ORDER", "CPDIS1", "CPDIS2", "D2IMDIS1", "D2IMDIS2")


def exact_fits_wcs(header, max_pix_error=1e-4):
    """The celestial WCS of a SCI header when it is exact, else None.

    Parameters
    ----------
    header : astropy.io.fits.Header
        WCS keywords of a product's SCI header, with the ``SIPMXERR`` that
        gwcs ``to_fits_sip`` wrote.
    max_pix_error : float
        Largest ``SIPMXERR`` accepted, pixels.

    Returns
    -------
    astropy.wcs.WCS or None
        A pure TAN (``RA---TAN``/``DEC--TAN``, no distortion) WCS whose
        recorded error is at most ``max_pix_error``; it maps zero-based
        pixels to ICRS through ``pixel_to_world_values`` as the gwcs does.
        None for anything else (SIP terms, another projection, no
        ``SIPMXERR``): use the gwcs then.

    Notes
    -----
    Restricted to headers without SIP terms: a linear-plus-TAN fit that
    matches the gwcs at gwcs' 64 x 64 check points to ``max_pix_error`` is
    the same transform everywhere, whereas a polynomial fit is only known
    to match at those points.
    """
    try:
        error = float(header["SIPMXERR"])
    except (KeyError, TypeError, ValueError):
        return None
    if not np.isfinite(error) or error > max_pix_error:
        return None
    if (str(header.get("CTYPE1", "")), str(header.get("CTYPE2", ""))) != ("RA---TAN", "DEC--TAN"):
        return None
    if any(key in header for key in _DISTORTION_KEYWORDS):
        return None
    if str(header.get("RADESYS", "ICRS")).strip().upper() != "ICRS":
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2)
