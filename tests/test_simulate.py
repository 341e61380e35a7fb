"""Tests that the simulator writes what it promises."""

import numpy as np
import pytest

from calimage3 import io
from calimage3.dqflags import PIXEL


def test_simulated_set_layout(small_dither):
    """Cal files, ASN and truth exist and the ASN lists the cal files."""
    asn = io.read_association(small_dither["asn"])
    assert [m.path for m in asn.members] == small_dither["cal"]
    assert len(io.read_table(small_dither["truth"] / "sources.ecsv")) > 25


def test_simulated_noise_matches_err(small_dither):
    """Away from sources the scatter of SCI matches the ERR array."""
    exp = io.read_exposure(small_dither["cal"][0])
    good = np.isfinite(exp.data)
    resid = exp.data[good] - np.median(exp.data[good])
    robust_sigma = 1.4826 * np.median(np.abs(resid))
    assert robust_sigma == pytest.approx(np.median(exp.err[good]), rel=0.05)


def test_star_flux_in_cal_matches_truth(small_dither):
    """A bright star's summed surface brightness times pixel area gives its true flux."""
    truth = io.read_table(small_dither["truth"] / "sources.ecsv")
    exp = io.read_exposure(small_dither["cal"][0])
    true_wcs = io.read_wcs_file(small_dither["truth"] / f"{small_dither['cal'][0].name[:-9]}_true_wcs.asdf")[0]
    xa, ya = true_wcs.backward_transform(truth["ra"], truth["dec"])
    dist = np.hypot(xa[:, None] - xa[None, :], ya[:, None] - ya[None, :])
    np.fill_diagonal(dist, np.inf)
    isolated = dist.min(axis=1) > 20
    pick = (truth["type"] == "star") & (truth["snr"] > 100) & isolated
    x, y, stars = xa[pick], ya[pick], truth[pick]
    sky = np.nanmedian(exp.data)
    ratios = []
    for xi, yi, f in zip(x, y, stars["flux"].value):
        ix, iy = int(round(xi)), int(round(yi))
        if 12 < ix < 243 and 12 < iy < 243:
            cut = exp.data[iy - 8:iy + 9, ix - 8:ix + 9] - sky
            if np.all(np.isfinite(cut)):
                area = exp.area[iy - 8:iy + 9, ix - 8:ix + 9]
                ratios.append(np.sum(cut * area) * exp.meta["PIXAR_SR"] * 1e6 / f)
    assert len(ratios) >= 3
    assert np.median(ratios) == pytest.approx(1.0, abs=0.01)


def _values(column):
    """Plain float array of a table column, with or without a unit."""
    return np.asarray(getattr(column, "value", column), dtype=float)


@pytest.fixture(scope="module")
def moving_pair(tmp_path_factory):
    """The same small set (seed 4) simulated with and without a moving target."""
    from calimage3.simulate import simulate_dither

    base = tmp_path_factory.mktemp("moving_pair")
    kwargs = dict(n_exposures=3, shape=(128, 128), seed=4)
    return (simulate_dither(base / "fixed", **kwargs),
            simulate_dither(base / "moving", moving_target=True, target_rate=(0.35, 0.35), **kwargs))


def test_fixed_target_has_no_moving_target_truth(moving_pair):
    """Without the option: TARGTYPE FIXED, no MT_RA/MT_DEC and no moving-target truth."""
    fixed, _ = moving_pair
    meta = io.read_exposure_wcs(fixed["cal"][0])[2]
    assert meta["TARGTYPE"] == "FIXED" and "MT_RA" not in meta and "MT_DEC" not in meta
    assert not (fixed["truth"] / "moving_target.ecsv").exists()
    assert "moving_target" not in io.read_json(fixed["truth"] / "truth.json")


