"""Each resample / outlier_detection / source_catalog parameter changes the result as the JWST docs say."""

import importlib.util

import asdf
import numpy as np
import pytest
import workflow_runs
from astropy.io import fits

from calimage3 import io
from calimage3.dqflags import PIXEL
from calimage3.exposure import Exposure
from calimage3.resample import ResampledImage, drizzle_exposure, drizzle_single
from calimage3.source_catalog import gaussian_ee_radii, make_source_catalog
from calimage3.wcs_tools import _position_angle, imaging_wcs, local_pixel_scale, output_wcs

RA0, DEC0, SCALE = 150.0, 2.0, 0.031
PIXAR_SR = (SCALE / 206264.806) ** 2
REPO = workflow_runs.REPO


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exposure(shape, value=1.0, wcs=None, dq=None):
    data = np.full(shape, value, np.float32)
    var = np.full(shape, 1e-4, np.float32)
    return Exposure(data=data, err=np.sqrt(2 * var), dq=np.zeros(shape, np.uint32) if dq is None else dq,
                    wcs=wcs or imaging_wcs(shape, (RA0, DEC0), SCALE), meta={"EXPTIME": 100.0},
                    var_rnoise=var, var_poisson=var, var_flat=np.zeros(shape, np.float32))


def _doubling_pixmap(ny, nx):
    """Input pixel (i, j) -> output (2i, 2j): an output grid twice as fine (pixel_scale_ratio 0.5)."""
    y, x = np.indices((ny, nx), dtype=float)
    return np.dstack([2 * x, 2 * y])


def _coverage(kernel, pixfrac):
    resampler = ResampledImage(imaging_wcs((40, 40), (RA0, DEC0), SCALE / 2), (40, 40),
                               kernel=kernel, pixfrac=pixfrac)
    resampler.add_exposure(_exposure((20, 20)), pixmap=_doubling_pixmap(20, 20))
    out = resampler.finalize()
    inner = out["wht"][4:-4, 4:-4]
    return np.mean(inner > 0), out


# ---------------------------------------------------------------- resample


def test_pixfrac_shrinks_drops():
    """On a 2x finer grid, pixfrac=1 drops cover every output pixel, pixfrac=0.25 drops exactly 1 in 4."""
    full, out_full = _coverage("square", 1.0)
    small, out_small = _coverage("square", 0.25)
    assert full == 1.0 and small == 0.25
    # Surface brightness is the same wherever a drop landed.
    assert np.all(out_small["data"][out_small["wht"] > 0] == pytest.approx(1.0))


def test_point_kernel_vs_square():
    """kernel='point' puts each input pixel in the one output pixel under its centre (1 in 4 here), 'square' spreads it."""
    point, _ = _coverage("point", 1.0)
    square, _ = _coverage("square", 1.0)
    assert point == 0.25 and square == 1.0


def test_outlier_fillval_fills_uncovered_singles():
    """outlier_detection fillval: single-drizzle pixels the exposure misses get fillval (NaN for INDEF)."""
    wcs = imaging_wcs((16, 16), (RA0, DEC0), SCALE)
    y, x = np.indices((16, 16), dtype=float)
    for fillval, expected in (("INDEF", np.nan), (0.0, 0.0), (-3.0, -3.0)):
        data, wht = drizzle_single(_exposure((16, 16), 2.0, wcs), wcs, (16, 24), fillval=fillval,
                                   pixmap=np.dstack([x, y]))
        np.testing.assert_array_equal(data[:, 17:], expected)
        assert np.all(data[:, :15] == 2.0)


def test_non_science_never_used_whatever_good_bits():
    """NON_SCIENCE pixels get no weight in outlier singles ('~DO_NOT_USE') nor in the mosaic, even when good_bits accept them."""
    shape = (8, 8)
    dq = np.zeros(shape, np.uint32)
    dq[:, :4] = PIXEL["NON_SCIENCE"]
    dq[0, 6] = PIXEL["SATURATED"]
    wcs = imaging_wcs(shape, (RA0, DEC0), SCALE)
    y, x = np.indices(shape, dtype=float)
    pixmap = np.dstack([x, y])
    _, wht_single = drizzle_single(_exposure(shape, 1.0, wcs, dq), wcs, shape, pixmap=pixmap)
    mosaic = drizzle_exposure(_exposure(shape, 1.0, wcs, dq), wcs, shape, pixmap=pixmap, good_bits="~DO_NOT_USE")
    assert np.all(wht_single[:, :3] == 0) and np.all(wht_single[1:, 5:] > 0)
    assert np.all(mosaic.wht[:, :3] == 0) and np.all(mosaic.wht[1:, 5:] > 0)
    # other bits still follow good_bits: 0 accepts no flagged pixel at all.
    assert wht_single[0, 6] > 0
    _, wht_strict = drizzle_single(_exposure(shape, 1.0, wcs, dq), wcs, shape, pixmap=pixmap, good_bits=0)
    assert wht_strict[0, 6] == 0


