"""Moving targets: assign_mtwcs instead of tweakreg, end to end on a simulated moving target.

The simulated target moves about 4.7 pixels between exposures while the
stars stay fixed.  As in JWST's Image3Pipeline, the exposures are stacked
on the target (assign_mtwcs) and tweakreg leaves their WCSs alone, so in
the mosaic the target is a compact point source with its true flux and the
stars, moving in the target's frame, are trailed or rejected as outliers.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import workflow_runs
from astropy.io import fits

from calimage3 import io
from calimage3.assign_mtwcs import MOVING_TARGET_REASON
from calimage3.simulate import simulate_dither
from calimage3.wcs_tools import imaging_wcs

_spec = importlib.util.spec_from_file_location(
    "tweakreg_align_script", Path(__file__).parents[1] / "scripts" / "tweakreg_align.py")
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)

SHAPE = (128, 128)


def _values(column):
    """Plain float array of a table column, with or without a unit."""
    return np.asarray(getattr(column, "value", column), dtype=float)


# ------------------------------------------------------------ tweakreg script, no workflow


def _wcs_inputs(tmp_path, info):
    """Three exposures' assign_mtwcs WCS files (with ``info``) and where tweakreg writes."""
    wcs_list = [imaging_wcs(SHAPE, (20.0 + k * 1e-4, 10.0), 0.031) for k in range(3)]
    inputs, outputs = [], []
    for k, wcs in enumerate(wcs_list):
        inputs.append(tmp_path / f"e{k}_wcs.asdf")
        outputs.append(tmp_path / f"e{k}_tweakreg.asdf")
        io.write_wcs_file(inputs[-1], wcs, SHAPE, info=info)
    # No source catalogs exist: a moving target must not need them.
    sources = [tmp_path / f"e{k}_sources.ecsv" for k in range(3)]
    return wcs_list, sources, inputs, outputs


def _assert_passed_through(wcs_list, outputs, reason):
    x = np.array([0.0, 64.0, 127.0])
    for wcs, out in zip(wcs_list, outputs):
        new_wcs, shape, info = io.read_wcs_file(out)
        assert shape == SHAPE
        assert info["S_TWKREG"] == "SKIPPED" and info["TWKREASN"] == reason
        np.testing.assert_array_equal(new_wcs.forward_transform(x, x), wcs.forward_transform(x, x))


def test_tweakreg_passes_assign_mtwcs_output_through(tmp_path, caplog):
    """WCSs that assign_mtwcs moved (S_MTWCS=COMPLETE) leave tweakreg unchanged, SKIPPED with the reason."""
    wcs_list, sources, inputs, outputs = _wcs_inputs(tmp_path, {"S_MTWCS": "COMPLETE", "MT_AVRA": 20.0})
    with caplog.at_level("INFO", logger="tweakreg"):
        _script.tweakreg_align(sources, inputs, outputs)
    _assert_passed_through(wcs_list, outputs, MOVING_TARGET_REASON)
    assert io.read_wcs_file(outputs[0])[2]["MT_AVRA"] == 20.0
    assert "SKIPPED for 3 exposures (moving target: assign_mtwcs used)" in caplog.text


def test_tweakreg_skips_moving_target_even_without_assign_mtwcs(tmp_path):
    """With assign_mtwcs skipped, TARGTYPE=MOVING in the _cal headers still keeps tweakreg off (as JWST)."""
    wcs_list, sources, inputs, outputs = _wcs_inputs(tmp_path, {"S_MTWCS": "SKIPPED"})
    cals = []
    for k in range(3):
        cals.append(tmp_path / f"e{k}_cal.fits")
        fits.PrimaryHDU(header=fits.Header([("TARGTYPE", "MOVING")])).writeto(cals[-1])
    _script.tweakreg_align(sources, inputs, outputs, cal_paths=cals)
    _assert_passed_through(wcs_list, outputs, "moving target: assign_mtwcs skipped, tweakreg not run")


def test_fixed_target_is_not_a_moving_target_skip():
    """Fixed-target WCSs (S_MTWCS=SKIPPED, no _cal headers to read) go to the fit."""
    assert _script.moving_target_skip_reason([{"S_MTWCS": "SKIPPED"}] * 2) is None


# ------------------------------------------------------------ the whole workflow


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory):
    """Three 256x256 moving-target exposures without pointing errors, through the whole workflow.

    150 stars give tweakreg enough matches that, were it run, it would
    align the stars and undo assign_mtwcs (the target would smear).
    """
    base = tmp_path_factory.mktemp("moving_target")
    sim = simulate_dither(base / "data", n_exposures=3, shape=(256, 256), seed=2, moving_target=True,
                          n_stars=150, shift_error=0.0, rotation_error=0.0)
    out = base / "out"
    workflow_runs.run_snakemake(f"asn={sim['asn']}", out, "qa_figures=false")
    arrays, wcs, meta = io.read_i2d(out / f"{sim['product']}_i2d.fits")
    truth = io.read_json(sim["truth"] / "truth.json")["moving_target"]
    target_xy = tuple(float(v) for v in wcs.backward_transform(truth["mean_ra"], truth["mean_dec"]))
    return {"sim": sim, "out": out, "i2d": arrays["data"], "i2d_wcs": wcs, "i2d_meta": meta,
            "target": truth, "target_xy": target_xy,
            "cat": io.read_table(out / f"{sim['product']}_cat.ecsv")}


