"""Each tweakreg step parameter changes the result as the JWST documentation says.

One test per parameter, on synthetic arrays and exact source catalogs (no
files, no workflow), each run with two settings whose outcomes differ, so
that it fails if the parameter were ignored (the default used instead).

Tested here (the test, or its parametrize id, names the parameter): snr_threshold, kernel_fwhm,
peakmax, bkg_boxsize, starfinder, sharplo/sharphi, roundlo/roundhi,
fitgeometry, searchrad, use2dhist, xoffset/yoffset, tolerance, separation,
minobj, nclip, sigma, enforce_user_order, expand_refcat, abs_minobj,
abs_searchrad, abs_use2dhist, abs_tolerance, abs_separation,
abs_fitgeometry, abs_nclip, abs_sigma.

Covered elsewhere, not repeated here:

* ``brightest``: ``test_tweakreg.py::test_detect_sources_sorts_brightest_first_and_limits_count``
  (``brightest=3`` keeps the three brightest of four stars).
* ``abs_refcat``: ``test_tweakreg_abs.py::test_script_records_absolute_fit_in_headers``
  (a FITS catalog aligns, ``''`` turns it off), ``test_web_catalog_names_ask_for_a_file``
  and ``test_empty_abs_refcat_turns_absolute_alignment_off``.
* exposure groups (``group_ids``, not a step parameter):
  ``test_tweakreg.py::test_align_exposures_moves_a_group_rigidly``,
  ``test_tweakreg_abs.py::test_two_detectors_of_an_exposure_move_as_one``.

``minobj`` also has ``test_tweakreg.py::test_align_exposures_skips_fit_keeping_fewer_than_minobj``
(matches kept after clipping); the test here covers the source and match counts.
``skip`` acts in ``scripts/tweakreg_align.py`` (every WCS passed through, SKIPPED)
and is not tested here.

Alignment tests use a 512x512 NIRCam-like detector (0.031"/pixel), stars
at least 1.2" apart, and catalogs taken from each exposure's true WCS with
0.01 pixel noise; a header error is put into the WCS of all but the first
exposure, and an aligned WCS is judged by where it puts the true stars.
"""

import numpy as np
import pytest
from astropy.table import Table

from calimage3.source_detection import detect_sources
from calimage3.tweakreg import align_exposures, align_to_reference_catalog
from calimage3.wcs_tools import (
    from_tangent_plane,
    imaging_wcs,
    tangent_plane_correction,
    to_tangent_plane,
)

SHAPE = (512, 512)
SCALE = 0.031  # arcsec / pixel
RA0, DEC0 = 53.16, -27.78
PA = 30.0
ALIGNED = 0.01  # pixels: an aligned WCS puts the true stars closer than this


# ----------------------------------------------------------------- helpers


def _rotation(deg):
    """tweakwcs-convention rotation matrix acting on (xi, eta)."""
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])


def _star_field(n, half, min_sep, seed):
    """``n`` stars uniformly within +-``half`` arcsec of (RA0, DEC0), at least ``min_sep`` apart."""
    rng = np.random.default_rng(seed)
    kept = np.empty((0, 2))
    while len(kept) < n:
        p = rng.uniform(-half, half, 2)
        if not len(kept) or np.hypot(*(kept - p).T).min() >= min_sep:
            kept = np.vstack([kept, p])
    return _from_arcsec(kept[:, 0], kept[:, 1])


def _from_arcsec(xi, eta):
    return from_tangent_plane(np.asarray(xi) / 3600.0, np.asarray(eta) / 3600.0, RA0, DEC0)


def _with_companions(ra, dec, n, offset):
    """The field plus a companion ``offset`` arcsec east of each of its first ``n`` stars."""
    xi, eta = (3600.0 * v for v in to_tangent_plane(ra[:n], dec[:n], RA0, DEC0))
    cra, cdec = _from_arcsec(xi + offset, eta)
    return np.r_[ra, cra], np.r_[dec, cdec]


def _true_wcs(dxi, deta, pa=PA):
    """Detector WCS pointed ``(dxi, deta)`` arcsec from (RA0, DEC0)."""
    return imaging_wcs(SHAPE, tuple(map(float, _from_arcsec(dxi, deta))), SCALE, pa)