def test_weight_type_exptime_weights_are_exposure_time():
    """weight_type='exptime': WHT equals the exposure time (100 s); 'ivm': 1/var_rnoise (1e4)."""
    shape = (8, 8)
    wcs = imaging_wcs(shape, (RA0, DEC0), SCALE)
    y, x = np.indices(shape, dtype=float)
    for weight_type, expected in (("exptime", 100.0), ("ivm", 1e4)):
        _, wht = drizzle_single(_exposure(shape, 1.0, wcs), wcs, shape, pixmap=np.dstack([x, y]),
                                weight_type=weight_type)
        np.testing.assert_allclose(wht[1:-1, 1:-1], expected, rtol=1e-5)


def test_crpix_crval_place_the_reference_pixel():
    """crval is the sky position of pixel crpix (0-based x, y) of the output grid."""
    wcs_in = imaging_wcs((100, 100), (RA0, DEC0), SCALE)
    out, _ = output_wcs([wcs_in], [(100, 100)], crval=(RA0 + 1e-3, DEC0 - 1e-3), crpix=(10.0, 20.0))
    ra, dec = out.forward_transform(10.0, 20.0)
    assert ra == pytest.approx(RA0 + 1e-3, abs=1e-10) and dec == pytest.approx(DEC0 - 1e-3, abs=1e-10)


def test_rotation_sets_position_angle():
    """rotation=0 gives North up; rotation=30 turns the +y axis 30 deg east of north; None keeps the input's."""
    wcs_in = imaging_wcs((100, 100), (RA0, DEC0), SCALE, rotation=12.0)
    for rotation, expected in ((0.0, 0.0), (30.0, 30.0), (None, 12.0)):
        out, shape = output_wcs([wcs_in], [(100, 100)], rotation=rotation)
        pa = _position_angle(out, shape[1] / 2, shape[0] / 2)
        assert pa == pytest.approx(expected, abs=1e-6)


def test_pixel_scale_ratio_and_pixel_scale():
    """pixel_scale_ratio=0.5 halves the pixel and doubles the shape; pixel_scale (arcsec) overrides it."""
    wcs_in = imaging_wcs((100, 100), (RA0, DEC0), SCALE)
    out, shape = output_wcs([wcs_in], [(100, 100)], pixel_scale_ratio=0.5)
    assert local_pixel_scale(out, 100, 100) * 3600 == pytest.approx(SCALE / 2, rel=1e-6)
    assert shape == (200, 200)
    out, shape = output_wcs([wcs_in], [(100, 100)], pixel_scale_ratio=0.5, pixel_scale=0.062)
    assert local_pixel_scale(out, 25, 25) * 3600 == pytest.approx(0.062, rel=1e-6)
    assert shape == (50, 50)


def _write_user_wcs(path, wcs, **extra):
    asdf.AsdfFile({"wcs": wcs, **extra}).write_to(path)


def test_output_wcs_file_reproduces_the_grid(tmp_path, small_dither):
    """resample output_wcs: the grid is the file's gwcs with its pixel_shape (nx, ny); output_shape overrides it."""
    grid_script = _script("output_grid")
    user = imaging_wcs((70, 90), (53.16, -27.79), 0.05, rotation=20.0)
    _write_user_wcs(tmp_path / "user.asdf", user, pixel_shape=[90, 70])
    grid = tmp_path / "grid.asdf"
    grid_script.output_grid(small_dither["cal"], grid, output_wcs_file=str(tmp_path / "user.asdf"),
                            pixel_scale=0.2, rotation=0.0)  # ignored when output_wcs is given
    wcs, shape, _ = io.read_wcs_file(grid)
    assert shape == (70, 90)
    x, y = np.meshgrid([0.0, 45.0, 89.0], [0.0, 35.0, 69.0])
    np.testing.assert_allclose(wcs.forward_transform(x, y), user.forward_transform(x, y), atol=1e-12)
    grid_script.output_grid(small_dither["cal"], grid, output_wcs_file=str(tmp_path / "user.asdf"),
                            output_shape=[30, 40])
    assert io.read_wcs_file(grid)[1] == (40, 30)


