"""Snakemake entry point: combine the per-exposure drizzles into the final mosaic (_i2d).

Each exposure was drizzled onto its part of the grid by
scripts/resample_exposure.py; the contributions are read and added one at a
time, so memory is the mosaic's arrays plus one contribution.  The mosaic's
keywords and header table come from `calimage3.mosaic_metadata`.
"""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

import numpy as np

from calimage3 import io, layout
from calimage3.logs import configure_logging
from calimage3.mosaic_metadata import GRID_KEYWORDS, header_table, mosaic_metadata
from calimage3.provenance import provenance_keywords
from calimage3.resample import ExposureContribution, MosaicCombiner

log = logging.getLogger("resample")

_ARRAY_NAMES = ("data", "wht", "con", "var_rnoise", "var_poisson", "var_flat")


def read_contribution(path):
    """A contribution file: the `ExposureContribution`, the exposure's metadata and file info."""
    header, extensions = io.read_image_meta(path)
    keywords = {k: v for k, v in header.items() if k.startswith("CTB_")}
    meta = {k: v for k, v in header.items() if not k.startswith("CTB_")}
    present = [n for n in _ARRAY_NAMES if n in extensions]
    with io.open_image_sections(path, present) as arrays:
        contribution = ExposureContribution.from_arrays(arrays, keywords)
    return contribution, meta, keywords


def resample(contribution_paths, grid_path, i2d_path, *, threads=1, **params):
    """Add the per-exposure contributions one at a time and write the _i2d.

    ``grid_path`` holds the grid's WCS already rendered (`io.write_rendered_wcs`):
    this job never evaluates or serialises a gwcs.
    """
    grid = io.read_rendered_wcs(grid_path)
    out_shape = grid.shape
    combiner = MosaicCombiner(out_shape, fillval=params.get("fillval", "NAN"),
                              n_exposures=len(contribution_paths), threads=threads)
    metas, filenames, checksums = [], [], []
    for path in contribution_paths:
        contribution, meta, info = read_contribution(path)
        combiner.add(contribution)
        metas.append(meta)
        filenames.append(info["CTB_NAME"])
        checksums.append((info["CTB_NAME"], info["CTB_SHA"]))
        log.info("resample: added %s (sky %.5f MJy/sr subtracted)", info["CTB_NAME"], info["CTB_SKY"])
        del contribution
    arrays = combiner.finalize()
    meta = mosaic_metadata(metas, {k: grid.sci_keywords[k] for k in GRID_KEYWORDS}, params)
    meta.update(provenance_keywords("resample", params, [*checksums, *io.input_checksums([grid_path])]))
    io.write_i2d(i2d_path, arrays, None, meta, hdrtab=header_table(metas, filenames), rendered_wcs=grid)
    covered = np.count_nonzero(arrays["wht"] > 0)
    log.info("resample: %d exposures drizzled into a %d x %d mosaic (%.1f%% covered)",
             len(metas), out_shape[1], out_shape[0], 100.0 * covered / arrays["wht"].size)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    resample(snakemake.input.contributions, layout.grid_wcs(snakemake.input.grid, "resample"), snakemake.output.i2d,
             threads=snakemake.threads,
             **snakemake.params.step)
