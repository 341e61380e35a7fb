"""A fixed tiling of the whole sky into sky cells ("tiles") shared by every product.

The sky is cut once, independently of any data, into *projection regions*;
each region carries a north-up tangent-plane (TAN) pixel grid at a chosen
pixel scale, cut into square tiles of ``tile_size`` pixels, each extended by
``margin`` pixels on every side.  A tile's WCS therefore depends only on its
id, the pixel scale, the tile size and the margin: every association of a
campaign (any filter) that covers a tile drizzles onto the very same grid.

Layout (in the spirit of Pan-STARRS' projection cells and Roman's sky cells):

1. declination bands of `BAND_HEIGHT` degrees centred on Dec = -90, -89,
   ..., +90 (the first and last are polar caps of half height);
2. band ``k`` is cut into ``n_k`` equal ranges of RA, ``n_k`` about
   ``360 cos(Dec)`` (one region for a cap), so that regions are about one
   degree wide everywhere;
3. each region's TAN grid has its tangent point at the region centre, on a
   pixel corner, and an even number of tiles along each axis, enough to
   cover every position the region owns.

A tile id is ``r<region, 5 digits>x<column>y<row>`` (e.g. ``r14321x07y12``):
no ``_`` or ``/``, so it is a valid part of a file name and of a JWST-style
product name (``<product>_<tile>_i2d.fits``).

**Ownership.**  Every sky position is owned by exactly one tile *core* (the
tile without its margin): its band from its Dec, its region from its RA,
then the core whose pixel range holds its projected position (`owner_tile`).
A tile's grid extends beyond its region where the region's rectangle does,
so a source near a region edge can appear on tiles of two regions; only the
owner keeps it.

Only `tile_wcs` builds a gwcs (imported when called); everything else is
plain numpy, cheap enough to run at every Snakemake start.
"""

import re
from functools import lru_cache

import numpy as np

from .sky_geometry import to_tangent_plane

__all__ = [
    "BAND_HEIGHT",
    "TILE_ID_PATTERN",
    "tile_id",
    "parse_tile_id",
    "region_of",
    "region_centre",
    "region_tile_counts",
    "tile_grid",
    "tile_wcs",
    "tile_corners",
    "owner_tile",
    "tiles_touching",
    "exposure_tiles",
    "combine_exposure_tiles",
    "check_tiling",
]

# Height of a declination band, degrees.  Part of the tile ids' meaning:
# changing it renames every tile.
BAND_HEIGHT = 1.0
_N_BANDS = int(round(180.0 / BAND_HEIGHT)) + 1
# Regular expression of a tile id (a Snakemake wildcard constraint).
TILE_ID_PATTERN = r"r[0-9][0-9][0-9][0-9][0-9]x[0-9][0-9]+y[0-9][0-9]+"
_TILE_RE = re.compile(r"^r(\d{5})x(\d{2,})y(\d{2,})$")
# Extra room around a region's projected boundary, as a fraction: the
# boundary is sampled, and a conic edge may bulge between samples.
_EXTENT_SLACK = 1.02


def _band_regions(k):
    """Number of RA regions in band ``k``: one for a polar cap, else about 360 cos(Dec) at the band's widest edge."""
    if k == 0 or k == _N_BANDS - 1:
        return 1
    centre = -90.0 + k * BAND_HEIGHT
    widest = min(abs(centre - BAND_HEIGHT / 2), abs(centre + BAND_HEIGHT / 2))
    if centre - BAND_HEIGHT / 2 < 0 < centre + BAND_HEIGHT / 2:
        widest = 0.0
    return max(1, int(np.ceil(360.0 * np.cos(np.deg2rad(widest)) / BAND_HEIGHT)))


_BAND_N = np.array([_band_regions(k) for k in range(_N_BANDS)])
_BAND_FIRST = np.concatenate([[0], np.cumsum(_BAND_N)[:-1]])
N_REGIONS = int(_BAND_N.sum())


def check_tiling(pixel_scale, tile_size, margin):
    """Validate tiling parameters; raise ValueError naming the bad one."""
    if not (isinstance(pixel_scale, (int, float)) and np.isfinite(pixel_scale) and pixel_scale > 0):
        raise ValueError(f"tiling.pixel_scale must be a positive number of arcsec, got {pixel_scale!r}")
    if isinstance(tile_size, bool) or int(tile_size) != tile_size or tile_size < 16:
        raise ValueError(f"tiling.tile_size must be an integer of at least 16 pixels, got {tile_size!r}")
    if isinstance(margin, bool) or int(margin) != margin or not 0 <= margin < tile_size:
        raise ValueError(f"tiling.margin must be an integer from 0 to tile_size - 1 pixels, got {margin!r}")


