"""Snakemake entry point: skymatch over all exposures, one exposure in memory at a time."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

from calimage3 import io, layout
from calimage3.association import exposure_root
from calimage3.logs import configure_logging
from calimage3.skymatch import SkyMatcher, user_sky_levels

log = logging.getLogger("skymatch")

SKY_PARAMETERS = ("match_down", "skystat", "dqbits", "lower", "upper", "nclip", "lsigma", "usigma", "binwidth",
                  "stepsize")


def _write_levels(levels_path, roots, levels, *, method, subtract):
    levels = {r: float(v) for r, v in zip(roots, levels)}
    io.write_json(levels_path, {"status": "COMPLETE", "method": method, "subtract": bool(subtract), "levels": levels})
    summary = ", ".join(f"{r}: {v:+.5f}" for r, v in levels.items())
    log.info("skymatch (%s): sky levels in MJy/sr: %s", method, summary)


def skymatch(cal_paths, wcs_paths, levels_path, *, skip=False, subtract=False, skymethod="match", skylist=None,
             verify_checksums=False, **params):
    """Compute each exposure's sky level and write them as JSON.

    Reads the WCSs first, then each exposure's SCI and DQ once, in turn:
    only one exposure is in memory at a time.  With ``skymethod='user'`` the
    levels come from the ``skylist`` file and no exposure is read.
    ``verify_checksums`` checks each _cal's FITS checksums as it is read.
    """
    roots = [exposure_root(p) for p in cal_paths]
    if skip:
        io.write_json(levels_path, {"status": "SKIPPED", "method": None, "subtract": False,
                                    "levels": {r: 0.0 for r in roots}})
        log.info("skymatch: skipped by configuration; sky levels set to 0")
        return
    if skymethod == "user":
        if skylist is None:
            raise ValueError("skymatch: skymethod 'user' needs a skylist file of (file name, sky value) lines")
        names, values = io.read_skylist(skylist)
        try:
            levels = user_sky_levels(cal_paths, names, values)
        except ValueError as exc:
            raise io.InputFileError(skylist, str(exc)) from None
        _write_levels(levels_path, roots, levels, method="user", subtract=subtract)
        return

    wcs_list, shapes = [], []
    for cal, wcs_path in zip(cal_paths, wcs_paths):
        wcs, shape, _ = io.read_wcs_file(wcs_path)
        if shape is None:
            shape = io.read_exposure_wcs(cal)[1]
        wcs_list.append(wcs)
        shapes.append(tuple(shape))
    kwargs = {k: params[k] for k in SKY_PARAMETERS if k in params}
    matcher = SkyMatcher(wcs_list, shapes, skymethod=skymethod, **kwargs)
    for k, cal in enumerate(cal_paths):
        exposure = io.read_exposure(cal, arrays=("data", "dq"), with_wcs=False,  # WCS from tweakreg
                                    verify_checksums=verify_checksums)
        if exposure.shape != shapes[k]:
            raise io.InputFileError(cal, f"SCI shape {exposure.shape} differs from {shapes[k]} in {wcs_paths[k]}")
        matcher.add_image(k, exposure.data, dq=exposure.dq)
        del exposure
    result = matcher.evaluate()
    _write_levels(levels_path, roots, result.levels, method=result.method, subtract=subtract)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    # verify_checksums is read from the config, not a param: it changes no output, so it reruns nothing.
    wcs_paths = layout.member_files(layout.aligned_wcs, snakemake.input.wcs, snakemake.params.roots)
    skymatch(snakemake.input.cal, wcs_paths, snakemake.output.levels,
             verify_checksums=layout.checksum_records(snakemake.config), **snakemake.params.step)
