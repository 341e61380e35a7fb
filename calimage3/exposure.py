"""In-memory form of one calibrated (``_cal``) or resampled exposure."""

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Exposure", "VARIANCE_NAMES"]

VARIANCE_NAMES = ("var_poisson", "var_rnoise", "var_flat")


@dataclass
class Exposure:
    """Arrays, WCS and metadata of one imaging exposure.

    Attributes
    ----------
    data : ndarray of float32, shape (ny, nx)
        Science array (SCI), surface brightness in MJy/sr.
    err : ndarray of float32
        Total 1-sigma uncertainty (ERR), same shape and units as ``data``.
    dq : ndarray of uint32
        Data-quality flags (DQ), JWST bit definitions.
    wcs : gwcs.WCS
        Pixel (x, y; zero-based) to ICRS (RA, Dec in degrees).
    meta : dict
        Primary and SCI header keywords that the steps use or carry along
        (``EXPTIME``, ``PHOTMJSR``, ``PIXAR_SR``, ``BKGLEVEL``, ...).
    var_poisson, var_rnoise, var_flat : ndarray of float32 or None
        Variance components, (MJy/sr)**2.
    area : ndarray of float32 or None
        Relative pixel area (AREA).
    name : str
        File name the exposure came from, for messages and provenance.
    wcs_source : str
        ``"asdf"`` or ``"sip"``: where the WCS was read from.
    """

    data: np.ndarray
    err: np.ndarray
    dq: np.ndarray
    wcs: object
    meta: dict = field(default_factory=dict)
    var_poisson: np.ndarray | None = None
    var_rnoise: np.ndarray | None = None
    var_flat: np.ndarray | None = None
    area: np.ndarray | None = None
    name: str = ""
    wcs_source: str = "asdf"

    @property
    def shape(self):
        """Array shape ``(ny, nx)``."""
        return self.data.shape