def test_moving_target_headers_follow_truth_track(moving_pair):
    """MT_RA/MT_DEC are the truth track; it moves 0.35*sqrt(2) arcsec/hour between mid times; stars stay put."""
    fixed, moving = moving_pair
    track = io.read_table(moving["truth"] / "moving_target.ecsv")
    ra, dec, expmid = (_values(track[c]) for c in ("ra", "dec", "expmid"))
    metas = [io.read_exposure_wcs(p)[2] for p in moving["cal"]]
    assert [m["TARGTYPE"] for m in metas] == ["MOVING"] * 3
    np.testing.assert_allclose([m["MT_RA"] for m in metas], ra, rtol=0, atol=1e-12)
    np.testing.assert_allclose([m["MT_DEC"] for m in metas], dec, rtol=0, atol=1e-12)
    np.testing.assert_allclose([m["EXPMID"] for m in metas], expmid, rtol=0, atol=1e-9)
    dra = np.diff(ra) * np.cos(np.deg2rad(dec[:-1])) * 3600
    ddec = np.diff(dec) * 3600
    hours = np.diff(expmid) * 24
    np.testing.assert_allclose(np.hypot(dra, ddec) / hours, 0.35 * np.sqrt(2), rtol=1e-3)
    # Several pixels (0.031 arcsec) between exposures.
    assert np.all(np.hypot(dra, ddec) / 0.031 > 4)
    # The fixed sources are those of the same seed without the target.
    assert (moving["truth"] / "sources.ecsv").read_bytes() == (fixed["truth"] / "sources.ecsv").read_bytes()
    mean = io.read_json(moving["truth"] / "truth.json")["moving_target"]
    assert mean["flux_jy"] == pytest.approx(_values(track["flux"])[0])


def test_moving_target_drawn_with_its_flux(moving_pair):
    """At each exposure's truth pixel the target's summed surface brightness gives its flux (5%)."""
    _, moving = moving_pair
    track = io.read_table(moving["truth"] / "moving_target.ecsv")
    rows = zip(_values(track["x"]), _values(track["y"]), _values(track["flux"]))
    for path, (x, y, true_flux) in zip(moving["cal"], rows):
        exp = io.read_exposure(path)
        yy, xx = np.mgrid[: exp.data.shape[0], : exp.data.shape[1]]
        r = np.hypot(xx - x, yy - y)
        sky = np.nanmedian(exp.data[(r > 10) & (r < 16)])
        aperture = r < 6
        assert np.all(np.isfinite(exp.data[aperture]))
        flux = np.sum((exp.data[aperture] - sky) * exp.area[aperture]) * exp.meta["PIXAR_SR"] * 1e6
        assert flux == pytest.approx(true_flux, rel=0.05)


@pytest.fixture(scope="module")
def miri_small(tmp_path_factory):
    """Two small MIRI-like exposures: bounding box, NON_SCIENCE outside it, gradients, snowballs."""
    from calimage3.simulate import miri_imaging_settings, simulate_dither

    settings = miri_imaging_settings(n_exposures=2, shape=(256, 264), bounding_box=((90.5, 259.5), (-0.5, 255.5)),
                                     non_science=True, snowball_density=3e-5, sky_gradient=0.03, seed=2)
    return simulate_dither(tmp_path_factory.mktemp("miri_small"), settings)


def test_miri_mode_headers_box_and_non_science(miri_small):
    """MIRI keywords; the _cal gwcs carries the narrower bounding box; outside it, bright signal flagged NON_SCIENCE only."""
    exp = io.read_exposure(miri_small["cal"][0])
    assert (exp.meta["INSTRUME"], exp.meta["DETECTOR"], exp.meta["FILTER"]) == ("MIRI", "MIRIMAGE", "F770W")
    assert "miri_f770w" in miri_small["product"]
    (x0, x1), (y0, y1) = exp.wcs.bounding_box.bounding_box(order="F")
    assert (x0, x1, y0, y1) == (90.5, 259.5, -0.5, 255.5)
    outside = np.zeros(exp.shape, bool)
    outside[:, :91] = outside[:, 260:] = True
    non_science = (exp.dq & PIXEL["NON_SCIENCE"]) > 0
    np.testing.assert_array_equal(non_science, outside)
    assert not ((exp.dq[outside] & PIXEL["DO_NOT_USE"]) > 0)[50:].all()  # flagged NON_SCIENCE, not DO_NOT_USE
    inside_sky = np.nanmedian(exp.data[20:-20, 100:250])
    assert np.nanmedian(exp.data[20:-20, 10:80]) > 2.0 * inside_sky


