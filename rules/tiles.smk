# Sky tiles (tiling.enabled): instead of one mosaic per product, the final
# drizzle and the catalog run per tile of a fixed sky tiling shared by every
# product of the campaign (calimage3.tiling).  Per product and tile: the
# tile's grid and the pixel maps of the exposures touching it (one job), each
# of those exposures drizzled onto it (one job each), the contributions
# added into <product>_<tile>_i2d.fits (one job), and its catalog keeping the
# sources whose centroid the tile's core owns (one job); then the product's
# merged catalog and the campaign's index output_dir/tiles.json.  Which
# tiles an exposure touches is planned from its header footprint (preflight),
# padded by footprint_pad for tweakreg's corrections: no checkpoint.
# With tiling.outlier_tile_size, outlier detection's median is per tile too
# (outlier_tile_grid -> outlier_tile_single -> outlier_tile_median ->
# tile_outlier_flag, which then writes the _crf instead of outlier_flag).

from calimage3.tiling import TILE_ID_PATTERN, check_tiling, combine_exposure_tiles, exposure_tiles

TILING = config["tiling"]
# Off with single=true: JWST then writes each exposure resampled alone.
TILING_ON = bool(TILING["enabled"]) and not config["resample"].get("single")
# What fixes a tile's grid: every tile rule takes these as params, so
# changing them reruns resample and catalog only.
TILE_GRID = {k: TILING[k] for k in ("pixel_scale", "tile_size", "margin")}
# Outlier detection per tile (tiling.outlier_tile_size > 0): tiles of their
# own size on the same sky tiling and pixel scale, with a thin margin for
# the blot's interpolation; changing tile_size or margin leaves them alone.
OUTLIER_TILE_MARGIN = 16
OUTLIER_GRID = {"pixel_scale": TILING["pixel_scale"], "tile_size": TILING["outlier_tile_size"],
                "margin": OUTLIER_TILE_MARGIN}
OUTLIER_TILES_ON = (TILING_ON and TILING["outlier_tile_size"] > 0 and not config["outlier_detection"].get("skip")
                    and config["outlier_detection"].get("resample_data", True))
try:
    check_tiling(**TILE_GRID)
    if OUTLIER_TILES_ON:
        check_tiling(**OUTLIER_GRID)
except ValueError as _exc:
    raise _io.InputFileError("config 'tiling'", str(_exc)) from None


wildcard_constraints:
    tile=TILE_ID_PATTERN,


_PRODUCT_TILES = {}
_EXPOSURE_TILES = {}


def exposure_tiles_of(root, footprint):
    """The tiles exposure ``root`` touches (tile -> whether it meets the core); once per exposure of the campaign."""
    if root not in _EXPOSURE_TILES:
        _EXPOSURE_TILES[root] = exposure_tiles(footprint, **TILE_GRID, pad_arcsec=TILING["footprint_pad"])
    return _EXPOSURE_TILES[root]


_PRODUCT_OUTLIER_TILES = {}
_EXPOSURE_OUTLIER_TILES = {}


def product_outlier_tiles(P):
    """Outlier tile id -> roots of product P's exposures drizzled onto it (planned once, from header footprints);
    none unless outlier tiles are on."""
    if not OUTLIER_TILES_ON:
        return {}
    if P.product not in _PRODUCT_OUTLIER_TILES:
        roots = P.roots
        for r in roots:
            if r not in _EXPOSURE_OUTLIER_TILES:
                _EXPOSURE_OUTLIER_TILES[r] = exposure_tiles(P.asn.footprints[r], **OUTLIER_GRID,
                                                            pad_arcsec=TILING["footprint_pad"])
        touching = combine_exposure_tiles([_EXPOSURE_OUTLIER_TILES[r] for r in roots])
        _PRODUCT_OUTLIER_TILES[P.product] = {tid: [roots[i] for i in members] for tid, members in touching.items()}
    return _PRODUCT_OUTLIER_TILES[P.product]


def outlier_tile_roots(wildcards):
    """Roots of the job's product drizzled onto outlier tile ``wildcards.tile``."""
    return product_outlier_tiles(product_of(wildcards))[wildcards.tile]


