"""Agreement of calimage3's products with jwst's ``Image3Pipeline`` products.

The two mosaics may be on different output grids, so nothing is compared
pixel by pixel: both are measured at the simulator's true source positions.

* photometry of isolated-enough true stars: circular aperture sum minus the
  median of an annulus, in Jy, in each mosaic; the ratio jwst/ours (median
  and robust standard deviation, 1.4826 x MAD) and each one's ratio to the
  true flux;
* astrometry of the same stars: a 2-D Gaussian centroid in each mosaic,
  turned into RA/Dec with that mosaic's WCS; the offset jwst - ours (median
  and RMS, milliarcseconds) and each one's median offset from the truth;
* outlier flagging: for each exposure, the fraction of usable pixels whose
  ``_crf`` DQ has the OUTLIER bit, in each product, the fraction of the true
  injected outlier pixels (cosmic rays, hot pixels) each one flagged, and the
  overlap (Jaccard index) of the two flag sets.

`compare_mosaics` and `compare_outlier_flags` are pure functions of arrays
and WCS objects; `compare_products` reads the files and calls them.
"""

import json
import warnings
from pathlib import Path

import numpy as np

OUTLIER = 1 << 4
DO_NOT_USE = 1 << 0


def _robust_std(values):
    values = np.asarray(values, float)
    if values.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _stat(values):
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"n": 0, "median": float("nan"), "robust_std": float("nan")}
    return {"n": int(values.size), "median": float(np.median(values)), "robust_std": _robust_std(values)}


def pixel_area_sr(wcs):
    """Solid angle of a pixel at the reference point of an astropy WCS, steradians."""
    from astropy.wcs.utils import proj_plane_pixel_area

    return float(proj_plane_pixel_area(wcs.celestial) * (np.pi / 180.0) ** 2)


def measure_stars(sci, wht, wcs, ra, dec, *, radius, annulus, box):
    """Aperture flux (Jy) and Gaussian-centroid sky position of point sources.

    Parameters
    ----------
    sci, wht : 2-D arrays
        Mosaic in MJy/sr and its weight (0 or NaN where not covered).
    wcs : astropy.wcs.WCS
        Celestial WCS of the mosaic.
    ra, dec : arrays
        True positions, degrees.
    radius : float
        Aperture radius, pixels.
    annulus : (float, float)
        Inner and outer background annulus radii, pixels.
    box : int
        Odd size of the centroiding cut-out, pixels.

    Returns
    -------
    dict of arrays
        ``flux_jy``, ``ra``, ``dec`` (NaN where the star is not fully covered).
    """
    from photutils.aperture import CircularAnnulus, CircularAperture, aperture_photometry
    from astropy.utils.exceptions import AstropyUserWarning
    from photutils.centroids import centroid_2dg

    ny, nx = sci.shape
    x, y = wcs.world_to_pixel_values(np.asarray(ra, float), np.asarray(dec, float))
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    reach = int(np.ceil(annulus[1])) + 1
    inside = (x > reach) & (x < nx - 1 - reach) & (y > reach) & (y < ny - 1 - reach)
    flux = np.full(x.size, np.nan)
    ra_c, dec_c = np.full(x.size, np.nan), np.full(x.size, np.nan)
    covered = np.isfinite(sci) & (np.nan_to_num(wht) > 0)
    data = np.where(covered, sci, 0.0)
    half = box // 2
    for i in np.flatnonzero(inside):
        xi, yi = int(round(x[i])), int(round(y[i]))
        if not covered[yi - reach:yi + reach + 1, xi - reach:xi + reach + 1].all():
            continue
        aperture = CircularAperture((x[i], y[i]), radius)
        ring = CircularAnnulus((x[i], y[i]), *annulus)
        ring_values = ring.to_mask(method="center").get_values(data)
        bkg = float(np.median(ring_values))
        total = aperture_photometry(data, aperture)["aperture_sum"][0]
        flux[i] = (total - bkg * aperture.area)
        cut = data[yi - half:yi + half + 1, xi - half:xi + half + 1] - bkg
        try:
            with warnings.catch_warnings():
                # A poorly converged fit is caught by the bounds check below.
                warnings.simplefilter("ignore", AstropyUserWarning)
                cx, cy = centroid_2dg(cut)
        except Exception:  # a failed fit leaves the position undefined
            continue
        if np.isfinite(cx) and np.isfinite(cy) and abs(cx - half) < half and abs(cy - half) < half:
            ra_c[i], dec_c[i] = wcs.pixel_to_world_values(xi - half + cx, yi - half + cy)
    flux_jy = flux * pixel_area_sr(wcs) * 1e6  # MJy/sr x sr -> Jy
    return {"flux_jy": flux_jy, "ra": ra_c, "dec": dec_c}


def _offset_mas(ra1, dec1, ra2, dec2):
    """Offset (east, north) of position 2 from position 1, milliarcseconds."""
    east = (np.asarray(ra2) - np.asarray(ra1)) * np.cos(np.deg2rad(dec1)) * 3.6e6
    north = (np.asarray(dec2) - np.asarray(dec1)) * 3.6e6
    return east, north