def _crf_path(run, cal):
    return run["out"] / f"{cal.name.replace('_cal.fits', '')}_{run['sim']['asn_id']}_crf.fits"


def _target_pixels(run):
    """Per exposure: the target's true detector pixel, mapped through the _crf WCS onto the mosaic."""
    rows = []
    for cal in run["sim"]["cal"]:
        root = cal.name.replace("_cal.fits", "")
        true_wcs, _, _ = io.read_wcs_file(run["sim"]["truth"] / f"{root}_true_wcs.asdf")
        crf_wcs, _, meta = io.read_exposure_wcs(_crf_path(run, cal))
        x, y = true_wcs.backward_transform(meta["MT_RA"], meta["MT_DEC"])
        ra, dec = crf_wcs.forward_transform(x, y)
        rows.append((x, y, *run["i2d_wcs"].backward_transform(ra, dec), ra, dec, meta))
    return rows


def _peak_per_jy(run, x, y, flux_jy, half=3):
    """Highest background-subtracted mosaic pixel near (x, y) as a fraction of the source's flux."""
    sci = run["i2d"]
    ix, iy = int(round(x)), int(round(y))
    cut = sci[iy - half: iy + half + 1, ix - half: ix + half + 1] - np.nanmedian(sci)
    return float(np.nanmax(cut)) * run["i2d_meta"]["PIXAR_SR"] * 1e6 / flux_jy


@pytest.mark.slow
def test_i2d_records_moving_target_wcs(mt_run):
    """The _i2d says S_MTWCS=COMPLETE and MT_AVRA/MT_AVDEC are the mean of the exposures' MT_RA/MT_DEC."""
    meta = mt_run["i2d_meta"]
    assert meta["S_MTWCS"] == "COMPLETE"
    mt = [io.read_exposure_wcs(p)[2] for p in mt_run["sim"]["cal"]]
    assert meta["MT_AVRA"] == pytest.approx(np.mean([m["MT_RA"] for m in mt]), abs=1e-9)
    assert meta["MT_AVDEC"] == pytest.approx(np.mean([m["MT_DEC"] for m in mt]), abs=1e-9)
    assert meta["MT_AVRA"] == pytest.approx(mt_run["target"]["mean_ra"], abs=1e-9)


@pytest.mark.slow
def test_tweakreg_skipped_in_crf_and_log(mt_run):
    """Every _crf says S_TWKREG=SKIPPED because assign_mtwcs was used; the tweakreg log says so too."""
    for cal in mt_run["sim"]["cal"]:
        meta = io.read_exposure_wcs(_crf_path(mt_run, cal))[2]
        assert meta["S_MTWCS"] == "COMPLETE"
        assert meta["S_TWKREG"] == "SKIPPED"
        assert meta["TWKREASN"] == MOVING_TARGET_REASON
    log = (mt_run["out"] / "logs" / "tweakreg_align.log").read_text()
    assert f"SKIPPED for 3 exposures ({MOVING_TARGET_REASON})" in log


@pytest.mark.slow
def test_target_lands_on_one_mosaic_pixel(mt_run):
    """The target, ~4.7 pixels/exposure apart on the sky, falls on one mosaic pixel (< 0.01 pix) from every exposure."""
    rows = _target_pixels(mt_run)
    detector = np.array([(r[0], r[1]) for r in rows])
    mosaic = np.array([(r[2], r[3]) for r in rows])
    # Dithers and the target's motion put it on detector pixels > 1 pixel apart ...
    assert np.ptp(detector, axis=0).max() > 1.0
    # ... yet lands on one mosaic pixel, at the mean target position.
    print(f"target on the mosaic: spread {np.ptp(mosaic, axis=0).max():.2e} pix over exposures "
          f"{np.ptp(detector, axis=0).max():.1f} pix apart on the detectors")
    assert np.ptp(mosaic, axis=0).max() < 0.01
    meta = mt_run["i2d_meta"]
    for *_, ra, dec, _ in rows:
        assert abs(ra - meta["MT_AVRA"]) * 3600 * np.cos(np.deg2rad(dec)) < 1e-4
        assert abs(dec - meta["MT_AVDEC"]) * 3600 < 1e-4


