"""Snakemake entry point: a product's catalog over all its sky tiles (each source once), or the
campaign's catalog of every product's sources (rule tile_campaign_catalog)."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

from calimage3 import io
from calimage3.logs import configure_logging
from calimage3.tile_products import merge_product_catalogs, merge_tile_catalogs

log = logging.getLogger("source_catalog")


def merge_catalogs(cat_paths, tile_ids, merged_path):
    """Stack the tiles' catalogs (each holds only the sources its core owns) into ``merged_path``."""
    merged = merge_tile_catalogs([io.read_table(p) for p in cat_paths], list(tile_ids))
    io.write_table(merged_path, merged)
    log.info("source_catalog: %d sources from %d tiles merged into %s", len(merged), len(cat_paths), merged_path)


def campaign_catalog(cat_paths, products, campaign_path):
    """Stack every product's merged catalog, with its ``product`` and ``filter``, into ``campaign_path``."""
    merged = merge_product_catalogs([io.read_table(p) for p in cat_paths], list(products))
    io.write_table(campaign_path, merged)
    log.info("source_catalog: %d sources of %d products in %s", len(merged), len(cat_paths), campaign_path)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    if snakemake.rule == "tile_campaign_catalog":
        campaign_catalog(snakemake.input.cats, snakemake.params.products, snakemake.output.cat)
    else:
        merge_catalogs(snakemake.input.cats, snakemake.params.tiles, snakemake.output.cat)
