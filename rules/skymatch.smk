# skymatch: sky levels of an association's exposures, matched in their
# overlaps (one job per association).

for P in PRODUCTS:

    rule:
        name:
            P.rule("skymatch")
        input:
            cal=P.all_cal(),
            wcs=P.all_tweakreg_wcs(),
        output:
            levels=P.skymatch(),
        params:
            step=step_params("skymatch"),
        log:
            f"{P.logs}/skymatch.log",
        benchmark:
            f"{P.bench}/skymatch.tsv"
        threads: 1
        resources:
            mem_mb=mem_mb_group,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/skymatch.py"