def outlier_tile_singles(wildcards):
    """The singles of every exposure on outlier tile ``wildcards.tile``."""
    P = product_of(wildcards)
    return [P.outlier_tile_single(wildcards.tile, r) for r in outlier_tile_roots(wildcards)]


def exposure_outlier_tiles(wildcards):
    """The outlier tiles exposure ``wildcards.root`` was drizzled onto, sorted."""
    return sorted(t for t, roots in product_outlier_tiles(product_of(wildcards)).items() if wildcards.root in roots)


def exposure_outlier_medians(wildcards):
    """The medians of the exposure's outlier tiles."""
    P = product_of(wildcards)
    return [P.outlier_tile_median(t) for t in exposure_outlier_tiles(wildcards)]


def exposure_outlier_tile_grids(wildcards):
    """The grid folders (pixel maps) of the exposure's outlier tiles, in the order of its medians."""
    P = product_of(wildcards)
    return [P.outlier_tile_grid_dir(t) for t in exposure_outlier_tiles(wildcards)]


def product_tiles(P):
    """Tile id -> roots of product P's exposures drizzled onto it (planned once, from header footprints)."""
    if P.product not in _PRODUCT_TILES:
        roots = P.roots
        touching = combine_exposure_tiles([exposure_tiles_of(r, P.asn.footprints[r]) for r in roots])
        _PRODUCT_TILES[P.product] = {tid: [roots[i] for i in members] for tid, members in touching.items()}
    return _PRODUCT_TILES[P.product]


def tile_products(P):
    """Product P's files with sky tiles: per tile _i2d, _cat, _segm, and the merged catalog."""
    tiles = sorted(product_tiles(P))
    return [*(P.tile_i2d(t) for t in tiles), *(P.tile_cat(t) for t in tiles), *(P.tile_segm(t) for t in tiles),
            P.tiles_cat()]


def tile_qa_paths(P):
    """QA figures with sky tiles: the tile layout over the exposure footprints."""
    return [f"{P.qa}/tiles.png"]


def tile_index_path():
    """The campaign's index of tiles and its catalog of every product's sources; none without tiling."""
    return [f"{OUT}/tiles.json", f"{OUT}/tiles_cat.ecsv"] if TILING_ON else []


def all_tile_catalogs():
    """Every product's merged tile catalog, by product name; none without tiling."""
    if not TILING_ON:
        return {}
    return {name: P.tiles_cat() for name, P in sorted(PRODUCTS.items())}


def tile_roots(wildcards):
    """Exposure roots of the job's product that touch tile ``wildcards.tile``, in association order."""
    return product_tiles(product_of(wildcards))[wildcards.tile]


def tile_contributions(wildcards):
    """The contributions of every exposure touching the job's tile."""
    P = product_of(wildcards)
    return [P.tile_contribution(wildcards.tile, r) for r in tile_roots(wildcards)]


def product_tile_ids(wildcards):
    """The job's product's tiles, sorted."""
    return sorted(product_tiles(product_of(wildcards)))


def product_tile_catalogs(wildcards):
    """Every tile catalog of the job's product, in tile order."""
    P = product_of(wildcards)
    return [P.tile_cat(t) for t in product_tile_ids(wildcards)]


def all_tile_images():
    """Every product's tile _i2d (the index is written once they exist); none without tiling."""
    if not TILING_ON:
        return []
    return [P.tile_i2d(t) for P in PRODUCTS.values() for t in sorted(product_tiles(P))]


def tile_index_products():
    """What the index lists: per product, its folder and tile -> exposures; nothing without tiling."""
    if not TILING_ON:
        return {}
    return {name: {"folder": P.out, "tiles": product_tiles(P)} for name, P in PRODUCTS.items()}


def product_footprints(wildcards):
    """Exposure root -> header footprint of the job's product (the QA figure of its tiles)."""
    return product_of(wildcards).asn.footprints


