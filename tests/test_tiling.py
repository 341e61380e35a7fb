"""Sky-cell tiling: the tiling itself (calimage3.tiling) and tiled campaign runs (rules/tiles.smk)."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

import workflow_runs
from calimage3 import tiling
from calimage3.association import exposure_root
from calimage3.simulate import simulate_dither
from calimage3.tile_products import merge_tile_catalogs, owned_sources

SCALE, SIZE, MARGIN = 0.031, 256, 32
# A region centre is a tile corner: the simulated field sits across tile boundaries.
FIELD_CENTRE = tiling.region_centre(int(tiling.region_of(53.16, -27.79)))


def random_sky(n, seed):
    """``n`` positions uniform on the sphere, plus the poles and region and band edges."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    edges_ra = [0.0, 359.9999999, 180.0, 53.4375 + 0.5625, 53.4375 - 0.5625, 10.0, 10.0]
    edges_dec = [90.0, -90.0, 0.0, -28.0, -28.5, 89.5, -89.5]
    return np.concatenate([ra, edges_ra]), np.concatenate([dec, edges_dec])


def test_tile_wcs_depends_only_on_id_and_scale():
    """Two builds of one tile id agree, and the tangent point is the region centre."""
    tid = tiling.tile_id(int(tiling.region_of(53.16, -27.79)), 10, 12)
    a = tiling.tile_grid(tid, 0.05, 512, 20)
    b = tiling.tile_grid(tid, 0.05, 512, 20)
    assert a == b
    assert a["shape"] == (552, 552)
    assert a["crval"] == FIELD_CENTRE
    wcs, shape = tiling.tile_wcs(tid, 0.05, 512, 20)
    x, y = np.array([0.0, 551.0]), np.array([0.0, 551.0])
    ra1, dec1 = wcs(x, y)
    ra2, dec2 = tiling.tile_wcs(tid, 0.05, 512, 20)[0](x, y)
    np.testing.assert_array_equal(ra1, ra2)
    np.testing.assert_array_equal(dec1, dec2)


def test_neighbour_tiles_share_pixel_grid():
    """Core pixel columns of tile x and x+1 of a region continue each other (same grid, offset by tile_size)."""
    region = int(tiling.region_of(53.16, -27.79))
    w1, _ = tiling.tile_wcs(tiling.tile_id(region, 10, 12), 0.05, 512, 20)
    w2, _ = tiling.tile_wcs(tiling.tile_id(region, 11, 12), 0.05, 512, 20)
    ra, dec = w1(100.0 + 512, 300.0, with_bounding_box=False)
    x, y = w2.invert(ra, dec)
    assert x == pytest.approx(100.0, abs=1e-6) and y == pytest.approx(300.0, abs=1e-6)


def test_bad_tile_id_and_parameters_rejected():
    """Ids that are not tiles, and bad tiling parameters, are errors naming them."""
    with pytest.raises(ValueError, match="not a tile id"):
        tiling.parse_tile_id("r1x2y3")
    with pytest.raises(ValueError, match="tiling.tile_size"):
        tiling.tile_grid("r00000x00y00", 0.1, 8, 0)
    with pytest.raises(ValueError, match="tiling.margin"):
        tiling.tile_grid("r00000x00y00", 0.1, 64, 64)


def test_every_position_owned_by_exactly_one_core():
    """Random positions, poles and region edges: the owner's core holds the position, no other tile's core does."""
    ra, dec = random_sky(300, seed=5)
    owners = tiling.owner_tile(ra, dec, 0.5, 512)
    for tid, a, d in zip(owners, ra, dec):
        wcs, _ = tiling.tile_wcs(tid, 0.5, 512, 40)
        x0, x1, y0, y1 = tiling.tile_grid(tid, 0.5, 512, 40)["core"]
        x, y = wcs.backward_transform(a, d)  # invert() gives NaN at a pole
        # to 1e-6 pixel: gwcs and the closed-form projection differ by ~1e-11 on an edge
        tol = 1e-6
        assert x0 - 0.5 - tol <= x < x1 - 0.5 + tol and y0 - 0.5 - tol <= y < y1 - 0.5 + tol, (tid, a, d, x, y)
        # the tile ids a position's neighbours would claim: only the owner keeps it
        assert owned_sources([a], [d], tid, 0.5, 512).tolist() == [True]


