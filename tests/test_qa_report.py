"""QA figures and the Snakemake report: plotting functions, and an end-to-end run rendered in Chromium."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import Angle
from matplotlib.figure import Figure
from matplotlib.image import imread

from calimage3 import qa_plots
from calimage3.dqflags import PIXEL
from calimage3.simulate import simulate_dither
from calimage3.wcs_tools import imaging_wcs

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_APT = "apt-get update && apt-get install -y chromium"


def _pixels(fig):
    """RGB pixels of a figure drawn on its Agg canvas."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)


# --------------------------------------------------------------------------
# Plotting functions on tiny synthetic inputs


def test_match_catalogs_recovers_known_offset():
    """A catalog moved 50 mas north matches its truth with deta = +0.05 arcsec, dxi = 0."""
    ra = 53.0 + np.array([0.0, 0.001, 0.002])
    dec = -27.0 + np.array([0.0, 0.001, -0.001])
    i1, i2, dxi, deta = qa_plots.match_catalogs(ra, dec + 0.05 / 3600, ra, dec, max_separation=0.2)
    assert list(i1) == [0, 1, 2] and list(i2) == [0, 1, 2]
    np.testing.assert_allclose(deta, 0.05, atol=1e-6)
    np.testing.assert_allclose(dxi, 0.0, atol=1e-6)


def test_match_catalogs_is_one_to_one():
    """Two measured sources near one true source give one match: the closer one."""
    i1, i2, _, _ = qa_plots.match_catalogs([10.0, 10.0], [0.1 / 3600, 0.02 / 3600], [10.0], [0.0],
                                           max_separation=0.2)
    assert list(i1) == [1] and list(i2) == [0]


def test_match_catalogs_rejects_bad_radius():
    """A non-positive max_separation is refused, naming the parameter."""
    with pytest.raises(ValueError, match="max_separation must be > 0 arcsec, got -1"):
        qa_plots.match_catalogs([1.0], [1.0], [1.0], [1.0], max_separation=-1)


def test_cross_match_residuals_measure_a_misalignment():
    """An exposure displaced 30 mas east shows +30 mas residuals; the other -30 mas."""
    rng = np.random.default_rng(1)
    ra = 150.0 + rng.uniform(0, 0.01, 40)
    dec = 2.0 + rng.uniform(0, 0.01, 40)
    shifted = np.column_stack([ra + 0.03 / 3600 / np.cos(np.radians(dec)), dec])
    res = qa_plots.cross_match_residuals([np.column_stack([ra, dec]), shifted], max_separation=0.3)
    assert len(res[0]) == len(res[1]) == 40
    np.testing.assert_allclose(res[1][:, 0], 0.03, atol=2e-4)
    np.testing.assert_allclose(res[0][:, 0], -0.03, atol=2e-4)
    np.testing.assert_allclose(res[1][:, 1], 0.0, atol=2e-4)


def test_short_names_drop_shared_prefix_and_suffix():
    """JWST exposure roots shorten to their exposure numbers."""
    names = ["jw01234001001_01101_00001_nrcb1", "jw01234001001_01101_00002_nrcb1"]
    assert qa_plots.short_names(names) == ["00001", "00002"]
    assert qa_plots.short_names(["only_one"]) == ["only_one"]


def test_display_normalization_maps_percentiles_to_black_and_white():
    """The chosen percentiles map to 0 and 1; values beyond are clipped."""
    data = np.arange(1001, dtype=float)
    norm = qa_plots.display_normalization(data, lower_percentile=10, upper_percentile=90)
    np.testing.assert_allclose(norm(np.array([100.0, 900.0, -5.0, 2000.0])), [0, 1, 0, 1], atol=1e-9)


def test_display_normalization_rejects_bad_percentiles():
    """Percentiles out of order are refused with both values in the message."""
    with pytest.raises(ValueError, match="lower_percentile=99, upper_percentile=1"):
        qa_plots.display_normalization(np.ones(4), lower_percentile=99, upper_percentile=1)


def test_mosaic_figure_labels_true_sky_coordinates():
    """Each RA tick on the bottom edge sits where the WCS gives the labelled RA (to 0.01 s)."""
    shape = (200, 240)
    wcs = imaging_wcs(shape, (53.16, -27.79), 0.1, rotation=0.0)
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    data[:20, :20] = np.nan
    fig = qa_plots.mosaic_figure(data, wcs)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("Right ascension") and ax.get_ylabel().startswith("Declination")
    ticks = ax.get_xticks()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) >= 2
    for x, label in zip(ticks, labels):
        ra, _ = wcs.forward_transform(x, -0.5)
        assert Angle(label).to_value("hourangle") * 3600 == pytest.approx(ra / 15 * 3600, abs=0.01)
    assert _pixels(fig).std() > 0


def test_outlier_figure_counts_flagged_pixels():
    """The title counts OUTLIER pixels and their share of usable pixels."""
    data = np.zeros((50, 40), np.float32)
    dq = np.zeros((50, 40), np.uint32)
    dq[5, 5] = dq[10, 12] = PIXEL["OUTLIER"] | PIXEL["DO_NOT_USE"]
    dq[0, :] = PIXEL["DO_NOT_USE"]  # 40 unusable pixels
    fig = qa_plots.outlier_figure(data, dq, name="exp1")
    assert fig.get_suptitle() == "exp1: 2 outlier pixels (0.102% of usable)"  # 2 / 1960


def test_outlier_figure_rejects_mismatched_dq():
    """A DQ array of another shape is refused with both shapes in the message."""
    with pytest.raises(ValueError, match=r"dq shape \(3, 3\) differs from data shape \(4, 4\)"):
        qa_plots.outlier_figure(np.zeros((4, 4)), np.zeros((3, 3), np.uint32))


