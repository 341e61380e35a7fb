"""Snakemake entry point: tweakreg matching and fitting of all exposures."""

# First: on a local run the warm job server (calimage3/job_server.py) runs this
# job, with every library already imported, and this process exits here.
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import logging
from pathlib import Path

from astropy.table import Table

from calimage3 import io, layout
from calimage3.assign_mtwcs import MOVING_TARGET_REASON, moving_target_wcs_assigned, targtype_is_moving
from calimage3.logs import configure_logging
from calimage3.tweakreg import (
    align_exposures,
    align_to_reference_catalog,
    exposure_group_id,
    reference_catalog_path,
    reference_radec,
)

log = logging.getLogger("tweakreg")

ALIGN_PARAMETERS = (
    "searchrad", "separation", "tolerance", "use2dhist", "xoffset", "yoffset", "fitgeometry",
    "nclip", "sigma", "minobj", "enforce_user_order", "expand_refcat",
)
ABS_PARAMETERS = (
    "abs_minobj", "abs_searchrad", "abs_use2dhist", "abs_separation", "abs_tolerance",
    "abs_fitgeometry", "abs_nclip", "abs_sigma",
)


def read_reference_catalog(path):
    """RA/Dec (degrees) of an ECSV or FITS reference catalog; clear errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise io.InputFileError(path, "abs_refcat file does not exist")
    try:
        if path.suffix.lower() == ".ecsv":
            table = io.read_table(path)
        else:
            table = Table.read(path)
    except Exception as exc:  # any reader failure: unreadable catalog
        raise io.InputFileError(path, f"cannot read abs_refcat as an ECSV or FITS table: {exc}") from exc
    try:
        return reference_radec(table)
    except ValueError as exc:
        raise io.InputFileError(path, str(exc)) from exc


def group_ids_of(cal_paths, asn_group_ids=None):
    """Exposure group of each exposure: the ASN member's group_id, else from its header."""
    ids = []
    for k, path in enumerate(cal_paths):
        given = asn_group_ids[k] if asn_group_ids else ""
        ids.append(given or exposure_group_id(io.read_image_meta(path)[0]))
    return ids


def moving_target_skip_reason(infos, cal_paths=None):
    """Why tweakreg must leave these exposures alone as a moving target, or None.

    JWST's Image3Pipeline runs assign_mtwcs instead of tweakreg for moving
    targets: fitting the fixed stars would undo the alignment on the
    target.  assign_mtwcs marks the WCSs it moved with ``S_MTWCS =
    COMPLETE``; a moving target whose assign_mtwcs was skipped by
    configuration is recognised from the ``_cal`` headers (TARGTYPE).

    Parameters
    ----------
    infos : list of dict
        The ``info`` of each assign_mtwcs WCS file.
    cal_paths : list of path or None
        The ``_cal`` files, for their TARGTYPE.
    """
    if moving_target_wcs_assigned(infos):
        return MOVING_TARGET_REASON
    # Preflight has already rejected associations that mix moving and fixed targets.
    if cal_paths and all(targtype_is_moving(io.read_image_meta(p)[0]) for p in cal_paths):
        return "moving target: assign_mtwcs skipped, tweakreg not run"
    return None


def read_input_wcs(path):
    """WCS, shape and info of an assign_mtwcs WCS file, or WCS and shape of a _cal (info empty)."""
    if str(path).endswith(".asdf"):
        return io.read_wcs_file(path)
    wcs, shape, _ = io.read_exposure_wcs(path)
    return wcs, shape, {}


def pass_through(wcs_list, shapes, infos, output_paths, reason):
    """Write every WCS unchanged with ``S_TWKREG = SKIPPED`` and ``reason`` in ``TWKREASN``."""
    for wcs, shape, info, out in zip(wcs_list, shapes, infos, output_paths):
        io.write_wcs_file(out, wcs, shape, info={**info, "S_TWKREG": "SKIPPED", "TWKREASN": reason})