def _astrometry(east, north):
    good = np.isfinite(east) & np.isfinite(north)
    east, north = east[good], north[good]
    if east.size == 0:
        return {"n": 0, "median_east_mas": float("nan"), "median_north_mas": float("nan"),
                "rms_mas": float("nan"), "median_abs_mas": float("nan")}
    return {
        "n": int(east.size),
        "median_east_mas": float(np.median(east)),
        "median_north_mas": float(np.median(north)),
        "rms_mas": float(np.sqrt(np.mean(east**2 + north**2))),
        "median_abs_mas": float(np.median(np.hypot(east, north))),
    }


def _grid(sci, wcs):
    from astropy.wcs.utils import proj_plane_pixel_scales

    cd = wcs.celestial.pixel_scale_matrix
    return {
        "shape": [int(s) for s in sci.shape],
        "pixel_scale_arcsec": float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0),
        "position_angle_deg": float(np.rad2deg(np.arctan2(cd[0, 1], cd[1, 1])) % 360.0),
    }


def compare_mosaics(ours, theirs, truth, *, psf_fwhm, min_snr=30.0, pixel_scale_ratio=1.0,
                    truth_pixel_scale=None):
    """Photometric and astrometric agreement of two mosaics at the true star positions.

    Parameters
    ----------
    ours, theirs : dict
        ``sci``, ``wht`` (2-D arrays) and ``wcs`` (astropy WCS) of each mosaic.
    truth : table-like
        Columns ``type`` ('star' or 'galaxy'), ``ra``, ``dec``, ``flux`` (Jy),
        ``snr``.
    psf_fwhm : float
        PSF FWHM in input pixels; sets the aperture (2.5 FWHM), annulus
        (4 to 6 FWHM) and centroid box.
    min_snr : float
        Only true stars at least this bright are measured.

    Returns
    -------
    dict
        ``flux_ratio`` (jwst/ours), ``ours_over_truth``, ``jwst_over_truth``
        (each n, median, robust_std), ``offset_jwst_minus_ours``,
        ``ours_minus_truth``, ``jwst_minus_truth`` (n, median east/north,
        RMS, median |offset|, mas), ``grid_ours``, ``grid_jwst`` and
        ``sky_median_difference`` (jwst - ours, MJy/sr).
    """
    fwhm = psf_fwhm / pixel_scale_ratio
    kwargs = {"radius": 2.5 * fwhm, "annulus": (4.0 * fwhm, 6.0 * fwhm), "box": 2 * int(1.5 * fwhm) + 1}
    stars = np.asarray(truth["type"]) == "star"
    stars &= np.asarray(truth["snr"], float) >= min_snr
    ra = np.asarray(truth["ra"], float)[stars]
    dec = np.asarray(truth["dec"], float)[stars]
    true_flux = np.asarray(truth["flux"], float)[stars]
    m_ours = measure_stars(ours["sci"], ours["wht"], ours["wcs"], ra, dec, **kwargs)
    m_jwst = measure_stars(theirs["sci"], theirs["wht"], theirs["wcs"], ra, dec, **kwargs)
    both = np.isfinite(m_ours["flux_jy"]) & np.isfinite(m_jwst["flux_jy"]) & (m_ours["flux_jy"] > 0)
    result = {
        "n_true_stars": int(stars.sum()),
        "min_snr": float(min_snr),
        "aperture_radius_pix": kwargs["radius"],
        "flux_ratio": _stat(m_jwst["flux_jy"][both] / m_ours["flux_jy"][both]),
        "ours_over_truth": _stat(m_ours["flux_jy"][both] / true_flux[both]),
        "jwst_over_truth": _stat(m_jwst["flux_jy"][both] / true_flux[both]),
        "offset_jwst_minus_ours": _astrometry(*_offset_mas(m_ours["ra"][both], m_ours["dec"][both],
                                                           m_jwst["ra"][both], m_jwst["dec"][both])),
        "ours_minus_truth": _astrometry(*_offset_mas(ra[both], dec[both], m_ours["ra"][both], m_ours["dec"][both])),
        "jwst_minus_truth": _astrometry(*_offset_mas(ra[both], dec[both], m_jwst["ra"][both], m_jwst["dec"][both])),
        "grid_ours": _grid(ours["sci"], ours["wcs"]),
        "grid_jwst": _grid(theirs["sci"], theirs["wcs"]),
    }
    sky = []
    for mosaic in (ours, theirs):
        good = np.isfinite(mosaic["sci"]) & (np.nan_to_num(mosaic["wht"]) > 0)
        sky.append(float(np.median(mosaic["sci"][good])) if good.any() else float("nan"))
    result["sky_median_difference"] = sky[1] - sky[0]
    return result


