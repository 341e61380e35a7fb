# tweakreg: sources are detected per exposure (one job each), then all
# catalogs are matched and the WCS corrections fitted in one group job.

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
        sources=f"{WORK}/tweakreg/{{root}}_sources.ecsv",
    params:
        step=step_params("tweakreg", TWEAKREG_DETECTION),
    log:
        f"{LOGS}/tweakreg_detect/{{root}}.log",
    benchmark:
        f"{BENCH}/tweakreg_detect/{{root}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=10,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/tweakreg_detect.py"


rule tweakreg_align:
    input:
        sources=tweakreg_catalogs(),
        wcs=[mtwcs_path(r) for r in ROOTS],
    output:
        wcs=[tweakreg_wcs_path(r) for r in ROOTS],
    params:
        step=step_params("tweakreg", TWEAKREG_ALIGNMENT),
    log:
        f"{LOGS}/tweakreg_align.log",
    benchmark:
        f"{BENCH}/tweakreg_align.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/tweakreg_align.py"
