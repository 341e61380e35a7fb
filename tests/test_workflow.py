"""End-to-end runs of the Snakemake workflow on simulated data, checked against truth."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import workflow_runs
from astropy.io import fits

from calimage3 import io
from calimage3.dqflags import PIXEL
from calimage3.simulate import simulate_dither

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# JWST's npixels=25 is tuned to real NIRCam mosaics; the simulated 512x512
# field has compact faint stars, which an astronomer would catch with fewer.
SETTINGS = ("source_catalog={'npixels': 10}",)


def run_snakemake(asn, output_dir, *config_items, flags=(), check=True):
    """Run the workflow on ``asn``; return the completed process."""
    return workflow_runs.run_snakemake(f"asn={asn}", output_dir, *config_items, flags=flags, check=check)


def planned_jobs(asn, output_dir, *config_items):
    """Rule -> job count a dry run on ``asn`` would execute."""
    return workflow_runs.planned_jobs(f"asn={asn}", output_dir, *config_items)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """Simulate a 4-exposure dither and run the whole stage on it."""
    base = tmp_path_factory.mktemp("e2e")
    sim = simulate_dither(base / "data", n_exposures=4, shape=(512, 512), seed=11)
    out = base / "out"
    run_snakemake(sim["asn"], out, *SETTINGS)
    return {"sim": sim, "out": out, "truth": io.read_json(sim["truth"] / "truth.json")}


def _crf(run, root):
    return run["out"] / f"{root}_{run['sim']['asn_id']}_crf.fits"


def _isolated(truth_sources, wcs, radius_pix):
    x, y = wcs.backward_transform(truth_sources["ra"], truth_sources["dec"])
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    return x, y, d.min(axis=1) > radius_pix


def test_products_have_jwst_names_and_layout(pipeline_run):
    """Every product exists with its JWST name and the _i2d has the JWST extensions."""
    out, product = pipeline_run["out"], pipeline_run["sim"]["product"]
    for exp in pipeline_run["truth"]["exposures"]:
        assert _crf(pipeline_run, exp["root"]).is_file()
    with fits.open(out / f"{product}_i2d.fits") as hdul:
        names = [h.name for h in hdul]
        for ext in ("SCI", "ERR", "CON", "WHT", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "ASDF", "HDRTAB"):
            assert ext in names
        assert hdul["SCI"].header["CTYPE1"].startswith("RA---TAN")
        assert hdul[0].header["S_RESAMP"] == "COMPLETE"
    assert (out / f"{product}_cat.ecsv").is_file()
    assert (out / f"{product}_segm.fits").is_file()


def test_products_record_provenance(pipeline_run):
    """Each product names its step, parameters and inputs with checksums; the CLI prints it."""
    out, product = pipeline_run["out"], pipeline_run["sim"]["product"]
    header = io.read_provenance(out / f"{product}_i2d.fits")
    assert header["PRVSTEP"] == "resample" and header["NPRVINP"] == 5
    crf_names = sorted(header[f"PRVIN{i:03d}"] for i in range(1, 5))
    assert crf_names == sorted(_crf(pipeline_run, e["root"]).name for e in pipeline_run["truth"]["exposures"])
    assert header["PRVSU001"] == io.file_sha256(out / header["PRVIN001"])
    assert io.read_provenance(out / f"{product}_cat.ecsv")["PRVSTEP"] == "source_catalog"
    proc = subprocess.run([sys.executable, "-m", "calimage3.provenance", str(out / f"{product}_segm.fits")],
                          capture_output=True, text=True, check=True)
    assert "step: source_catalog" in proc.stdout and f"{product}_i2d.fits  sha256" in proc.stdout


def test_tweakreg_recovers_true_wcs(pipeline_run):
    """Corrected WCSs put the true star positions within 0.02 pixel RMS of truth."""
    truth_dir = pipeline_run["sim"]["truth"]
    stars = io.read_table(truth_dir / "sources.ecsv")
    stars = stars[stars["type"] == "star"]
    residuals = []
    for exp in pipeline_run["truth"]["exposures"]:
        true_wcs = io.read_wcs_file(truth_dir / f"{exp['root']}_true_wcs.asdf")[0]
        crf = io.read_exposure(_crf(pipeline_run, exp["root"]))
        assert crf.meta["S_TWKREG"] == "COMPLETE"
        xt, yt = true_wcs.backward_transform(stars["ra"], stars["dec"])
        inside = (xt > 0) & (xt < 511) & (yt > 0) & (yt < 511)
        xc, yc = crf.wcs.backward_transform(stars["ra"][inside], stars["dec"][inside])
        residuals.append(np.hypot(xc - xt[inside], yc - yt[inside]))
    rms = float(np.sqrt(np.mean(np.concatenate(residuals) ** 2)))
    print(f"tweakreg RMS vs truth: {rms:.4f} pix")
    assert rms < 0.02


def test_skymatch_recovers_relative_offsets(pipeline_run):
    """BKGLEVEL differences match the injected sky offsets within 1% of the noise."""
    truth = pipeline_run["truth"]
    levels = np.array([io.read_exposure(_crf(pipeline_run, e["root"])).meta["BKGLEVEL"] for e in truth["exposures"]])
    offsets = np.array([e["sky_offset"] for e in truth["exposures"]])
    error = (levels - levels[0]) - (offsets - offsets[0])
    print(f"skymatch relative-offset errors: {error} MJy/sr (noise {truth['noise_sigma']:.4f})")
    assert np.max(np.abs(error)) < 0.01 * truth["noise_sigma"]


def test_cosmic_rays_flagged_and_sources_spared(pipeline_run):
    """>= 95% of injected cosmic rays are flagged; < 0.1% of source pixels are."""
    truth_dir = pipeline_run["sim"]["truth"]
    outliers = io.read_table(truth_dir / "outliers.ecsv")
    sources = io.read_table(truth_dir / "sources.ecsv")
    hits = total = source_flagged = source_pixels = 0
    for exp in pipeline_run["truth"]["exposures"]:
        crf = io.read_exposure(_crf(pipeline_run, exp["root"]))
        flagged = (crf.dq & PIXEL["OUTLIER"]) > 0
        assert np.all((crf.dq[flagged] & PIXEL["DO_NOT_USE"]) > 0)
        mine = outliers[(outliers["exposure"] == exp["root"]) & (outliers["kind"] == "cosmic_ray")]
        cal_dq = io.read_exposure(pipeline_run["sim"]["asn"].parent / f"{exp['root']}_cal.fits").dq
        usable = (cal_dq[mine["y"], mine["x"]] & PIXEL["DO_NOT_USE"]) == 0
        # Only pixels seen by at least three exposures can be judged against a median.
        coverage = _coverage(pipeline_run, crf, mine["x"], mine["y"])
        judged = usable & (coverage >= 3)
        hits += int(flagged[mine["y"][judged], mine["x"][judged]].sum())
        total += int(judged.sum())
        true_wcs = io.read_wcs_file(truth_dir / f"{exp['root']}_true_wcs.asdf")[0]
        on_source = _source_pixels(sources, true_wcs, crf.shape)
        injected = np.zeros(crf.shape, bool)
        injected[outliers["y"][outliers["exposure"] == exp["root"]], outliers["x"][outliers["exposure"] == exp["root"]]] = True
        on_source &= ~injected
        source_flagged += int((flagged & on_source).sum())
        source_pixels += int(on_source.sum())
    recall = hits / total
    false_rate = source_flagged / source_pixels
    print(f"cosmic-ray recall {recall:.4f} of {total}; source pixels flagged {false_rate:.5f} of {source_pixels}")
    assert total > 50
    assert recall >= 0.95
    assert false_rate < 0.001


def _coverage(run, crf, x, y):
    """How many exposures cover each given pixel of ``crf``."""
    ra, dec = crf.wcs.forward_transform(np.asarray(x, float), np.asarray(y, float))
    count = np.zeros(len(x), int)
    for exp in run["truth"]["exposures"]:
        other = io.read_wcs_file(run["sim"]["truth"] / f"{exp['root']}_true_wcs.asdf")[0]
        xo, yo = other.backward_transform(ra, dec)
        count += (xo > 4) & (xo < 507) & (yo > 4) & (yo < 507)
    return count


def _source_pixels(sources, wcs, shape):
    """Pixels where a simulated source has significant light (stars: r < 3 px; galaxies: r < 1.5 r_eff)."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    mask = np.zeros(shape, bool)
    x, y = wcs.backward_transform(sources["ra"], sources["dec"])
    for xi, yi, kind, reff, snr in zip(x, y, sources["type"], sources["r_eff"].value, sources["snr"]):
        if not (0 <= xi < nx and 0 <= yi < ny) or snr < 10:
            continue
        radius = 3.0 if kind == "star" else max(3.0, 1.5 * reff / 0.031)
        x0, x1 = int(max(xi - radius - 1, 0)), int(min(xi + radius + 2, nx))
        y0, y1 = int(max(yi - radius - 1, 0)), int(min(yi + radius + 2, ny))
        mask[y0:y1, x0:x1] |= np.hypot(xx[y0:y1, x0:x1] - xi, yy[y0:y1, x0:x1] - yi) < radius
    return mask


