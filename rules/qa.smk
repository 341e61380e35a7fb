# qa_figures: PNG pictures of every product for `snakemake --report report.html`.
# A leaf rule: the science rules never wait for it, and its failure cannot
# touch their products.  Per-exposure figures are made for associations
# only; truth plots only when `truth` names a simulator truth folder.

QA = f"{OUT}/qa"
QA_CATEGORY = "Quality assurance"


report: "../report/workflow.rst"


def qa_png(name, subcategory, caption=None, labels=None):
    """The PNG of figure ``name``, flagged for the report with its caption."""
    return report(
        f"{QA}/{name}.png",
        category=QA_CATEGORY,
        subcategory=subcategory,
        caption=f"../report/{caption or name}.rst",
        labels=labels or {"figure": name},
    )


def qa_exposure_png(name, subcategory):
    """A figure about the exposures of an association; none for a lone _cal."""
    return [] if ASN.single else qa_png(name, subcategory)


def qa_truth_png(name):
    """A truth-comparison figure; none unless the `truth` folder is given."""
    return qa_png(name, "Against truth") if config.get("truth") else []


def qa_outlier_pngs():
    """One outlier preview per exposure of an association."""
    if ASN.single:
        return []
    return [
        qa_png(f"outliers/{r}", "Outliers", caption="outliers", labels={"figure": "outliers", "exposure": r})
        for r in ROOTS
    ]


def qa_figure_paths():
    """Every QA PNG this configuration makes (for final_products())."""
    names = ["mosaic", "segmentation", "magnitudes"]
    if not ASN.single:
        names += ["footprints", "tweakreg", "skymatch"] + [f"outliers/{r}" for r in ROOTS]
    if config.get("truth"):
        names += ["truth_flux", "truth_positions"]
    return [f"{QA}/{n}.png" for n in names]


def qa_inputs(wildcards):
    """Products the figures show: the mosaic set, plus per-exposure files and truth."""
    inputs = {
        "i2d": i2d_path(),
        "cat": f"{OUT}/{ASN.product}_cat.ecsv",
        "segm": f"{OUT}/{ASN.product}_segm.fits",
    }
    if not ASN.single:
        inputs.update(
            crf=all_crf(),
            wcs=[tweakreg_wcs_path(r) for r in ROOTS],
            sources=tweakreg_catalogs(),
            sky=f"{WORK}/skymatch/skymatch.json",
        )
    if config.get("truth"):
        inputs["truth"] = f"{config['truth']}/sources.ecsv"
    return inputs


rule qa_figures:
    input:
        unpack(qa_inputs),
    output:
        mosaic=qa_png("mosaic", "Mosaic"),
        segmentation=qa_png("segmentation", "Source catalog"),
        magnitudes=qa_png("magnitudes", "Source catalog"),
        footprints=qa_exposure_png("footprints", "Exposures"),
        tweakreg=qa_exposure_png("tweakreg", "Alignment (tweakreg)"),
        skymatch=qa_exposure_png("skymatch", "Sky (skymatch)"),
        outliers=qa_outlier_pngs(),
        truth_flux=qa_truth_png("truth_flux"),
        truth_positions=qa_truth_png("truth_positions"),
    params:
        roots=[] if ASN.single else ROOTS,
    log:
        f"{LOGS}/qa_figures.log",
    benchmark:
        f"{BENCH}/qa_figures.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_group,
        runtime=20,
    conda:
        "../envs/qa.yaml"
    script:
        "../scripts/qa_figures.py"
