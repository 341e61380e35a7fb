# assign_mtwcs: one WCS per exposure, shifted onto a moving target's mean
# position.  One job per association (rules/common.smk: Product), run only
# for moving-target associations (tweakreg then passes these WCSs through);
# a fixed-target association goes straight from its _cal WCSs to tweakreg.

for P in PRODUCTS:

    rule:
        name:
            P.rule("assign_mtwcs")
        input:
            cal=P.all_cal(),
        output:
            wcs=[P.mtwcs(r) for r in P.roots],
        params:
            step=step_params("assign_mtwcs"),
        log:
            f"{P.logs}/assign_mtwcs.log",
        benchmark:
            f"{P.bench}/assign_mtwcs.tsv"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/assign_mtwcs.py"