def test_i2d_conserves_star_flux(pipeline_run):
    """Total flux of isolated bright stars in the _i2d matches truth within 1%."""
    arrays, wcs, meta = io.read_i2d(pipeline_run["out"] / f"{pipeline_run['sim']['product']}_i2d.fits")
    sources = io.read_table(pipeline_run["sim"]["truth"] / "sources.ecsv")
    x, y, isolated = _isolated(sources, wcs, 25)
    data = arrays["data"]
    ny, nx = data.shape
    yy, xx = np.mgrid[-15:16, -15:16]
    ratios = []
    for xi, yi, alone, kind, snr, flux in zip(x, y, isolated, sources["type"], sources["snr"], sources["flux"].value):
        ix, iy = int(round(xi)), int(round(yi))
        if kind != "star" or snr < 200 or not alone or not (16 <= ix < nx - 16 and 16 <= iy < ny - 16):
            continue
        cut = data[iy - 15:iy + 16, ix - 15:ix + 16]
        if not np.all(np.isfinite(cut)):
            continue
        rr = np.hypot(xx + ix - xi, yy + iy - yi)
        bkg = np.median(cut[(rr > 11) & (rr < 15)])
        ratios.append(np.sum(cut[rr < 10] - bkg) * meta["PIXAR_SR"] * 1e6 / flux)
    ratios = np.array(ratios)
    print(f"i2d flux ratio of {len(ratios)} isolated stars: median {np.median(ratios):.4f}, spread {np.std(ratios):.4f}")
    assert len(ratios) >= 5
    assert np.median(ratios) == pytest.approx(1.0, abs=0.01)