def compare_outlier_flags(dq_ours, dq_jwst, truth_xy=None):
    """Outlier flags of one exposure in two ``_crf`` DQ arrays.

    Parameters
    ----------
    dq_ours, dq_jwst : 2-D integer arrays
        DQ of the same exposure from each product.
    truth_xy : (array, array) or None
        Zero-based ``x``, ``y`` of the injected outlier pixels.

    Returns
    -------
    dict of int
        ``usable`` (pixels usable before flagging in either product),
        ``flagged_ours``, ``flagged_jwst``, ``flagged_both``,
        ``flagged_either``, and with ``truth_xy``: ``truth``,
        ``truth_flagged_ours``, ``truth_flagged_jwst``.
    """
    dq_ours = np.asarray(dq_ours).astype(np.uint32)
    dq_jwst = np.asarray(dq_jwst).astype(np.uint32)
    out_o = (dq_ours & OUTLIER) > 0
    out_j = (dq_jwst & OUTLIER) > 0
    # Usable before the step: not DO_NOT_USE, unless the step itself set it with OUTLIER.
    usable = (((dq_ours & DO_NOT_USE) == 0) | out_o) & (((dq_jwst & DO_NOT_USE) == 0) | out_j)
    counts = {
        "usable": int(usable.sum()),
        "flagged_ours": int((out_o & usable).sum()),
        "flagged_jwst": int((out_j & usable).sum()),
        "flagged_both": int((out_o & out_j & usable).sum()),
        "flagged_either": int(((out_o | out_j) & usable).sum()),
    }
    if truth_xy is not None:
        tx, ty = (np.asarray(v, int) for v in truth_xy)
        ok = (tx >= 0) & (ty >= 0) & (ty < dq_ours.shape[0]) & (tx < dq_ours.shape[1])
        tx, ty = tx[ok], ty[ok]
        keep = usable[ty, tx]
        tx, ty = tx[keep], ty[keep]
        counts.update(truth=int(tx.size), truth_flagged_ours=int(out_o[ty, tx].sum()),
                      truth_flagged_jwst=int(out_j[ty, tx].sum()))
    return counts


def summarize_outliers(per_exposure):
    """Add up `compare_outlier_flags` counts into fractions."""
    total = {}
    for counts in per_exposure.values():
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    usable = max(total.get("usable", 0), 1)
    summary = {
        "n_exposures": len(per_exposure),
        "fraction_ours": total.get("flagged_ours", 0) / usable,
        "fraction_jwst": total.get("flagged_jwst", 0) / usable,
        "jaccard": total.get("flagged_both", 0) / max(total.get("flagged_either", 0), 1),
        "counts": total,
    }
    if "truth" in total:
        summary["truth_recall_ours"] = total["truth_flagged_ours"] / max(total["truth"], 1)
        summary["truth_recall_jwst"] = total["truth_flagged_jwst"] / max(total["truth"], 1)
    return summary


def _read_mosaic(path):
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path, memmap=False) as hdul:
        header = hdul["SCI"].header
        return {"sci": hdul["SCI"].data.astype(np.float64), "wht": hdul["WHT"].data.astype(np.float64),
                "wcs": WCS(header).celestial}


def _crf_by_root(folder):
    found = {}
    for path in sorted(Path(folder).glob("*_crf.fits")):
        root = path.name[: -len("_crf.fits")].rsplit("_", 1)[0]  # strip _<asn_id>
        found[root] = path
    return found


def compare_products(ours_dir, jwst_dir, truth_dir, product, *, min_snr=30.0):
    """Read both products and the simulator's truth; return the agreement dict."""
    from astropy.io import fits
    from astropy.table import Table

    truth_dir = Path(truth_dir)
    info = json.loads((truth_dir / "truth.json").read_text())
    sources = Table.read(truth_dir / "sources.ecsv", format="ascii.ecsv")
    ours = _read_mosaic(Path(ours_dir) / f"{product}_i2d.fits")
    theirs = _read_mosaic(Path(jwst_dir) / f"{product}_i2d.fits")
    result = compare_mosaics(ours, theirs, sources, psf_fwhm=float(info.get("psf_fwhm", 2.1)),
                             min_snr=min_snr)
    outliers_path = truth_dir / "outliers.ecsv"
    truth_outliers = Table.read(outliers_path, format="ascii.ecsv") if outliers_path.exists() else None
    crf_ours, crf_jwst = _crf_by_root(ours_dir), _crf_by_root(jwst_dir)
    per_exposure = {}
    for root in sorted(set(crf_ours) & set(crf_jwst)):
        truth_xy = None
        if truth_outliers is not None:
            rows = truth_outliers[np.asarray(truth_outliers["exposure"]) == root]
            truth_xy = (np.asarray(rows["x"]), np.asarray(rows["y"]))
        per_exposure[root] = compare_outlier_flags(fits.getdata(crf_ours[root], "DQ"),
                                                   fits.getdata(crf_jwst[root], "DQ"), truth_xy)
    result["outliers"] = summarize_outliers(per_exposure)
    return result


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ours_dir")
    parser.add_argument("jwst_dir")
    parser.add_argument("truth_dir")
    parser.add_argument("product")
    parser.add_argument("--min-snr", type=float, default=30.0)
    args = parser.parse_args(argv)
    print(json.dumps(compare_products(args.ours_dir, args.jwst_dir, args.truth_dir, args.product,
                                      min_snr=args.min_snr), indent=2))


if __name__ == "__main__":
    main()
