# skymatch: sky levels of all exposures, matched in their overlaps (one job).


rule skymatch:
    input:
        cal=all_cal(),
        wcs=[tweakreg_wcs_path(r) for r in ROOTS],
    output:
        levels=f"{WORK}/skymatch/skymatch.json",
    params:
        step=step_params("skymatch"),
    log:
        f"{LOGS}/skymatch.log",
    benchmark:
        f"{BENCH}/skymatch.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_group,
        runtime=20,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/skymatch.py"
