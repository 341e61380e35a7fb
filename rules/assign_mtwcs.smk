# assign_mtwcs: one WCS per exposure, shifted onto a moving target's mean
# position.  One job per association, run only for moving-target
# associations (tweakreg then passes these WCSs through); a fixed-target
# association goes straight from its _cal WCSs to tweakreg.


rule assign_mtwcs:
    input:
        cal=member_cal_files,
    output:
        wcs=directory(RULE.mtwcs_dir()),
    params:
        step=step_params("assign_mtwcs"),
        roots=member_roots,
    log:
        f"{RULE.logs}/assign_mtwcs.log",
    benchmark:
        f"{RULE.bench}/assign_mtwcs.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/assign_mtwcs.py"