def _header(wcs, matrix=np.eye(2), shift=(0.0, 0.0)):
    """``wcs`` with an error ``matrix``, ``shift`` (arcsec) in the tangent plane at (RA0, DEC0)."""
    return tangent_plane_correction(wcs, RA0, DEC0, matrix, np.asarray(shift) / 3600.0)


def _catalog(wcs, ra, dec, seed):
    """Pixel positions (0.01 pixel noise) of the stars on the detector; and their indices."""
    x, y = wcs.backward_transform(ra, dec)
    on = np.flatnonzero((x > 0) & (x < SHAPE[1] - 1) & (y > 0) & (y < SHAPE[0] - 1))
    noise = np.random.default_rng(seed).normal(0.0, 0.01, (2, on.size))
    return Table({"x": x[on] + noise[0], "y": y[on] + noise[1]}), on


def _error_pix(wcs, true, ra, dec):
    """RMS distance (pixels) between where ``wcs`` and ``true`` put the stars on the detector."""
    xt, yt = true.backward_transform(ra, dec)
    on = (xt > 0) & (xt < SHAPE[1] - 1) & (yt > 0) & (yt < SHAPE[0] - 1)
    x, y = wcs.backward_transform(ra[on], dec[on])
    return float(np.sqrt(np.mean((x - xt[on]) ** 2 + (y - yt[on]) ** 2)))


def _isolated(ra, dec, separation):
    """True for stars with no other star closer than ``separation`` arcsec."""
    xi, eta = (3600.0 * v for v in to_tangent_plane(ra, dec, RA0, DEC0))
    d = np.hypot(xi[:, None] - xi[None, :], eta[:, None] - eta[None, :])
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1) >= separation


def _image(sources, shape=(256, 256), background=5.0, noise=1.0, seed=0):
    """Axis-aligned Gaussians ``(x, y, peak, fwhm_x, fwhm_y)`` on a background, with noise."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape) + background
    for x, y, peak, fwhm_x, fwhm_y in sources:
        sx, sy = fwhm_x / 2.3548, fwhm_y / 2.3548
        image += peak * np.exp(-0.5 * (((xx - x) / sx) ** 2 + ((yy - y) / sy) ** 2))
    return image + np.random.default_rng(seed).normal(0.0, noise, shape)


def _rows(catalog):
    """Rounded y of each detection, sorted: which row of test sources was found."""
    return sorted(int(round(v)) for v in catalog["y"])


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pair():
    """Two exposures 0.7" apart of one field of 80 stars; true WCSs and exact catalogs."""
    ra, dec = _star_field(80, 9.0, 1.3, seed=1)
    trues = [_true_wcs(0.0, 0.0), _true_wcs(0.6, -0.4)]
    catalogs = [_catalog(t, ra, dec, seed=k)[0] for k, t in enumerate(trues)]
    return dict(ra=ra, dec=dec, trues=trues, catalogs=catalogs)


def _align_pair(pair, matrix=np.eye(2), shift=(0.0, 0.0), catalogs=None, **params):
    """Align the pair with a header error on exposure 2; its result and WCS error (pixels)."""
    headers = [pair["trues"][0], _header(pair["trues"][1], matrix, shift)]
    results = align_exposures(catalogs or pair["catalogs"], headers, [SHAPE] * 2, **params)
    assert results[0].is_reference
    return results[1], _error_pix(results[1].wcs, pair["trues"][1], pair["ra"], pair["dec"])


@pytest.fixture(scope="module")
def strip():
    """Three north-up exposures in a row (A, B, C); A-B and B-C overlap, A and C do not."""
    ra, dec = _star_field(330, 17.0, 1.2, seed=3)
    trues = [_true_wcs(-10.0, 0.0, pa=0.0), _true_wcs(0.0, 0.0, pa=0.0), _true_wcs(7.0, 0.0, pa=0.0)]
    catalogs, members = zip(*(_catalog(t, ra, dec, seed=k) for k, t in enumerate(trues)))
    errors = [(np.eye(2), (0.0, 0.0)), (_rotation(0.02), (0.3, -0.2)), (_rotation(-0.02), (-0.2, 0.25))]
    headers = [_header(t, m, s) for t, (m, s) in zip(trues, errors)]
    return dict(ra=ra, dec=dec, trues=trues, catalogs=list(catalogs), members=members,
                headers=headers, errors=errors)


