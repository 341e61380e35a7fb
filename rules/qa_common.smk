# Path helpers of qa_figures (in rules/qa.smk): which figures a configuration
# makes, flagged for the report, and the products they show.

QA = f"{OUT}/qa"
QA_CATEGORY = "Quality assurance"


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
