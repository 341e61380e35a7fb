# calwebb_image3 as a Snakemake workflow.
#
#   snakemake --cores N --config asn=PATH output_dir=DIR
#
# PATH is an image3 association (JSON) or one _cal.fits; every product is
# written in DIR with its JWST name.  Steps, in order: assign_mtwcs,
# tweakreg, skymatch, outlier_detection, resample, source_catalog.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/assign_mtwcs.smk"
include: "rules/tweakreg.smk"
include: "rules/skymatch.smk"
include: "rules/outlier_detection.smk"
include: "rules/resample.smk"
include: "rules/source_catalog.smk"
include: "rules/qa.smk"
include: "rules/tiles.smk"


write_campaign_manifest()


# Local runs run each job in a worker forked from one process that has
# imported the science libraries once (calimage3/job_server.py; config job_server).
onstart:
    activate_job_server_if_wanted()
    freeze_live_objects()


onsuccess:
    stop_job_server()
    cancel_idle_timers()
    freeze_live_objects()


onerror:
    stop_job_server()
    cancel_idle_timers()
    freeze_live_objects()


rule all:
    input:
        final_products(),
    default_target: True
