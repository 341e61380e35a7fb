"""Total fluxes on JWST-like diffraction PSFs (undersampled and well sampled) with saturated stars."""

import numpy as np
import pytest
from photutils.aperture import CircularAperture, aperture_photometry
from scipy.spatial import KDTree

from calimage3.jwst_psf import psf_stamp, render_psf_stars
from calimage3.simulate import _psf_galaxy_stamp
from calimage3.source_catalog import make_source_catalog
from calimage3.wcs_tools import imaging_wcs

SHAPE = (512, 512)
NOISE = 0.02  # MJy/sr per pixel
SKY = 0.3  # MJy/sr
CRVAL = (53.16, -27.78)


def _pixar(scale):
    return (scale / 206264.806) ** 2


def _field(filter_name, scale, seed, n_stars=200, n_saturated=8, n_galaxies=10, shape=SHAPE):
    """A mosaic-like image: stars (SNR 10-3000), saturated stars with NaN cores, galaxies, row noise.

    Pixels whose noiseless surface brightness exceeds the saturation level
    (a 1500-sigma star's peak) are NaN, as in a mosaic of saturated _cal
    files.  Returns the image and the truth (positions, fluxes in MJy/sr
    pixel, saturated flags).
    """
    stamp = psf_stamp(filter_name, pixel_scale=scale)
    rng = np.random.default_rng(seed)
    sigma_psf = NOISE * np.sqrt(4 * np.pi) * stamp.fwhm / 2.3548  # point-source noise
    level = SKY + 1500 * sigma_psf * stamp.image.max()
    x = rng.uniform(10, shape[1] - 10, n_stars + n_saturated)
    y = rng.uniform(10, shape[0] - 10, n_stars + n_saturated)
    flux = np.concatenate([sigma_psf * 10 ** rng.uniform(1.0, np.log10(3000.0), n_stars),
                           level * 10 ** rng.uniform(0.5, 2.0, n_saturated) / stamp.image.max()])
    model = np.zeros(shape)
    render_psf_stars(model, x, y, flux, stamp)
    for _ in range(n_galaxies):
        gal, half = _psf_galaxy_stamp(rng.uniform(2.5, 8.0), rng.uniform(0.8, 3.0), rng.uniform(0.4, 1.0),
                                      rng.uniform(0, 180), stamp)
        gx, gy = rng.integers(half, shape[1] - half), rng.integers(half, shape[0] - half)
        model[gy - half:gy + half + 1, gx - half:gx + half + 1] += rng.uniform(2, 60) * gal
    saturated = model + SKY > level
    rows = np.cumsum(rng.normal(0, 0.0003, shape[0])) + rng.normal(0, 0.006, shape[0])  # 1/f-like
    data = model + SKY + rows[:, None] + rng.normal(0, NOISE, shape)
    data[saturated] = np.nan
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    star_saturated = saturated[np.clip(iy, 0, shape[0] - 1), np.clip(ix, 0, shape[1] - 1)]
    return data, dict(x=x, y=y, flux=flux, saturated=star_saturated), stamp


def _true_ee_radii(stamp, ee=(0.3, 0.5, 0.7), n_phases=40):
    """Radii enclosing ``ee`` of a pixelated star (exact apertures), averaged over pixel phases."""
    rng = np.random.default_rng(0)
    h = stamp.half_size
    radii = np.arange(0.05, 8.0, 0.01)
    curves = []
    for _ in range(n_phases):
        img = np.zeros((2 * h + 11, 2 * h + 11))
        x, y = h + 5 + rng.uniform(-0.5, 0.5, 2)
        render_psf_stars(img, [x], [y], [1.0], stamp)
        table = aperture_photometry(img, [CircularAperture((x, y), r) for r in radii], method="exact")
        curves.append([table[f"aperture_sum_{k}"][0] for k in range(radii.size)])
    mean = np.mean(curves, axis=0)
    return np.interp(ee, mean, radii)


def _catalog(data, scale):
    wcs = imaging_wcs(data.shape, CRVAL, scale)
    return make_source_catalog(data, np.full(data.shape, NOISE), wcs, pixar_sr=_pixar(scale), npixels=5,
                               deblend=True)[0]


def _isolated_unsaturated_ratios(cat, truth, scale):
    """aper_total_flux / truth of catalog stars matched within 1 px that are unsaturated and isolated (15 px)."""
    pos = np.column_stack([truth["x"], truth["y"]])
    dist, j = KDTree(pos).query(np.column_stack([cat["xcentroid"], cat["ycentroid"]]))
    nn = KDTree(pos).query(pos, k=2)[0][:, 1]
    use = (dist < 1.0) & ~truth["saturated"][j] & (nn[j] > 15)
    total = np.asarray(cat["aper_total_flux"].value)[use] / (1e6 * _pixar(scale))
    return total / truth["flux"][j[use]]


