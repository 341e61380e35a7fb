"""Snakemake entry point: tweakreg matching and fitting of all exposures."""

import logging

from calimage3 import io
from calimage3.logs import configure_logging
from calimage3.tweakreg import align_exposures

log = logging.getLogger("tweakreg")

ALIGN_PARAMETERS = (
    "searchrad", "separation", "tolerance", "use2dhist", "xoffset", "yoffset", "fitgeometry",
    "nclip", "sigma", "minobj", "enforce_user_order", "expand_refcat",
)


def tweakreg_align(source_paths, wcs_paths, output_paths, *, skip=False, **params):
    """Fit relative WCS corrections and write each exposure's corrected WCS."""
    inputs = [io.read_wcs_file(p) for p in wcs_paths]
    wcs_list = [w for w, _, _ in inputs]
    shapes = [s for _, s, _ in inputs]
    infos = [i for _, _, i in inputs]
    if skip:
        for wcs, shape, info, out in zip(wcs_list, shapes, infos, output_paths):
            io.write_wcs_file(out, wcs, shape, info={**info, "S_TWKREG": "SKIPPED", "TWKREASN": "step skipped"})
        log.info("tweakreg: skipped by configuration; WCSs passed on unchanged")
        return
    catalogs = [io.read_table(p) for p in source_paths]
    kwargs = {k: params[k] for k in ALIGN_PARAMETERS if k in params}
    results = align_exposures(catalogs, wcs_list, shapes, **kwargs)
    for path, shape, info, result, out in zip(source_paths, shapes, infos, results, output_paths):
        name = str(path).rsplit("/", 1)[-1].replace("_sources.ecsv", "")
        record = {
            **info,
            "S_TWKREG": result.status,
            "TWKREASN": result.message,
            "TWKREF": bool(result.is_reference),
            "TWKNMAT": int(result.nmatch),
            "TWKRMS": float(result.rms),
            "TWKSHFTX": float(result.shift[0]),
            "TWKSHFTY": float(result.shift[1]),
            "TWKROT": float(result.rotation),
        }
        io.write_wcs_file(out, result.wcs, shape, info=record)
        if result.status == "COMPLETE":
            log.info("tweakreg: %s: %d matches, RMS %.3f pix, shift (%+.3f, %+.3f) arcsec, rotation %+.4f deg%s",
                     name, result.nmatch, result.rms, result.shift[0], result.shift[1], result.rotation,
                     " (reference)" if result.is_reference else "")
        else:
            log.warning("tweakreg: %s: SKIPPED (%s); original WCS kept", name, result.message)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    tweakreg_align(snakemake.input.sources, snakemake.input.wcs, snakemake.output.wcs, **snakemake.params.step)
