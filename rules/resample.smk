# resample: drizzle all exposures, one at a time, onto the output grid.

RESAMPLE_GRID = ("pixel_scale_ratio", "pixel_scale", "rotation", "crval", "crpix", "output_shape")


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


rule resample:
    input:
        exposures=resample_inputs(),
        grid=f"{WORK}/resample/output_wcs.asdf",
    output:
        i2d=i2d_path(),
    params:
        step=step_params("resample"),
        grid_step=config["pixmap_grid_step"],
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
