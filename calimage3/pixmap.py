"""Drizzle pixel maps: input pixel -> output pixel, evaluated on a coarse grid.

Evaluating two gwcs pipelines at every pixel of a 2048 x 2048 exposure is
the hot spot of resampling (it once took 123 s of a 530 s JWST run).  The
mapping is smooth, so it is evaluated only on a grid of nodes every
``grid_step`` pixels (plus the last row and column) and interpolated in
between with local cubic (4-point Lagrange) interpolation, separably in x
and y (as two matrix products): O(step**4) error, far below 0.01 pixel for JWST distortions at
``grid_step=16`` (tests/test_pixmap.py measures it against the full
evaluation).

The coarse map is small (a 2048**2 exposure at step 16 is 129 x 129 nodes),
so it is computed once per exposure in the group job that builds the output
grid and stored; each per-exposure drizzle or blot job only expands it, with
numpy alone and without reading or evaluating a WCS.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["CoarsePixelMap", "bounding_box_edges", "coarse_pixel_map", "expand_pixel_map", "full_pixel_map", "input_range",
           "pixel_map", "pixel_map_footprint"]


@dataclass
class CoarsePixelMap:
    """Output-pixel positions of an input image's pixels on a grid of nodes.

    Attributes
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the input image.
    nodes_x, nodes_y : ndarray of float64
        Input pixel columns and rows of the nodes (increasing, first 0,
        last ``nx - 1`` / ``ny - 1``).
    x_out, y_out : ndarray of float64, shape (len(nodes_y), len(nodes_x))
        Output-pixel coordinates of the nodes; NaN where a WCS is undefined.
    input_range : tuple of int
        ``(xmin, xmax, ymin, ymax)``: inclusive input pixel range inside the
        input WCS's bounding box (what drizzle may use).
    output_shape : tuple of int or None
        ``(ny, nx)`` of the output grid, when known.
    """

    shape: tuple
    nodes_x: np.ndarray
    nodes_y: np.ndarray
    x_out: np.ndarray
    y_out: np.ndarray
    input_range: tuple
    output_shape: tuple = None


def _nodes(n, step):
    """Node positions ``0, step, 2 step, ..., n - 1`` along an axis of ``n`` pixels."""
    return np.unique(np.append(np.arange(0, n, step), n - 1)).astype(np.float64)


def bounding_box_edges(wcs):
    """``((x_low, x_high), (y_low, y_high))`` pixel edges of a WCS's bounding box; None without one."""
    bbox = getattr(wcs, "bounding_box", None)
    if bbox is None:
        return None
    try:
        (x1, x2), (y1, y2) = bbox.bounding_box(order="F")
    except AttributeError:
        (x1, x2), (y1, y2) = bbox
    return (float(x1), float(x2)), (float(y1), float(y2))


def input_range(shape, wcs, edges=None):
    """Input pixel range ``(xmin, xmax, ymin, ymax)`` inside the WCS bounding box.

    The pixels whose centres lie within the box, edges included.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the input image.
    wcs : gwcs.WCS or None
        Its WCS; None (or no bounding box) means the whole image.
    edges : tuple or None
        The box's ``((x_low, x_high), (y_low, y_high))`` when already known
        (`calimage3.io.read_bounding_box_range` reads them without gwcs);
        ``wcs`` is then not used.
    """
    ny, nx = shape
    xmin, xmax, ymin, ymax = 0, nx - 1, 0, ny - 1
    if edges is None:
        edges = bounding_box_edges(wcs)
    if edges is not None:
        (x1, x2), (y1, y2) = edges
        # A pixel is inside when its centre is: x1 <= i <= x2 (an upper
        # edge at 1027.5 leaves pixel 1028 out).
        xmin = max(0, int(np.ceil(x1 - 1e-9)))
        ymin = max(0, int(np.ceil(y1 - 1e-9)))
        xmax = max(xmin, min(nx - 1, int(np.floor(x2 + 1e-9))))
        ymax = max(ymin, min(ny - 1, int(np.floor(y2 + 1e-9))))
    return xmin, xmax, ymin, ymax


def _map_points(wcs_from, wcs_to, x, y):
    ra, dec = wcs_from.forward_transform(x, y)
    return wcs_to.backward_transform(ra, dec)


def full_pixel_map(wcs_from, wcs_to, shape):
    """Pixel map evaluated through both WCSs at every input pixel.

    Returns
    -------
    ndarray of float64, shape (ny, nx, 2)
        ``pixmap[j, i] = (x_out, y_out)`` for input pixel ``(i, j)``.
    """
    y, x = np.indices(shape, dtype=np.float64)
    xo, yo = _map_points(wcs_from, wcs_to, x, y)
    return np.dstack([xo, yo])


def coarse_pixel_map(wcs_from, wcs_to, shape, grid_step=16, output_shape=None):
    """Evaluate the pixel map from ``wcs_from`` to ``wcs_to`` on a grid of nodes.

    Parameters
    ----------
    wcs_from, wcs_to : gwcs.WCS
        Input and output WCS (anything with ``forward_transform`` and
        ``backward_transform``).
    shape : tuple of int
        ``(ny, nx)`` of the input image.
    grid_step : int
        Node spacing, pixels (at least 1; 1 evaluates every pixel).
    output_shape : tuple of int or None
        ``(ny, nx)`` of the output grid, recorded with the map.

    Returns
    -------
    CoarsePixelMap
    """
    ny, nx = (int(v) for v in shape)
    step = max(1, int(grid_step))
    nodes_x, nodes_y = _nodes(nx, step), _nodes(ny, step)
    xx, yy = np.meshgrid(nodes_x, nodes_y)
    xo, yo = _map_points(wcs_from, wcs_to, xx, yy)
    return CoarsePixelMap(
        shape=(ny, nx), nodes_x=nodes_x, nodes_y=nodes_y,
        x_out=np.asarray(xo, dtype=np.float64), y_out=np.asarray(yo, dtype=np.float64),
        input_range=input_range((ny, nx), wcs_from),
        output_shape=None if output_shape is None else tuple(int(v) for v in output_shape),
    )


