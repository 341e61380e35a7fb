"""Tests that the simulator writes what it promises."""

import numpy as np
import pytest

from calimage3 import io


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
