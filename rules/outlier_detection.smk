# outlier_detection: the common grid, each exposure's pixel map onto it and
# each exposure's WCS rendered for its _crf (one job), drizzle each exposure
# alone onto the grid (one job each), take the median of those in sections
# (one job), then blot the median back and flag outliers in each exposure
# (one job each), writing the _crf.
# Rules per association (rules/common.smk: Product).

OUTLIER_DRIZZLE = ("weight_type", "pixfrac", "kernel", "fillval", "good_bits", "resample_data")
OUTLIER_FLAGGING = ("skip", "snr", "scale", "backg", "backg_boxsize", "flux_box", "flux_tolerance", "resample_data")


for P in PRODUCTS:

    rule:
        name:
            P.rule("outlier_grid")
        input:
            wcs=P.all_tweakreg_wcs(),
        output:
            grid=P.outlier_grid(),
            pixmaps=[P.outlier_pixmap(r) for r in P.roots],
            rendered=[P.rendered_wcs(r) for r in P.roots],
        params:
            grid_step=config["pixmap_grid_step"],
        log:
            f"{P.logs}/outlier_grid.log",
        benchmark:
            f"{P.bench}/outlier_grid.tsv"
        # on the critical path: every single drizzle waits for it
        priority: 2
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
            P.rule("outlier_single")
        input:
            cal=cal_path,
            sky=P.skymatch(),
            pixmap=P.outlier_pixmap("{root}"),
        output:
            single=temp(P.outlier_single("{root}")),
        params:
            step=step_params("outlier_detection", OUTLIER_DRIZZLE),
        log:
            f"{P.logs}/outlier_single/{{root}}.log",
        benchmark:
            f"{P.bench}/outlier_single/{{root}}.tsv"
        # before the resample grid, which only later jobs need
        priority: 1
        threads: 1
        resources:
            mem_mb=mem_mb_exposure,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/outlier_single.py"

    rule:
        name:
            P.rule("outlier_median")
        input:
            singles=[P.outlier_single(r) for r in P.roots],
            grid=P.outlier_grid(),
        output:
            median=P.outlier_median(),
        params:
            maskpt=config["outlier_detection"]["maskpt"],
        log:
            f"{P.logs}/outlier_median.log",
        benchmark:
            f"{P.bench}/outlier_median.tsv"
        threads: 1
        resources:
            mem_mb=mem_mb_group,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/outlier_median.py"

    rule:
        name:
            P.rule("outlier_flag")
        input:
            unpack(P.outlier_median_inputs),
            cal=cal_path,
            wcs=P.rendered_wcs("{root}"),
            sky=P.skymatch(),
        output:
            crf=P.crf("{root}"),
        params:
            step=step_params("outlier_detection", OUTLIER_FLAGGING),
        log:
            f"{P.logs}/outlier_flag/{{root}}.log",
        benchmark:
            f"{P.bench}/outlier_flag/{{root}}.tsv"
        threads: 1
        resources:
            mem_mb=mem_mb_exposure,
            runtime=runtime_minutes,
        conda:
            "../envs/calimage3.yaml"
        script:
            "../scripts/outlier_flag.py"
