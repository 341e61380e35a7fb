"""Snakemake entry point: the campaign's index of sky tiles (output_dir/tiles.json)."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

from calimage3 import io
from calimage3.logs import configure_logging
from calimage3.tile_products import tile_index

log = logging.getLogger("resample")


def write_tile_index(index_path, products, *, pixel_scale, tile_size, margin):
    """Write every tile's footprint, shape, products and input exposures as JSON."""
    index = tile_index(products, pixel_scale, tile_size, margin)
    io.write_json(index_path, index)
    log.info("tiles: %d tiles of %d products indexed in %s", len(index["tiles"]), len(products), index_path)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    write_tile_index(snakemake.output.index, snakemake.params.products, **snakemake.params.tiling)
