"""Snakemake entry point: QA figure of a product's sky tiles over its exposure footprints."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging
from collections import Counter
from pathlib import Path

from calimage3 import io, qa_plots
from calimage3.logs import configure_logging
from calimage3.tiling import tile_corners

log = logging.getLogger("qa_figures")


def qa_tiles(png_path, footprints, tile_ids, merged_cat_path, *, pixel_scale, tile_size, margin, dpi=100):
    """Draw the tiles (grid and core, with their source counts) over the exposures' header footprints."""
    tiles = {t: (tile_corners(t, pixel_scale, tile_size, margin),
                 tile_corners(t, pixel_scale, tile_size, margin, core=True)) for t in tile_ids}
    merged = io.read_table(merged_cat_path)
    counts = Counter(str(t) for t in merged["tile"]) if "tile" in merged.colnames else Counter()
    try:
        fig = qa_plots.tile_layout_figure(list(footprints.values()), list(footprints), tiles,
                                          counts={t: counts.get(t, 0) for t in tile_ids})
    except Exception as exc:  # noqa: BLE001 - a QA picture must never stop the run
        log.exception("qa_tiles: figure failed")
        fig = qa_plots.message_figure(f"{type(exc).__name__}: {exc}", title="tiles: figure failed")
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=dpi)
    log.info("qa_tiles: %d tiles -> %s", len(tile_ids), png_path)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    qa_tiles(snakemake.output.tiles, snakemake.params.footprints, snakemake.params.tiles, snakemake.input.cat,
             **snakemake.params.tiling)