def test_owner_is_one_tile_across_region_edge():
    """Points just either side of an RA region boundary belong to tiles of the two regions, each to one."""
    edge = FIELD_CENTRE[0] + 360.0 / 320 / 2  # east edge of the field's region (320 regions in its band)
    owners = tiling.owner_tile([edge - 1e-7, edge + 1e-7], [-28.0, -28.0], SCALE, SIZE)
    regions = [tiling.parse_tile_id(t)[0] for t in owners]
    assert regions[1] == regions[0] + 1


def test_tiles_touching_lists_owners_of_covered_points():
    """Every point inside an exposure footprint is owned by a listed tile, and that tile takes the exposure."""
    ra0, dec0 = FIELD_CENTRE
    half = 20.0 / 3600.0
    poly = np.array([[ra0 - half, dec0 - half], [ra0 + half, dec0 - half], [ra0 + half, dec0 + half],
                     [ra0 - half, dec0 + half]])
    touching = tiling.tiles_touching([poly], SCALE, SIZE, MARGIN)
    rng = np.random.default_rng(2)
    ra = rng.uniform(ra0 - 0.99 * half, ra0 + 0.99 * half, 500)
    dec = rng.uniform(dec0 - 0.99 * half, dec0 + 0.99 * half, 500)
    owners = set(tiling.owner_tile(ra, dec, SCALE, SIZE))
    assert owners <= set(touching)
    assert all(touching[t] == [0] for t in owners)
    assert len(owners) >= 4  # the field's centre is a tile corner


def test_spread_field_needs_tiles_not_the_field():
    """16 small exposures spread over 10': the tiles planned hold the data, their pixels a small part of the field's."""
    import time

    rng = np.random.default_rng(8)
    ra0, dec0 = FIELD_CENTRE
    half = 4.5 / 60.0
    side = 256 * SCALE / 3600.0
    polygons = []
    for cx, cy in rng.uniform(-half, half, (16, 2)):
        ra, dec = ra0 + cx / np.cos(np.deg2rad(dec0)), dec0 + cy
        d = side / 2
        polygons.append([[ra - d, dec - d], [ra + d, dec - d], [ra + d, dec + d], [ra - d, dec + d]])
    start = time.perf_counter()
    touching = tiling.tiles_touching(polygons, SCALE, 2048, 128, pad_arcsec=3.0)
    assert time.perf_counter() - start < 2.0
    field_pixels = (10 * 60 / SCALE) ** 2  # the single mosaic: ~375 Mpix
    assert 4 <= len(touching) <= 16 * 4
    assert len(touching) * (2048 + 2 * 128) ** 2 < 0.5 * field_pixels
    assert sorted({i for members in touching.values() for i in members}) == list(range(16))


def test_merge_renumbers_labels_and_keeps_tile():
    """Merged catalogs carry tile and tile_label, and labels 1..n."""
    a = QTable({"label": [1, 2], "flux": [1.0, 2.0]})
    b = QTable({"label": [1], "flux": [3.0]})
    merged = merge_tile_catalogs([a, b, QTable({"label": [], "flux": []})], ["r00001x01y01", "r00001x02y01", "r00001x03y01"])
    assert merged["label"].tolist() == [1, 2, 3]
    assert merged["tile"].tolist() == ["r00001x01y01", "r00001x01y01", "r00001x02y01"]
    assert merged["tile_label"].tolist() == [1, 2, 1]


# ---- tiled campaign: two filters over one field -----------------------------------------

SETTINGS = ("tweakreg={'minobj': 8}", "qa_figures=false")
TILED = f"tiling={{'enabled': true, 'pixel_scale': {SCALE}, 'tile_size': {SIZE}, 'margin': {MARGIN}, " \
        "'footprint_pad': 0.3}"
FILTERS = ("F200W", "F150W")