def _relative_aligned(pair, matrix=np.eye(2), shift=(0.0, 0.0)):
    """WCSs aligned to each other but both off the sky by one common error."""
    return [_header(t, matrix, shift) for t in pair["trues"]]


def _align_abs(pair, wcs_list, ref_ra=None, ref_dec=None, catalogs=None, **params):
    """Absolute alignment of the pair to the true star positions; result and worst WCS error."""
    ref_ra = pair["ra"] if ref_ra is None else ref_ra
    ref_dec = pair["dec"] if ref_dec is None else ref_dec
    result = align_to_reference_catalog(catalogs or pair["catalogs"], wcs_list, [SHAPE] * 2,
                                        ref_ra, ref_dec, **params)
    error = max(_error_pix(w, t, pair["ra"], pair["dec"])
                for w, t in zip(result.wcs_list, pair["trues"]))
    return result, error


# ---------------------------------------------------------- source finding


def test_snr_threshold_sets_the_faintest_peak_detected():
    """snr_threshold: only stars whose peak stands that many background RMS above the sky are found."""
    peaks = [15.0, 60.0, 240.0]  # noise RMS 1
    sources = [(30 + 30 * i, 50 + 70 * k, p, 2.2, 2.2) for k, p in enumerate(peaks) for i in range(7)]
    image = _image(sources)
    # Threshold 5: all; 30: the 60 and 240 RMS peaks; 120: only the 240 RMS peaks.
    assert _rows(detect_sources(image, snr_threshold=5.0)) == [50] * 7 + [120] * 7 + [190] * 7
    assert _rows(detect_sources(image, snr_threshold=30.0)) == [120] * 7 + [190] * 7
    assert _rows(detect_sources(image, snr_threshold=120.0)) == [190] * 7


def test_kernel_fwhm_must_match_the_stars():
    """kernel_fwhm: the IRAF sharpness (star FWHM / kernel FWHM) must lie within [sharplo, sharphi].

    Stars of FWHM 2.2 pixels have IRAF sharpness ~0.73 against a 2.5 pixel
    kernel and ~1.2 against a 1.5 pixel kernel (above sharphi=1): a kernel
    narrower than the PSF finds none of them.
    """
    image = _image([(40 + 60 * i, 128, 100.0, 2.2, 2.2) for i in range(4)])
    assert len(detect_sources(image, kernel_fwhm=2.5)) == 4
    assert len(detect_sources(image, kernel_fwhm=1.5)) == 0


def test_peakmax_drops_sources_brighter_than_it():
    """peakmax: sources whose (sky-subtracted) peak exceeds it are rejected, e.g. saturated stars."""
    peaks = [50.0, 150.0, 450.0]
    sources = [(30 + 30 * i, 50 + 70 * k, p, 2.2, 2.2) for k, p in enumerate(peaks) for i in range(7)]
    image = _image(sources)
    assert _rows(detect_sources(image, peakmax=None)) == [50] * 7 + [120] * 7 + [190] * 7
    assert _rows(detect_sources(image, peakmax=300.0)) == [50] * 7 + [120] * 7
    assert _rows(detect_sources(image, peakmax=100.0)) == [50] * 7


def test_bkg_boxsize_small_mesh_follows_a_sky_gradient():
    """bkg_boxsize: a mesh fine enough to follow a sky gradient finds the faint stars.

    With one box over the whole 256-pixel image the sky is a single level
    and the gradient (0 to 100 across) inflates the RMS, and so the
    threshold, ~30-fold: none of the 60-RMS stars is found.
    """
    sky = 100.0 * np.mgrid[:256, :256][1] / 255.0
    image = _image([(30 + 50 * i, 40 + 45 * j, 60.0, 2.2, 2.2) for i in range(5) for j in range(5)],
                   background=sky)
    assert len(detect_sources(image, bkg_boxsize=32)) == 25
    assert len(detect_sources(image, bkg_boxsize=256)) == 0


