# tweakreg: sources are detected per exposure (one job each), then all
# catalogs are matched and the WCS corrections fitted in one group job.


rule tweakreg_detect:
    input:
        cal=cal_path,
    output:
        sources=f"{WORK}/tweakreg/{{root}}_sources.ecsv",
    params:
        step=step_params("tweakreg"),
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
        sources=expand(f"{WORK}/tweakreg/{{root}}_sources.ecsv", root=ROOTS),
        wcs=[mtwcs_path(r) for r in ROOTS],
    output:
        wcs=[tweakreg_wcs_path(r) for r in ROOTS],
    params:
        step=step_params("tweakreg"),
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