def _set_filter(path, name):
    """Relabel a simulated exposure's filter (checksums kept valid)."""
    with fits.open(path, mode="update") as hdul:
        for hdu in hdul:
            if "FILTER" in hdu.header:
                hdu.header["FILTER"] = name
        for hdu in hdul:
            if "CHECKSUM" in hdu.header:
                hdu.add_checksum()


def write_two_filter_campaign(folder):
    """Six exposures of one field; 1-3 an F200W association, 4-6 relabelled F150W; return (glob, products, sim)."""
    sim = simulate_dither(folder, n_exposures=6, shape=(256, 256), seed=11, crval=FIELD_CENTRE, n_stars=150,
                          n_galaxies=8)
    template = json.loads(Path(sim["asn"]).read_text())
    Path(sim["asn"]).unlink()
    members = template["products"][0]["members"]
    products = []
    for k, (filt, group) in enumerate(zip(FILTERS, (members[:3], members[3:])), start=1):
        if filt != "F200W":
            for m in group:
                _set_filter(Path(folder) / m["expname"], filt)
        product = f"jw01234-o001_t001_nircam_clear-{filt.lower()}"
        content = dict(template, asn_id=f"a300{k}", products=[{"name": product, "members": group}])
        (Path(folder) / f"filter{k}_asn.json").write_text(json.dumps(content, indent=2))
        products.append((product, [exposure_root(m["expname"]) for m in group]))
    return f"{folder}/*_asn.json", products, sim


@pytest.fixture(scope="module")
def tiled_run(tmp_path_factory):
    """One tiled campaign run of two filters over one field."""
    base = tmp_path_factory.mktemp("tiled")
    pattern, products, sim = write_two_filter_campaign(base / "data")
    out = base / "out"
    workflow_runs.run_snakemake(f"asns={pattern}", out, *SETTINGS, TILED)
    # the same campaign untiled, into the same folder (only resample and catalog run): the reference
    workflow_runs.run_snakemake(f"asns={pattern}", out, *SETTINGS)
    product = products[0][0]
    single_cat = base / "single_mosaic_cat.ecsv"
    single_cat.write_bytes((out / product / f"{product}_cat.ecsv").read_bytes())
    return {"glob": pattern, "products": products, "out": out, "sim": sim, "single_cat": single_cat,
            "index": json.loads((out / "tiles.json").read_text())}


@pytest.mark.slow
def test_tiles_named_and_indexed(tiled_run):
    """Each product has <product>_<tile>_i2d/_cat/_segm for each of its indexed tiles, and its merged catalog."""
    out, index = tiled_run["out"], tiled_run["index"]
    assert index["tiling"]["tile_size"] == SIZE
    for product, roots in tiled_run["products"]:
        tiles = [t for t, e in index["tiles"].items() if product in e["products"]]
        assert len(tiles) >= 4
        for t in tiles:
            for suffix in ("i2d.fits", "cat.ecsv", "segm.fits"):
                assert (out / product / f"{product}_{t}_{suffix}").is_file()
            assert set(index["tiles"][t]["products"][product]["exposures"]) <= set(roots)
        assert (out / product / f"{product}_tiles_cat.ecsv").is_file()
    campaign = QTable.read(out / "tiles_cat.ecsv")
    assert set(campaign["product"]) == {p for p, _ in tiled_run["products"]}
    assert set(campaign["filter"]) == set(FILTERS)


@pytest.mark.slow
def test_two_filters_share_tile_grids(tiled_run):
    """A tile made by both filters has the same shape and WCS in both (pixel-aligned mosaics)."""
    out, index = tiled_run["out"], tiled_run["index"]
    (p1, _), (p2, _) = tiled_run["products"]
    shared = [t for t, e in index["tiles"].items() if p1 in e["products"] and p2 in e["products"]]
    assert shared
    for t in shared:
        h1 = fits.getheader(out / p1 / f"{p1}_{t}_i2d.fits", "SCI")
        h2 = fits.getheader(out / p2 / f"{p2}_{t}_i2d.fits", "SCI")
        assert fits.getheader(out / p2 / f"{p2}_{t}_i2d.fits")["FILTER"] == "F150W"
        for key in ("NAXIS1", "NAXIS2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2",
                    "CTYPE1", "CTYPE2"):
            assert h1.get(key) == h2.get(key), (t, key)
        assert (h1["NAXIS1"], h1["NAXIS2"]) == (SIZE + 2 * MARGIN,) * 2