def test_starfinder_selects_the_detection_algorithm():
    """starfinder: DAOStarFinder and IRAFStarFinder judge sharpness differently.

    Against a 1.5 pixel kernel, 2.2-pixel stars are too broad for IRAF's
    sharpness (FWHM ratio ~1.2 > sharphi) but not for DAOFIND's.
    """
    image = _image([(40 + 60 * i, 128, 100.0, 2.2, 2.2) for i in range(4)])
    assert len(detect_sources(image, kernel_fwhm=1.5, starfinder="dao")) == 4
    assert len(detect_sources(image, kernel_fwhm=1.5, starfinder="iraf")) == 0


# statistic, shape (fwhm_x, fwhm_y) of the second row of sources, a value between the rows'
SHAPE_BOUNDS = [
    ("sharp", (8.0, 8.0), 0.78),  # IRAF sharpness: 2.2-pixel stars ~0.73, FWHM-8 blobs ~0.84
    ("round", (2.2, 4.4), 0.2),  # IRAF roundness: round stars ~0, 2:1 elongated ones ~0.5
]


@pytest.mark.parametrize("stat, other, cut", SHAPE_BOUNDS, ids=["sharplo-sharphi", "roundlo-roundhi"])
def test_shape_bounds(stat, other, cut):
    """sharplo/sharphi, roundlo/roundhi: sources outside [lo, hi] of the statistic are rejected."""
    stars = [(40 + 60 * i, 60, 100.0, 2.2, 2.2) for i in range(4)]
    others = [(40 + 60 * i, 180, 100.0, *other) for i in range(4)]
    image = _image(stars + others)
    assert _rows(detect_sources(image)) == [60] * 4 + [180] * 4
    assert _rows(detect_sources(image, **{f"{stat}hi": cut})) == [60] * 4
    assert _rows(detect_sources(image, **{f"{stat}lo": cut})) == [180] * 4


# ------------------------------------------------------ relative alignment


@pytest.mark.parametrize(
    "matrix, weak, strong",
    [
        # Each moves the detector corners (11" from the centre) by ~0.3 pixel.
        (_rotation(0.05), "shift", "rshift"),
        (1.001 * np.eye(2), "rshift", "rscale"),
        (np.array([[1.0, 0.001], [0.0, 1.0]]), "rscale", "general"),  # skew
    ],
    ids=["rotation", "scale", "skew"],
)
def test_fitgeometry_removes_only_what_it_allows(pair, matrix, weak, strong):
    """fitgeometry: 'shift' cannot undo a rotation, 'rshift' a scale, 'rscale' a skew; the next can."""
    r_weak, err_weak = _align_pair(pair, matrix, (0.2, 0.1), fitgeometry=weak)
    r_strong, err_strong = _align_pair(pair, matrix, (0.2, 0.1), fitgeometry=strong)
    assert r_weak.status == r_strong.status == "COMPLETE"
    assert err_weak > 0.08
    assert err_strong < ALIGNED
    if weak == "shift":
        assert r_weak.rotation == 0.0 and r_weak.scale == 1.0
        assert r_strong.rotation == pytest.approx(-0.05, abs=0.002)
    if weak == "rshift":
        assert r_weak.scale == 1.0
        assert r_strong.scale == pytest.approx(1 / 1.001, abs=5e-5)


# parameter, header offset (arcsec), other settings, value that finds it, value that does not
OFFSET_SEARCH = [
    # searchrad: the 2-D histogram looks for the offset within +-searchrad.
    ("searchrad", (1.5, -1.0), dict(tolerance=0.2, separation=0.5), 2.0, 0.5),
    # use2dhist: without the histogram, matching starts at zero offset.
    ("use2dhist", (1.5, -1.0), dict(tolerance=0.2, separation=0.5), True, False),
    # tolerance: pairs farther apart than it (here 0.36", no initial offset) never match.
    ("tolerance", (0.3, -0.2), dict(use2dhist=False, separation=0.8), 0.5, 0.1),
]


@pytest.mark.parametrize("name, offset, settings, finds, misses", OFFSET_SEARCH,
                         ids=[row[0] for row in OFFSET_SEARCH])
def test_offset_search(pair, name, offset, settings, finds, misses):
    """searchrad, use2dhist, tolerance: a header offset is matched with one value, not the other."""
    found, err = _align_pair(pair, shift=offset, **settings, **{name: finds})
    assert found.status == "COMPLETE" and err < ALIGNED
    assert found.shift == pytest.approx(tuple(-v for v in offset), abs=0.005)
    missed, err = _align_pair(pair, shift=offset, **settings, **{name: misses})
    assert missed.status == "SKIPPED" and "not enough matches" in missed.message
    assert err > 10  # the header error is left in place


