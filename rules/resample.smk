# resample: the output grid (one job), each exposure drizzled onto its part of
# it (one job each), then the contributions added one at a time into the
# _i2d mosaic (one job).

RESAMPLE_GRID = ("pixel_scale_ratio", "pixel_scale", "rotation", "crval", "crpix", "output_shape")
RESAMPLE_DRIZZLE = ("pixfrac", "kernel", "weight_type", "good_bits")


rule resample_grid:
    input:
        wcs=resample_wcs_inputs(),
    output:
        grid=f"{WORK}/resample/output_wcs.asdf",
    params:
        step=step_params("resample", RESAMPLE_GRID),
    log:
        f"{LOGS}/resample_grid.log",
    benchmark:
        f"{BENCH}/resample_grid.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/output_grid.py"


rule resample_exposure:
    input:
        exposure=resample_input,
        grid=f"{WORK}/resample/output_wcs.asdf",
    output:
        contribution=temp(contribution_path("{root}")),
    params:
        step=step_params("resample", RESAMPLE_DRIZZLE),
        grid_step=config["pixmap_grid_step"],
    log:
        f"{LOGS}/resample_exposure/{{root}}.log",
    benchmark:
        f"{BENCH}/resample_exposure/{{root}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=10,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/resample_exposure.py"


rule resample:
    input:
        contributions=all_contributions(),
        grid=f"{WORK}/resample/output_wcs.asdf",
    output:
        i2d=i2d_path(),
    params:
        step=step_params("resample"),
    log:
        f"{LOGS}/resample.log",
    benchmark:
        f"{BENCH}/resample.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_group,
        runtime=30,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/resample.py"
