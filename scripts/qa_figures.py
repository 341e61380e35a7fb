"""Snakemake entry point: quality-assurance figures (PNG) of the products, for the report."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging
from pathlib import Path

import numpy as np

from calimage3 import io, layout
from calimage3 import qa_plots
from calimage3.logs import configure_logging
from calimage3.wcs_tools import footprint

log = logging.getLogger("qa_figures")

# Largest distance, arcsec, between a catalog source and its truth counterpart.
TRUTH_MATCH_RADIUS = 0.25
DPI = 100


def _save(fig_maker, path, what):
    """Draw one figure and save it; a figure that fails becomes a message figure.

    A QA picture must never hide a product, nor stop the others: the error
    goes to the log (with its traceback) and into the PNG itself.
    """
    try:
        fig = fig_maker()
    except Exception as exc:  # noqa: BLE001 - any failure is reported in the picture
        log.exception("qa_figures: %s figure failed", what)
        fig = qa_plots.message_figure(f"{type(exc).__name__}: {exc}", title=f"{what}: figure failed")
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # qa/outliers/ is a folder output
    fig.savefig(path, dpi=DPI)
    log.info("qa_figures: %s -> %s", what, path)


def _sky_positions(table, wcs):
    """(N, 2) RA/Dec of a tweakreg source table through ``wcs``."""
    if not len(table):
        return np.empty((0, 2))
    ra, dec = wcs.forward_transform(np.asarray(table["x"], float), np.asarray(table["y"], float))
    return np.column_stack([ra, dec])


def _catalog_radec(catalog):
    sky = catalog["sky_centroid"]
    return np.asarray(sky.ra.deg, float), np.asarray(sky.dec.deg, float)


def qa_figures(i2d_path, cat_path, segm_path, figures, *, roots=(), wcs_paths=(), source_paths=(),
               skymatch_path=None, crf_paths=(), outlier_paths=(), truth_path=None):
    """Make the QA figures of one run and save them as PNG.

    Parameters
    ----------
    i2d_path, cat_path, segm_path : str
        The mosaic, its catalog and segmentation map.
    figures : dict
        Figure name -> PNG path, among ``mosaic``, ``segmentation``,
        ``magnitudes``, ``aperture_correction`` and, for associations, ``footprints``, ``tweakreg``,
        ``skymatch``, and with a truth table ``truth_flux``,
        ``truth_positions``.
    roots : list of str
        Exposure roots, in the order of the per-exposure paths.
    wcs_paths, source_paths : list of str
        Each exposure's tweakreg WCS file and (unless tweakreg was skipped)
        its tweakreg source table.
    skymatch_path : str, optional
        The skymatch JSON.
    crf_paths, outlier_paths : list of str
        Each exposure's ``_crf`` and the PNG of its outlier preview.
    truth_path : str, optional
        A simulator truth ``sources.ecsv`` (ra, dec, flux in Jy, type).
    """
    arrays, i2d_wcs, meta = io.read_i2d(i2d_path)
    data = arrays["data"]
    product = str(i2d_path).rsplit("/", 1)[-1].replace("_i2d.fits", "")

    wcs_files = [io.read_wcs_file(p) for p in wcs_paths]
    footprints = [footprint(w, s) for w, s, _ in wcs_files]

    if "mosaic" in figures:
        _save(lambda: qa_plots.mosaic_figure(data, i2d_wcs, title=f"{product}_i2d",
                                             footprints=footprints or None, names=list(roots) or None),
              figures["mosaic"], "mosaic")
    if "footprints" in figures:
        _save(lambda: qa_plots.footprints_figure(footprints, list(roots),
                                                 mosaic_footprint=footprint(i2d_wcs, data.shape)),
              figures["footprints"], "footprints")
    if "tweakreg" in figures:
        def tweakreg():
            infos = [info for _, _, info in wcs_files]
            residuals = None
            if source_paths:
                positions = [_sky_positions(io.read_table(p), w) for p, (w, _, _) in zip(source_paths, wcs_files)]
                residuals = qa_plots.cross_match_residuals(positions)
            return qa_plots.tweakreg_figure(
                list(roots),
                [(i.get("TWKSHFTX", 0.0), i.get("TWKSHFTY", 0.0)) for i in infos],
                [i.get("TWKROT", 0.0) for i in infos],
                [i.get("TWKNMAT", 0) for i in infos],
                [i.get("TWKRMS", 0.0) for i in infos],
                status=[i.get("S_TWKREG", "SKIPPED") for i in infos],
                reference=[i.get("TWKREF", False) for i in infos],
                residuals=residuals,
                title=f"tweakreg: {product}",
            )
        _save(tweakreg, figures["tweakreg"], "tweakreg")
    if "skymatch" in figures:
        def skymatch():
            sky = io.read_json(skymatch_path)
            return qa_plots.skymatch_figure(list(roots), [sky["levels"][r] for r in roots],
                                            method=sky.get("method"), status=sky.get("status", "COMPLETE"),
                                            title=f"skymatch: {product}")
        _save(skymatch, figures["skymatch"], "skymatch")
    for root, crf_path, png in zip(roots, crf_paths, outlier_paths):
        def outliers(crf_path=crf_path, root=root):
            exposure = io.read_exposure(crf_path)
            return qa_plots.outlier_figure(exposure.data, exposure.dq, name=root)
        _save(outliers, png, f"outliers of {root}")

    if "segmentation" in figures:
        def segmentation():
            segm_arrays, _, _ = io.read_i2d(segm_path)
            return qa_plots.segmentation_figure(data, np.rint(segm_arrays["data"]).astype(np.int64), wcs=i2d_wcs,
                                                title=f"{product}_segm")
        _save(segmentation, figures["segmentation"], "segmentation")

    catalog = io.read_table(cat_path)
    if "magnitudes" in figures:
        _save(lambda: qa_plots.magnitude_histogram_figure(
            catalog["aper_total_abmag"] if len(catalog) else [],
            is_extended=catalog["is_extended"] if len(catalog) else None,
            title=f"{product}_cat"), figures["magnitudes"], "magnitudes")

    if "aperture_correction" in figures:
        _save(lambda: qa_plots.aperture_correction_figure(
            catalog.meta.get("aperture_params", {}), catalog.meta.get("psf_curve"), data=data,
            title=f"{product}_cat: aperture radii and corrections ({catalog.meta.get('apcorr_source', '')})"),
            figures["aperture_correction"], "aperture correction")
    if truth_path and ("truth_flux" in figures or "truth_positions" in figures):
        truth = io.read_table(truth_path)
        t_ra, t_dec = np.asarray(truth["ra"], float), np.asarray(truth["dec"], float)
        tx, ty = i2d_wcs.backward_transform(t_ra, t_dec)
        ny, nx = data.shape
        inside = np.isfinite(tx) & np.isfinite(ty) & (tx > -0.5) & (tx < nx - 0.5) & (ty > -0.5) & (ty < ny - 0.5)
        ix = np.clip(np.rint(np.nan_to_num(tx)).astype(int), 0, nx - 1)
        iy = np.clip(np.rint(np.nan_to_num(ty)).astype(int), 0, ny - 1)
        inside &= np.isfinite(data[iy, ix])
        c_ra, c_dec = _catalog_radec(catalog) if len(catalog) else (np.array([]), np.array([]))
        i_cat, i_truth, dxi, deta = qa_plots.match_catalogs(c_ra, c_dec, t_ra[inside], t_dec[inside],
                                                            max_separation=TRUTH_MATCH_RADIUS)
        truth_in = truth[inside]
        detected = np.zeros(len(truth_in), bool)
        detected[i_truth] = True
        types = np.asarray(truth_in["type"]).astype(str)
        log.info("qa_figures: %d of %d truth sources in the mosaic matched within %.2f arcsec",
                 len(i_truth), len(truth_in), TRUTH_MATCH_RADIUS)
        if "truth_flux" in figures:
            _save(lambda: qa_plots.truth_flux_figure(
                truth_in["flux"][i_truth], catalog["aper_total_flux"][i_cat], types=types[i_truth],
                true_flux_all=truth_in["flux"], detected=detected,
                title=f"{product}: aper_total_flux against truth"), figures["truth_flux"], "truth flux")
        if "truth_positions" in figures:
            _save(lambda: qa_plots.truth_position_figure(
                dxi, deta, true_flux=truth_in["flux"][i_truth], types=types[i_truth],
                title=f"{product}: sky_centroid against truth"), figures["truth_positions"], "truth positions")


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    out = snakemake.output
    roots = snakemake.params.roots
    # Figures this configuration does not make are empty lists in the rule.
    names = ("mosaic", "segmentation", "magnitudes", "aperture_correction", "footprints", "tweakreg", "skymatch", "truth_flux", "truth_positions")
    qa_figures(
        snakemake.input.i2d, snakemake.input.cat, snakemake.input.segm,
        {name: str(out.get(name)) for name in names if isinstance(out.get(name), str)},
        roots=roots,
        wcs_paths=layout.member_files(layout.aligned_wcs, snakemake.input.wcs, roots) if roots else [],
        source_paths=snakemake.input.get("sources", []),
        skymatch_path=snakemake.input.get("sky"),
        crf_paths=snakemake.input.get("crf", []),
        outlier_paths=[f"{out.outliers}/{root}.png" for root in roots],
        truth_path=snakemake.input.get("truth"),
    )