def test_xoffset_yoffset_give_the_initial_offset(pair):
    """xoffset, yoffset: without use2dhist a known offset (image minus reference, arcsec) is matched."""
    kw = dict(use2dhist=False, tolerance=0.2, separation=0.5)
    found, err = _align_pair(pair, shift=(1.5, -1.0), xoffset=1.5, yoffset=-1.0, **kw)
    assert found.status == "COMPLETE" and err < ALIGNED
    assert found.shift == pytest.approx((-1.5, 1.0), abs=0.005)
    for xoffset, yoffset in [(-1.5, 1.0), (1.5, 0.0)]:  # wrong sign; yoffset missing
        missed, _ = _align_pair(pair, shift=(1.5, -1.0), xoffset=xoffset, yoffset=yoffset, **kw)
        assert missed.status == "SKIPPED", (xoffset, yoffset)


def test_separation_drops_stars_closer_than_it(pair):
    """separation: of two stars closer than it at most one is matched; farther apart, both are."""
    ra, dec = _with_companions(pair["ra"], pair["dec"], 10, 0.35)
    catalogs, members = zip(*(_catalog(t, ra, dec, seed=k) for k, t in enumerate(pair["trues"])))
    common = np.intersect1d(*members)
    isolated = _isolated(ra, dec, 0.5)[common]
    assert np.count_nonzero(~isolated) >= 12  # at least six close pairs on both detectors
    kw = dict(catalogs=list(catalogs), matrix=_rotation(0.02), shift=(0.3, -0.2), tolerance=0.2)
    apart, err = _align_pair(pair, separation=0.3, **kw)
    assert apart.status == "COMPLETE" and err < ALIGNED
    assert apart.nmatch == common.size
    close, err = _align_pair(pair, separation=0.5, **kw)
    assert close.status == "COMPLETE" and err < ALIGNED
    n_isolated = np.count_nonzero(isolated)
    assert n_isolated <= close.nmatch <= n_isolated + np.count_nonzero(~isolated) // 2


def test_minobj_needs_enough_sources_and_matches(strip):
    """minobj: fewest sources per exposure and fewest matches; 28 common stars here."""
    catalogs, headers = strip["catalogs"][:2], strip["headers"][:2]
    common = np.intersect1d(*strip["members"][:2]).size
    assert common == 28 and min(len(c) for c in catalogs) == 68

    def align(minobj):
        return align_exposures(catalogs, headers, [SHAPE] * 2, minobj=minobj)

    results = align(25)
    assert [r.status for r in results] == ["COMPLETE", "COMPLETE"]
    assert results[1].nmatch == common
    assert _error_pix(results[1].wcs, strip["trues"][1], strip["ra"], strip["dec"]) < ALIGNED
    # More than the 28 matchable stars, fewer than each catalog's 68 sources.
    results = align(30)
    assert results[1].status == "SKIPPED" and "not enough matches" in results[1].message
    assert results[1].wcs is headers[1]
    # More sources than exposure 2 has: set aside before matching.
    results = align(69)
    assert results[1].status == "SKIPPED"
    assert "68 sources, fewer than minobj=69" in results[1].message


def _outliers(pair, n=5, dx=0.45):
    """The pair's catalogs with ``n`` stars of exposure 2 moved ``dx`` pixel in x."""
    moved = pair["catalogs"][1].copy()
    moved["x"][:n] += dx
    return [pair["catalogs"][0], moved]


# parameter, value that clips the outliers, value that does not
CLIPPING = [
    ("nclip", 3, 0),  # no clipping iteration: every match is fitted
    ("sigma", 3.0, 6.0),  # the outliers lie ~3.4 fit RMS off: clipped at 3, kept at 6
]