def tile_id(region, ix, iy):
    """The id of tile column ``ix``, row ``iy`` of region ``region``."""
    return f"r{int(region):05d}x{int(ix):02d}y{int(iy):02d}"


def parse_tile_id(tid):
    """``(region, ix, iy)`` of a tile id; ValueError for anything else."""
    match = _TILE_RE.match(str(tid))
    if not match or int(match.group(1)) >= N_REGIONS:
        raise ValueError(f"not a tile id: {tid!r} (expected r<5 digits>x<nn>y<nn> with a region below {N_REGIONS})")
    return tuple(int(g) for g in match.groups())


def _band_of(dec):
    return np.clip(np.floor(np.asarray(dec, float) / BAND_HEIGHT + 90.0 / BAND_HEIGHT + 0.5), 0, _N_BANDS - 1).astype(int)


def region_of(ra, dec):
    """Region owning each position ``(ra, dec)`` (degrees); an int array shaped as the inputs."""
    k = _band_of(dec)
    n = _BAND_N[k]
    j = np.floor((np.asarray(ra, float) % 360.0) / (360.0 / n)).astype(int) % n
    return _BAND_FIRST[k] + j


def _region_band(region):
    k = int(np.searchsorted(_BAND_FIRST, region, side="right") - 1)
    return k, int(region - _BAND_FIRST[k])


def region_centre(region):
    """``(ra, dec)`` of a region's tangent point, degrees."""
    if not 0 <= region < N_REGIONS:
        raise ValueError(f"region must be from 0 to {N_REGIONS - 1}, got {region}")
    k, j = _region_band(region)
    width = 360.0 / _BAND_N[k]
    return (float((j + 0.5) * width) % 360.0 if _BAND_N[k] > 1 else 0.0), float(-90.0 + k * BAND_HEIGHT)


def _region_boundary(region, n=64):
    """Points ``(ra, dec)`` along the edge of the area a region owns."""
    k, j = _region_band(region)
    d0 = max(-90.0, -90.0 + (k - 0.5) * BAND_HEIGHT)
    d1 = min(90.0, -90.0 + (k + 0.5) * BAND_HEIGHT)
    width = 360.0 / _BAND_N[k]
    a0, a1 = j * width, (j + 1) * width
    ra_line = np.linspace(a0, a1, n)
    dec_line = np.linspace(d0, d1, n)
    ra = np.concatenate([ra_line, ra_line, np.full(n, a0), np.full(n, a1)])
    dec = np.concatenate([np.full(n, d0), np.full(n, d1), dec_line, dec_line])
    return ra, dec


def _to_pixels(ra, dec, centre, pixel_scale):
    """Positions in a region's pixel frame: ``(u, v)`` in pixels from the tangent point, u to the west."""
    xi, eta = to_tangent_plane(ra, dec, *centre)
    scale = pixel_scale / 3600.0
    return -np.asarray(xi) / scale, np.asarray(eta) / scale


