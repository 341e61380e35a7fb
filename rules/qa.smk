# qa_figures: PNG pictures of every product for `snakemake --report report.html`.
# A leaf rule: the science rules never wait for it, and its failure cannot
# touch their products.  Per-exposure figures are made for associations
# only; truth plots only when `truth` names a simulator truth folder.
# One job per association (rules/common.smk: Product).

include: "qa_common.smk"


report: "../report/workflow.rst"


for P in PRODUCTS:

    rule:
        name:
            P.rule("qa_figures")
        input:
            unpack(qa_inputs(P)),
        output:
            mosaic=qa_png(P, "mosaic", "Mosaic"),
            segmentation=qa_png(P, "segmentation", "Source catalog"),
            magnitudes=qa_png(P, "magnitudes", "Source catalog"),
            aperture_correction=qa_png(P, "aperture_correction", "Source catalog"),
            footprints=qa_exposure_png(P, "footprints", "Exposures"),
            tweakreg=qa_exposure_png(P, "tweakreg", "Alignment (tweakreg)"),
            skymatch=qa_exposure_png(P, "skymatch", "Sky (skymatch)"),
            outliers=qa_outlier_pngs(P),
            truth_flux=qa_truth_png(P, "truth_flux"),
            truth_positions=qa_truth_png(P, "truth_positions"),
        params:
            roots=[] if P.single else P.roots,
        log:
            f"{P.logs}/qa_figures.log",
        benchmark:
            f"{P.bench}/qa_figures.tsv"
        threads: 1
        resources:
            mem_mb=mem_mb_group,
            runtime=runtime_minutes,
        conda:
            "../envs/qa.yaml"
        script:
            "../scripts/qa_figures.py"