@pytest.mark.parametrize("name, clips, keeps", CLIPPING, ids=[row[0] for row in CLIPPING])
def test_clipping(pair, name, clips, keeps):
    """nclip, sigma: 5 matches 0.45 pixel off are clipped, or bias the fit by their mean offset."""
    kw = dict(catalogs=_outliers(pair), matrix=_rotation(0.02), shift=(0.3, -0.2))
    clipped, err = _align_pair(pair, **kw, **{name: clips})
    assert clipped.status == "COMPLETE" and err < ALIGNED
    unclipped, err = _align_pair(pair, **kw, **{name: keeps})
    assert unclipped.status == "COMPLETE"
    # Mean displacement of all matches: 5 * 0.45 / nmatch pixel.
    assert err == pytest.approx(5 * 0.45 / unclipped.nmatch, rel=0.3)


def test_enforce_user_order_keeps_the_first_exposure_as_reference(strip):
    """enforce_user_order: the first exposure is the reference; otherwise the best-overlapping one.

    As in JWST (tweakwcs), the order is optimised only with expand_refcat.
    B overlaps both A and C, so it is the reference when the order is free,
    and all WCSs then follow B's header, including its error.
    """
    trues, ra, dec = strip["trues"], strip["ra"], strip["dec"]
    kw = dict(expand_refcat=True)
    user = align_exposures(strip["catalogs"], strip["headers"], [SHAPE] * 3,
                           enforce_user_order=True, **kw)
    assert [r.status for r in user] == ["COMPLETE"] * 3
    assert [r.is_reference for r in user] == [True, False, False]
    for r, true in zip(user, trues):
        assert _error_pix(r.wcs, true, ra, dec) < ALIGNED
    free = align_exposures(strip["catalogs"], strip["headers"], [SHAPE] * 3,
                           enforce_user_order=False, **kw)
    assert [r.status for r in free] == ["COMPLETE"] * 3
    assert [r.is_reference for r in free] == [False, True, False]
    b_frame = strip["errors"][1]
    for r, true in zip(free, trues):
        assert _error_pix(r.wcs, _header(true, *b_frame), ra, dec) < ALIGNED
        assert _error_pix(r.wcs, true, ra, dec) > 5.0


def test_expand_refcat_lets_an_exposure_match_through_another(strip):
    """expand_refcat: C, which shares no star with A, aligns to the sources B added to the reference."""
    members, trues, ra, dec = strip["members"], strip["trues"], strip["ra"], strip["dec"]
    assert np.intersect1d(members[0], members[2]).size == 0
    kw = dict(enforce_user_order=True)
    plain = align_exposures(strip["catalogs"], strip["headers"], [SHAPE] * 3, expand_refcat=False, **kw)
    assert [r.status for r in plain] == ["COMPLETE", "COMPLETE", "SKIPPED"]
    assert "not enough matches" in plain[2].message
    assert [r.in_refcat for r in plain] == [True, False, False]
    expanded = align_exposures(strip["catalogs"], strip["headers"], [SHAPE] * 3, expand_refcat=True, **kw)
    assert [r.status for r in expanded] == ["COMPLETE"] * 3
    assert [r.in_refcat for r in expanded] == [True, True, True]
    assert expanded[2].nmatch >= 30
    assert _error_pix(expanded[2].wcs, trues[2], ra, dec) < ALIGNED


# ------------------------------------------------------ absolute alignment


def test_abs_minobj_needs_enough_reference_stars(pair):
    """abs_minobj: 12 reference stars in the field are too few for 15, enough for 10."""
    wcs_list = _relative_aligned(pair, _rotation(0.02), (0.3, -0.2))
    ref = (pair["ra"][:12], pair["dec"][:12])
    few, _ = _align_abs(pair, wcs_list, *ref, abs_minobj=15)
    assert few.status == "SKIPPED"
    assert "12 sources in the field, fewer than abs_minobj=15" in few.message
    assert all(a is b for a, b in zip(few.wcs_list, wcs_list))
    enough, err = _align_abs(pair, wcs_list, *ref, abs_minobj=10)
    assert enough.status == "COMPLETE" and err < ALIGNED
    assert enough.nref == 12 and 10 <= enough.nmatch <= 12


ABS_OFFSET_SEARCH = [
    ("abs_searchrad", (1.5, -1.0), dict(abs_tolerance=0.2), 3.0, 0.5),
    ("abs_use2dhist", (1.5, -1.0), dict(abs_tolerance=0.2), True, False),
    ("abs_tolerance", (0.3, -0.2), dict(abs_use2dhist=False), 0.5, 0.1),
]


