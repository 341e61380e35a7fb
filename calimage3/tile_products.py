"""Products of a tiled run that span tiles: the owned part of a tile's catalog,
the merged catalog of a product, and the campaign's index of tiles.

Plain tables and dicts in and out; the geometry is `calimage3.tiling`.
"""

import numpy as np
from astropy.table import Table, vstack

from .tiling import owner_tile, tile_corners

__all__ = ["owned_sources", "merge_tile_catalogs", "merge_product_catalogs", "tile_index"]


def owned_sources(ra, dec, tid, pixel_scale, tile_size):
    """Which sources a tile keeps: those whose centroid lies in its core.

    Parameters
    ----------
    ra, dec : array-like
        Source centroids, degrees (NaN for a source without a position).
    tid : str
        The tile the sources were measured on.
    pixel_scale, tile_size
        The tiling (`calimage3.tiling.tile_grid`).

    Returns
    -------
    ndarray of bool
        Shaped as ``ra``.  A source in the margin belongs to the neighbour
        whose core holds it (`calimage3.tiling.owner_tile`), so across all
        tiles each position is kept exactly once; one without a finite
        position is dropped.
    """
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    finite = np.isfinite(ra) & np.isfinite(dec)
    keep = np.zeros(ra.shape, bool)
    if finite.any():
        keep[finite] = owner_tile(ra[finite], dec[finite], pixel_scale, tile_size) == tid
    return keep


def merge_tile_catalogs(tables, tile_ids):
    """One catalog of a product from its tiles' catalogs (each already reduced to owned sources).

    Parameters
    ----------
    tables : list of astropy.table.Table
        Tile catalogs, in the order of ``tile_ids``.
    tile_ids : list of str

    Returns
    -------
    astropy.table.Table
        Rows of every table with ``tile`` (the tile measured on) and
        ``tile_label`` (the label in that tile's catalog and segmentation
        map) first, ``label`` renumbered 1..n over the product; the first
        table's meta plus ``tiles``.  Empty (no columns) when no tile has a
        source.
    """
    parts = []
    for table, tid in zip(tables, tile_ids, strict=True):
        if len(table) == 0:
            continue
        table = table.copy(copy_data=False)
        table.add_column(np.full(len(table), tid), name="tile", index=0)
        if "label" in table.colnames:
            table.rename_column("label", "tile_label")
        parts.append(table)
    merged = vstack(parts, metadata_conflicts="silent") if parts else Table()
    if len(merged):
        merged.add_column(np.arange(1, len(merged) + 1), name="label", index=0)
    merged.meta = dict(tables[0].meta) if tables else {}
    merged.meta.pop("provenance", None)
    merged.meta["tiles"] = list(tile_ids)
    return merged


def merge_product_catalogs(tables, products):
    """The campaign's catalog: every product's merged tile catalog, stacked.

    Parameters
    ----------
    tables : list of astropy.table.Table
        Each product's merged catalog (`merge_tile_catalogs`).
    products : list of str
        Product names, in the order of ``tables``.

    Returns
    -------
    astropy.table.Table
        ``product`` and ``filter`` (from each table's meta) first, then
        the product's columns.  A source seen by two products (two filters,
        or two overlapping associations) is a row of each.  Empty (no
        columns) when no product has a source.
    """
    parts = []
    for table, name in zip(tables, products, strict=True):
        if len(table) == 0:
            continue
        table = table.copy(copy_data=False)
        table.add_column(np.full(len(table), str(table.meta.get("filter", ""))), name="filter", index=0)
        table.add_column(np.full(len(table), name), name="product", index=0)
        parts.append(table)
    merged = vstack(parts, metadata_conflicts="silent") if parts else Table()
    merged.meta = {"products": list(products)}
    return merged


def tile_index(products, pixel_scale, tile_size, margin):
    """The campaign's index of tiles: every tile, its footprint, and what went into it.

    Parameters
    ----------
    products : dict
        Product name -> dict with ``folder`` (where its files are) and
        ``tiles`` (tile id -> exposure roots drizzled onto it).
    pixel_scale, tile_size, margin
        The tiling.

    Returns
    -------
    dict
        ``tiling`` (the parameters) and ``tiles``: tile id -> ``shape``
        ``[ny, nx]``, ``footprint`` and ``core_footprint`` (``[RA, Dec]``
        corners, degrees) and ``products`` (name -> ``exposures`` and
        the ``i2d``, ``cat`` and ``segm`` file names).  Plain JSON values.
    """
    tiles = {}
    for name, product in sorted(products.items()):
        for tid, roots in sorted(product["tiles"].items()):
            entry = tiles.get(tid)
            if entry is None:
                side = int(tile_size) + 2 * int(margin)
                entry = tiles[tid] = {
                    "shape": [side, side],
                    "footprint": tile_corners(tid, pixel_scale, tile_size, margin).tolist(),
                    "core_footprint": tile_corners(tid, pixel_scale, tile_size, margin, core=True).tolist(),
                    "products": {},
                }
            folder = product["folder"]
            entry["products"][name] = {
                "exposures": list(roots),
                "i2d": f"{folder}/{name}_{tid}_i2d.fits",
                "cat": f"{folder}/{name}_{tid}_cat.ecsv",
                "segm": f"{folder}/{name}_{tid}_segm.fits",
            }
    return {"tiling": {"pixel_scale": float(pixel_scale), "tile_size": int(tile_size), "margin": int(margin),
                       "layout": "calimage3.tiling: 1-degree Dec bands, RA regions, north-up TAN tiles"},
            "tiles": tiles}
