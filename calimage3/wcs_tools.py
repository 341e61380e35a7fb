"""WCS construction, correction and geometry on ``gwcs`` objects.

Every function here takes and returns WCS objects or plain arrays; none reads
or writes files.  A "WCS" is a :class:`gwcs.WCS` mapping zero-based pixel
``(x, y)`` to ICRS ``(RA, Dec)`` in degrees, with a ``bounding_box`` in
``((xmin, xmax), (ymin, ymax))`` order.
"""

import warnings

import numpy as np
import astropy.units as u
from astropy.coordinates import ICRS
from astropy.modeling import fitting, models
from astropy.utils.exceptions import AstropyUserWarning
from gwcs import WCS
from gwcs import coordinate_frames as cf

from .pixmap import bounding_box_edges, pixel_map
from .sky_geometry import from_tangent_plane, polygon_overlap_area, to_tangent_plane

__all__ = [
    "DETECTOR_FRAME",
    "world_frame",
    "imaging_wcs",
    "tangent_plane_wcs",
    "distortion_model",
    "tangent_plane_correction",
    "to_tangent_plane",
    "from_tangent_plane",
    "footprint",
    "polygon_overlap_area",
    "local_pixel_scale",
    "output_wcs",
    "pixel_map",
    "sip_header",
    "s_region",
    "pixel_area_keywords",
]

DETECTOR_FRAME = cf.Frame2D(name="detector", axes_names=("x", "y"), unit=(u.pix, u.pix))


def world_frame():
    """ICRS celestial output frame of the imaging WCSs."""
    return cf.CelestialFrame(
        reference_frame=ICRS(), name="world", unit=(u.deg, u.deg), axes_names=("lon", "lat")
    )


def distortion_model(coeffs_x, coeffs_y, shape, degree=3, inverse_degree=5):
    """Polynomial optical distortion in pixel offsets, with a fitted inverse.

    Parameters
    ----------
    coeffs_x, coeffs_y : dict
        Polynomial2D coefficients (``{"c2_0": ..., "c1_1": ...}``) added to
        the identity, in pixels, for offsets ``(u, v)`` from the reference
        pixel.
    shape : tuple of int
        ``(ny, nx)`` of the detector; the inverse is fitted over it.
    degree, inverse_degree : int
        Polynomial degrees of the forward and fitted inverse models.

    Returns
    -------
    astropy.modeling.Model
        Two-input, two-output model ``(u, v) -> (u', v')`` with ``.inverse``
        accurate to better than 1e-4 pixel over the detector for
        distortions of a few pixels.
    """
    px = models.Polynomial2D(degree, c1_0=1.0, **coeffs_x)
    py = models.Polynomial2D(degree, c0_1=1.0, **coeffs_y)
    forward = models.Mapping((0, 1, 0, 1)) | (px & py)
    ny, nx = shape
    half = 0.6 * max(nx, ny)
    uu, vv = np.meshgrid(np.linspace(-half, half, 60), np.linspace(-half, half, 60))
    up, vp = forward(uu, vv)
    fitter = fitting.LinearLSQFitter()
    with warnings.catch_warnings():
        # High powers of pixel offsets span many decades; the fit is still exact.
        warnings.simplefilter("ignore", AstropyUserWarning)
        ix = fitter(models.Polynomial2D(inverse_degree), up, vp, uu)
        iy = fitter(models.Polynomial2D(inverse_degree), up, vp, vv)
    forward.inverse = models.Mapping((0, 1, 0, 1)) | (ix & iy)
    return forward


def imaging_wcs(shape, crval, pixel_scale, rotation=0.0, crpix=None, distortion=None):
    """Tangent-plane imaging WCS, optionally with a pixel-space distortion.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image; sets the bounding box.
    crval : tuple of float
        ``(RA, Dec)`` of the reference pixel, degrees.
    pixel_scale : float
        Pixel scale at the reference pixel, arcsec per pixel.
    rotation : float
        Position angle of the image +y axis east of north, degrees.
    crpix : tuple of float or None
        Zero-based reference pixel ``(x, y)``; the image centre by default.
    distortion : astropy.modeling.Model or None
        ``(u, v) -> (u', v')`` in pixels from `distortion_model`.

    Returns
    -------
    gwcs.WCS
    """
    ny, nx = shape
    if crpix is None:
        crpix = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    scale = pixel_scale / 3600.0
    theta = np.deg2rad(rotation)
    # East is to the left (-x) of a north-up image, as on the sky.
    cd = scale * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return tangent_plane_wcs(shape, crpix, cd, crval, distortion)


