"""Snakemake entry point: assign_mtwcs."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

from calimage3 import io, layout
from calimage3.assign_mtwcs import assign_moving_target_wcs, is_moving_target
from calimage3.logs import configure_logging

log = logging.getLogger("assign_mtwcs")


def assign_mtwcs(cal_paths, wcs_paths, *, skip=False):
    """Write each exposure's WCS, moved onto the mean target position if moving."""
    wcs_list, shapes, metas = zip(*(io.read_exposure_wcs(p) for p in cal_paths))
    moving = (not skip) and is_moving_target(metas)
    info = {"S_MTWCS": "SKIPPED"}
    if moving:
        wcs_list, avra, avdec = assign_moving_target_wcs(
            wcs_list, [m["MT_RA"] for m in metas], [m["MT_DEC"] for m in metas]
        )
        info = {"S_MTWCS": "COMPLETE", "MT_AVRA": avra, "MT_AVDEC": avdec}
        log.info("assign_mtwcs: moving target; %d exposures shifted onto RA=%.7f Dec=%.7f",
                 len(wcs_list), avra, avdec)
    else:
        log.info("assign_mtwcs: fixed target; %d WCSs passed on unchanged", len(wcs_list))
    for wcs, shape, path in zip(wcs_list, shapes, wcs_paths):
        io.write_wcs_file(path, wcs, shape, info=info)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    wcs_paths = layout.member_files(layout.moving_target_wcs, snakemake.output.wcs, snakemake.params.roots)
    assign_mtwcs(snakemake.input.cal, wcs_paths, **snakemake.params.step)