def test_miri_gradients_follow_truth(miri_small):
    """Each exposure's background has the truth's planar gradient, a different one per exposure."""
    truth = io.read_json(miri_small["truth"] / "truth.json")
    coeffs = []
    for path, exp_truth in zip(miri_small["cal"], truth["exposures"]):
        exp = io.read_exposure(path)
        y, x = np.mgrid[0:256, 0:264]
        box = (slice(8, 248), slice(100, 250))
        gx, gy = exp_truth["sky_gradient"]
        # Block medians (robust against sources) against the true plane.
        blocks = [(np.nanmedian(exp.data[box][j:j + 30, i:i + 30]), x[box][j + 15, i + 15], y[box][j + 15, i + 15])
                  for j in range(0, 240, 30) for i in range(0, 150, 30)]
        level, bx, by = (np.array(v) for v in zip(*blocks))
        fit = np.linalg.lstsq(np.column_stack([np.ones_like(bx), bx, by]), level, rcond=None)[0]
        assert fit[1] == pytest.approx(gx, abs=0.15 * np.hypot(gx, gy))
        assert fit[2] == pytest.approx(gy, abs=0.15 * np.hypot(gx, gy))
        coeffs.append((gx, gy))
    assert coeffs[0] != coeffs[1]


def test_snowballs_recorded_and_drawn(miri_small):
    """Snowball pixels are in the outlier truth and stand well above the sky."""
    outliers = io.read_table(miri_small["truth"] / "outliers.ecsv")
    root = miri_small["cal"][0].name[:-9]
    balls = outliers[(outliers["exposure"] == root) & (outliers["kind"] == "snowball")]
    assert len(balls) >= 5
    exp = io.read_exposure(miri_small["cal"][0])
    sky = np.nanmedian(exp.data[:, 100:250])
    assert np.nanmedian(exp.data[balls["y"], balls["x"]] - sky) > 10 * np.nanmedian(exp.err[:, 100:250])


def test_default_set_has_no_new_effects(small_dither):
    """Defaults add no snowballs, gradients or NON_SCIENCE pixels."""
    outliers = io.read_table(small_dither["truth"] / "outliers.ecsv")
    assert set(outliers["kind"]) <= {"cosmic_ray", "hot_pixel"}
    truth = io.read_json(small_dither["truth"] / "truth.json")
    assert all("sky_gradient" not in e for e in truth["exposures"])
    assert not ((io.read_exposure(small_dither["cal"][0]).dq & PIXEL["NON_SCIENCE"]) > 0).any()


def test_row_noise_is_per_amplifier(tmp_path):
    """1/f row offsets: each of 4 amplifiers along x has its own row pattern with the requested rms."""
    from calimage3.simulate import simulate_dither

    sim = simulate_dither(tmp_path, n_exposures=1, shape=(256, 256), row_noise=0.01, n_stars=0, n_galaxies=0,
                          cr_density=0.0, n_hot=0, seed=4)
    exp = io.read_exposure(sim["cal"][0])
    inner = exp.data[4:-4]  # inside the reference-pixel border
    rows = np.stack([np.nanmedian(inner[:, a * 64 + 4:(a + 1) * 64 - 4], axis=1) for a in range(4)])
    rows -= np.median(rows, axis=1, keepdims=True)
    assert 0.007 < np.std(rows[0]) < 0.014
    assert abs(np.corrcoef(rows[0], rows[1])[0, 1]) < 0.5