def tangent_plane_wcs(shape, crpix, cd, crval, distortion=None):
    """Gnomonic gwcs from FITS-like terms: the pipeline of a TAN(-SIP) header.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)``; sets the bounding box.
    crpix : tuple of float
        Zero-based reference pixel ``(x, y)``.
    cd : array-like, shape (2, 2)
        Linear terms, degrees per pixel.
    crval : tuple of float
        ``(RA, Dec)`` of the reference pixel, degrees.
    distortion : astropy.modeling.Model or None
        ``(u, v) -> (u', v')`` in pixels, applied before ``cd``.

    Returns
    -------
    gwcs.WCS
    """
    ny, nx = shape
    transform = models.Shift(-crpix[0]) & models.Shift(-crpix[1])
    if distortion is not None:
        transform = transform | distortion
    transform = (
        transform
        | models.AffineTransformation2D(matrix=cd, translation=[0.0, 0.0])
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(crval[0], crval[1], 180.0)
    )
    wcs = WCS([(DETECTOR_FRAME, transform), (world_frame(), None)])
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    wcs.pixel_shape = (nx, ny)
    return wcs


def tangent_plane_correction(wcs, ref_ra, ref_dec, matrix, shift):
    """Apply a linear correction in a tangent plane to a WCS.

    The corrected WCS maps a pixel to the sky position obtained by
    projecting the original sky position onto the plane tangent at
    ``(ref_ra, ref_dec)``, applying ``p' = matrix @ p + shift`` there, and
    projecting back.  This is how JWST ``tweakreg`` corrections act, and it
    works for any gwcs, including those with instrument distortion.

    Parameters
    ----------
    wcs : gwcs.WCS
        WCS to correct; it is not modified.
    ref_ra, ref_dec : float
        Tangent point, degrees.
    matrix : array-like, shape (2, 2)
        Rotation/scale/skew in the tangent plane.
    shift : array-like, shape (2,)
        Shift in the tangent plane, degrees.

    Returns
    -------
    gwcs.WCS
        A new WCS with the same frames and bounding box.
    """
    # As models (not sky_geometry's closed form): the correction is part of the gwcs and is serialized.
    to_plane = models.RotateCelestial2Native(ref_ra, ref_dec, 180.0) | models.Sky2Pix_TAN()
    from_plane = models.Pix2Sky_TAN() | models.RotateNative2Celestial(ref_ra, ref_dec, 180.0)
    affine = models.AffineTransformation2D(
        matrix=np.asarray(matrix, dtype=float), translation=np.asarray(shift, dtype=float)
    )
    correction = to_plane | affine | from_plane
    forward = wcs.forward_transform | correction
    new = WCS([(wcs.input_frame, forward), (wcs.output_frame, None)])
    if wcs.bounding_box is not None:
        new.bounding_box = tuple(tuple(iv) for iv in wcs.bounding_box.bounding_box(order="F"))
    new.pixel_shape = wcs.pixel_shape
    return new


def footprint(wcs, shape):
    """Sky positions of the four corners of the image's bounding box.

    The corners of the WCS bounding box, clipped to the array (as JWST's
    footprints; the outer pixel corners when the box is the whole array
    or there is none), so pixels outside the box, such as MIRI's
    coronagraph and Lyot regions, do not widen footprints, ``S_REGION``
    or the output grid.

    Returns
    -------
    ndarray, shape (4, 2)
        ``(RA, Dec)`` in degrees, counter-clockwise in pixel space.
    """
    ny, nx = shape
    x0, x1, y0, y1 = -0.5, nx - 0.5, -0.5, ny - 0.5
    edges = bounding_box_edges(wcs)
    if edges is not None:
        (bx0, bx1), (by0, by1) = edges
        x0, x1 = max(x0, float(bx0)), min(x1, float(bx1))
        y0, y1 = max(y0, float(by0)), min(y1, float(by1))
    x = np.array([x0, x1, x1, x0])
    y = np.array([y0, y0, y1, y1])
    ra, dec = wcs.forward_transform(x, y)
    return np.column_stack([ra, dec])


def s_region(wcs, shape):
    """``S_REGION`` polygon (ICRS, degrees) of the four outer pixel corners, as JWST writes it."""
    corners = footprint(wcs, shape)
    return "POLYGON ICRS  " + " ".join(f"{ra:.9f} {dec:.9f}" for ra, dec in corners)


