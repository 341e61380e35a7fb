"""Which pixels of an exposure may be used at all: inside its WCS bounding box and not NON_SCIENCE.

Every step that takes numbers from an exposure's pixels (tweakreg source
detection, skymatch statistics, the outlier-detection singles and flags,
the mosaic) builds its mask of usable pixels here, so that the pixels
outside the bounding box of the exposure's gwcs (MIRI's coronagraph and
Lyot regions, for one) and those flagged NON_SCIENCE are left out
everywhere, whatever a step's ``good_bits`` say and whether or not the
region carries any DQ flag: the bounding box alone suffices.
"""

import numpy as np

from .dqflags import PIXEL, good_pixel_mask
from .pixmap import input_range as bounding_box_range

__all__ = ["bounding_box_range", "in_bounding_box", "usable_pixel_mask"]


def in_bounding_box(shape, input_range=None):
    """Pixels inside an input pixel range.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the exposure.
    input_range : tuple of int or None
        ``(xmin, xmax, ymin, ymax)``, inclusive pixel indices inside the
        WCS bounding box (`bounding_box_range`, or a pixel map's
        ``input_range``); None: the whole array.

    Returns
    -------
    ndarray of bool, shape ``shape``
        True inside the range.
    """
    ny, nx = (int(v) for v in shape)
    inside = np.zeros((ny, nx), bool)
    if input_range is None:
        inside[:] = True
        return inside
    xmin, xmax, ymin, ymax = (int(v) for v in input_range)
    if xmin > xmax or ymin > ymax:
        raise ValueError(f"input_range: expected (xmin, xmax, ymin, ymax) with min <= max, got {input_range!r}")
    inside[max(ymin, 0):ymax + 1, max(xmin, 0):xmax + 1] = True
    return inside


def usable_pixel_mask(dq, *, good_bits="~DO_NOT_USE+NON_SCIENCE", input_range=None, wcs=None):
    """Pixels a step may use: DQ accepted by ``good_bits``, never NON_SCIENCE, inside the bounding box.

    Parameters
    ----------
    dq : ndarray of int, shape (ny, nx)
        Data-quality array.
    good_bits : int, str or None
        DQ bits a usable pixel may carry (`calimage3.dqflags.interpret_bit_flags`);
        NON_SCIENCE is refused even when listed here.  None: DQ bits other
        than NON_SCIENCE are ignored.
    input_range : tuple of int or None
        ``(xmin, xmax, ymin, ymax)`` inside the bounding box (a pixel map's
        ``input_range``).
    wcs : gwcs.WCS or None
        The exposure's WCS, whose ``bounding_box`` gives the range when
        ``input_range`` is None.  Neither: the whole array.

    Returns
    -------
    ndarray of bool, same shape as ``dq``
        True where the pixel may be used.
    """
    dq = np.asarray(dq)
    if dq.ndim != 2:
        raise ValueError(f"dq: must be 2-D, got shape {dq.shape}")
    usable = (dq.astype(np.uint32) & np.uint32(PIXEL["NON_SCIENCE"])) == 0
    if good_bits is not None:
        usable &= good_pixel_mask(dq, good_bits)
    if input_range is None and wcs is not None:
        input_range = bounding_box_range(dq.shape, wcs)
    if input_range is not None:
        usable &= in_bounding_box(dq.shape, input_range)
    return usable
