"""Snakemake entry point: a product's catalog over all its sky tiles (each source once)."""

import logging

from calimage3 import io
from calimage3.logs import configure_logging
from calimage3.tile_products import merge_tile_catalogs

log = logging.getLogger("source_catalog")


def merge_catalogs(cat_paths, tile_ids, merged_path):
    """Stack the tiles' catalogs (each holds only the sources its core owns) into ``merged_path``."""
    merged = merge_tile_catalogs([io.read_table(p) for p in cat_paths], list(tile_ids))
    io.write_table(merged_path, merged)
    log.info("source_catalog: %d sources from %d tiles merged into %s", len(merged), len(cat_paths), merged_path)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    merge_catalogs(snakemake.input.cats, snakemake.params.tiles, snakemake.output.cat)