def _separations_arcsec(sky, ra, dec):
    """Separations (arcsec) of catalog positions ``sky`` from one position."""
    cosd = np.cos(np.deg2rad(dec))
    return np.hypot((sky.ra.deg - ra) * cosd, sky.dec.deg - dec) * 3600.0


@pytest.mark.slow
def test_sources_across_tile_boundaries_found_once(tiled_run):
    """The merged tile catalog has each source of the single mosaic's catalog once, also those in tile margins."""
    product, _ = tiled_run["products"][0]
    merged = QTable.read(tiled_run["out"] / product / f"{product}_tiles_cat.ecsv")
    single = QTable.read(tiled_run["single_cat"])
    msky, ssky = merged["sky_centroid"], single["sky_centroid"]
    assert len(set(merged["tile"])) >= 3
    # no source twice: no two merged sources within 0.2"
    assert all((_separations_arcsec(msky, r, d) < 0.2).sum() == 1 for r, d in zip(msky.ra.deg, msky.dec.deg))
    counts = np.array([(_separations_arcsec(msky, r, d) < 0.1).sum() for r, d in zip(ssky.ra.deg, ssky.dec.deg)])
    # sources of the single mosaic that lie in some tile's margin (another tile's grid also holds them)
    owners = tiling.owner_tile(ssky.ra.deg, ssky.dec.deg, SCALE, SIZE)
    in_margin = []
    for r, d, tid in zip(ssky.ra.deg, ssky.dec.deg, owners):
        wcs, _ = tiling.tile_wcs(tid, SCALE, SIZE, MARGIN)
        x, y = wcs.invert(r, d)
        in_margin.append(min(x - MARGIN, SIZE + MARGIN - x, y - MARGIN, SIZE + MARGIN - y) < MARGIN)
    in_margin = np.array(in_margin)
    assert in_margin.sum() >= 10
    assert counts.max() == 1
    # all but the odd faint deblended source (centroid moved by > 0.1") are found, margins included
    assert (counts == 1).mean() >= 0.95 and (counts[in_margin] == 1).mean() >= 0.9
    assert abs(len(merged) - len(single)) <= max(2, 0.03 * len(single))
    # and no bright true star is ever found twice
    truth = QTable.read(Path(tiled_run["sim"]["truth"]) / "sources.ecsv")
    bright = truth[(truth["type"] == "star") & (truth["snr"] > 30)]
    assert max((_separations_arcsec(msky, r, d) < 0.15).sum() for r, d in zip(bright["ra"], bright["dec"])) == 1


@pytest.mark.slow
def test_tile_size_change_reruns_only_tile_rules(tiled_run):
    """Changing tile_size plans only the tile drizzle, combine, catalog and index, nothing upstream."""
    changed = TILED.replace(f"'tile_size': {SIZE}", "'tile_size': 300")
    jobs = workflow_runs.planned_jobs(f"asns={tiled_run['glob']}", tiled_run["out"], *SETTINGS, changed)
    assert set(jobs) <= {"tile_grid", "tile_exposure", "tile_resample", "tile_catalog", "tile_merge_catalogs",
                         "tile_campaign_catalog",
                         "tile_index", "all"}
    assert jobs["tile_resample"] >= 2 and jobs["tile_catalog"] == jobs["tile_resample"]
    assert workflow_runs.planned_jobs(f"asns={tiled_run['glob']}", tiled_run["out"], *SETTINGS, TILED) == {}