@pytest.fixture(scope="module", params=[("F090W", 0.031, 2, 512), ("F444W", 0.063, 4, 768)],
                ids=["undersampled_F090W", "well_sampled_F444W"])
def jwst_field(request):
    """Catalog of a field in an undersampled (FWHM 1.1 px, 512x512) or well-sampled (2.4 px, 768x768) PSF.

    The same density of stars (saturated ones included) and galaxies; the
    larger field gives the wider PSF about as many PSF stars.
    """
    filter_name, scale, seed, size = request.param
    k = (size / 512) ** 2
    data, truth, stamp = _field(filter_name, scale, seed, n_stars=round(200 * k), n_saturated=round(8 * k),
                                n_galaxies=round(10 * k), shape=(size, size))
    return dict(cat=_catalog(data, scale), truth=truth, stamp=stamp, scale=scale)


def test_total_flux_of_isolated_unsaturated_stars_within_3_percent(jwst_field):
    """Median aper_total_flux / true flux within 3% on a JWST-like PSF with saturated stars."""
    ratios = _isolated_unsaturated_ratios(jwst_field["cat"], jwst_field["truth"], jwst_field["scale"])
    assert ratios.size >= 30
    assert abs(np.median(ratios) - 1.0) < 0.03
    params = jwst_field["cat"].meta["aperture_params"]
    assert params["method"] == "psf_stars" and params["n_psf_stars"] >= 5


def test_measured_radii_and_fwhm_match_the_psf(jwst_field):
    """EE radii within 8% and the FWHM within 10% of those of the simulated PSF."""
    params = jwst_field["cat"].meta["aperture_params"]
    truth = _true_ee_radii(jwst_field["stamp"])
    np.testing.assert_allclose(params["aperture_radii"], truth, rtol=0.08)
    assert params["psf_fwhm"] == pytest.approx(jwst_field["stamp"].fwhm, rel=0.10)


def test_no_saturated_star_enters_the_psf(jwst_field):
    """The PSF stars recorded in the meta are unsaturated stars of the truth."""
    curve = jwst_field["cat"].meta["psf_curve"]
    truth = jwst_field["truth"]
    dist, j = KDTree(np.column_stack([truth["x"], truth["y"]])).query(np.column_stack([curve["x"], curve["y"]]))
    assert np.all(dist < 1.0) and not truth["saturated"][j].any()
    assert truth["saturated"].sum() >= 8  # the field does have saturated stars
    assert curve["ee"][-1] <= 1.0 + 1e-9 and 0.0 < curve["total_over_norm_err"] < 0.03 * curve["total_over_norm"]


def test_refuses_when_only_saturated_and_faint_stars():
    """Without enough bright unsaturated stars aper_total_flux is NaN and the meta says why."""
    data, truth, _ = _field("F090W", 0.031, seed=5, n_stars=15, n_saturated=6, n_galaxies=0)
    data[np.isfinite(data)] = np.minimum(data[np.isfinite(data)], SKY + 0.4)  # no bright unsaturated star
    cat = _catalog(data, 0.031)
    params = cat.meta["aperture_params"]
    assert params["method"] == "refused" and "needed" in params["note"]
    assert len(cat) > 0 and np.all(np.isnan(cat["aper_total_flux"]))


def test_aperture_correction_figure_shows_radii_and_stars(jwst_field):
    """The QA figure draws the measured curve, one line per aperture with its correction, and the PSF stars."""
    from calimage3.qa_plots import aperture_correction_figure

    meta = jwst_field["cat"].meta
    fig = aperture_correction_figure(meta["aperture_params"], meta["psf_curve"], data=np.zeros((64, 64)))
    ax_curve, ax_image = fig.axes[:2]
    labels = ax_curve.get_legend_handles_labels()[1]
    for e, c in zip(meta["aperture_params"]["aperture_ee"], meta["aperture_params"]["aperture_corrections"]):
        assert any(label.startswith(f"aper{e}:") and f"{c:.4f}" in label for label in labels)
    assert len(ax_image.lines[0].get_xdata()) == meta["aperture_params"]["n_psf_stars"]


def test_star_with_flagged_core_pixels_is_not_a_psf_star():
    """A dip of the drizzle weight in a star's core (outlier-flagged pixels) keeps it out of the PSF."""
    from calimage3.source_catalog import _full_weight_cores

    wht = np.full((60, 60), 100.0)
    wht[30, 31] = 66.0  # one of three exposures flagged there
    xy = np.array([[30.2, 29.9], [10.0, 45.0]])
    np.testing.assert_array_equal(_full_weight_cores(wht, xy, fwhm=1.2), [False, True])
