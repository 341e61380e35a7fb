# resample: the output grid and each exposure's pixel map onto it (one job;
# the grid is the user's output_wcs file when given),
# each exposure drizzled onto its part of it (one job each), then the
# contributions added one at a time into the _i2d mosaic (one job).  With
# single=true each contribution becomes its own <root>_outlier_i2d.fits
# instead (JWST's single-image outputs).  Rules per association
# (rules/common.smk: Product).

RESAMPLE_GRID = ("pixel_scale_ratio", "pixel_scale", "rotation", "crval", "crpix", "output_shape", "output_wcs")
RESAMPLE_DRIZZLE = ("pixfrac", "kernel", "weight_type", "good_bits")


def user_output_wcs():
    """The user's output_wcs file as a rule input (reruns the grid when it changes); none when unset."""
    path = config["resample"].get("output_wcs")
    return [path] if path else []


def single_resampled(P, root):
    """Exposure ``root`` resampled alone onto the mosaic grid, named as JWST names single outputs."""
    return f"{P.out}/{root}_outlier_i2d.fits"


def all_single_resampled(P):
    """Every exposure's single resampled image (resample single=true), in association order."""
    return [single_resampled(P, r) for r in P.roots]


for P in PRODUCTS:

    rule:
        name:
            P.rule("resample_grid")
        input:
            wcs=P.resample_wcs_inputs(),
            user_wcs=user_output_wcs(),
        output:
            grid=P.resample_grid(),
            pixmaps=[P.resample_pixmap(r) for r in P.roots],
        params:
            step=step_params("resample", RESAMPLE_GRID),
            grid_step=config["pixmap_grid_step"],
        log:
            f"{P.logs}/resample_grid.log",
        benchmark:
            f"{P.bench}/resample_grid.tsv"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/output_grid.py"

    rule:
        name:
            P.rule("resample_exposure")
        input:
            exposure=P.resample_input,
            pixmap=P.resample_pixmap("{root}"),
        output:
            contribution=temp(P.contribution("{root}")),
        params:
            step=step_params("resample", RESAMPLE_DRIZZLE),
        log:
            f"{P.logs}/resample_exposure/{{root}}.log",
        benchmark:
            f"{P.bench}/resample_exposure/{{root}}.tsv"
        # ahead of the remaining (shorter) flag jobs, so that the last
        # drizzles do not run alone at the end with a core idle
        priority: 1
        threads: 1
        resources:
            mem_mb=mem_mb_exposure,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/resample_exposure.py"

    rule:
        name:
            P.rule("resample")
        input:
            contributions=P.all_contributions(),
            grid=P.resample_grid(),
        output:
            i2d=P.i2d(),
        params:
            step=step_params("resample"),
        log:
            f"{P.logs}/resample.log",
        benchmark:
            f"{P.bench}/resample.tsv"
        # the last job but the catalog, alone on the machine: its bands are added
        # in two threads (Snakemake lowers this to --cores when fewer are given)
        threads: 2
        resources:
            mem_mb=mem_mb_group,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/resample.py"

    rule:
        name:
            P.rule("resample_single")
        input:
            contributions=[P.contribution("{root}")],
            grid=P.resample_grid(),
        output:
            i2d=single_resampled(P, "{root}"),
        params:
            step=step_params("resample"),
        log:
            f"{P.logs}/resample_single/{{root}}.log",
        benchmark:
            f"{P.bench}/resample_single/{{root}}.tsv"
        threads: 1
        resources:
            mem_mb=mem_mb_exposure,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/resample.py"