def test_output_wcs_shape_from_array_shape_or_bounding_box():
    """Without pixel_shape the shape comes from array_shape (ny, nx), then from the bounding box."""
    user_grid_shape = _script("output_grid").user_grid_shape
    wcs = imaging_wcs((70, 90), (RA0, DEC0), 0.05)
    wcs.pixel_shape = None
    wcs.bounding_box = ((-0.5, 89.5), (-0.5, 69.5))
    assert user_grid_shape(wcs, (90, 70)) == (70, 90)
    assert user_grid_shape(wcs, None) == (70, 90)
    wcs.bounding_box = None
    with pytest.raises(ValueError, match="no pixel_shape, array_shape or bounding_box; give output_shape"):
        user_grid_shape(wcs, None)
    assert user_grid_shape(wcs, None, [12, 8]) == (8, 12)


def test_output_wcs_file_without_wcs_is_rejected(tmp_path):
    """An output_wcs file with no 'wcs' key, or that does not exist, is an error naming the file."""
    asdf.AsdfFile({"other": 1}).write_to(tmp_path / "bad.asdf")
    with pytest.raises(io.InputFileError, match=r"bad.asdf: output_wcs file has no gwcs under the 'wcs' key"):
        io.read_user_output_wcs(tmp_path / "bad.asdf")
    with pytest.raises(io.InputFileError, match="missing.asdf: output_wcs file does not exist"):
        io.read_user_output_wcs(tmp_path / "missing.asdf")


def test_single_image_is_the_exposure_drizzled_alone(tmp_path):
    """resample single: the per-exposure _outlier_i2d is that exposure alone on the mosaic grid (NDRIZIM=1)."""
    resample_script = _script("resample")
    wcs_a = imaging_wcs((32, 32), (RA0, DEC0), SCALE)
    wcs_b = imaging_wcs((32, 32), (RA0 + 5 * SCALE / 3600, DEC0), SCALE)
    grid_wcs, grid_shape = output_wcs([wcs_a, wcs_b], [(32, 32)] * 2)
    io.write_rendered_wcs(tmp_path / "grid.fits", grid_wcs, grid_shape, pixel_area=True)
    contribution = drizzle_exposure(_exposure((32, 32), 3.0, wcs_b), grid_wcs, grid_shape)
    arrays, keywords = contribution.to_arrays()
    io.write_image(tmp_path / "b_contribution.fits", arrays,
                   meta={"EXPTIME": 100.0, **keywords, "CTB_NAME": "b_cal.fits", "CTB_SHA": "0", "CTB_SKY": 0.0})
    resample_script.resample([tmp_path / "b_contribution.fits"], tmp_path / "grid.fits",
                             tmp_path / "b_outlier_i2d.fits", fillval="NAN")
    data, wcs, meta = io.read_i2d(tmp_path / "b_outlier_i2d.fits")
    assert meta["NDRIZIM"] == 1 and data["data"].shape == grid_shape
    covered = data["wht"] > 0
    np.testing.assert_allclose(data["data"][covered], 3.0, rtol=1e-6)
    # Exposure b starts 5 pixels east of a, i.e. at lower x (RA grows to the left): columns it misses are NaN.
    assert np.isnan(data["data"]).any() and covered.mean() == pytest.approx(32 * 32 / np.prod(grid_shape), rel=0.1)


def test_single_and_output_wcs_are_wired(tmp_path, small_dither):
    """Dry run: single=true makes one resample_single job per requested _outlier_i2d; output_wcs is a grid input."""
    asn = small_dither["asn"]
    root = small_dither["cal"][0].name.replace("_cal.fits", "")
    target = tmp_path / "out" / f"{root}_outlier_i2d.fits"
    proc = workflow_runs.run_snakemake(f"asn={asn}", tmp_path / "out", "resample={'single': True}",
                                       flags=("--dry-run", str(target)))
    assert "resample_single" in proc.stdout and "resample_exposure" in proc.stdout
    assert " resample\n" not in proc.stdout.split("Job stats:", 1)[1]
    # With no target, single=true asks for every exposure's single image (and _crf), not the mosaic
    proc = workflow_runs.run_snakemake(f"asn={asn}", tmp_path / "out", "resample={'single': True}",
                                       flags=("--dry-run",))
    stats = proc.stdout.split("Job stats:", 1)[1]
    n = len(small_dither["cal"])
    counts = {line.split()[0]: int(line.split()[1]) for line in stats.splitlines()[2:] if len(line.split()) == 2
              and line.split()[1].isdigit()}
    assert counts["resample_single"] == n and counts["outlier_flag"] == n
    assert "resample" not in counts and "source_catalog" not in counts
    proc = workflow_runs.run_snakemake(f"asn={asn}", tmp_path / "out",
                                       f"resample={{'output_wcs': '{tmp_path / 'nowhere.asdf'}'}}",
                                       flags=("--dry-run",), check=False)
    assert proc.returncode != 0 and "nowhere.asdf" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- source_catalog

