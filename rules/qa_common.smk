# Path helpers of qa_figures (in rules/qa.smk): which figures a configuration
# makes for one association (a Product of rules/common.smk), flagged for the
# report, and the products they show.

QA_CATEGORY = "Quality assurance"


def qa_png(P, name, subcategory, caption=None, labels=None):
    """The PNG of figure ``name``, flagged for the report with its caption."""
    labels = labels or {"figure": name}
    if CAMPAIGN:
        labels = {"product": P.asn.product, **labels}
    return report(
        f"{P.qa}/{name}.png",
        category=QA_CATEGORY,
        subcategory=subcategory,
        caption=f"../report/{caption or name}.rst",
        labels=labels,
    )


def qa_exposure_png(P, name, subcategory):
    """A figure about the exposures of an association; none for a lone _cal."""
    return [] if P.single else qa_png(P, name, subcategory)


def qa_truth_png(P, name):
    """A truth-comparison figure; none unless the `truth` folder is given."""
    return qa_png(P, name, "Against truth") if config.get("truth") else []


def qa_outlier_pngs(P):
    """One outlier preview per exposure of an association."""
    if P.single:
        return []
    return [
        qa_png(P, f"outliers/{r}", "Outliers", caption="outliers", labels={"figure": "outliers", "exposure": r})
        for r in P.roots
    ]


def qa_figure_paths(P):
    """Every QA PNG this configuration makes (for Product.final_products())."""
    names = ["mosaic", "segmentation", "magnitudes", "aperture_correction"]
    if not P.single:
        names += ["footprints", "tweakreg", "skymatch"] + [f"outliers/{r}" for r in P.roots]
    if config.get("truth"):
        names += ["truth_flux", "truth_positions"]
    return [f"{P.qa}/{n}.png" for n in names]


def qa_inputs(P):
    """Input function of P's qa_figures rule: the mosaic set, plus per-exposure files and truth."""

    def inputs_of_product(wildcards):
        inputs = {"i2d": P.i2d(), "cat": P.cat(), "segm": P.segm()}
        if not P.single:
            inputs.update(
                crf=P.all_crf(),
                wcs=P.all_tweakreg_wcs(),
                sources=P.tweakreg_catalogs(),
                sky=P.skymatch(),
            )
        if config.get("truth"):
            inputs["truth"] = f"{config['truth']}/sources.ecsv"
        return inputs

    return inputs_of_product