@pytest.mark.slow
def test_tile_pixels_equal_mosaic_on_tile_grid(tiled_run):
    """A tile's pixels equal the untiled mosaic drizzled onto that tile's grid with resample.output_wcs."""
    import asdf

    out, index = tiled_run["out"], tiled_run["index"]
    product, _ = tiled_run["products"][0]
    tid = max((t for t, e in index["tiles"].items() if product in e["products"]),
              key=lambda t: len(index["tiles"][t]["products"][product]["exposures"]))
    wcs, shape = tiling.tile_wcs(tid, SCALE, SIZE, MARGIN)
    wcs_file = out.parent / "tile_wcs.asdf"
    asdf.AsdfFile({"wcs": wcs, "array_shape": list(shape)}).write_to(wcs_file)
    # same output folder: tweakreg, skymatch and outlier detection are reused, only resample runs
    workflow_runs.run_snakemake(f"asns={tiled_run['glob']}", out, *SETTINGS,
                                f"resample={{'output_wcs': '{wcs_file}'}}")
    with fits.open(out / product / f"{product}_{tid}_i2d.fits") as tile, \
            fits.open(out / product / f"{product}_i2d.fits") as mosaic:
        assert tile["SCI"].data.shape == mosaic["SCI"].data.shape
        for ext in ("SCI", "WHT", "ERR"):
            np.testing.assert_allclose(tile[ext].data, mosaic[ext].data, rtol=1e-6, atol=1e-7, equal_nan=True)
        assert np.isfinite(tile["SCI"].data).mean() > 0.3


@pytest.mark.slow
def test_outlier_detection_per_tile_flags_cosmic_rays(small_dither, tmp_path):
    """With outlier_tile_size the median is per tile (no whole-field median) and cosmic rays are still flagged."""
    out = tmp_path / "out"
    outlier_tiled = ("tiling={'enabled': true, 'pixel_scale': 0.031, 'tile_size': 1024, 'margin': 32, "
                     "'footprint_pad': 0.3, 'outlier_tile_size': 256}")
    workflow_runs.run_snakemake(f"asn={small_dither['asn']}", out, *SETTINGS, outlier_tiled)
    assert not (out / "work" / "outlier_detection" / "median.fits").exists()
    medians = sorted((out / "work" / "outlier_detection" / "tiles").glob("*/median.fits"))
    assert len(medians) >= 2
    assert all(fits.getdata(m, "SCI").shape == (256 + 32, 256 + 32) for m in medians)
    truth = QTable.read(Path(small_dither["truth"]) / "outliers.ecsv")
    hits = total = flagged_total = pixels = 0
    for crf in sorted(out.glob("*_crf.fits")):
        root = crf.name.rsplit("_", 2)[0]
        dq = fits.getdata(crf, "DQ")
        flagged = (dq & 16) > 0
        mine = truth[(truth["exposure"] == root) & (truth["kind"] == "cosmic_ray")]
        hits += int(flagged[np.asarray(mine["y"]), np.asarray(mine["x"])].sum())
        total += len(mine)
        flagged_total += int(flagged.sum())
        pixels += flagged.size
    assert total >= 20
    assert hits / total >= 0.8
    # about what one median grid flags on this set (625 of 262,144 pixels; 620 per tile when written)
    assert flagged_total < 0.005 * pixels


def test_tile_layout_figure_draws_every_tile_and_exposure():
    """The QA figure of the tile layout: one outline per exposure, grid and core per tile, labels with counts."""
    from calimage3 import qa_plots

    square = lambda ra, dec, half: np.array([[ra - half, dec - half], [ra + half, dec - half],  # noqa: E731
                                             [ra + half, dec + half], [ra - half, dec + half]])
    footprints = [square(10.0, 20.0, 0.01), square(10.015, 20.0, 0.01)]
    tiles = {"r1x0y0": (square(10.0, 20.0, 0.02), square(10.0, 20.0, 0.018)),
             "r1x1y0": (square(10.04, 20.0, 0.02), square(10.04, 20.0, 0.018))}
    fig = qa_plots.tile_layout_figure(footprints, ["a_cal.fits", "b_cal.fits"], tiles, counts={"r1x0y0": 12})
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * len(tiles) + len(footprints)
    labels = [t.get_text() for t in ax.texts]
    assert "r1x0y0\n12 sources" in labels and "r1x1y0" in labels
    left, right = ax.get_xlim()
    assert left > right  # east to the left