def _lagrange_weights(nodes, n):
    """Indices and weights of 4-point Lagrange interpolation at pixels ``0 .. n-1``.

    Returns
    -------
    index : ndarray of int, shape (n, k)
        The ``k = min(4, len(nodes))`` nodes used for each pixel: the two on
        either side, shifted inwards at the ends.
    weight : ndarray of float64, shape (n, k)
    """
    k = min(4, len(nodes))
    x = np.arange(n, dtype=np.float64)
    # First node of each pixel's stencil: interval start minus 1, kept inside.
    interval = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 1)
    first = np.clip(interval - (k - 1) // 2, 0, len(nodes) - k)
    index = first[:, None] + np.arange(k)[None, :]
    xs = nodes[index]
    weight = np.ones((n, k))
    for a in range(k):
        for b in range(k):
            if a != b:
                weight[:, a] *= (x - xs[:, b]) / (xs[:, a] - xs[:, b])
    return index, weight


def _weight_matrix(nodes, n):
    """Dense ``(n, len(nodes))`` matrix of the 4-point Lagrange weights at pixels ``0 .. n-1``.

    Interpolating node values ``V`` is then ``Wy @ V @ Wx.T``: two matrix
    products (BLAS) instead of gathers over the full image.
    """
    index, weight = _lagrange_weights(nodes, n)
    matrix = np.zeros((n, len(nodes)))
    np.add.at(matrix, (np.arange(n)[:, None], index), weight)
    return matrix


def expand_pixel_map(coarse):
    """Full pixel map interpolated from a `CoarsePixelMap`.

    Parameters
    ----------
    coarse : CoarsePixelMap

    Returns
    -------
    ndarray of float64, shape (ny, nx, 2)
        ``pixmap[j, i] = (x_out, y_out)``, the ``pixmap`` drizzle expects;
        NaN near nodes where a WCS was undefined.
    """
    ny, nx = coarse.shape
    wx = _weight_matrix(coarse.nodes_x, nx)
    wy = _weight_matrix(coarse.nodes_y, ny)
    pixmap = np.empty((ny, nx, 2), dtype=np.float64)
    for axis, nodes in enumerate((coarse.x_out, coarse.y_out)):
        undefined = ~np.isfinite(nodes)
        if not undefined.any():
            pixmap[..., axis] = wy @ nodes @ wx.T
            continue
        # A NaN would spread through whole rows of the product: interpolate
        # with zeros there, then blank the pixels whose stencil reaches one.
        pixmap[..., axis] = wy @ np.where(undefined, 0.0, nodes) @ wx.T
        reach = (wy != 0).astype(float) @ undefined.astype(float) @ (wx != 0).astype(float).T
        pixmap[..., axis][reach > 0] = np.nan
    return pixmap


def pixel_map(wcs_from, wcs_to, shape, grid_step=None):
    """Output-pixel coordinates of every input pixel centre.

    Parameters
    ----------
    wcs_from, wcs_to : gwcs.WCS
        Input and output WCS.
    shape : tuple of int
        ``(ny, nx)`` of the input.
    grid_step : int or None
        When given, evaluate both WCSs only on a grid of this spacing (plus
        the last row and column) and interpolate (local cubic) in between;
        smooth WCSs are reproduced to far better than 0.01 pixel at a
        fraction of the cost.  None (or an image under 4 pixels on a
        side) evaluates every pixel.

    Returns
    -------
    ndarray of float64, shape (ny, nx, 2)
        ``pixmap[j, i] = (x_out, y_out)`` for input pixel ``(i, j)``; NaN
        where a WCS is undefined.  This is the ``pixmap`` drizzle expects.
    """
    if grid_step is None or grid_step <= 1 or min(shape) < 4:
        return full_pixel_map(wcs_from, wcs_to, shape)
    return expand_pixel_map(coarse_pixel_map(wcs_from, wcs_to, shape, grid_step))


def pixel_map_footprint(pixmap, shape, margin=8):
    """The box of an output image that a pixel map's finite positions fall on, grown by ``margin``.

    Parameters
    ----------
    pixmap : ndarray, shape (ny_in, nx_in, 2)
        Output ``(x, y)`` pixel positions of the input pixels.
    shape : tuple of int
        ``(ny, nx)`` of the output image.
    margin : int
        Pixels added on every side (an interpolation's reach).

    Returns
    -------
    tuple of int
        ``(y0, y1, x0, x1)``, clipped to the image: a blot or drizzle through
        ``pixmap`` reads only ``image[y0:y1, x0:x1]``.  The whole image when
        no position is finite or all fall off the image on one side.  Every
        finite position is at least ``margin`` pixels inside the box, or on
        the image's own edge side, so positions shifted by ``(x0, y0)`` are
        exact (an integer no larger than the position is subtracted) and
        none reaches past an edge of the box that is not the image's.
    """
    ny, nx = (int(v) for v in shape)
    boxes = []
    for axis, size in ((1, ny), (0, nx)):
        values = pixmap[..., axis]
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return 0, ny, 0, nx
        low = int(np.clip(np.floor(finite.min()) - margin, 0, size))
        high = int(np.clip(np.ceil(finite.max()) + margin + 1, low, size))
        if low == high:  # entirely off the image
            return 0, ny, 0, nx
        boxes.extend((low, high))
    return tuple(boxes)
