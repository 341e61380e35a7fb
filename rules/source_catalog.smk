# source_catalog: detection, deblending and photometry on each mosaic.


rule source_catalog:
    input:
        i2d=RULE.i2d(),
    output:
        cat=RULE.cat(),
        segm=RULE.segm(),
    params:
        step=step_params("source_catalog"),
    log:
        f"{RULE.logs}/source_catalog.log",
    benchmark:
        f"{RULE.bench}/source_catalog.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_group,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/source_catalog.py"
