# outlier_detection: the common grid, each exposure's pixel map onto it and
# each exposure's WCS rendered for its _crf (one job, one folder), drizzle
# each exposure alone onto the grid, its sky still in (one job each, not
# waiting for skymatch), take the median of those less their sky levels in
# sections (one job), then blot the median back and flag outliers in each
# exposure (one job each), writing the _crf.

OUTLIER_DRIZZLE = ("weight_type", "pixfrac", "kernel", "fillval", "good_bits", "resample_data")
OUTLIER_FLAGGING = ("skip", "snr", "scale", "backg", "backg_boxsize", "flux_box", "flux_tolerance", "resample_data")


def outlier_grid_folder(wildcards):
    """The association's outlier-detection grid folder (pixel maps, rendered _crf WCSs)."""
    return product_of(wildcards).outlier_grid_dir()


def outlier_singles(wildcards):
    """Every exposure of the association drizzled alone onto the outlier grid."""
    P = product_of(wildcards)
    return [P.outlier_single(r) for r in P.roots]


def outlier_median_input(wildcards):
    """The median the exposure is compared with, unless outlier detection is skipped."""
    if config["outlier_detection"].get("skip"):
        return {}
    return {"median": product_of(wildcards).outlier_median()}


rule outlier_grid:
    input:
        wcs=aligned_wcs_folder,
    output:
        grid=directory(RULE.outlier_grid_dir()),
    params:
        roots=member_roots,
        grid_step=config["pixmap_grid_step"],
    log:
        f"{RULE.logs}/outlier_grid.log",
    benchmark:
        f"{RULE.bench}/outlier_grid.tsv"
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


rule outlier_single:
    input:
        cal=cal_path,
        grid=RULE.outlier_grid_dir(),
    output:
        single=temp(RULE.outlier_single("{root}")),
    params:
        step=step_params("outlier_detection", OUTLIER_DRIZZLE),
    log:
        f"{RULE.logs}/outlier_single/{{root}}.log",
    benchmark:
        f"{RULE.bench}/outlier_single/{{root}}.tsv"
    # before the resample grid, which only later jobs need
    priority: 1
    group:
        exposure_batch("outlier_single")
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=runtime_exposure,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/outlier_single.py"


rule outlier_median:
    input:
        singles=outlier_singles,
        grid=RULE.outlier_grid_dir(),
        # the singles are drizzled with the sky in: the median subtracts each one's level
        sky=RULE.skymatch(),
    output:
        median=RULE.outlier_median(),
    params:
        maskpt=config["outlier_detection"]["maskpt"],
    log:
        f"{RULE.logs}/outlier_median.log",
    benchmark:
        f"{RULE.bench}/outlier_median.tsv"
    # every single job has ended and no flag job can start before it: it runs
    # alone, so its bands are computed in two threads
    threads: 2
    resources:
        mem_mb=mem_mb_group,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/outlier_median.py"


rule outlier_flag:
    input:
        unpack(outlier_median_input),
        cal=cal_path,
        grid=RULE.outlier_grid_dir(),
        sky=RULE.skymatch(),
    output:
        crf=RULE.crf("{root}"),
    params:
        step=step_params("outlier_detection", OUTLIER_FLAGGING),
    log:
        # named as the _crf, whose name holds the {asn_id} wildcard
        f"{RULE.logs}/outlier_flag/{{root}}_{RULE.asn_id}.log",
    benchmark:
        f"{RULE.bench}/outlier_flag/{{root}}_{RULE.asn_id}.tsv"
    group:
        exposure_batch("outlier_flag")
    threads: 1
    resources:
        mem_mb=mem_mb_exposure,
        runtime=runtime_exposure,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/outlier_flag.py"