@pytest.mark.slow
def test_target_is_compact_catalogued_point_source_with_true_flux(mt_run):
    """In the _i2d and _cat the target is a round point source at the truth pixel (0.1 pix) with its flux (5%)."""
    cat, (x, y), flux = mt_run["cat"], mt_run["target_xy"], mt_run["target"]["flux_jy"]
    dist = np.hypot(_values(cat["xcentroid"]) - x, _values(cat["ycentroid"]) - y)
    row = cat[int(np.argmin(dist))]
    assert dist.min() < 0.1
    assert not row["is_extended"]
    assert float(row["ellipticity"]) < 0.15
    assert float(_values(row["isophotal_flux"])) == pytest.approx(flux, rel=0.05)
    # Independent of the catalog: a 6-pixel aperture on the mosaic, local sky from an annulus.
    sci = mt_run["i2d"]
    yy, xx = np.mgrid[: sci.shape[0], : sci.shape[1]]
    r = np.hypot(xx - x, yy - y)
    sky = np.nanmedian(sci[(r > 12) & (r < 20)])
    aperture_jy = np.nansum(sci[r < 6] - sky) * mt_run["i2d_meta"]["PIXAR_SR"] * 1e6
    print(f"target: centroid {dist.min():.3f} pix from truth, isophotal/true "
          f"{float(_values(row['isophotal_flux'])) / flux:.4f}, r=6 aperture/true {aperture_jy / flux:.4f}, "
          f"aper_total/true {float(_values(row['aper_total_flux'])) / flux:.4f}, "
          f"ellipticity {float(row['ellipticity']):.3f}")
    assert aperture_jy == pytest.approx(flux, rel=0.05)


def _isolated(sources, radius_arcsec, flux_fraction):
    """Sources with no other source of at least ``flux_fraction`` of their flux within the radius.

    A trailed neighbour's copies could otherwise land on a star's own track.
    """
    ra, dec, flux = (_values(sources[c]) for c in ("ra", "dec", "flux"))
    dx = (ra[:, None] - ra[None, :]) * np.cos(np.deg2rad(dec[:, None]))
    sep = np.hypot(dx, dec[:, None] - dec[None, :]) * 3600
    np.fill_diagonal(sep, np.inf)
    return ~np.any((sep < radius_arcsec) & (flux[None, :] > flux_fraction * flux[:, None]), axis=1)


@pytest.mark.slow
def test_fixed_stars_are_not_compact_in_target_frame(mt_run):
    """Bright fixed stars move in the target frame: their mosaic peak per Jy is < 40% of the target's.

    A compact source has the same peak per Jy as the target (the same PSF);
    a star trailed over three positions ~4.7 pixels apart has about a
    third of it, and outlier detection rejects much of the rest.
    """
    run = mt_run
    target_peak = _peak_per_jy(run, *run["target_xy"], run["target"]["flux_jy"])
    sources = io.read_table(run["sim"]["truth"] / "sources.ecsv")
    stars = sources[(sources["type"] == "star") & (_values(sources["snr"]) > 300)
                    & _isolated(sources, radius_arcsec=0.8, flux_fraction=0.1)]
    tracks, covered = [], np.ones(len(stars), bool)
    for cal in run["sim"]["cal"]:
        root = cal.name.replace("_cal.fits", "")
        true_wcs, (ny, nx), _ = io.read_wcs_file(run["sim"]["truth"] / f"{root}_true_wcs.asdf")
        crf_wcs = io.read_exposure_wcs(_crf_path(run, cal))[0]
        x, y = true_wcs.backward_transform(_values(stars["ra"]), _values(stars["dec"]))
        # Where fewer exposures overlap, a star's copy is not diluted by the others.
        covered &= (x > 20) & (x < nx - 20) & (y > 20) & (y < ny - 20)
        tracks.append(run["i2d_wcs"].backward_transform(*crf_wcs.forward_transform(x, y)))
    tracks = np.array(tracks)  # (exposure, x/y, star)
    ratios = []
    for k, flux in enumerate(_values(stars["flux"])):
        xs, ys = tracks[:, 0, k], tracks[:, 1, k]
        far = np.hypot(xs.mean() - run["target_xy"][0], ys.mean() - run["target_xy"][1]) > 20
        # In the target frame the star steps from exposure to exposure ...
        assert np.hypot(*np.diff(tracks[:, :, k], axis=0).T).min() > 4.0
        if covered[k] and far:
            # ... so no mosaic pixel along its track is as bright as a compact copy.
            half = int(np.ceil(max(np.ptp(xs), np.ptp(ys)) / 2)) + 3
            ratios.append(_peak_per_jy(run, xs.mean(), ys.mean(), flux, half) / target_peak)
    print("fixed stars, mosaic peak per Jy / the target's:", np.round(ratios, 3))
    assert len(ratios) >= 3
    assert max(ratios) < 0.4


def test_moving_target_runs_assign_mtwcs_and_no_detection(mt_run):
    """Moving target: assign_mtwcs ran and no tweakreg detection job did (JWST skips tweakreg)."""
    bench = mt_run["out"] / "benchmarks"
    assert (bench / "assign_mtwcs.tsv").is_file()
    assert not list(bench.glob("tweakreg_detect*")) and not list(bench.rglob("*sources*"))
    assert not list((mt_run["out"] / "work" / "tweakreg").glob("*_sources.ecsv"))
