# source_catalog: detection, deblending and photometry on each mosaic.


def catalog_reference_files():
    """The user's APCORR and ABVEGAOFFSET files as rule inputs (a change reruns the catalog); none when unset."""
    step = config["source_catalog"]
    return [step[k] for k in ("override_apcorr", "override_abvegaoffset") if step.get(k)]


rule source_catalog:
    input:
        i2d=RULE.i2d(),
        refs=catalog_reference_files(),
    output:
        cat=RULE.cat(),
        segm=RULE.segm(),
    params:
        step=step_params("source_catalog"),
    log:
        f"{RULE.logs}/source_catalog.log",
    benchmark:
        f"{RULE.bench}/source_catalog.tsv"
    # the last job, alone on the machine: its convolutions and the input's
    # checksum run in two threads (Snakemake lowers this to --cores when fewer are given)
    threads: 2
    resources:
        mem_mb=mem_mb_group,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/source_catalog.py"
