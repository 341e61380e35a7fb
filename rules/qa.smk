# qa_figures: PNG pictures of every product for `snakemake --report report.html`.
# A leaf rule: the science rules never wait for it, and its failure cannot
# touch their products.  Per-exposure figures are made for associations
# only; truth plots only when `truth` names a simulator truth folder.
# One job per association.

include: "qa_common.smk"


report: "../report/workflow.rst"


rule qa_figures:
    input:
        unpack(qa_inputs),
    output:
        mosaic=qa_png("mosaic", "Mosaic"),
        segmentation=qa_png("segmentation", "Source catalog"),
        magnitudes=qa_png("magnitudes", "Source catalog"),
        aperture_correction=qa_png("aperture_correction", "Source catalog"),
        footprints=qa_exposure_png("footprints", "Exposures"),
        tweakreg=qa_exposure_png("tweakreg", "Alignment (tweakreg)"),
        skymatch=qa_exposure_png("skymatch", "Sky (skymatch)"),
        outliers=qa_outlier_folder(),
        truth_flux=qa_truth_png("truth_flux"),
        truth_positions=qa_truth_png("truth_positions"),
    params:
        roots=qa_roots,
    log:
        f"{RULE.logs}/qa_figures.log",
    benchmark:
        f"{RULE.bench}/qa_figures.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_group,
        runtime=runtime_minutes,
    conda:
        "../envs/qa.yaml"
    script:
        "../scripts/qa_figures.py"
