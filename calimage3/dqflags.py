"""JWST data-quality bit definitions (the ``pixel`` flags of the JWST pipeline)."""

import numpy as np

__all__ = ["PIXEL", "interpret_bit_flags", "good_pixel_mask"]

PIXEL = {
    "GOOD": 0,
    "DO_NOT_USE": 1 << 0,
    "SATURATED": 1 << 1,
    "JUMP_DET": 1 << 2,
    "DROPOUT": 1 << 3,
    "OUTLIER": 1 << 4,
    "PERSISTENCE": 1 << 5,
    "AD_FLOOR": 1 << 6,
    "CHARGELOSS": 1 << 7,
    "UNRELIABLE_ERROR": 1 << 8,
    "NON_SCIENCE": 1 << 9,
    "DEAD": 1 << 10,
    "HOT": 1 << 11,
    "WARM": 1 << 12,
    "LOW_QE": 1 << 13,
    "RC": 1 << 14,
    "TELEGRAPH": 1 << 15,
    "NONLINEAR": 1 << 16,
    "BAD_REF_PIXEL": 1 << 17,
    "NO_FLAT_FIELD": 1 << 18,
    "NO_GAIN_VALUE": 1 << 19,
    "NO_LIN_CORR": 1 << 20,
    "NO_SAT_CHECK": 1 << 21,
    "UNRELIABLE_BIAS": 1 << 22,
    "UNRELIABLE_DARK": 1 << 23,
    "UNRELIABLE_SLOPE": 1 << 24,
    "UNRELIABLE_FLAT": 1 << 25,
    "OPEN": 1 << 26,
    "ADJ_OPEN": 1 << 27,
    "FLUX_ESTIMATED": 1 << 28,
    "MSA_FAILED_OPEN": 1 << 29,
    "OTHER_BAD_PIXEL": 1 << 30,
    "REFERENCE_PIXEL": 1 << 31,
}


def interpret_bit_flags(good_bits):
    """Turn a JWST ``good_bits`` specification into an integer bit mask.

    Parameters
    ----------
    good_bits : int, str or None
        An integer, a string of integers or flag names joined by ``+`` or
        ``,`` (``"~DO_NOT_USE+NON_SCIENCE"`` inverts), or None for "no bit
        is good".

    Returns
    -------
    int
        The bits that count as good; a pixel is usable when
        ``dq & ~good == 0``.
    """
    if good_bits is None:
        return 0
    if isinstance(good_bits, (int,)) and not isinstance(good_bits, bool):
        return int(good_bits)
    text = str(good_bits).strip()
    if text.lower() in ("", "none"):
        return 0
    invert = text.startswith("~")
    text = text.lstrip("~")
    value = 0
    for token in text.replace(",", "+").split("+"):
        token = token.strip()
        if not token:
            continue
        if token.isdigit():
            value |= int(token)
        elif token.upper() in PIXEL:
            value |= PIXEL[token.upper()]
        else:
            raise ValueError(f"good_bits: unknown DQ flag {token!r} in {good_bits!r}")
    if invert:
        value = ~value & 0xFFFFFFFF
    return value


def good_pixel_mask(dq, good_bits="~DO_NOT_USE+NON_SCIENCE"):
    """Boolean mask of usable pixels.

    Parameters
    ----------
    dq : ndarray of uint32
        Data-quality array.
    good_bits : int or str
        Bits that may be set on a usable pixel (see `interpret_bit_flags`).
        The JWST default ``"~DO_NOT_USE+NON_SCIENCE"`` accepts every bit but
        those two.

    Returns
    -------
    ndarray of bool
        Same shape as ``dq``; True where the pixel may be used.
    """
    good = interpret_bit_flags(good_bits)
    return (np.asarray(dq).astype(np.uint32) & ~np.uint32(good)) == 0
