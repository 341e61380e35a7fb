"""Full-size images of a photutils ``Background2D``, without its spline zoom.

``Background2D.background`` and ``.background_rms`` resize the low-resolution
mesh with ``scipy.ndimage.zoom(mesh, box_size, order=3, grid_mode=True)``,
recomputed on every access: ~0.2-0.4 s per 2048x2048 image, the largest cost
of a detection job.  The spline zoom is linear and separable, so the same image
is ``Ky @ mesh @ Kx.T``, the columns of ``Ky``/``Kx`` being the 1D zooms of
unit vectors: two thin matrix products (~10x faster), and one operator per
axis shared by both images.

Nothing here reads or writes files.
"""

import numpy as np
from scipy.ndimage import zoom

try:  # photutils >= 3.0; other versions resize differently and fall back
    from photutils.background.interpolators import _BkgZoomInterpolator
except ImportError:  # pragma: no cover - depends on the photutils version
    _BkgZoomInterpolator = None

__all__ = ["background_images"]


def _axis_operator(n_mesh, box, n_out, interp):
    """Matrix (``n_out`` x ``n_mesh``) doing the interpolator's zoom along one axis.

    Parameters
    ----------
    n_mesh : int
        Mesh length along the axis.
    box : int
        Box size (zoom factor) along the axis.
    n_out : int
        Data length along the axis; the zoomed length is cropped to it.
    interp : photutils ``_BkgZoomInterpolator``
        Supplies ``order``, ``mode`` and ``cval``.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(n_out, n_mesh)``.
    """
    # One 1D zoom per unit vector: zooming np.eye(n_mesh) as a 2D array with
    # factor (box, 1) would also spline-filter its second axis, which for short
    # meshes is not exactly the identity (errors ~1e-7 seen for 6-7 boxes).
    cols = [zoom(e, box, order=interp.order, mode=interp.mode, cval=interp.cval,
                 grid_mode=True)[:n_out] for e in np.eye(n_mesh)]
    return np.column_stack(cols)


def _fast_path_ok(bkg):
    """Whether ``bkg`` resizes with the photutils 3 zoom, whose result is mirrored here."""
    interp = getattr(bkg, "interpolator", None)
    if _BkgZoomInterpolator is None or type(interp).__call__ is not _BkgZoomInterpolator.__call__:
        return False
    if not all(hasattr(interp, a) for a in ("order", "mode", "cval", "clip")):
        return False
    # A non-zero cval with a constant mode makes the zoom affine, not linear.
    if interp.mode in ("constant", "grid-constant") and interp.cval != 0:
        return False
    kw = getattr(bkg, "_interp_kwargs", None)
    return (isinstance(kw, dict) and {"shape", "dtype", "box_size"} <= kw.keys()
            and hasattr(bkg, "coverage_mask") and hasattr(bkg, "fill_value"))


def background_images(bkg):
    """Background and background RMS images of a ``Background2D``.

    Equal (to rounding, ~1e-15 relative) to ``bkg.background`` and
    ``bkg.background_rms``, with the same dtype, clipping, constant-mesh case
    and ``coverage_mask`` fill, but computed as ``Ky @ mesh @ Kx.T`` (see the
    module docstring).  Units are stripped.  When ``bkg`` does not use the
    photutils 3 zoom interpolator, or lacks the attributes used here, the
    two properties are returned instead.

    Parameters
    ----------
    bkg : photutils.background.Background2D
        The fitted background.

    Returns
    -------
    background, background_rms : numpy.ndarray
        Full-size images, the shape of the data given to ``bkg``.
    """
    if not _fast_path_ok(bkg):
        return bkg.background, bkg.background_rms
    meshes = [np.asarray(getattr(m, "value", m))
              for m in (bkg.background_mesh, bkg.background_rms_mesh)]
    if not all(np.isfinite(m).all() for m in meshes):
        return bkg.background, bkg.background_rms

    interp = bkg.interpolator
    kw = bkg._interp_kwargs
    (ny, nx), (by, bx) = kw["shape"], kw["box_size"]
    ky = kx = None
    images = []
    for mesh in meshes:
        lo, hi = mesh.min(), mesh.max()
        if lo == hi:  # as photutils: a constant image, no zoom
            image = np.full((ny, nx), lo, dtype=kw["dtype"])
        else:
            if ky is None:
                ky = _axis_operator(mesh.shape[0], by, ny, interp)
                kx = _axis_operator(mesh.shape[1], bx, nx, interp)
            image = (ky @ mesh.astype(np.float64)) @ kx.T
            image = image.astype(mesh.dtype, copy=False)  # zoom keeps the mesh dtype
            if interp.clip:
                np.clip(image, lo, hi, out=image)
        if bkg.coverage_mask is not None:
            image[bkg.coverage_mask] = bkg.fill_value
        images.append(image)
    return images[0], images[1]
