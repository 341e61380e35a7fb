"""Spherical geometry on sky positions: gnomonic projection and polygon overlap.

Plain arrays of RA/Dec in and out, no WCS objects: kept apart from
`calimage3.wcs_tools` (which builds gwcs objects) so that the input checks
run at every Snakemake start do not import gwcs.
"""

import numpy as np
from astropy.modeling import models

__all__ = ["to_tangent_plane", "from_tangent_plane", "polygon_overlap_area"]


def _tangent_models(ref_ra, ref_dec):
    to_plane = models.RotateCelestial2Native(ref_ra, ref_dec, 180.0) | models.Sky2Pix_TAN()
    from_plane = models.Pix2Sky_TAN() | models.RotateNative2Celestial(ref_ra, ref_dec, 180.0)
    return to_plane, from_plane


def to_tangent_plane(ra, dec, ref_ra, ref_dec):
    """Gnomonic projection of ``(ra, dec)`` about ``(ref_ra, ref_dec)``.

    Returns
    -------
    xi, eta : ndarray
        Standard coordinates in degrees; ``xi`` grows to the east and ``eta``
        to the north, as FITS intermediate world coordinates do.
    """
    to_plane, _ = _tangent_models(ref_ra, ref_dec)
    return to_plane(ra, dec)


def from_tangent_plane(xi, eta, ref_ra, ref_dec):
    """Inverse of `to_tangent_plane`; returns ``(ra, dec)`` in degrees."""
    _, from_plane = _tangent_models(ref_ra, ref_dec)
    return from_plane(xi, eta)


def _clip_polygon(subject, clip):
    """Sutherland-Hodgman clipping of a polygon by a convex polygon."""

    def inside(p, a, b, sign):
        return sign * ((b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])) >= 0

    def intersect(p, q, a, b):
        d1 = p - q
        d2 = a - b
        denom = d1[0] * d2[1] - d1[1] * d2[0]
        if denom == 0:
            return q
        t = ((p[0] - a[0]) * d2[1] - (p[1] - a[1]) * d2[0]) / denom
        return p - t * d1

    sign = 1.0 if _signed_area(clip) >= 0 else -1.0
    output = [np.asarray(p, float) for p in subject]
    for i in range(len(clip)):
        a, b = np.asarray(clip[i - 1], float), np.asarray(clip[i], float)
        points, output = output, []
        for j in range(len(points)):
            cur, prev = points[j], points[j - 1]
            if inside(cur, a, b, sign):
                if not inside(prev, a, b, sign):
                    output.append(intersect(prev, cur, a, b))
                output.append(cur)
            elif inside(prev, a, b, sign):
                output.append(intersect(prev, cur, a, b))
        if not output:
            return np.empty((0, 2))
    return np.array(output)


def _signed_area(poly):
    poly = np.asarray(poly, float)
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)


def polygon_overlap_area(sky_poly_a, sky_poly_b):
    """Area of the intersection of two convex sky polygons.

    Parameters
    ----------
    sky_poly_a, sky_poly_b : ndarray, shape (n, 2)
        Vertices ``(RA, Dec)`` in degrees (e.g. from `footprint`).

    Returns
    -------
    float
        Overlap area in square degrees (tangent-plane approximation, exact
        enough for fields of a few arcminutes); 0 when they do not overlap.
    """
    ref_ra, ref_dec = sky_poly_a.mean(axis=0)
    pa = np.column_stack(to_tangent_plane(sky_poly_a[:, 0], sky_poly_a[:, 1], ref_ra, ref_dec))
    pb = np.column_stack(to_tangent_plane(sky_poly_b[:, 0], sky_poly_b[:, 1], ref_ra, ref_dec))
    clipped = _clip_polygon(pa, pb)
    if len(clipped) < 3:
        return 0.0
    return abs(_signed_area(clipped))
