# resample: the output grid and each exposure's pixel map onto it (one job;
# the grid is the user's output_wcs file when given),
# each exposure drizzled onto its part of it (one job each), then the
# contributions added one at a time into the _i2d mosaic (one job).  With
# single=true each contribution becomes its own <root>_outlier_i2d.fits
# instead (JWST's single-image outputs).

RESAMPLE_GRID = ("pixel_scale_ratio", "pixel_scale", "rotation", "crval", "crpix", "output_shape", "output_wcs")
RESAMPLE_DRIZZLE = ("pixfrac", "kernel", "weight_type", "good_bits")


def user_output_wcs():
    """The user's output_wcs file as a rule input (reruns the grid when it changes); none when unset."""
    path = config["resample"].get("output_wcs")
    return [path] if path else []


def resample_wcs_inputs(wildcards):
    """Where the exposures' final WCSs are: the tweakreg folder, or the lone _cal."""
    P = product_of(wildcards)
    return P.all_cal() if P.single else [P.tweakreg_dir()]


def resample_input(wildcards):
    """The file exposure ``wildcards.root`` is drizzled from: its _crf, or the lone _cal."""
    P = product_of(wildcards)
    return cal_path(wildcards) if P.single else P.crf(wildcards.root)


def mosaic_contributions(wildcards):
    """Every exposure's contribution to the mosaic, in association order."""
    return product_of(wildcards).all_contributions()


rule resample_grid:
    input:
        wcs=resample_wcs_inputs,
        user_wcs=user_output_wcs(),
    output:
        grid=directory(RULE.resample_grid_dir()),
    params:
        step=step_params("resample", RESAMPLE_GRID),
        roots=member_roots,
        grid_step=config["pixmap_grid_step"],
    log:
        f"{RULE.logs}/resample_grid.log",
    benchmark:
        f"{RULE.bench}/resample_grid.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/output_grid.py"


rule resample_exposure:
    input:
        exposure=resample_input,
        grid=RULE.resample_grid_dir(),
    output:
        contribution=temp(RULE.contribution("{root}")),
    params:
        step=step_params("resample", RESAMPLE_DRIZZLE),
    log:
        f"{RULE.logs}/resample_exposure/{{root}}.log",
    benchmark:
        f"{RULE.bench}/resample_exposure/{{root}}.tsv"
    # ahead of the remaining (shorter) flag jobs, so that the last
    # drizzles do not run alone at the end with a core idle
    priority: 1
    group:
        exposure_batch("resample_exposure")
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=runtime_exposure,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/resample_exposure.py"


rule resample:
    input:
        contributions=mosaic_contributions,
        grid=RULE.resample_grid_dir(),
    output:
        i2d=RULE.i2d(),
    params:
        step=step_params("resample"),
    log:
        f"{RULE.logs}/resample.log",
    benchmark:
        f"{RULE.bench}/resample.tsv"
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


rule resample_single:
    input:
        contributions=[RULE.contribution("{root}")],
        grid=RULE.resample_grid_dir(),
    output:
        i2d=RULE.single_resampled("{root}"),
    params:
        step=step_params("resample"),
    log:
        f"{RULE.logs}/resample_single/{{root}}.log",
    benchmark:
        f"{RULE.bench}/resample_single/{{root}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=runtime_exposure,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/resample.py"