NOISE = 0.02


def _star_field(shape, stars, fwhm=2.5, seed=1, sky=None):
    """Gaussian stars ((x, y, flux in MJy/sr x pixel)) on sky plus noise."""
    sigma = fwhm / 2.3548
    y, x = np.indices(shape, dtype=float)
    image = np.zeros(shape) if sky is None else sky.copy()
    for sx, sy, flux in stars:
        image += flux / (2 * np.pi * sigma**2) * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / (2 * sigma**2))
    return image + np.random.default_rng(seed).normal(0, NOISE, shape)


def _catalog(data, **kwargs):
    wcs = imaging_wcs(data.shape, (RA0, DEC0), SCALE)
    return make_source_catalog(data, np.full(data.shape, NOISE), wcs, pixar_sr=PIXAR_SR, **kwargs)


def test_npixels_drops_small_sources():
    """A faint compact star spanning ~12 pixels above threshold is kept with npixels=5 and dropped with npixels=25."""
    data = _star_field((64, 64), [(32.0, 32.0, 1.0)])
    small, _ = _catalog(data, npixels=5, psf_fwhm=2.5)
    large, _ = _catalog(data, npixels=25, psf_fwhm=2.5)
    assert len(small) == 1 and 5 <= small["isophotal_area"][0].value < 25
    assert len(large) == 0


def test_kernel_fwhm_widens_segments():
    """A wider smoothing kernel (kernel_fwhm) grows a bright star's segment (convolved profile is wider)."""
    data = _star_field((96, 96), [(48.0, 48.0, 50.0)])
    narrow, _ = _catalog(data, kernel_fwhm=1.0, psf_fwhm=2.5)
    wide, _ = _catalog(data, kernel_fwhm=6.0, psf_fwhm=2.5)
    assert wide["isophotal_area"][0] > 1.5 * narrow["isophotal_area"][0]


def test_bkg_boxsize_follows_a_sky_gradient():
    """Small bkg_boxsize boxes remove a sky gradient under a star; one image-sized box leaves its local offset."""
    shape = (128, 128)
    gradient = np.tile(np.linspace(0.0, 0.2, shape[1]), (shape[0], 1))
    data = _star_field(shape, [(100.0, 64.0, 20.0)], sky=gradient)
    offset = 0.2 * (100 - 63.5) / 127  # sky at the star minus the image median, MJy/sr
    to_jy = 1e6 * PIXAR_SR
    big, _ = _catalog(data, bkg_boxsize=1000, psf_fwhm=2.5)
    small, _ = _catalog(data, bkg_boxsize=16, psf_fwhm=2.5)
    assert big["aper_bkg_flux"][0].value / to_jy == pytest.approx(offset, rel=0.2)
    assert abs(small["aper_bkg_flux"][0].value / to_jy) < 0.1 * offset


def test_aperture_ee_sets_enclosed_energy():
    """aperture_ee1..3 = 20/40/60: columns aper20/40/60, radii of a Gaussian PSF enclosing those fractions."""
    flux = 40.0
    # A well-sampled PSF (FWHM 6 pixels) so pixelisation does not change the enclosed energy.
    data = _star_field((80, 80), [(40.0, 40.0, flux)], fwhm=6.0)
    cat, _ = _catalog(data, psf_fwhm=6.0, aperture_ee1=20, aperture_ee2=40, aperture_ee3=60)
    assert "aper20_flux" in cat.colnames and "CI_60_40" in cat.colnames and "aper30_flux" not in cat.colnames
    np.testing.assert_allclose(cat.meta["aperture_params"]["aperture_radii"], gaussian_ee_radii(6.0, (20, 40, 60)))
    to_jy = 1e6 * PIXAR_SR
    for ee in (20, 40, 60):
        assert cat[f"aper{ee}_flux"][0].value / (flux * to_jy) == pytest.approx(ee / 100, abs=0.02)


def test_ci_star_thresholds_decide_is_extended():
    """A star (CI_50_30 ~ 5/3) is extended with thresholds below its CIs and not with thresholds above."""
    data = _star_field((64, 64), [(32.0, 32.0, 40.0)])
    low, _ = _catalog(data, psf_fwhm=2.5, ci1_star_threshold=1.0, ci2_star_threshold=1.0)
    high, _ = _catalog(data, psf_fwhm=2.5, ci1_star_threshold=2.0, ci2_star_threshold=1.8)
    assert low["CI_50_30"][0] == pytest.approx(5 / 3, abs=0.05)
    assert bool(low["is_extended"][0]) and not bool(high["is_extended"][0])
