# outlier_detection: drizzle each exposure alone onto a common grid (one job
# each), take the median of those in sections (one job), then blot the median
# back and flag outliers in each exposure (one job each), writing the _crf.

OUTLIER_DRIZZLE = ("weight_type", "pixfrac", "kernel", "fillval", "good_bits")
OUTLIER_FLAGGING = ("skip", "snr", "scale", "backg")


rule outlier_grid:
    input:
        wcs=[tweakreg_wcs_path(r) for r in ROOTS],
    output:
        grid=f"{WORK}/outlier_detection/grid_wcs.asdf",
    log:
        f"{LOGS}/outlier_grid.log",
    benchmark:
        f"{BENCH}/outlier_grid.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/output_grid.py"


rule outlier_single:
    input:
        cal=cal_path,
        wcs=f"{WORK}/tweakreg/{{root}}_tweakreg.asdf",
        sky=f"{WORK}/skymatch/skymatch.json",
        grid=f"{WORK}/outlier_detection/grid_wcs.asdf",
    output:
        single=temp(f"{WORK}/outlier_detection/{{root}}_single.fits"),
    params:
        step=step_params("outlier_detection", OUTLIER_DRIZZLE),
        grid_step=config["pixmap_grid_step"],
    log:
        f"{LOGS}/outlier_single/{{root}}.log",
    benchmark:
        f"{BENCH}/outlier_single/{{root}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=10,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/outlier_single.py"


rule outlier_median:
    input:
        singles=expand(f"{WORK}/outlier_detection/{{root}}_single.fits", root=ROOTS),
        grid=f"{WORK}/outlier_detection/grid_wcs.asdf",
    output:
        median=f"{WORK}/outlier_detection/median.fits",
    params:
        maskpt=config["outlier_detection"]["maskpt"],
    log:
        f"{LOGS}/outlier_median.log",
    benchmark:
        f"{BENCH}/outlier_median.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_group,
        runtime=20,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/outlier_median.py"


rule outlier_flag:
    input:
        unpack(outlier_median_inputs),
        cal=cal_path,
        wcs=f"{WORK}/tweakreg/{{root}}_tweakreg.asdf",
        sky=f"{WORK}/skymatch/skymatch.json",
    output:
        crf=f"{OUT}/{{root}}_{ASN.asn_id}_crf.fits",
    params:
        step=step_params("outlier_detection", OUTLIER_FLAGGING),
        grid_step=config["pixmap_grid_step"],
    log:
        f"{LOGS}/outlier_flag/{{root}}.log",
    benchmark:
        f"{BENCH}/outlier_flag/{{root}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=10,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/outlier_flag.py"
