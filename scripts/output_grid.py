"""Snakemake entry point: the output grid (WCS and shape) of a drizzle, and each exposure's pixel map onto it.

The pixel maps (input pixel -> grid pixel, on a coarse grid of nodes; see
calimage3.pixmap) are computed here, once per exposure, so that the
per-exposure drizzle and blot jobs need neither the WCSs nor gwcs.
"""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging

from calimage3 import io, layout
from calimage3.logs import configure_logging
from calimage3.pixmap import coarse_pixel_map
from calimage3.wcs_tools import output_wcs

log = logging.getLogger("output_grid")

GRID_PARAMETERS = ("pixel_scale_ratio", "pixel_scale", "rotation", "crval", "crpix", "output_shape")


def read_any_wcs(path):
    """WCS, shape and the keywords stored with it, from a workflow WCS file (.asdf) or a JWST image."""
    if str(path).endswith(".asdf"):
        return io.read_wcs_file(path)
    wcs, shape, _ = io.read_exposure_wcs(path)
    return wcs, shape, {}


def user_grid_shape(wcs, pixel_shape=None, output_shape=None, *, source="output_wcs"):
    """``(ny, nx)`` of a user-supplied output WCS, by the JWST ``resample`` rules.

    Parameters
    ----------
    wcs : gwcs.WCS
        The user's output WCS.
    pixel_shape : tuple of int or None
        ``(nx, ny)`` stored with the WCS (``pixel_shape``/``array_shape`` keys).
    output_shape : sequence of int or None
        The ``output_shape`` parameter, ``(nx, ny)``; overrides everything else.
    source : str
        Name of the WCS in error messages.

    Returns
    -------
    tuple of int
        ``(ny, nx)``: from ``output_shape``, else ``pixel_shape``, else the
        gwcs' own ``pixel_shape``, else the upper edges of its bounding box.

    Raises
    ------
    ValueError
        When none of these gives a shape, or a dimension is not positive.
    """
    for candidate in (output_shape, pixel_shape, getattr(wcs, "pixel_shape", None)):
        if candidate is not None:
            nx, ny = (int(v) for v in candidate)
            break
    else:
        bbox = getattr(wcs, "bounding_box", None)
        if bbox is None:
            raise ValueError(f"{source}: the WCS has no pixel_shape, array_shape or bounding_box; "
                             "give output_shape")
        try:
            (_, x2), (_, y2) = bbox.bounding_box(order="F")
        except AttributeError:
            (_, x2), (_, y2) = bbox
        nx, ny = int(x2 + 0.5), int(y2 + 0.5)
    if nx < 1 or ny < 1:
        raise ValueError(f"{source}: output shape (nx, ny) must be positive, got {(nx, ny)}")
    return ny, nx


def write_pixel_maps(pairs, grid_wcs, grid_shape, pixmap_paths, grid_step):
    """Write each exposure's coarse pixel map onto the grid (``pairs``: (wcs, shape, info) per exposure)."""
    for (wcs, shape, _), path in zip(pairs, pixmap_paths, strict=True):
        io.write_pixel_map(path, coarse_pixel_map(wcs, grid_wcs, shape, grid_step=grid_step, output_shape=grid_shape))


def output_grid(wcs_paths, grid_path, *, pixmap_paths=(), rendered_paths=(), grid_step=16, output_wcs_file="",
                **params):
    """Write the output grid (the user's ``output_wcs`` file, or the JWST default or user-set
    one covering all inputs) and, for each exposure in ``pixmap_paths``, its pixel map onto it.

    With ``rendered_paths``, each exposure's own WCS is also rendered as its
    _crf will carry it (`io.write_rendered_wcs`): this job already has
    every WCS and asdf loaded, and the flagging jobs then need neither.

    A ``grid_path`` ending in ``.fits`` gets the grid's WCS rendered as the
    mosaic will carry it, pixel area included (`io.write_rendered_wcs`), so
    that the job writing the mosaic needs no gwcs; otherwise a WCS file
    (`io.write_wcs_file`).
    """
    pairs = [read_any_wcs(p) for p in wcs_paths]
    if output_wcs_file:
        wcs, pixel_shape = io.read_user_output_wcs(output_wcs_file)
        shape = user_grid_shape(wcs, pixel_shape, params.get("output_shape"), source=str(output_wcs_file))
        log.info("output grid: %d x %d pixels from %s (grid parameters other than output_shape ignored)",
                 shape[1], shape[0], output_wcs_file)
    else:
        grid_args = {k: params[k] for k in GRID_PARAMETERS if params.get(k) is not None}
        wcs, shape = output_wcs([p[0] for p in pairs], [p[1] for p in pairs], **grid_args)
        log.info("output grid: %d x %d pixels covering %d exposures", shape[1], shape[0], len(pairs))
    if str(grid_path).endswith(".fits"):
        io.write_rendered_wcs(grid_path, wcs, shape, pixel_area=True)
    else:
        io.write_wcs_file(grid_path, wcs, shape)
    if pixmap_paths:
        write_pixel_maps(pairs, wcs, shape, pixmap_paths, grid_step)
        log.info("pixel maps of %d exposures evaluated every %d pixels", len(pixmap_paths), grid_step)
    for (exposure_wcs, exposure_shape, info), path in zip(pairs, rendered_paths, strict=bool(rendered_paths)):
        io.write_rendered_wcs(path, exposure_wcs, exposure_shape, info)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    params = dict(snakemake.params.step) if hasattr(snakemake.params, "step") else {}
    # outlier_grid: a gwcs grid and the _crf WCSs rendered too; resample_grid: the mosaic's rendered grid
    step = "outlier_detection" if snakemake.rule == "outlier_grid" else "resample"
    folder, roots = snakemake.output.grid, snakemake.params.roots
    # tweakreg's folder, or the lone _cal
    wcs_paths = layout.files_or_folder(snakemake.input.wcs, layout.aligned_wcs, roots)
    rendered = layout.member_files(layout.rendered_wcs, folder, roots) if step == "outlier_detection" else ()
    output_grid(wcs_paths, layout.grid_wcs(folder, step),
                pixmap_paths=layout.member_files(layout.pixel_map, folder, roots),
                rendered_paths=rendered, grid_step=snakemake.params.grid_step,
                output_wcs_file=params.pop("output_wcs", "") or "", **params)
