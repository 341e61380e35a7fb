# tweakreg: sources are detected per exposure (one job each, shared by every
# association that has the exposure), then each association's catalogs are
# matched and the WCS corrections fitted in one group job (exposure groups
# from the headers; then, with abs_refcat, one rigid fit to that catalog).

TWEAKREG_DETECTION = (
    "snr_threshold", "kernel_fwhm", "bkg_boxsize", "brightest", "peakmax",
    "starfinder", "sharplo", "sharphi", "roundlo", "roundhi",
)
TWEAKREG_ALIGNMENT = (
    "skip", "searchrad", "separation", "tolerance", "use2dhist", "xoffset", "yoffset",
    "fitgeometry", "nclip", "sigma", "minobj", "enforce_user_order", "expand_refcat",
    "abs_refcat", "abs_minobj", "abs_searchrad", "abs_use2dhist", "abs_separation",
    "abs_tolerance", "abs_fitgeometry", "abs_nclip", "abs_sigma",
)

from calimage3.refcat import reference_catalog_path as _reference_catalog_path

# Checked at startup: a web catalog name (GAIADR3...) is a clear error here.
try:
    ABS_REFCAT = _reference_catalog_path(config["tweakreg"].get("abs_refcat"))
except ValueError as _exc:
    raise _io.InputFileError("config tweakreg.abs_refcat", str(_exc)) from None


def abs_refcat_input():
    """The absolute-astrometry reference catalog (a rerun trigger), if any."""
    if config["tweakreg"].get("skip") or not ABS_REFCAT:
        return []
    return [ABS_REFCAT]


rule tweakreg_detect:
    input:
        cal=cal_path,
    output:
        sources=sources_path("{root}"),
    params:
        step=step_params("tweakreg", TWEAKREG_DETECTION),
    log:
        f"{LOGS}/tweakreg_detect/{{root}}.log",
    benchmark:
        f"{BENCH}/tweakreg_detect/{{root}}.tsv"
    # shared by every association that has the exposure: batched across associations
    group:
        "tweakreg_detect" if config["exposure_batches"] else None
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=runtime_exposure,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/tweakreg_detect.py"


def tweakreg_input_wcs(wildcards):
    """The WCSs tweakreg starts from: the _cal files', or assign_mtwcs's for a
    moving target (JWST runs assign_mtwcs only then)."""
    P = product_of(wildcards)
    return [P.mtwcs_dir()] if P.asn.moving_target else P.all_cal()


def tweakreg_source_catalogs(wildcards):
    """The source catalogs the association's alignment matches (none when skipped or moving)."""
    return product_of(wildcards).tweakreg_catalogs()


rule tweakreg_align:
    input:
        sources=tweakreg_source_catalogs,
        wcs=tweakreg_input_wcs,
        cal=member_cal_files,
        refcat=abs_refcat_input(),
    output:
        wcs=directory(RULE.tweakreg_dir()),
    params:
        step=step_params("tweakreg", TWEAKREG_ALIGNMENT),
        roots=member_roots,
        asn_group_ids=member_group_ids,
    log:
        f"{RULE.logs}/tweakreg_align.log",
    benchmark:
        f"{RULE.bench}/tweakreg_align.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/tweakreg_align.py"