@lru_cache(maxsize=4096)
def region_tile_counts(region, pixel_scale, tile_size):
    """``(nx, ny)`` tiles along each axis of a region's grid: even, and enough to hold every position it owns."""
    centre = region_centre(region)
    ra, dec = _region_boundary(region)
    u, v = _to_pixels(ra, dec, centre, pixel_scale)
    half_u = np.nanmax(np.abs(u)) * _EXTENT_SLACK
    half_v = np.nanmax(np.abs(v)) * _EXTENT_SLACK
    return 2 * (int(half_u // tile_size) + 1), 2 * (int(half_v // tile_size) + 1)


def tile_grid(tid, pixel_scale, tile_size, margin):
    """The pixel grid of a tile as plain numbers.

    Parameters
    ----------
    tid : str
        Tile id.
    pixel_scale : float
        Arcsec per pixel at the region's tangent point.
    tile_size : int
        Side of a tile's core, pixels.
    margin : int
        Pixels added on every side of the core.

    Returns
    -------
    dict
        ``crval`` (RA, Dec of the tangent point, degrees), ``crpix``
        (zero-based pixel ``(x, y)`` of the tangent point), ``shape``
        (``(ny, nx)``, ``tile_size + 2 margin`` each), ``core``
        (``(x0, x1, y0, y1)``: pixel index ranges of the core in the tile),
        ``pixel_scale``.  North up, east left.
    """
    check_tiling(pixel_scale, tile_size, margin)
    region, ix, iy = parse_tile_id(tid)
    nx, ny = region_tile_counts(region, float(pixel_scale), int(tile_size))
    if ix >= nx or iy >= ny:
        raise ValueError(f"tile {tid}: region {region} has {nx} x {ny} tiles of {tile_size} pixels at {pixel_scale}\"")
    # left/bottom edge of the tile (margin included), in pixels from the tangent point
    u0 = (ix - nx // 2) * tile_size - margin
    v0 = (iy - ny // 2) * tile_size - margin
    side = int(tile_size + 2 * margin)
    return {
        "crval": region_centre(region),
        # pixel i covers [u0 + i, u0 + i + 1): its centre is the tangent point at i = -u0 - 0.5
        "crpix": (float(-u0 - 0.5), float(-v0 - 0.5)),
        "shape": (side, side),
        "core": (int(margin), int(margin + tile_size), int(margin), int(margin + tile_size)),
        "pixel_scale": float(pixel_scale),
    }


def tile_wcs(tid, pixel_scale, tile_size, margin):
    """gwcs and ``(ny, nx)`` of a tile (see `tile_grid`): a distortion-free, north-up TAN grid."""
    from .wcs_tools import imaging_wcs

    grid = tile_grid(tid, pixel_scale, tile_size, margin)
    return imaging_wcs(grid["shape"], grid["crval"], grid["pixel_scale"], 0.0, crpix=grid["crpix"]), grid["shape"]


def tile_corners(tid, pixel_scale, tile_size, margin, *, core=False):
    """Sky corners ``(RA, Dec)`` of a tile (of its core with ``core``), degrees, shape (4, 2), counter-clockwise on the sky."""
    from .sky_geometry import from_tangent_plane

    grid = tile_grid(tid, pixel_scale, tile_size, margin)
    x0, x1, y0, y1 = grid["core"] if core else (0, grid["shape"][1], 0, grid["shape"][0])
    # pixel edges -> offsets from the tangent point, then standard coordinates
    px = np.array([x0, x1, x1, x0]) - 0.5 - grid["crpix"][0]
    py = np.array([y0, y0, y1, y1]) - 0.5 - grid["crpix"][1]
    scale = pixel_scale / 3600.0
    ra, dec = from_tangent_plane(-px * scale, py * scale, *grid["crval"])
    return np.column_stack([ra, dec])


def owner_tile(ra, dec, pixel_scale, tile_size):
    """The tile whose core owns each position.

    Parameters
    ----------
    ra, dec : array-like
        Positions, degrees.
    pixel_scale : float
        Arcsec per pixel.
    tile_size : int
        Side of a tile's core, pixels.

    Returns
    -------
    ndarray of str
        One tile id per position (shaped as the inputs).  Every position
        on the sky has exactly one owner; the margin plays no part.
    """
    ra, dec = np.broadcast_arrays(np.asarray(ra, float), np.asarray(dec, float))
    shape = ra.shape
    ra, dec = ra.ravel(), dec.ravel()
    regions = region_of(ra, dec)
    out = np.empty(ra.size, dtype=object)
    for region in np.unique(regions):
        sel = regions == region
        nx, ny = region_tile_counts(int(region), float(pixel_scale), int(tile_size))
        u, v = _to_pixels(ra[sel], dec[sel], region_centre(int(region)), pixel_scale)
        ix = np.floor(u / tile_size).astype(int) + nx // 2
        iy = np.floor(v / tile_size).astype(int) + ny // 2
        out[sel] = [tile_id(region, a, b) for a, b in zip(ix, iy)]
    return out.reshape(shape).astype(str)


def _candidate_regions(polygon, pad_deg):
    """Regions whose owned area may meet a sky polygon (a superset)."""
    ra, dec = polygon[:, 0], polygon[:, 1]
    k0 = int(_band_of(dec.min() - pad_deg - BAND_HEIGHT / 2))
    k1 = int(_band_of(dec.max() + pad_deg + BAND_HEIGHT / 2))
    # RA extent about the first vertex, so that RA = 0 is no edge
    rel = (ra - ra[0] + 180.0) % 360.0 - 180.0
    cosd = np.cos(np.deg2rad(min(89.0, np.abs(dec).max() + pad_deg + BAND_HEIGHT)))
    pad_ra = pad_deg / cosd
    lo, hi = ra[0] + rel.min() - pad_ra, ra[0] + rel.max() + pad_ra
    regions = []
    for k in range(k0, k1 + 1):
        n = _BAND_N[k]
        width = 360.0 / n
        near_pole = abs(-90.0 + k * BAND_HEIGHT) > 88.0
        if near_pole or hi - lo + 2 * width >= 360.0:
            js = range(n)
        else:
            js = sorted({j % n for j in range(int(np.floor(lo / width)) - 1, int(np.floor(hi / width)) + 2)})
        regions += [int(_BAND_FIRST[k] + j) for j in js]
    return regions


def _overlap_test(poly):
    """A test of whether convex polygon ``poly`` (n, 2) overlaps axis-aligned rectangles (separating axes)."""
    poly = np.asarray(poly, float)
    edges = np.roll(poly, -1, axis=0) - poly
    normals = np.column_stack([edges[:, 1], -edges[:, 0]])
    on_normals = poly @ normals.T  # (n vertices, n normals)
    pmin, pmax = on_normals.min(axis=0), on_normals.max(axis=0)
    lo, hi = poly.min(axis=0), poly.max(axis=0)

    def overlaps(x0, x1, y0, y1):
        if hi[0] <= x0 or lo[0] >= x1 or hi[1] <= y0 or lo[1] >= y1:
            return False
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) @ normals.T
        return not np.any((corners.max(axis=0) <= pmin) | (pmax <= corners.min(axis=0)))

    return overlaps


def tiles_touching(polygons, pixel_scale, tile_size, margin, *, pad_arcsec=0.0):
    """The tiles a set of sky polygons (exposure footprints) needs, and which polygons each tile takes.

    Parameters
    ----------
    polygons : list of array-like, shape (n, 2)
        Convex sky polygons ``(RA, Dec)``, degrees (S_REGION footprints).
    pixel_scale, tile_size, margin
        The tiling (see `tile_grid`).
    pad_arcsec : float
        Room for WCS corrections still to come (tweakreg): every test is
        made as if each polygon were this much larger.

    Returns
    -------
    dict
        Tile id -> sorted indices of the polygons that touch the tile's
        full grid (margin included).  A tile is listed only when the core
        of it (padded) meets at least one polygon, so every position that
        a polygon covers has its owning tile listed; tiles whose margin
        alone meets the data are left out (they own nothing there).  Empty
        when ``polygons`` is empty.

    Notes
    -----
    Exposure edges are great circles, hence straight lines in a region's
    TAN plane: the tests are exact polygon clips there.  A tile of a
    neighbouring region whose rectangle reaches over the data may be
    listed although the data lie outside the area its region owns; its
    catalog then keeps no source.
    """
    check_tiling(pixel_scale, tile_size, margin)
    per_polygon = [exposure_tiles(p, pixel_scale, tile_size, margin, pad_arcsec=pad_arcsec) for p in polygons]
    return combine_exposure_tiles(per_polygon)


def combine_exposure_tiles(per_exposure):
    """`tiles_touching` from each exposure's `exposure_tiles`: tile id -> sorted indices of the exposures."""
    members, owned = {}, set()
    for index, tiles in enumerate(per_exposure):
        for tid, core in tiles.items():
            members.setdefault(tid, []).append(index)
            if core:
                owned.add(tid)
    return {tid: members[tid] for tid in sorted(owned)}


def exposure_tiles(polygon, pixel_scale, tile_size, margin, *, pad_arcsec=0.0):
    """The tiles one sky polygon touches.

    Returns
    -------
    dict
        Tile id -> True when the (padded) polygon meets the tile's core,
        False when it meets only the margin.  See `tiles_touching`.
    """
    pad = float(pad_arcsec) / float(pixel_scale)
    polygon = np.asarray(polygon, float)
    touching = {}
    for region in _candidate_regions(polygon, pad_arcsec / 3600.0):
        u, v = _to_pixels(polygon[:, 0], polygon[:, 1], region_centre(region), pixel_scale)
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
            continue  # 90 degrees or more away
        nx, ny = region_tile_counts(region, float(pixel_scale), int(tile_size))
        overlaps = _overlap_test(np.column_stack([u, v]))
        ix0 = max(0, int(np.floor((u.min() - margin - pad) / tile_size)) + nx // 2)
        ix1 = min(nx - 1, int(np.floor((u.max() + margin + pad) / tile_size)) + nx // 2)
        iy0 = max(0, int(np.floor((v.min() - margin - pad) / tile_size)) + ny // 2)
        iy1 = min(ny - 1, int(np.floor((v.max() + margin + pad) / tile_size)) + ny // 2)
        for ix in range(ix0, ix1 + 1):
            cu0 = (ix - nx // 2) * tile_size
            for iy in range(iy0, iy1 + 1):
                cv0 = (iy - ny // 2) * tile_size
                if overlaps(cu0 - margin - pad, cu0 + tile_size + margin + pad,
                            cv0 - margin - pad, cv0 + tile_size + margin + pad):
                    touching[tile_id(region, ix, iy)] = bool(
                        overlaps(cu0 - pad, cu0 + tile_size + pad, cv0 - pad, cv0 + tile_size + pad))
    return touching