def test_tweakreg_figure_tabulates_each_exposure():
    """The table has one row per exposure with its shift in mas and rotation in arcsec."""
    fig = qa_plots.tweakreg_figure(["a_1", "a_2"], [(0, 0), (0.1, -0.05)], [0.0, 0.001], [0, 30], [0.0, 0.05],
                                   reference=[True, False], residuals=[np.zeros((3, 2)), np.full((3, 2), 0.002)])
    table = [c for ax in fig.axes for c in ax.tables][0]
    cells = table.get_celld()
    assert cells[(2, 0)].get_text().get_text() == "2"
    assert cells[(2, 4)].get_text().get_text() == "+100.0"
    assert cells[(2, 5)].get_text().get_text() == "-50.0"
    assert cells[(2, 6)].get_text().get_text() == "+3.600"


def test_skymatch_figure_rejects_wrong_length():
    """Levels must come one per exposure."""
    with pytest.raises(ValueError, match=r"one value per name \(2\), got shape \(3,\)"):
        qa_plots.skymatch_figure(["a", "b"], [0.1, 0.2, 0.3])


def test_truth_figures_draw_on_matched_sources():
    """Truth flux and position figures draw non-blank pictures from matched pairs."""
    tf = np.array([1e-7, 2e-7, 4e-7])
    fig = qa_plots.truth_flux_figure(tf, tf * 1.01, types=["star", "star", "galaxy"],
                                     true_flux_all=np.r_[tf, 1e-9], detected=[True, True, True, False])
    assert len(fig.axes) == 3 and _pixels(fig).std() > 0
    fig = qa_plots.truth_position_figure([0.001, -0.002, 0.0], [0.0, 0.001, 0.003], true_flux=tf)
    assert len(fig.axes) == 2 and _pixels(fig).std() > 0


# --------------------------------------------------------------------------
# End to end: workflow, QA figures, report, Chromium


def _snakemake(*args, check=True):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def _config(asn, out, *extra):
    return ["--config", f"asn={asn}", f"output_dir={out}", *extra]


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"chromium is not installed; the report test needs it to render report.html ({CHROMIUM_APT})")


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    """Three 256x256 exposures through the workflow with truth, then `snakemake --report`."""
    base = tmp_path_factory.mktemp("qa")
    # A small field holds few stars: more of them, and a lower minobj, let tweakreg fit every exposure.
    sim = simulate_dither(base / "data", n_exposures=3, shape=(256, 256), seed=5, n_stars=160, n_galaxies=10)
    out = base / "out"
    config = _config(sim["asn"], out, f"truth={sim['truth']}", "tweakreg={'minobj': 8}")
    _snakemake(*config)
    report = base / "report.html"
    _snakemake("--report", str(report), *config)
    return {"sim": sim, "out": out, "report": report, "config": config}


@pytest.mark.slow
def test_qa_pngs_exist_and_are_not_blank(qa_run):
    """Every QA figure, per-exposure ones included, is a PNG with structure (pixel std > 0)."""
    qa = qa_run["out"] / "qa"
    roots = [Path(p).name[: -len("_cal.fits")] for p in qa_run["sim"]["cal"]]
    expected = ["aperture_correction", "mosaic", "segmentation", "magnitudes", "footprints", "tweakreg", "skymatch",
                "truth_flux", "truth_positions"] + [f"outliers/{r}" for r in roots]
    for name in expected:
        image = imread(qa / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, name
        assert image[..., :3].std() > 0.02, f"{name}.png is blank"


@pytest.mark.slow
def test_qa_log_reports_no_failed_figure(qa_run):
    """No figure fell back to an error message, and the truth comparison matched sources."""
    log_text = (qa_run["out"] / "logs" / "qa_figures.log").read_text()
    assert "figure failed" not in log_text
    assert "truth sources in the mosaic matched" in log_text


@pytest.mark.slow
def test_report_lists_the_qa_figures(qa_run):
    """report.html is written and names the QA category and figures."""
    html = qa_run["report"].read_text(errors="replace")
    assert "Quality assurance" in html
    for name in ("mosaic.png", "tweakreg.png", "truth_flux.png"):
        assert name in html


@pytest.mark.slow
def test_report_renders_in_headless_chromium(qa_run, tmp_path):
    """Chromium renders report.html into a non-blank screenshot."""
    chromium = _chromium()
    shot = tmp_path / "report.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,900",
           qa_run["report"].resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.is_file(), f"no screenshot (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    image = imread(shot)[..., :3]
    assert image.shape[:2] == (900, 1280)
    assert image.std() > 0.02
    assert np.mean(np.any(image < 0.9, axis=-1)) > 0.01  # more than a white page


@pytest.mark.slow
def test_qa_figures_can_be_switched_off(qa_run):
    """With qa_figures=false nothing is left to run on the finished set."""
    proc = _snakemake("--dry-run", *qa_run["config"], "qa_figures=false")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_single_exposure_makes_only_mosaic_figures(qa_run, tmp_path):
    """A lone _cal plans the mosaic, segmentation and magnitude figures, no per-exposure ones."""
    proc = _snakemake("--dry-run", *_config(qa_run["sim"]["cal"][0], tmp_path / "single"))
    text = proc.stdout + proc.stderr
    block = text.split("rule qa_figures:", 1)[1]
    outputs = next(line for line in block.splitlines() if line.strip().startswith("output:"))
    names = sorted(Path(p.strip().rstrip(",")).name for p in outputs.split("output:", 1)[1].split(","))
    assert names == ["aperture_correction.png", "magnitudes.png", "mosaic.png", "segmentation.png"]
