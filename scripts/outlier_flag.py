"""Snakemake entry point: blot the median back and flag outliers in one exposure."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

import numpy as np

from calimage3 import io, layout
from calimage3.logs import configure_logging
from calimage3.outlier_detection import apply_outlier_flags, flag_outliers, flag_outliers_unresampled, parse_pair
from calimage3.pixmap import expand_pixel_map, pixel_map_footprint
from calimage3.provenance import provenance_keywords
from calimage3.resample import blot
from calimage3.usable import usable_pixel_mask

log = logging.getLogger("outlier_detection")


def outlier_flag(cal_path, wcs_path, sky_path, median_path, pixmap_path, crf_path, *, skip=False,
                 resample_data=True, verify_checksums=False, **params):
    # median_path and pixmap_path are None when the step is skipped.
    """Write the exposure's _crf: tweaked WCS, sky level, and OUTLIER|DO_NOT_USE flags.

    ``wcs_path`` is the exposure's aligned WCS as rendered for its _crf
    (`io.write_rendered_wcs`), copied as it is: no WCS is evaluated here.
    The median is blotted through the exposure's precomputed pixel map onto
    the median's grid (the map its single drizzle used).  With
    ``resample_data=False`` the median is on the exposure's own grid and
    JWST's simpler test against it is used.  Pixels outside the
    exposure's bounding box (the pixel map's ``input_range``), NON_SCIENCE
    and DO_NOT_USE pixels are never flagged.  ``verify_checksums`` checks
    the _cal's FITS checksums as it is read.
    """
    exposure, sky_level = io.read_aligned_exposure(cal_path, None, sky_path, verify_checksums=verify_checksums)
    rendered = io.read_rendered_wcs(wcs_path)
    exposure.meta.update(rendered.info)
    inputs = [p for p in (cal_path, wcs_path, sky_path, median_path, pixmap_path) if p]
    exposure.meta.update(provenance_keywords("outlier_detection", {"skip": skip, "resample_data": resample_data, **params},
                                             io.input_checksums(inputs)))
    if skip:
        exposure.meta["S_OUTLIR"] = "SKIPPED"
        io.write_exposure(crf_path, exposure, rendered_wcs=rendered)
        log.info("outlier_detection: skipped by configuration; %s written unflagged", crf_path)
        return
    coarse = io.read_pixel_map(pixmap_path) if pixmap_path else None
    # Outside the WCS bounding box (from the pixel map, else the _cal's WCS),
    # NON_SCIENCE and DO_NOT_USE: never flagged.
    input_range = coarse.input_range if coarse is not None else io.read_bounding_box_range(cal_path)
    usable = usable_pixel_mask(exposure.dq, good_bits="~DO_NOT_USE", input_range=input_range)
    if not resample_data:
        with io.open_image_sections(median_path, ("SCI",)) as views:
            median = np.asarray(views["SCI"], dtype=np.float32)
        if median.shape != exposure.shape:
            raise io.InputFileError(cal_path, f"resample_data=False needs every exposure on one pixel grid: "
                                              f"shape {exposure.shape} differs from the median's {median.shape}")
        mask = flag_outliers_unresampled(exposure.data - np.float32(sky_level), exposure.err, median,
                                         snr=params.get("snr", "5.0 4.0"),
                                         backg_boxsize=params.get("backg_boxsize", 0), usable=usable)
        _write_flagged(exposure, mask, usable, crf_path, rendered)
        return
    # Only the part of the median the exposure falls on is read (on a mosaic
    # of several detectors, a fraction of it), and the pixel map is shifted
    # onto that part in place.
    pixmap = expand_pixel_map(coarse)
    # NCOMB (singles per pixel) is there unless the median was written without it
    names = ("SCI", "NCOMB") if "ncomb" in io.read_image_meta(median_path)[1] else ("SCI",)
    with io.open_image_sections(median_path, names) as views:
        y0, y1, x0, x1 = pixel_map_footprint(pixmap, views["SCI"].shape)
        median = np.asarray(views["SCI"][y0:y1, x0:x1], dtype=np.float32)
        pixmap -= np.array([x0, y0], dtype=np.float64)
        blotted = blot(median, None, None, exposure.shape, pixmap=pixmap, overwrite_pixmap=True)
        del median
        count = np.asarray(views["NCOMB"][y0:y1, x0:x1], dtype=np.float32) if "NCOMB" in views else None
    blot_count = None if count is None else blot(count, None, None, exposure.shape, pixmap=pixmap,
                                                 overwrite_pixmap=True)
    # the pixel map (16 bytes a pixel) is done with: not held through the test
    del pixmap, count
    mask = flag_outliers(
        exposure.data - np.float32(sky_level), exposure.err, blotted,
        snr=parse_pair(params.get("snr", "5.0 4.0")), scale=parse_pair(params.get("scale", "1.2 0.7")),
        backg=params.get("backg", 0.0), backg_boxsize=params.get("backg_boxsize", 0),
        flux_box=params.get("flux_box", 0), flux_tolerance=params.get("flux_tolerance", 0.1), usable=usable,
        blot_count=blot_count,
    )
    _write_flagged(exposure, mask, usable, crf_path, rendered)


def _write_flagged(exposure, mask, usable, crf_path, rendered):
    """Set OUTLIER|DO_NOT_USE on ``mask`` where the pixel is ``usable`` and write the _crf."""
    mask = mask & usable
    exposure.dq = apply_outlier_flags(exposure.dq, mask)
    exposure.meta["S_OUTLIR"] = "COMPLETE"
    io.write_exposure(crf_path, exposure, rendered_wcs=rendered)
    n_good = int(np.count_nonzero(usable))
    log.info("outlier_detection: %s: %d pixels flagged as outliers (%.3f%% of usable pixels)",
             exposure.name, int(mask.sum()), 100.0 * mask.sum() / max(n_good, 1))


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    params = dict(snakemake.params.step)
    root, grid = snakemake.wildcards.root, snakemake.input.grid
    median = snakemake.input.get("median")
    outlier_flag(snakemake.input.cal, layout.rendered_wcs(grid, root), snakemake.input.sky,
                 median, layout.pixel_map(grid, root) if median else None, snakemake.output.crf,
                 verify_checksums=layout.checksum_records(snakemake.config), **params)