def mem_mb_tile_exposure(wildcards, attempt):
    """Memory for drizzling one exposure onto one tile: a per-exposure job's,
    plus its cutout of the tile (at most the tile, 6 float32 arrays)."""
    side = TILING["tile_size"] + 2 * TILING["margin"]
    return mem_mb_exposure(wildcards, 1) * attempt + int(24 * side**2 / 1e6) * attempt


def mem_mb_outlier_tile(wildcards, attempt):
    """Memory for a job on outlier tiles: a per-exposure job's plus a few float32 copies of one tile."""
    side = TILING["outlier_tile_size"] + 2 * OUTLIER_TILE_MARGIN
    base = mem_mb_exposure(wildcards, 1) if hasattr(wildcards, "root") else 500
    return int(base + 40 * side**2 / 1e6) * attempt


def mem_mb_tile(wildcards, attempt):
    """Memory for a per-tile job: about 100 bytes per tile pixel (the catalog's
    measured peak per mosaic pixel), plus the interpreter."""
    side = TILING["tile_size"] + 2 * TILING["margin"]
    return int(600 + 100 * side**2 / 1e6) * attempt


rule tile_grid:
    input:
        wcs=resample_wcs_inputs,
    output:
        grid=directory(RULE.tile_grid_dir("{tile}")),
    params:
        tiling=TILE_GRID,
        roots=tile_roots,
        grid_step=config["pixmap_grid_step"],
    log:
        f"{RULE.logs}/tile_grid/{{tile}}.log",
    benchmark:
        f"{RULE.bench}/tile_grid/{{tile}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/tile_grid.py"


rule outlier_tile_grid:
    input:
        wcs=aligned_wcs_folder,
    output:
        grid=directory(RULE.outlier_tile_grid_dir("{tile}")),
    params:
        tiling=OUTLIER_GRID,
        roots=outlier_tile_roots,
        grid_step=config["pixmap_grid_step"],
    log:
        f"{RULE.logs}/outlier_tile_grid/{{tile}}.log",
    benchmark:
        f"{RULE.bench}/outlier_tile_grid/{{tile}}.tsv"
    priority: 2
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/tile_grid.py"


rule outlier_tile_single:
    input:
        cal=cal_path,
        grid=RULE.outlier_tile_grid_dir("{tile}"),
    output:
        single=temp(RULE.outlier_tile_single("{tile}", "{root}")),
    params:
        step=step_params("outlier_detection", OUTLIER_DRIZZLE),
        tiling=OUTLIER_GRID,
    log:
        f"{RULE.logs}/outlier_tile_single/{{tile}}/{{root}}.log",
    benchmark:
        f"{RULE.bench}/outlier_tile_single/{{tile}}/{{root}}.tsv"
    priority: 1
    group:
        exposure_batch("outlier_tile_single")
    threads: 1
    resources:
        mem_mb=mem_mb_outlier_tile,
        runtime=runtime_exposure,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/outlier_single.py"


rule outlier_tile_median:
    input:
        singles=outlier_tile_singles,
        grid=RULE.outlier_tile_grid_dir("{tile}"),
        # the singles are drizzled with the sky in: the median subtracts each one's level
        sky=RULE.skymatch(),
    output:
        median=RULE.outlier_tile_median("{tile}"),
    params:
        maskpt=config["outlier_detection"]["maskpt"],
        tiling=OUTLIER_GRID,
    log:
        f"{RULE.logs}/outlier_tile_median/{{tile}}.log",
    benchmark:
        f"{RULE.bench}/outlier_tile_median/{{tile}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_outlier_tile,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/outlier_median.py"


rule tile_outlier_flag:
    input:
        cal=cal_path,
        grid=RULE.outlier_grid_dir(),
        sky=RULE.skymatch(),
        medians=exposure_outlier_medians,
        tile_grids=exposure_outlier_tile_grids,
    output:
        crf=RULE.crf("{root}"),
    params:
        step=step_params("outlier_detection", OUTLIER_FLAGGING),
        margin=OUTLIER_TILE_MARGIN,
        tiling=OUTLIER_GRID,
    log:
        f"{RULE.logs}/tile_outlier_flag/{{root}}_{RULE.asn_id}.log",
    benchmark:
        f"{RULE.bench}/tile_outlier_flag/{{root}}_{RULE.asn_id}.tsv"
    group:
        exposure_batch("outlier_flag")
    threads: 1
    resources:
        mem_mb=mem_mb_outlier_tile,
        runtime=runtime_exposure,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/tile_outlier_flag.py"


