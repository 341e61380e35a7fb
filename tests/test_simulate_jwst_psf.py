"""The simulator's JWST-like diffraction PSF and saturated stars."""

import numpy as np
import pytest

from calimage3 import io
from calimage3.dqflags import PIXEL
from calimage3.jwst_psf import jwst_pupil, psf_stamp, render_psf_stars


@pytest.mark.parametrize("filter_name, scale, fwhm", [("F090W", 0.031, 1.12), ("F150W", 0.031, 1.72), ("F444W", 0.063, 2.37)])
def test_psf_fwhm_follows_wavelength_and_pixel_scale(filter_name, scale, fwhm):
    """F090W at 0.031"/px is undersampled (FWHM ~1.1 px), F444W at 0.063"/px well sampled (~2.4 px)."""
    assert psf_stamp(filter_name, pixel_scale=scale).fwhm == pytest.approx(fwhm, abs=0.05)


def test_pupil_has_18_segments_and_struts():
    """Open fraction of the 6.6 m grid as for 18 hexagons of 1.32 m minus secondary and struts."""
    pupil, dx = jwst_pupil(256)
    segment_area = 3 * np.sqrt(3) / 2 * (1.32 / np.sqrt(3)) ** 2
    open_area = pupil.sum() * dx**2
    assert open_area == pytest.approx(18 * segment_area, rel=0.06) and open_area < 18 * segment_area


def test_rendered_star_holds_its_flux_at_any_phase():
    """A star drawn anywhere sums to its flux; the spikes put light far from the core."""
    stamp = psf_stamp("F200W", pixel_scale=0.031)
    for x, y in ((100.0, 100.0), (100.37, 99.81), (100.5, 100.5)):
        image = np.zeros((201, 201))
        render_psf_stars(image, [x], [y], [7.0], stamp)
        assert image.sum() == pytest.approx(7.0, rel=1e-12)
    yy, xx = np.indices(image.shape)
    assert image[np.hypot(xx - 100.5, yy - 100.5) > 10].sum() / 7.0 > 0.03  # wings beyond 10 px (~5 FWHM)


@pytest.fixture(scope="module")
def saturated_set(tmp_path_factory):
    """Two 256x256 exposures with the F090W PSF, a saturation level and 4 extra saturated stars."""
    from calimage3.simulate import simulate_dither

    out = tmp_path_factory.mktemp("jwst_psf_set")
    return simulate_dither(out, n_exposures=2, shape=(256, 256), seed=5, psf="jwst", psf_filter="F090W",
                           saturation=5.0, n_saturated=4, n_stars=60, n_galaxies=5)


def test_saturated_cores_are_nan_with_dq(saturated_set):
    """Saturated pixels are NaN with SATURATED|DO_NOT_USE, and every flagged truth star has some."""
    exp = io.read_exposure(saturated_set["cal"][0])
    sat = (exp.dq & PIXEL["SATURATED"]) > 0
    assert sat.sum() > 0
    assert np.all((exp.dq[sat] & PIXEL["DO_NOT_USE"]) > 0) and np.all(np.isnan(exp.data[sat]))
    assert exp.meta["FILTER"] == "F090W"
    truth = io.read_table(saturated_set["truth"] / "sources.ecsv")
    assert truth["saturated"].sum() >= 2 and not np.any(truth["saturated"] & (truth["type"] == "galaxy"))
    assert io.read_json(saturated_set["truth"] / "truth.json")["psf"]["filter"] == "F090W"


def test_unsaturated_star_flux_in_cal_matches_truth(saturated_set):
    """Bright unsaturated isolated stars hold their true flux times the PSF's share of a 9x9 box (2%)."""
    truth = io.read_table(saturated_set["truth"] / "sources.ecsv")
    truth_json = io.read_json(saturated_set["truth"] / "truth.json")
    stamp = psf_stamp("F090W", pixel_scale=0.031)
    h = 4
    ratios = []
    for k, cal in enumerate(saturated_set["cal"]):
        exp = io.read_exposure(cal)
        wcs = io.read_wcs_file(saturated_set["truth"] / f"{cal.name[:-9]}_true_wcs.asdf")[0]
        x, y = wcs.backward_transform(truth["ra"], truth["dec"])
        dist = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
        np.fill_diagonal(dist, np.inf)
        pick = (truth["type"] == "star") & ~truth["saturated"] & (truth["snr"] > 200) & (dist.min(axis=1) > 20)
        sky = truth_json["exposures"][k]["sky_level"]
        for xi, yi, f in zip(x[pick], y[pick], truth["flux"][pick].value):
            ix, iy = int(round(xi)), int(round(yi))
            if h <= ix < 256 - h and h <= iy < 256 - h:
                box = (slice(iy - h, iy + h + 1), slice(ix - h, ix + h + 1))
                cut = exp.data[box] - sky
                if np.all(np.isfinite(cut)):
                    # The share of the star's flux in this box, from the PSF drawn alone.
                    alone = np.zeros((256, 256))
                    render_psf_stars(alone, [xi], [yi], [1.0], stamp)
                    flux = np.sum(cut * exp.area[box]) * exp.meta["PIXAR_SR"] * 1e6
                    ratios.append(flux / (f * alone[box].sum()))
    assert len(ratios) >= 6
    assert np.median(ratios) == pytest.approx(1.0, abs=0.02)
