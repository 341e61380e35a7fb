# Path helpers of qa_figures (in rules/qa.smk): which figures a configuration
# makes, flagged for the report, and the products they show.

QA_CATEGORY = "Quality assurance"
# Figures of the exposures; the per-exposure outlier previews go in the folder qa/outliers/.
QA_EXPOSURE_FIGURES = ("footprints", "tweakreg", "skymatch")
QA_TRUTH_FIGURES = ("truth_flux", "truth_positions")


def qa_png(name, subcategory, caption=None, labels=None):
    """The rule's PNG of figure ``name``, flagged for the report with its caption."""
    labels = labels or {"figure": name}
    if CAMPAIGN:
        labels = {"product": "{product}", **labels}
    return report(
        f"{RULE.qa}/{name}.png",
        category=QA_CATEGORY,
        subcategory=subcategory,
        caption=f"../report/{caption or name}.rst",
        labels=labels,
    )


def qa_exposure_png(name, subcategory):
    """A figure about the exposures of an association; none for a lone _cal."""
    return qa_png(name, subcategory) if RULE_HAS_EXPOSURES else []


def qa_truth_png(name):
    """A truth-comparison figure; none unless the `truth` folder is given."""
    return qa_png(name, "Against truth") if config.get("truth") else []


def qa_outlier_folder():
    """The folder of per-exposure outlier previews (one <root>.png each); none for a lone _cal."""
    if not RULE_HAS_EXPOSURES:
        return []
    labels = {"figure": "outliers", "exposure": "{exposure}"}
    if CAMPAIGN:
        labels = {"product": "{product}", **labels}
    return report(
        directory(f"{RULE.qa}/outliers"),
        patterns=["{exposure}.png"],
        category=QA_CATEGORY,
        subcategory="Outliers",
        caption="../report/outliers.rst",
        labels=labels,
    )


def qa_figure_paths(P):
    """Every QA file this configuration makes for product P (for Product.final_products())."""
    names = ["mosaic", "segmentation", "magnitudes", "aperture_correction"]
    if not P.single:
        names += list(QA_EXPOSURE_FIGURES)
    if config.get("truth"):
        names += list(QA_TRUTH_FIGURES)
    paths = [f"{P.qa}/{n}.png" for n in names]
    if not P.single:
        paths.append(f"{P.qa}/outliers")
    return paths


def qa_inputs(wildcards):
    """Input function of qa_figures: the mosaic set, plus per-exposure files and truth."""
    P = product_of(wildcards)
    inputs = {"i2d": P.i2d(), "cat": P.cat(), "segm": P.segm()}
    if not P.single:
        inputs.update(
            crf=P.all_crf(),
            wcs=P.tweakreg_dir(),
            sources=P.tweakreg_catalogs(),
            sky=P.skymatch(),
        )
    if config.get("truth"):
        inputs["truth"] = f"{config['truth']}/sources.ecsv"
    return inputs


def qa_roots(wildcards):
    """Roots whose exposures get figures: the association's, none for a lone _cal."""
    P = product_of(wildcards)
    return [] if P.single else P.roots