@pytest.mark.parametrize("name, offset, settings, finds, misses", ABS_OFFSET_SEARCH,
                         ids=[row[0] for row in ABS_OFFSET_SEARCH])
def test_abs_offset_search(pair, name, offset, settings, finds, misses):
    """abs_searchrad, abs_use2dhist, abs_tolerance: as their relative counterparts, for a common offset."""
    wcs_list = _relative_aligned(pair, shift=offset)
    found, err = _align_abs(pair, wcs_list, **settings, **{name: finds})
    assert found.status == "COMPLETE" and err < ALIGNED
    assert found.shift == pytest.approx(tuple(-v for v in offset), abs=0.005)
    missed, _ = _align_abs(pair, wcs_list, **settings, **{name: misses})
    assert missed.status == "SKIPPED" and "not enough matches" in missed.message
    assert all(a is b for a, b in zip(missed.wcs_list, wcs_list))


def test_abs_separation_drops_stars_closer_than_it(pair):
    """abs_separation: close pairs (0.35") count as two stars below it, at most one above it."""
    ra, dec = _with_companions(pair["ra"], pair["dec"], 10, 0.35)
    catalogs, members = zip(*(_catalog(t, ra, dec, seed=k) for k, t in enumerate(pair["trues"])))
    seen = np.union1d(*members)  # the two exposures' sources, each star once
    isolated = _isolated(ra, dec, 0.5)[seen]
    wcs_list = _relative_aligned(pair, _rotation(0.02), (0.3, -0.2))
    kw = dict(catalogs=list(catalogs), ref_ra=ra, ref_dec=dec)
    apart, err = _align_abs(pair, wcs_list, abs_separation=0.3, **kw)
    assert apart.status == "COMPLETE" and err < ALIGNED
    assert apart.nmatch == seen.size
    close, err = _align_abs(pair, wcs_list, abs_separation=0.5, **kw)
    assert close.status == "COMPLETE" and err < ALIGNED
    n_isolated = np.count_nonzero(isolated)
    assert n_isolated <= close.nmatch <= n_isolated + np.count_nonzero(~isolated) // 2


def test_abs_fitgeometry_removes_only_what_it_allows(pair):
    """abs_fitgeometry: a common 0.05 deg rotation stays with 'shift' and goes with 'rshift'."""
    wcs_list = _relative_aligned(pair, _rotation(0.05), (0.3, -0.2))
    shift, err_shift = _align_abs(pair, wcs_list, abs_fitgeometry="shift")
    assert shift.status == "COMPLETE" and shift.rotation == 0.0
    assert err_shift > 0.1
    rshift, err_rshift = _align_abs(pair, wcs_list, abs_fitgeometry="rshift")
    assert rshift.status == "COMPLETE" and err_rshift < ALIGNED
    assert rshift.rotation == pytest.approx(-0.05, abs=0.002)


def _moved_reference(pair, n=5, dx=0.45):
    """True star positions with ``n`` stars moved ``dx`` pixels east (e.g. proper motion)."""
    xi, eta = (3600.0 * v for v in to_tangent_plane(pair["ra"], pair["dec"], RA0, DEC0))
    xi[:n] += dx * SCALE
    return _from_arcsec(xi, eta)


ABS_CLIPPING = [("abs_nclip", 3, 0), ("abs_sigma", 3.0, 6.0)]


@pytest.mark.parametrize("name, clips, keeps", ABS_CLIPPING, ids=[row[0] for row in ABS_CLIPPING])
def test_abs_clipping(pair, name, clips, keeps):
    """abs_nclip, abs_sigma: 5 reference stars 0.45 pixel off are clipped, or bias the fit."""
    wcs_list = _relative_aligned(pair, _rotation(0.02), (0.3, -0.2))
    ref = _moved_reference(pair)
    clipped, err = _align_abs(pair, wcs_list, *ref, **{name: clips})
    assert clipped.status == "COMPLETE" and err < ALIGNED
    unclipped, err = _align_abs(pair, wcs_list, *ref, **{name: keeps})
    assert unclipped.status == "COMPLETE"
    assert err == pytest.approx(5 * 0.45 / unclipped.nmatch, rel=0.3)
