"""Snakemake entry point: source catalog and segmentation map of the mosaic."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from calimage3 import io
from calimage3.fits_wcs import exact_fits_wcs
from calimage3.logs import configure_logging
from calimage3.provenance import provenance_keywords
from calimage3.reference_data import catalog_reference_params, crds_parameters
from calimage3.source_catalog import make_source_catalog

log = logging.getLogger("source_catalog")


def source_catalog(i2d_path, cat_path, segm_path, *, override_apcorr="", override_abvegaoffset="", tile=None,
                   threads=1, **params):
    """Detect and measure sources in the _i2d; write _cat.ecsv and _segm.fits.

    ``override_apcorr``/``override_abvegaoffset``: APCORR and ABVEGAOFFSET
    reference files ("" or None: the ones a local CRDS cache selects, when
    ``CRDS_PATH`` names one, else none).  ``tile``: for a sky tile's _i2d,
    ``{"tile": id, "pixel_scale": ..., "tile_size": ...}``; only the sources
    whose centroid the tile's core owns are kept, in the catalog and in the
    segmentation map (the others are measured by their own tile).  With
    ``threads`` > 1 the detection image's convolutions run at once, and the
    inputs' checksums (provenance) are computed beside the catalog.
    """
    arrays, rendered, meta = io.read_i2d_rendered(i2d_path, arrays=("err", "wht"))
    # Files the user did not give come from a local CRDS cache, when there is one (offline).
    wanted = {"apcorr": override_apcorr, "abvegaoffset": override_abvegaoffset}
    picked, missing = io.crds_reference_files(crds_parameters(meta), [t for t, given in wanted.items() if not given])
    for reftype, path in picked.items():
        log.info("source_catalog: %s reference file %s selected by the local CRDS cache", reftype.upper(), path)
    for reftype, why in missing.items():
        log.info("source_catalog: no %s reference file from CRDS: %s", reftype.upper(), why)
    override_apcorr = override_apcorr or picked.get("apcorr", "")
    override_abvegaoffset = override_abvegaoffset or picked.get("abvegaoffset", "")
    crds_note = {p: " (CRDS)" for p in picked.values()}
    refs = catalog_reference_params(
        meta, apcorr=io.read_apcorr(override_apcorr) if override_apcorr else None,
        abvegaoffset=io.read_abvegaoffset(override_abvegaoffset) if override_abvegaoffset else None,
        apcorr_name=Path(override_apcorr or "").name + crds_note.get(override_apcorr, ""),
        abvegaoffset_name=Path(override_abvegaoffset or "").name + crds_note.get(override_abvegaoffset, ""),
        abvega_offset=params.get("abvega_offset"),
    )
    abvega_source = refs.pop("abvega_source")
    log.info("source_catalog: aperture corrections from %s; Vega magnitudes from %s",
             refs.get("apcorr_source", "the mosaic's stars"), abvega_source or "nothing (NaN)")
    wcs = exact_fits_wcs(rendered.sci_keywords)
    if wcs is None:  # the header only approximates the gwcs
        wcs, _, _ = io.read_exposure_wcs(i2d_path)
    else:
        log.info("source_catalog: sky coordinates from the exact TAN WCS of the SCI header")
    inputs = [i2d_path, *(p for p in (override_apcorr, override_abvegaoffset) if p)]
    with ThreadPoolExecutor(1) as hasher:
        # file reads and hashing release the GIL: with threads, beside the catalog
        pending = hasher.submit(io.input_checksums, inputs) if threads > 1 else None
        table, segm = make_source_catalog(arrays["data"], arrays["err"], wcs, wht=arrays.get("wht"),
                                          pixar_sr=float(meta["PIXAR_SR"]), threads=threads, **{**params, **refs})
        checksums = pending.result() if pending else io.input_checksums(inputs)
    if tile is not None:
        table, segm = _owned_part(table, segm, **tile)
    step_params = {**params, "override_apcorr": override_apcorr, "override_abvegaoffset": override_abvegaoffset}
    provenance = provenance_keywords("source_catalog", step_params, checksums)
    table.meta.update({"product": str(i2d_path).rsplit("/", 1)[-1], "filter": meta.get("FILTER", ""),
                       "apcorr_source": refs.get("apcorr_source", "psf_stars (no APCORR file)"),
                       "abvega_source": abvega_source, "provenance": provenance})
    io.write_table(cat_path, table)
    segm_meta = {k: meta[k] for k in ("TELESCOP", "INSTRUME", "FILTER") if k in meta}
    io.write_segmentation(segm_path, segm, None, {**segm_meta, **provenance}, rendered_wcs=rendered)
    n_ext = int(table["is_extended"].sum()) if "is_extended" in table.colnames and len(table) else 0
    log.info("source_catalog: %d sources (%d extended) in %s", len(table), n_ext, i2d_path)


def _owned_part(table, segm, *, tile, pixel_scale, tile_size):
    """The rows (and segments) of ``table`` whose centroid tile ``tile``'s core owns."""
    from calimage3.tile_products import owned_sources

    if len(table) == 0:
        return table, segm
    sky = table["sky_centroid"]
    keep = owned_sources(sky.ra.deg, sky.dec.deg, tile, pixel_scale, tile_size)
    segm[~np.isin(segm, np.asarray(table["label"])[keep])] = 0
    log.info("source_catalog: %d of %d sources have their centroid in the core of tile %s", keep.sum(), len(table),
             tile)
    return table[keep], segm


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    # a sky tile's catalog (rules/tiles.smk) keeps the sources its core owns
    owner = ({"tile": snakemake.wildcards.tile, **snakemake.params.owner} if hasattr(snakemake.params, "owner")
             else None)
    source_catalog(snakemake.input.i2d, snakemake.output.cat, snakemake.output.segm, tile=owner,
                   threads=snakemake.threads, **snakemake.params.step)
