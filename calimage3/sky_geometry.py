"""Spherical geometry on sky positions: gnomonic projection and polygon overlap.

Plain arrays of RA/Dec in and out, no WCS objects: kept apart from
`calimage3.wcs_tools` (which builds gwcs objects) so that the input checks
run at every Snakemake start do not import gwcs.
"""

import numpy as np

__all__ = ["to_tangent_plane", "from_tangent_plane", "polygon_overlap_area"]


def _tangent_basis(ref_ra, ref_dec):
    """Unit vectors of the reference direction and of east and north there."""
    a, d = np.deg2rad(ref_ra), np.deg2rad(ref_dec)
    ref = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    east = np.array([-np.sin(a), np.cos(a), 0.0])
    north = np.array([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)])
    return ref, east, north


def to_tangent_plane(ra, dec, ref_ra, ref_dec):
    """Gnomonic projection of ``(ra, dec)`` about ``(ref_ra, ref_dec)``.

    The FITS TAN projection (astropy's ``RotateCelestial2Native | Sky2Pix_TAN``)
    in closed form, so that the input checks run at every Snakemake start
    need not import astropy.modeling.

    Returns
    -------
    xi, eta : ndarray
        Standard coordinates in degrees; ``xi`` grows to the east and ``eta``
        to the north, as FITS intermediate world coordinates do.  NaN for
        points 90 degrees or more from the reference.
    """
    ref, east, north = _tangent_basis(ref_ra, ref_dec)
    a, d = np.deg2rad(np.asarray(ra, dtype=float)), np.deg2rad(np.asarray(dec, dtype=float))
    v = np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)
    along = v @ ref
    with np.errstate(divide="ignore", invalid="ignore"):
        along = np.where(along > 0, along, np.nan)
        return np.rad2deg((v @ east) / along), np.rad2deg((v @ north) / along)


def from_tangent_plane(xi, eta, ref_ra, ref_dec):
    """Inverse of `to_tangent_plane`; returns ``(ra, dec)`` in degrees, RA in [0, 360)."""
    ref, east, north = _tangent_basis(ref_ra, ref_dec)
    x, y = np.deg2rad(np.asarray(xi, dtype=float)), np.deg2rad(np.asarray(eta, dtype=float))
    w = ref + x[..., None] * east + y[..., None] * north
    ra = np.rad2deg(np.arctan2(w[..., 1], w[..., 0])) % 360.0
    dec = np.rad2deg(np.arctan2(w[..., 2], np.hypot(w[..., 0], w[..., 1])))
    return ra, dec


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