def tweakreg_align(source_paths, wcs_paths, output_paths, *, cal_paths=None, asn_group_ids=None,
                   skip=False, abs_refcat="", **params):
    """Fit relative (and optionally absolute) WCS corrections and write each exposure's WCS.

    Moving-target exposures (see `moving_target_skip_reason`) and
    ``skip=True`` pass every WCS through unchanged.
    """
    inputs = [read_input_wcs(p) for p in wcs_paths]
    wcs_list = [w for w, _, _ in inputs]
    shapes = [s for _, s, _ in inputs]
    infos = [i for _, _, i in inputs]
    if skip:
        pass_through(wcs_list, shapes, infos, output_paths, "step skipped")
        log.info("tweakreg: skipped by configuration; WCSs passed on unchanged")
        return
    moving = moving_target_skip_reason(infos, cal_paths)
    if moving:
        pass_through(wcs_list, shapes, infos, output_paths, moving)
        log.info("tweakreg: SKIPPED for %d exposures (%s); WCSs passed on unchanged%s", len(wcs_list), moving,
                 "; abs_refcat not used" if reference_catalog_path(abs_refcat) else "")
        return
    refcat_path = reference_catalog_path(abs_refcat)
    refcat = read_reference_catalog(refcat_path) if refcat_path else None
    catalogs = [io.read_table(p) for p in source_paths]
    names = [str(p).rsplit("/", 1)[-1].replace("_sources.ecsv", "") for p in source_paths]
    group_ids = group_ids_of(cal_paths, asn_group_ids) if cal_paths else None
    if group_ids is not None:
        groups = {}
        for name, gid in zip(names, group_ids):
            groups.setdefault(gid or name, []).append(name)
        for gid, members in groups.items():
            log.info("tweakreg: group %s: %s", gid, ", ".join(members))
    kwargs = {k: params[k] for k in ALIGN_PARAMETERS if k in params}
    if refcat is not None and not kwargs.get("expand_refcat"):
        # As JWST: no duplicate sources when the set is then fitted as a whole.
        log.info("tweakreg: abs_refcat given: expand_refcat set to True")
        kwargs["expand_refcat"] = True
    results = align_exposures(catalogs, wcs_list, shapes, group_ids=group_ids, **kwargs)

    absolute = None
    if refcat is not None:
        members = [i for i, r in enumerate(results) if r.status == "COMPLETE"]
        if not members and len(set(group_ids or names)) == 1:
            members = list(range(len(results)))  # one exposure or one group: nothing relative to do
        abs_kwargs = {k: params[k] for k in ABS_PARAMETERS if k in params}
        absolute = align_to_reference_catalog(
            [catalogs[i] for i in members], [results[i].wcs for i in members],
            [shapes[i] for i in members], *refcat, **abs_kwargs,
        ) if members else None
        if absolute is None:
            log.warning("tweakreg: absolute alignment to %s SKIPPED: no exposure was relatively aligned",
                        refcat_path)
        elif absolute.status == "COMPLETE":
            log.info("tweakreg: absolute alignment to %s: %s", refcat_path, absolute.message)
            for i, wcs in zip(members, absolute.wcs_list):
                results[i].wcs = wcs
        else:
            log.warning("tweakreg: absolute alignment to %s SKIPPED (%s); relative WCSs kept",
                        refcat_path, absolute.message)
        abs_members = set(members)

    for k, (name, shape, info, result, out) in enumerate(zip(names, shapes, infos, results, output_paths)):
        record = {
            **info,
            "S_TWKREG": result.status,
            "TWKREASN": result.message,
            "TWKREF": bool(result.is_reference),
            "TWKNMAT": int(result.nmatch),
            "TWKRMS": float(result.rms),
            "TWKSHFTX": float(result.shift[0]),
            "TWKSHFTY": float(result.shift[1]),
            "TWKROT": float(result.rotation),
            "TWKGRPID": str(group_ids[k] or "") if group_ids else "",
        }
        if refcat is not None:
            done = absolute is not None and absolute.status == "COMPLETE" and k in abs_members
            record.update({
                "TWKABS": "COMPLETE" if done else "SKIPPED",
                "TWKABSRS": (absolute.message if absolute is not None and k in abs_members
                             else "not relatively aligned; left out of the absolute fit"),
                "TWKABSCT": Path(refcat_path).name,
                "TWKAXSHF": float(absolute.shift[0]) if done else 0.0,
                "TWKAYSHF": float(absolute.shift[1]) if done else 0.0,
                "TWKAROT": float(absolute.rotation) if done else 0.0,
                "TWKASCL": float(absolute.scale) if done else 1.0,
                "TWKARMS": float(absolute.rms) if done else float("nan"),
                "TWKANMAT": int(absolute.nmatch) if done else 0,
            })
            if done:
                record["S_TWKREG"] = "COMPLETE"
        io.write_wcs_file(out, result.wcs, shape, info=record)
        if result.status == "COMPLETE":
            log.info("tweakreg: %s: %d matches, RMS %.3f pix, shift (%+.3f, %+.3f) arcsec, rotation %+.4f deg%s",
                     name, result.nmatch, result.rms, result.shift[0], result.shift[1], result.rotation,
                     " (reference)" if result.is_reference else "")
        else:
            log.warning("tweakreg: %s: SKIPPED (%s); original WCS kept", name, result.message)


if "snakemake" in globals():
    configure_logging(snakemake.log[0])
    roots = snakemake.params.roots
    # assign_mtwcs's folder, or the _cal files
    input_wcs = layout.files_or_folder(snakemake.input.wcs, layout.moving_target_wcs, roots)
    tweakreg_align(snakemake.input.sources, input_wcs, layout.member_files(layout.aligned_wcs, snakemake.output.wcs, roots),
                   cal_paths=snakemake.input.cal, asn_group_ids=snakemake.params.asn_group_ids,
                   **snakemake.params.step)
