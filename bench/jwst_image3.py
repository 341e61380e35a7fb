"""Run jwst's ``Image3Pipeline`` offline on a calimage3 association (benchmark helper).

This script runs in the Python environment that has the optional ``jwst``
package (``pip install -e ".[bench]"`` or a separate virtualenv); it never
imports ``calimage3``.  ``bench/run_benchmark.py --jwst`` calls it in a
subprocess, twice:

``stage ASN STAGE_DIR``
    Writes a jwst-ready copy of every science member. The pixels (SCI, ERR,
    DQ, variances) are copied unchanged; the WCS is the member's own gwcs
    re-expressed with JWST's intermediate ``v2v3`` frame, which jwst's
    ``tweakreg`` needs (``JWSTWCSCorrector`` refuses a two-frame WCS):
    ``detector -> v2v3`` is the file's ``detector -> world`` followed by the
    inverse of jwst's own ``v23tosky`` model, and ``v2v3 -> world`` is
    ``v23tosky``, so ``detector -> world`` is unchanged (checked on a grid of
    pixels: staging stops if any moves by more than 1e-4 pixel).
    ``meta.wcsinfo`` gets the reference point (``ra_ref``, ``dec_ref`` at the
    detector centre, ``v2_ref = v3_ref = 0``), ``roll_ref`` (position angle of
    the detector +y axis), ``v3yangle = 0``, ``vparity`` and ``s_region``; ERR
    gets BUNIT MJy/sr where a file lacks it. It also writes the two reference
    files that ``source_catalog`` needs, built from the simulated PSF
    (``--psf-fwhm``): an NRCIMG APCORR table (radii that enclose 10..90% of a
    Gaussian PSF, with their aperture corrections) and an ABVEGAOFFSET file
    (offset 0).

``run STAGED_ASN OUT_DIR``
    Runs ``Image3Pipeline`` on the staged association with no CRDS server:
    ``CRDS_SERVER_URL`` points at a reserved ``.invalid`` host, ``CRDS_PATH``
    at an empty folder, ``CRDS_MODE=local`` and
    ``STPIPE_DISABLE_CRDS_STEPPARS=true`` (no parameter reference files).
    The only reference files the pipeline asks for are ``source_catalog``'s
    APCORR and ABVEGAOFFSET, given as ``override_apcorr`` /
    ``override_abvegaoffset``, so CRDS is never queried; because no CRDS
    context exists offline, the one call that records the context name in
    the product metadata (``stpipe.crds_client.get_context_used``) returns
    ``"none (offline)"``.  ``--skip STEP`` skips a step.

Both print one JSON object on the last line of stdout (times, peak RSS of
this process, versions, and the status of each step in the products).
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

OFFLINE_SERVER = "https://crds-offline.invalid"
STEPS = ("assign_mtwcs", "tweakreg", "skymatch", "outlier_detection", "resample", "source_catalog")
EE_FRACTIONS = [round(0.1 * k, 1) for k in range(1, 10)]


def offline_environment(crds_path):
    """Environment variables that keep CRDS and stpipe off the network."""
    return {
        "CRDS_SERVER_URL": OFFLINE_SERVER,
        "CRDS_PATH": str(crds_path),
        "CRDS_MODE": "local",
        "STPIPE_DISABLE_CRDS_STEPPARS": "true",
    }


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _v2v3_wcs(model):
    """The model's gwcs with a ``v2v3`` frame; sets ``meta.wcsinfo`` accordingly."""
    import numpy as np
    from astropy import units as u
    from gwcs import WCS
    from gwcs import coordinate_frames as cf
    from jwst.assign_wcs.pointing import v23tosky

    old = model.meta.wcs
    ny, nx = model.data.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra0, dec0 = old(cx, cy)
    # Position angle of +y (east of north) and handedness, from the local Jacobian.
    step = 10.0
    (ra_x, dec_x), (ra_y, dec_y) = old(cx + step, cy), old(cx, cy + step)
    cosd = np.cos(np.deg2rad(dec0))
    east_x, north_x = (ra_x - ra0) * cosd, dec_x - dec0
    east_y, north_y = (ra_y - ra0) * cosd, dec_y - dec0
    roll = float(np.rad2deg(np.arctan2(east_y, north_y)) % 360.0)
    vparity = -1 if east_x * north_y - north_x * east_y < 0 else 1

    info = model.meta.wcsinfo
    info.v2_ref, info.v3_ref, info.roll_ref = 0.0, 0.0, roll
    info.ra_ref, info.dec_ref = float(ra0), float(dec0)
    info.v3yangle, info.vparity = 0.0, vparity
    to_sky = v23tosky(model)
    v2v3 = cf.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"), unit=(u.arcsec, u.arcsec))
    new = WCS([(old.input_frame, old.forward_transform | to_sky.inverse), (v2v3, to_sky), (old.output_frame, None)])
    new.bounding_box = old.bounding_box
    new.pixel_shape = old.pixel_shape if old.pixel_shape is not None else (nx, ny)
    # The re-expressed WCS must map pixels to the same sky positions.
    yy, xx = np.mgrid[0:ny:max(ny // 16, 1), 0:nx:max(nx // 16, 1)]
    ra_a, dec_a = old(xx, yy)
    ra_b, dec_b = new(xx, yy)
    sep = np.hypot((ra_b - ra_a) * np.cos(np.deg2rad(dec_a)), dec_b - dec_a)
    scale = np.hypot(east_x, north_x) / step
    return new, float(np.nanmax(sep) / scale)


def write_reference_files(refdir, psf_fwhm, filt, pupil):
    """APCORR and ABVEGAOFFSET reference files for a Gaussian PSF of ``psf_fwhm`` pixels."""
    import numpy as np
    from astropy.table import Table
    from stdatamodels.jwst import datamodels

    refdir = Path(refdir)
    refdir.mkdir(parents=True, exist_ok=True)
    sigma = psf_fwhm / 2.3548
    radii = [sigma * np.sqrt(-2.0 * np.log(1.0 - ee)) for ee in EE_FRACTIONS]
    skyin, skyout = 4.0 * psf_fwhm, 6.0 * psf_fwhm
    table = np.array(
        [(filt, pupil, ee, r, 1.0 / ee, skyin, skyout) for ee, r in zip(EE_FRACTIONS, radii)],
        dtype=[("filter", "S12"), ("pupil", "S15"), ("eefraction", "f4"), ("radius", "f4"),
               ("apcorr", "f4"), ("skyin", "f4"), ("skyout", "f4")],
    )
    apcorr = datamodels.NrcImgApcorrModel(apcorr_table=table)
    apcorr.meta.instrument.name = "NIRCAM"
    apcorr.meta.exposure.type = "NRC_IMAGE"
    apcorr.meta.reftype = "APCORR"
    apcorr.meta.author = "calimage3 bench (Gaussian PSF)"
    apcorr.meta.pedigree = "DUMMY"
    apcorr.meta.description = f"Gaussian PSF FWHM {psf_fwhm} pix: radius enclosing eefraction"
    apcorr.meta.useafter = "2000-01-01T00:00:00"
    apcorr_path = refdir / "bench_nircam_apcorr.fits"
    apcorr.save(apcorr_path)

    abvega = datamodels.ABVegaOffsetModel()
    abvega.abvega_offset = Table({"filter": [filt], "pupil": [pupil], "abvega_offset": [0.0]})
    abvega.meta.instrument.name = "NIRCAM"
    abvega.meta.reftype = "ABVEGAOFFSET"
    abvega.meta.author = "calimage3 bench"
    abvega.meta.pedigree = "DUMMY"
    abvega.meta.description = "zero AB-Vega offset"
    abvega.meta.useafter = "2000-01-01T00:00:00"
    abvega_path = refdir / "bench_nircam_abvegaoffset.asdf"
    abvega.save(abvega_path)
    return str(apcorr_path), str(abvega_path)


def stage(asn_path, stage_dir, psf_fwhm):
    """Write jwst-ready copies of the association's science members; return a summary dict."""
    from jwst.assign_wcs.util import update_s_region_imaging
    from stdatamodels.jwst import datamodels

    start = time.perf_counter()
    asn_path = Path(asn_path)
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    asn = json.loads(asn_path.read_text())
    worst, filt, pupil, err_units_set = 0.0, "F200W", "CLEAR", 0
    for product in asn["products"]:
        members = [m for m in product["members"] if m.get("exptype", "science") == "science"]
        for member in members:
            src = asn_path.parent / member["expname"]
            with datamodels.ImageModel(str(src)) as model:
                model.meta.wcs, err = _v2v3_wcs(model)
                if not err < 1e-4:
                    raise RuntimeError(f"{src}: the v2v3 WCS moves pixels by {err} pixel")
                worst = max(worst, err)
                update_s_region_imaging(model)
                # Files from older simulator versions have no BUNIT on ERR; source_catalog needs it.
                if model.meta.bunit_err is None and model.meta.bunit_data == "MJy/sr":
                    model.meta.bunit_err = "MJy/sr"
                    err_units_set += 1
                filt = model.meta.instrument.filter or filt
                pupil = model.meta.instrument.pupil or pupil
                model.save(str(stage_dir / Path(member["expname"]).name))
            member["expname"] = Path(member["expname"]).name
        product["members"] = members
    staged_asn = stage_dir / asn_path.name
    staged_asn.write_text(json.dumps(asn, indent=2) + "\n")
    apcorr, abvega = write_reference_files(stage_dir / "refs", psf_fwhm, filt, pupil)
    return {
        "asn": str(staged_asn), "override_apcorr": apcorr, "override_abvegaoffset": abvega,
        "wcs_max_error_pix": worst, "err_bunit_set": err_units_set, "stage_s": time.perf_counter() - start,
    }


def _step_status(path):
    from stdatamodels.jwst import datamodels

    with datamodels.open(path) as model:
        return {step: getattr(model.meta.cal_step, step, None) for step in STEPS}


def run(asn_path, out_dir, skip=(), override_apcorr=None, override_abvegaoffset=None, in_memory=True):
    """Run Image3Pipeline offline; return a summary dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crds_path = Path(os.environ.get("CRDS_PATH") or tempfile.mkdtemp(prefix="crds_empty_"))
    for key, value in offline_environment(crds_path).items():
        os.environ.setdefault(key, value)
    if not os.environ["CRDS_SERVER_URL"].endswith(".invalid"):
        raise SystemExit("refusing to run: CRDS_SERVER_URL must point at an unreachable (.invalid) host")
    crds_path.mkdir(parents=True, exist_ok=True)

    t_import = time.perf_counter()
    import jwst
    import stpipe.crds_client
    from jwst.pipeline import Image3Pipeline

    # Offline there is no CRDS context; this call only records its name in the products.
    stpipe.crds_client.get_context_used = lambda observatory: "none (offline)"
    steps = {name: {"skip": True} for name in skip}
    catalog = steps.setdefault("source_catalog", {})
    if "source_catalog" not in skip:
        if not (override_apcorr and override_abvegaoffset):
            raise SystemExit("source_catalog needs --override-apcorr and --override-abvegaoffset offline")
        catalog.update(override_apcorr=override_apcorr, override_abvegaoffset=override_abvegaoffset)
    t_start = time.perf_counter()
    Image3Pipeline.call(str(asn_path), output_dir=str(out_dir), save_results=True,
                        in_memory=in_memory, steps=steps)
    wall = time.perf_counter() - t_start

    asn = json.loads(Path(asn_path).read_text())
    product = asn["products"][0]["name"]
    asn_id = asn.get("asn_id", "")
    i2d = out_dir / f"{product}_i2d.fits"
    crfs = sorted(out_dir.glob(f"*_{asn_id}_crf.fits"))
    status = _step_status(i2d) if i2d.exists() else {}
    if crfs:
        for step, value in _step_status(crfs[0]).items():
            if status.get(step) in (None, "SKIPPED") and value:
                status[step] = value
    catalog_path = out_dir / f"{product}_cat.ecsv"
    status["source_catalog"] = "COMPLETE" if catalog_path.exists() else "SKIPPED"
    crds_files = [str(p) for p in crds_path.rglob("*") if p.is_file()]
    return {
        "jwst_version": jwst.__version__,
        "versions": _versions(),
        "pipeline_s": wall,
        "import_s": t_start - t_import,
        "peak_rss_mb": _peak_rss_mb(),
        "steps": status,
        "skipped_by_request": sorted(skip),
        "i2d": str(i2d) if i2d.exists() else None,
        "crf": [str(p) for p in crfs],
        "cat": str(catalog_path) if catalog_path.exists() else None,
        "offline": {key: os.environ[key] for key in offline_environment(crds_path)},
        "crds_cache_files_after_run": len(crds_files),
        "in_memory": in_memory,
    }


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("jwst", "stpipe", "stcal", "stdatamodels", "drizzle", "tweakwcs", "photutils", "crds",
                 "numpy", "astropy", "gwcs"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_stage = sub.add_parser("stage", help="write jwst-ready copies of the members")
    p_stage.add_argument("asn")
    p_stage.add_argument("stage_dir")
    p_stage.add_argument("--psf-fwhm", type=float, default=2.1)
    p_run = sub.add_parser("run", help="run Image3Pipeline offline")
    p_run.add_argument("asn")
    p_run.add_argument("out_dir")
    p_run.add_argument("--skip", nargs="*", default=[], choices=STEPS)
    p_run.add_argument("--override-apcorr")
    p_run.add_argument("--override-abvegaoffset")
    p_run.add_argument("--on-disk", action="store_true", help="in_memory=False")
    args = parser.parse_args(argv)
    if args.command == "stage":
        result = stage(args.asn, args.stage_dir, args.psf_fwhm)
    else:
        result = run(args.asn, args.out_dir, args.skip, args.override_apcorr, args.override_abvegaoffset,
                     in_memory=not args.on_disk)
    result["peak_rss_mb"] = _peak_rss_mb()
    sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
