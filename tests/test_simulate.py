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