# One rule writes each _crf: the per-tile flagging when outlier tiles are on.
if OUTLIER_TILES_ON:

    ruleorder: tile_outlier_flag > outlier_flag

else:

    ruleorder: outlier_flag > tile_outlier_flag


rule tile_exposure:
    input:
        exposure=resample_input,
        grid=RULE.tile_grid_dir("{tile}"),
    output:
        contribution=temp(RULE.tile_contribution("{tile}", "{root}")),
    params:
        step=step_params("resample", RESAMPLE_DRIZZLE),
        tiling=TILE_GRID,
    log:
        f"{RULE.logs}/tile_exposure/{{tile}}/{{root}}.log",
    benchmark:
        f"{RULE.bench}/tile_exposure/{{tile}}/{{root}}.tsv"
    priority: 1
    group:
        exposure_batch("tile_exposure")
    threads: 1
    resources:
        mem_mb=mem_mb_tile_exposure,
        runtime=runtime_exposure,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/resample_exposure.py"


rule tile_resample:
    input:
        contributions=tile_contributions,
        grid=RULE.tile_grid_dir("{tile}"),
    output:
        i2d=RULE.tile_i2d("{tile}"),
    params:
        # the drizzle's and fill's parameters; the mosaic grid's do not apply to tiles
        step=step_params("resample", (*RESAMPLE_DRIZZLE, "fillval")),
        tiling=TILE_GRID,
    log:
        f"{RULE.logs}/tile_resample/{{tile}}.log",
    benchmark:
        f"{RULE.bench}/tile_resample/{{tile}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_tile,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/resample.py"


rule tile_catalog:
    input:
        i2d=RULE.tile_i2d("{tile}"),
        refs=catalog_reference_files(),
    output:
        cat=RULE.tile_cat("{tile}"),
        segm=RULE.tile_segm("{tile}"),
    params:
        step=step_params("source_catalog"),
        owner={k: TILE_GRID[k] for k in ("pixel_scale", "tile_size")},
        tiling=TILE_GRID,
    log:
        f"{RULE.logs}/tile_catalog/{{tile}}.log",
    benchmark:
        f"{RULE.bench}/tile_catalog/{{tile}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_tile,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/source_catalog.py"


rule tile_merge_catalogs:
    input:
        cats=product_tile_catalogs,
    output:
        cat=RULE.tiles_cat(),
    params:
        tiles=product_tile_ids,
    log:
        f"{RULE.logs}/tile_merge_catalogs.log",
    benchmark:
        f"{RULE.bench}/tile_merge_catalogs.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/merge_tile_catalogs.py"


rule tile_index:
    input:
        i2d=all_tile_images(),
    output:
        index=f"{OUT}/tiles.json",
    params:
        tiling=TILE_GRID,
        products=tile_index_products(),
    log:
        f"{LOGS}/tile_index.log",
    benchmark:
        f"{BENCH}/tile_index.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/tile_index.py"


rule tile_campaign_catalog:
    input:
        cats=list(all_tile_catalogs().values()),
    output:
        cat=f"{OUT}/tiles_cat.ecsv",
    params:
        products=list(all_tile_catalogs()),
    log:
        f"{LOGS}/tile_campaign_catalog.log",
    benchmark:
        f"{BENCH}/tile_campaign_catalog.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_group,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/merge_tile_catalogs.py"


rule qa_tiles:
    input:
        cat=RULE.tiles_cat(),
    output:
        tiles=qa_png("tiles", "Sky tiles"),
    params:
        tiling=TILE_GRID,
        footprints=product_footprints,
        tiles=product_tile_ids,
    log:
        f"{RULE.logs}/qa_tiles.log",
    benchmark:
        f"{RULE.bench}/qa_tiles.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/qa.yaml"
    script:
        "../scripts/qa_tiles.py"