def test_catalog_recovers_stars(pipeline_run):
    """The catalog finds >= 95% of stars above 10 sigma, within 0.1 pix, fluxes within 2%."""
    from astropy.coordinates import SkyCoord

    product = pipeline_run["sim"]["product"]
    catalog = io.read_table(pipeline_run["out"] / f"{product}_cat.ecsv")
    arrays, wcs, meta = io.read_i2d(pipeline_run["out"] / f"{product}_i2d.fits")
    sources = io.read_table(pipeline_run["sim"]["truth"] / "sources.ecsv")
    x, y, isolated = _isolated(sources, wcs, 8)
    ny, nx = arrays["data"].shape
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    inside = (x > 10) & (x < nx - 10) & (y > 10) & (y < ny - 10) & (arrays["wht"][iy, ix] > 0)
    pick = (sources["type"] == "star") & (sources["snr"] >= 10) & inside & isolated
    stars = sources[pick]
    true_c = SkyCoord(stars["ra"], stars["dec"], unit="deg")
    cat_c = catalog["sky_centroid"]
    idx, sep, _ = true_c.match_to_catalog_sky(cat_c)
    found = sep.arcsec < 0.1
    recall = found.mean()
    xs, ys = wcs.backward_transform(stars["ra"][found], stars["dec"][found])
    dpos = np.hypot(catalog["xcentroid"][idx[found]] - xs, catalog["ycentroid"][idx[found]] - ys)
    flux = np.asarray(catalog["aper_total_flux"][idx[found]].to_value("Jy"))
    ratio = flux / stars["flux"].value[found]
    print(f"catalog: recall {recall:.3f} of {len(stars)} stars; median position error {np.median(dpos):.3f} pix; "
          f"median flux ratio {np.median(ratio):.4f}")
    assert recall >= 0.95
    assert np.median(dpos) < 0.1
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02)


def test_rerun_does_nothing_and_changes_rerun_dependents(pipeline_run):
    """No-op rerun plans nothing; a touched _cal and a changed parameter rerun only their dependents."""
    asn, out = pipeline_run["sim"]["asn"], pipeline_run["out"]
    assert planned_jobs(asn, out, *SETTINGS) == {}
    jobs = planned_jobs(asn, out, "source_catalog={'npixels': 10, 'snr_threshold': 4.0}")
    assert jobs == {"source_catalog": 1, "qa_figures": 1, "all": 1}
    jobs = planned_jobs(asn, out, *SETTINGS, "outlier_detection={'snr': '6.0 4.5'}")
    assert jobs == {"outlier_flag": 4, "resample_exposure": 4, "resample": 1, "source_catalog": 1,
                    "qa_figures": 1, "all": 1}
    cal = pipeline_run["sim"]["cal"][1]
    os.utime(cal)
    jobs = planned_jobs(asn, out, *SETTINGS)
    assert jobs["tweakreg_detect"] == 1
    assert jobs["tweakreg_align"] == 1 and jobs["source_catalog"] == 1
    assert "assign_mtwcs" not in jobs  # fixed target: JWST runs assign_mtwcs only for moving targets


def test_single_exposure_runs_resample_and_catalog(tmp_path, small_dither):
    """A lone _cal runs only resample and source_catalog, named after the exposure."""
    cal = small_dither["cal"][0]
    run_snakemake(cal, tmp_path / "out")
    root = cal.name[: -len("_cal.fits")]
    produced = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file())
    assert produced == [f"{root}_cat.ecsv", f"{root}_i2d.fits", f"{root}_segm.fits"]
    bench = tmp_path / "out" / "benchmarks"
    stats = sorted(str(p.relative_to(bench).with_suffix("")) for p in bench.rglob("*.tsv"))
    assert stats == ["qa_figures", "resample", f"resample_exposure/{root}", "resample_grid", "source_catalog"]
