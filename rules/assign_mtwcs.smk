# assign_mtwcs: one WCS per exposure, shifted onto a moving target's mean
# position when the exposures track one; a copy of the input WCS otherwise.


rule assign_mtwcs:
    input:
        cal=all_cal(),
    output:
        wcs=[mtwcs_path(r) for r in ROOTS],
    params:
        step=step_params("assign_mtwcs"),
    log:
        f"{LOGS}/assign_mtwcs.log",
    benchmark:
        f"{BENCH}/assign_mtwcs.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/assign_mtwcs.py"
