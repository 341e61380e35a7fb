# tweakreg: sources are detected per exposure (one job each, shared by every
# association that has the exposure), then each association's catalogs are
# matched and the WCS corrections fitted in one group job.

TWEAKREG_DETECTION = (
    "snr_threshold", "kernel_fwhm", "bkg_boxsize", "brightest", "peakmax",
    "starfinder", "sharplo", "sharphi", "roundlo", "roundhi",
)
TWEAKREG_ALIGNMENT = (
    "skip", "searchrad", "separation", "tolerance", "use2dhist", "xoffset", "yoffset",
    "fitgeometry", "nclip", "sigma", "minobj", "enforce_user_order", "expand_refcat",
)


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
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/tweakreg_detect.py"


for P in PRODUCTS:

    rule:
        name:
            P.rule("tweakreg_align")
        input:
            sources=P.tweakreg_catalogs(),
            wcs=[P.mtwcs(r) for r in P.roots],
        output:
            wcs=P.all_tweakreg_wcs(),
        params:
            step=step_params("tweakreg", TWEAKREG_ALIGNMENT),
        log:
            f"{P.logs}/tweakreg_align.log",
        benchmark:
            f"{P.bench}/tweakreg_align.tsv"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/tweakreg_align.py"
