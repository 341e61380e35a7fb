# source_catalog: detection, deblending and photometry on the mosaic.


rule source_catalog:
    input:
        i2d=i2d_path(),
    output:
        cat=f"{OUT}/{ASN.product}_cat.ecsv",
        segm=f"{OUT}/{ASN.product}_segm.fits",
    params:
        step=step_params("source_catalog"),
    log:
        f"{LOGS}/source_catalog.log",
    benchmark:
        f"{BENCH}/source_catalog.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_group,
        runtime=20,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/source_catalog.py"