def pixel_area_keywords(wcs, shape):
    """``PIXAR_SR`` and ``PIXAR_A2``: the pixel solid angle at the centre of a ``(ny, nx)`` grid."""
    scale = local_pixel_scale(wcs, (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)  # deg / pixel
    return {"PIXAR_SR": float(np.deg2rad(scale) ** 2), "PIXAR_A2": float((scale * 3600.0) ** 2)}


def local_pixel_scale(wcs, x, y):
    """Pixel scale at pixel ``(x, y)``: square root of the pixel solid angle.

    Returns
    -------
    float
        Degrees per pixel.
    """
    ra, dec = wcs.forward_transform(np.array([x, x + 1.0, x]), np.array([y, y, y + 1.0]))
    xi, eta = to_tangent_plane(ra, dec, ra[0], dec[0])
    area = abs((xi[1] - xi[0]) * (eta[2] - eta[0]) - (xi[2] - xi[0]) * (eta[1] - eta[0]))
    return float(np.sqrt(area))


def _position_angle(wcs, x, y):
    """Position angle (east of north) of the pixel +y axis, degrees."""
    ra, dec = wcs.forward_transform(np.array([x, x]), np.array([y, y + 1.0]))
    xi, eta = to_tangent_plane(ra, dec, ra[0], dec[0])
    return float(np.rad2deg(np.arctan2(xi[1] - xi[0], eta[1] - eta[0])))


def output_wcs(
    wcs_list,
    shapes,
    *,
    pixel_scale_ratio=1.0,
    pixel_scale=None,
    rotation=None,
    crval=None,
    crpix=None,
    output_shape=None,
):
    """Distortion-free tangent-plane WCS that covers all inputs.

    Follows the JWST ``resample`` rules: the pixel scale is that of the
    first input times ``pixel_scale_ratio`` unless ``pixel_scale`` (arcsec)
    is given; the orientation is that of the first input unless
    ``rotation`` (degrees, +y east of north) is given; the tangent point is
    the centre of the combined footprint unless ``crval`` is given; the
    shape just covers all footprints unless ``output_shape`` ``(nx, ny)``
    is given.

    Parameters
    ----------
    wcs_list : list of gwcs.WCS
    shapes : list of tuple
        ``(ny, nx)`` of each input.

    Returns
    -------
    wcs : gwcs.WCS
    shape : tuple of int
        ``(ny, nx)`` of the output.
    """
    if not wcs_list:
        raise ValueError("output_wcs: no input WCS given")
    ny0, nx0 = shapes[0]
    cx, cy = (nx0 - 1) / 2.0, (ny0 - 1) / 2.0
    if pixel_scale is None:
        scale = local_pixel_scale(wcs_list[0], cx, cy) * 3600.0 * pixel_scale_ratio
    else:
        scale = float(pixel_scale)
    if rotation is None:
        rotation = _position_angle(wcs_list[0], cx, cy)
    corners = np.vstack([footprint(w, s) for w, s in zip(wcs_list, shapes)])
    if crval is None:
        ref_ra, ref_dec = corners[0]
        xi, eta = to_tangent_plane(corners[:, 0], corners[:, 1], ref_ra, ref_dec)
        crval = from_tangent_plane(
            0.5 * (xi.min() + xi.max()), 0.5 * (eta.min() + eta.max()), ref_ra, ref_dec
        )
        crval = (float(crval[0]), float(crval[1]))
    # Provisional WCS with crpix at 0 to find the pixel extent of all inputs.
    probe = imaging_wcs((1, 1), crval, scale, rotation, crpix=(0.0, 0.0))
    px, py = probe.backward_transform(corners[:, 0], corners[:, 1])
    if output_shape is None:
        # Corners lie on pixel edges, so their span is the width in pixels.
        nx = int(np.ceil(px.max() - px.min() - 1e-3))
        ny = int(np.ceil(py.max() - py.min() - 1e-3))
    else:
        nx, ny = (int(v) for v in output_shape)
    if crpix is None:
        crpix = (-(px.min() + px.max()) / 2.0 + (nx - 1) / 2.0, -(py.min() + py.max()) / 2.0 + (ny - 1) / 2.0)
    wcs = imaging_wcs((ny, nx), crval, scale, rotation, crpix=tuple(float(c) for c in crpix))
    return wcs, (ny, nx)


def sip_header(wcs, shape, max_pix_error=0.01, degree=None):
    """FITS TAN-SIP approximation of a gwcs for the SCI header.

    Parameters
    ----------
    wcs : gwcs.WCS
    shape : tuple of int
        ``(ny, nx)``.
    max_pix_error : float
        Largest allowed error of the approximation, pixels.
    degree : int or None
        SIP degree; None lets gwcs pick the lowest that meets
        ``max_pix_error`` (up to 9).

    Returns
    -------
    astropy.io.fits.Header
    """
    ny, nx = shape
    bbox = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    kwargs = dict(bounding_box=bbox, max_pix_error=max_pix_error, max_inv_pix_error=max_pix_error)
    if degree is not None:
        kwargs.update(degree=degree, inv_degree=degree)
    else:
        kwargs.update(degree=range(1, 7), inv_degree=range(1, 7))
    header = wcs.to_fits_sip(**kwargs)
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):
        header.remove(key, ignore_missing=True)
    return header
