"""All file reading and writing: FITS data models, ASDF WCS, ECSV tables, ASN JSON.

JWST ``_cal``/``_crf``/``_i2d`` files are FITS with one image extension per
array (SCI, ERR, DQ, AREA, VAR_POISSON, VAR_RNOISE, VAR_FLAT, ...) and the
gwcs in an ``ASDF`` extension (a one-row binary table whose
``ASDF_METADATA`` column holds an ASDF file; older files use a uint8 image).
The SCI header also carries a FITS TAN-SIP approximation so that tools
that know nothing of gwcs (ds9) can place the image on the sky.

The WCS of an input is read, in order of preference, from

1. the ASDF extension with plain ``asdf`` + ``gwcs`` (fast; when
   ``stdatamodels`` is installed its JWST transform tags are available to
   ``asdf`` through entry points, so real MAST files load here);
2. the same extension through ``stdatamodels.jwst.datamodels`` (imported
   only when step 1 gave no gwcs, because the import is slow);
3. the FITS TAN/SIP WCS in the SCI header.

The products written (``_crf``, ``_i2d``) have the layout that
``stdatamodels.jwst.datamodels.open`` reads as an ``ImageModel`` and that
passes its strict schema validation, without stdatamodels being needed to
write them: keywords sit in the header the schema maps them from, and
step status keywords take only the schema's values.

Writers go through a temporary file that is renamed into place only when
complete, so a failure never leaves a partial product.
"""

import importlib
import io as _io
import json
import logging
import os
import stat
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits

from .association import parse_association
from .exposure import Exposure

# asdf, gwcs, astropy.table and astropy.wcs (and calimage3.wcs_tools, which
# needs gwcs) are imported inside the functions that use them: together they
# take about a second to import, and the per-exposure drizzle and blot jobs
# that read only arrays, pixel maps and keywords never need them.

__all__ = [
    "InputFileError",
    "read_association",
    "read_exposure",
    "read_exposure_wcs",
    "read_exposure_footprint",
    "read_bounding_box_range",
    "parse_s_region",
    "read_aligned_exposure",
    "write_exposure",
    "RenderedWcs",
    "write_rendered_wcs",
    "read_rendered_wcs",
    "write_i2d",
    "read_i2d",
    "read_i2d_rendered",
    "write_segmentation",
    "read_wcs_file",
    "write_pixel_map",
    "read_pixel_map",
    "read_user_output_wcs",
    "read_skylist",
    "write_wcs_file",
    "read_table",
    "write_table",
    "write_json",
    "read_json",
    "write_manifest",
    "read_manifest",
    "read_text_tail",
    "list_files",
    "open_image_sections",
    "ImageSection",
    "read_image_meta",
    "write_image",
    "atomic_path",
    "file_sha256",
    "input_checksums",
    "read_provenance",
    "fits_layout_problem",
    "verify_fits_checksums",
    "file_identity",
    "read_check_cache",
    "write_check_cache",
    "read_apcorr",
    "crds_reference_files",
    "read_abvegaoffset",
]

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)

ARRAY_EXTENSIONS = {
    "data": ("SCI", np.float32),
    "err": ("ERR", np.float32),
    "dq": ("DQ", np.uint32),
    "area": ("AREA", np.float32),
    "var_poisson": ("VAR_POISSON", np.float32),
    "var_rnoise": ("VAR_RNOISE", np.float32),
    "var_flat": ("VAR_FLAT", np.float32),
}
# SCI-header keywords that describe the data rather than the WCS (where the
# JWST schema maps them from); read into ``Exposure.meta`` next to the primary
# header.  Everything else in ``meta`` (BKGLEVEL, EFFEXPTM, S_*) goes to the
# primary header.
_SCI_KEYWORDS = (
    "BUNIT", "PHOTMJSR", "PHOTUJA2", "PIXAR_SR", "PIXAR_A2",
    "MT_RA", "MT_DEC", "MT_AVRA", "MT_AVDEC", "S_REGION", "RA_REF", "DEC_REF", "XPOSURE", "TELAPSE",
)
# Values the JWST schema allows for step status keywords (``S_*``).
_STEP_STATUSES = ("COMPLETE", "SKIPPED", "FAILED")
_DATA_MODEL = "ImageModel"
# Structural keywords astropy writes, which are not metadata.
_PRIMARY_STRUCTURE_KEYS = ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "COMMENT", "HISTORY", "")
_IMAGE_STRUCTURE_KEYS = ("XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "EXTNAME")
# Image shape in a rendered WCS file's primary header (`write_rendered_wcs`).
_RENDERED_NY, _RENDERED_NX = "WCSNY", "WCSNX"
_WCS_KEY_PREFIXES = (
    "CRPIX", "CRVAL", "CTYPE", "CUNIT", "CDELT", "CD1_", "CD2_", "PC1_", "PC2_", "A_", "B_",
    "AP_", "BP_", "LONPOLE", "LATPOLE", "WCSAXES", "RADESYS", "EQUINOX", "MJDREF", "SIPMXERR",
    "SIPIVERR", "WCSNAME",
)


class InputFileError(ValueError):
    """An input file is missing, unreadable or not a usable JWST product."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# --------------------------------------------------------------------------
# Generic helpers


@contextmanager
def atomic_path(path, *, unique=False):
    """Yield a temporary path beside ``path``; rename it into place on success.

    A failure inside the block removes the temporary file, so no partial
    output is ever left under the final name.

    Parameters
    ----------
    path : str or Path
        The final name.
    unique : bool
        False (the default): the temporary file is ``.<name>.part``, and a
        stale one left by a writer that was killed (SIGKILL, a node lost)
        is replaced, so rerunning the killed job leaves no partial file
        behind.  True: a unique ``.<name>.<random>.part``, for files that
        several processes may write at once (the last rename wins).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if unique:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
    else:
        tmp = str(path.parent / f".{path.name}.part")
    if os.path.lexists(tmp):
        os.remove(tmp)  # writers refuse to overwrite an existing file on some paths
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# Keywords that describe the bytes of the file a header came from (MAST's
# _cal files carry them): copied into a product they would not match it.
_CHECKSUM_KEYWORDS = ("CHECKSUM", "DATASUM")


def _write_hdus(path, hdus):
    """Write HDUs as one FITS file, atomically, without checksum keywords copied from an input."""
    for hdu in hdus:
        for key in _CHECKSUM_KEYWORDS:
            hdu.header.remove(key, ignore_missing=True, remove_all=True)
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)


def _clean_header_value(value):
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def _header_from_meta(meta, skip=()):
    header = fits.Header()
    for key, value in meta.items():
        if key in skip or key.startswith("_") or len(key) > 8 or key in ("COMMENT", "HISTORY", ""):
            continue
        value = _clean_header_value(value)
        if isinstance(value, float) and not np.isfinite(value):
            continue  # FITS headers cannot hold NaN/inf: an absent keyword means "undefined"
        if isinstance(value, (str, int, float, bool)):
            header[key] = value
    return header


# --------------------------------------------------------------------------
# Associations


def read_association(path):
    """Read an image3 association (JSON) and resolve its member paths.

    Parameters
    ----------
    path : str or Path
        ASN file.  Member ``expname`` values are taken relative to its folder.

    Returns
    -------
    calimage3.association.Association

    Raises
    ------
    InputFileError
        When the file is missing, not JSON, or not an image3 association
        with science members.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "association file does not exist")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"not a JSON association ({exc})") from None
    try:
        asn = parse_association(content, base_dir=path.parent)
    except ValueError as exc:
        raise InputFileError(path, str(exc)) from None
    asn.path = path
    return asn


# --------------------------------------------------------------------------
# WCS from files


def _asdf_extension_bytes(hdul):
    """The ASDF file stored in a JWST image's ASDF extension, as bytes."""
    hdu = hdul["ASDF"]
    if isinstance(hdu, fits.BinTableHDU):
        return hdu.data["ASDF_METADATA"][0].tobytes()
    return np.asarray(hdu.data).tobytes()


def _gwcs_from_asdf_hdu(hdul, path):
    """Deserialize the gwcs in a JWST ASDF extension with plain asdf, or return None."""
    raw = _asdf_extension_bytes(hdul)
    with warnings.catch_warnings():
        # Unknown JWST tags (stdatamodels not installed) deserialize as plain
        # dicts with a warning; we detect that below and the caller falls back.
        warnings.simplefilter("ignore")
        import asdf
        from gwcs import WCS

        with asdf.open(_io.BytesIO(raw), lazy_load=True, memmap=False) as af:
            tree = af.tree
            candidate = tree.get("meta", {}).get("wcs") if isinstance(tree.get("meta"), dict) else None
            if candidate is None:
                candidate = tree.get("wcs")
            if isinstance(candidate, WCS):
                return candidate
    return None


def _untagged(loader, _suffix, node):
    """A YAML node with any tag as the plain mapping, list or string it holds."""
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


class _TagBlindLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe YAML loader that reads ASDF's tagged nodes as plain data (no asdf, no extensions)."""


_TagBlindLoader.add_multi_constructor("!", _untagged)
_TagBlindLoader.add_multi_constructor("tag:", _untagged)


def _bounding_box_edges_from_asdf(raw):
    """``((x_low, x_high), (y_low, y_high))`` of the gwcs bounding box in an ASDF file's YAML tree.

    Reads the tree as plain YAML, so neither asdf's extension registry
    (over a second to load) nor gwcs is needed.  None when the tree holds
    no gwcs, its first step has no box, or the box is in a form not known
    here (the caller then deserializes the gwcs).
    """
    start, end = raw.find(b"%YAML"), raw.find(b"\n...")
    if start < 0 or end < start:
        return None
    try:
        tree = yaml.load(raw[start:end + 1], Loader=_TagBlindLoader)
        wcs = (tree.get("meta") or {}).get("wcs") if isinstance(tree.get("meta"), dict) else None
        wcs = wcs if wcs is not None else tree.get("wcs")
        bbox = wcs["steps"][0]["transform"]["bounding_box"]
        if isinstance(bbox, dict):
            # bounding_box-1.x: intervals by input name; inputs are x then y
            if bbox.get("ignore"):
                return None
            intervals = bbox["intervals"]
            names = next((n for n in (("x0", "x1"), ("x", "y")) if set(intervals) == set(n)), None)
            if names is None:
                return None
            (x1, x2), (y1, y2) = intervals[names[0]], intervals[names[1]]
        else:
            # the older list form, in C order: ((y_low, y_high), (x_low, x_high))
            (y1, y2), (x1, x2) = bbox
        return (float(x1), float(x2)), (float(y1), float(y2))
    except (yaml.YAMLError, AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None


def gwcs_from_fits_header(header, shape):
    """Build a gwcs equivalent to a FITS TAN or TAN-SIP celestial header.

    Parameters
    ----------
    header : astropy.io.fits.Header
    shape : tuple of int
        ``(ny, nx)``; sets the bounding box and the range over which the
        inverse distortion is fitted when the header has no AP/BP terms.

    Returns
    -------
    gwcs.WCS or None
        None when the header has no celestial TAN WCS.
    """
    from astropy.wcs import WCS as FITSWCS
    from astropy.wcs import FITSFixedWarning

    from .wcs_tools import distortion_model, tangent_plane_wcs

    ctype1 = str(header.get("CTYPE1", ""))
    if not ctype1.startswith("RA---TAN"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        fw = FITSWCS(header, relax=True)
    cd = fw.pixel_scale_matrix
    crpix = fw.wcs.crpix - 1.0
    crval = fw.wcs.crval
    distortion = None
    if fw.sip is not None:
        a_order = int(header.get("A_ORDER", 0))
        b_order = int(header.get("B_ORDER", 0))
        coeffs_x = {
            f"c{i}_{j}": float(header[f"A_{i}_{j}"])
            for i in range(a_order + 1)
            for j in range(a_order + 1 - i)
            if f"A_{i}_{j}" in header and i + j >= 2
        }
        coeffs_y = {
            f"c{i}_{j}": float(header[f"B_{i}_{j}"])
            for i in range(b_order + 1)
            for j in range(b_order + 1 - i)
            if f"B_{i}_{j}" in header and i + j >= 2
        }
        degree = max(a_order, b_order, 2)
        distortion = distortion_model(coeffs_x, coeffs_y, shape, degree=degree, inverse_degree=degree + 2)
    return tangent_plane_wcs(shape, tuple(crpix), cd, tuple(crval), distortion)


def _import_datamodels():
    """``stdatamodels.jwst.datamodels``, imported on first need; None when not installed."""
    try:
        return importlib.import_module("stdatamodels.jwst.datamodels")
    except ImportError:
        return None


def _gwcs_from_datamodel(hdul, path):
    """The ``meta.wcs`` gwcs of a file read as a stdatamodels ``ImageModel``, or None.

    Returns None, without error, when stdatamodels is not installed.
    """
    datamodels = _import_datamodels()
    if datamodels is None:
        log.info("%s: stdatamodels is not installed; cannot use it to read the ASDF extension",
                 Path(path).name)
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # schema warnings on headers we do not use
        with datamodels.ImageModel(hdul) as model:
            wcs = model.meta.wcs if model.meta.hasattr("wcs") else None
    from gwcs import WCS

    return wcs if isinstance(wcs, WCS) else None


def _with_bounding_box(wcs, shape):
    if wcs.bounding_box is None:
        ny, nx = shape
        wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return wcs


def _read_wcs(hdul, path, shape):
    """The WCS of an open JWST image file and which reader gave it.

    Returns
    -------
    wcs : gwcs.WCS
    source : {'asdf', 'stdatamodels', 'sip'}
        Plain asdf + gwcs, the stdatamodels ``ImageModel``, or the FITS SIP
        approximation in the SCI header (see the module docstring).
    """
    name = Path(path).name
    if "ASDF" in hdul:
        for source, reader in (("asdf", _gwcs_from_asdf_hdu), ("stdatamodels", _gwcs_from_datamodel)):
            try:
                wcs = reader(hdul, path)
            except Exception as exc:  # a damaged ASDF block should not hide the SIP WCS
                log.warning("%s: ASDF extension unreadable with %s (%s)", name, source, exc)
                wcs = None
            if wcs is not None:
                log.info("%s: WCS taken from the ASDF extension (gwcs, read with %s)", name, source)
                return _with_bounding_box(wcs, shape), source
        log.info("%s: ASDF extension has no gwcs this environment can deserialize", name)
    wcs = gwcs_from_fits_header(hdul["SCI"].header, shape)
    if wcs is None:
        raise InputFileError(path, "no WCS: neither a gwcs in an ASDF extension nor a TAN/SIP WCS in the SCI header")
    log.info("%s: WCS taken from the FITS SIP approximation in the SCI header", name)
    return wcs, "sip"


def _open_fits(path, check_data=True, verify_checksums=False):
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file does not exist")
    # The sizes the headers declare, before astropy reads anything: a
    # truncated file is named here, not by a reshape error in a later step.
    problem = fits_layout_problem(path)
    if problem:
        raise InputFileError(path, f"not a readable FITS file ({problem})")
    try:
        hdul = fits.open(path, memmap=False)
        hdul.verify("exception")
    except Exception as exc:
        raise InputFileError(path, f"not a readable FITS file ({exc})") from None
    try:
        # recorded only when there was something to verify: not the _crf the workflow writes itself
        if (verify_checksums and not _checksums_on_record(path, verify_checksums)
                and verify_fits_checksums(hdul, path)):
            _record_checksums(path, verify_checksums)
        if "SCI" not in hdul or (hdul["SCI"].header.get("NAXIS", 0) != 2 if not check_data
                                 else hdul["SCI"].data is None):
            raise InputFileError(path, "no 2-D SCI image extension")
    except InputFileError:
        hdul.close()
        raise
    except (ValueError, TypeError, OSError, EOFError) as exc:
        hdul.close()
        raise InputFileError(path, f"not a readable FITS file ({exc})") from None
    return hdul


def read_exposure_wcs(path):
    """Read only the WCS, shape and metadata of a JWST image file.

    Returns
    -------
    wcs : gwcs.WCS
    shape : tuple of int
    meta : dict
    """
    with _open_fits(path, check_data=False) as hdul:
        sci = hdul["SCI"].header
        shape = (int(sci.get("NAXIS2", 0)), int(sci.get("NAXIS1", 0)))
        wcs, _ = _read_wcs(hdul, path, shape)
        meta = _read_meta(hdul)
    return wcs, shape, meta


def _is_number(word):
    try:
        float(word)
    except ValueError:
        return False
    return True


def parse_s_region(value):
    """Vertices of an ``S_REGION`` polygon (``POLYGON [ICRS] ra1 dec1 ra2 dec2 ...``).

    Returns
    -------
    ndarray of float64, shape (n, 2) or None
        ``(RA, Dec)`` in degrees; None when ``value`` is not such a polygon
        with at least three finite vertices.
    """
    words = str(value or "").split()
    if not words or words[0].upper() != "POLYGON":
        return None
    numbers = words[1:]
    if numbers and not _is_number(numbers[0]):
        numbers = numbers[1:]  # the coordinate frame (ICRS)
    try:
        values = np.array([float(v) for v in numbers])
    except ValueError:
        return None
    if values.size < 6 or values.size % 2 or not np.all(np.isfinite(values)):
        return None
    return values.reshape(-1, 2)


def read_bounding_box_range(path):
    """Pixel range ``(xmin, xmax, ymin, ymax)`` inside the bounding box of a file's WCS
    (`calimage3.pixmap.input_range`); reads headers and the WCS tree, no data
    (`_bounding_box_range_in`)."""
    with _open_fits(path, check_data=False) as hdul:
        return _bounding_box_range_in(hdul, path)


def _bounding_box_range_in(hdul, path):
    """`read_bounding_box_range` of an open file.

    The box is read from the ASDF extension's YAML as plain data when it
    can be (`_bounding_box_edges_from_asdf`), which needs no gwcs: the
    source-detection jobs need the box and nothing else of the WCS.
    Otherwise the WCS is read in full.
    """
    from .pixmap import input_range

    sci = hdul["SCI"].header
    shape = (int(sci.get("NAXIS2", 0)), int(sci.get("NAXIS1", 0)))
    edges = _bounding_box_edges_from_asdf(_asdf_extension_bytes(hdul)) if "ASDF" in hdul else None
    if edges is not None and sci.get("NAXIS") == 2:
        return input_range(shape, None, edges=edges)
    wcs, _ = _read_wcs(hdul, path, shape)
    return input_range(shape, wcs)


def read_exposure_footprint(path):
    """Sky footprint, shape and metadata of a JWST image, from headers when possible.

    The footprint is the SCI header's ``S_REGION`` polygon (JWST writes it in
    every ``_cal``), so no gwcs needs to be read; only when it is missing or
    malformed is the WCS read and its corners taken.  A file with neither an
    ASDF extension nor a TAN WCS in the SCI header is rejected here.

    Raises
    ------
    InputFileError
        Missing or unreadable file, no SCI, or no WCS.

    Returns
    -------
    footprint : ndarray, shape (n, 2)
        ``(RA, Dec)`` vertices, degrees.
    shape : tuple of int
    meta : dict
    """
    with _open_fits(path, check_data=False) as hdul:
        sci = hdul["SCI"].header
        shape = (int(sci.get("NAXIS2", 0)), int(sci.get("NAXIS1", 0)))
        meta = _read_meta(hdul)
        polygon = parse_s_region(sci.get("S_REGION"))
        if "ASDF" not in hdul and not str(sci.get("CTYPE1", "")).startswith("RA---TAN"):
            raise InputFileError(path, "no WCS: neither a gwcs in an ASDF extension nor a TAN/SIP WCS in the SCI header")
        if polygon is None:
            from .wcs_tools import footprint

            wcs, _ = _read_wcs(hdul, path, shape)
            polygon = footprint(wcs, shape)
    return polygon, shape, meta


def _read_meta(hdul):
    meta = {k: v for k, v in hdul[0].header.items() if k not in ("COMMENT", "HISTORY", "")}
    sci = hdul["SCI"].header
    for key in _SCI_KEYWORDS:
        if key in sci:
            meta[key] = sci[key]
    return meta


def read_exposure(path, arrays=None, *, with_wcs=True, with_input_range=False, verify_checksums=False):
    """Read a JWST ``_cal`` (or ``_crf``) image file into an `Exposure`.

    Parameters
    ----------
    path : str or Path
    arrays : iterable of str or None
        Which arrays to read (``"data"``, ``"err"``, ``"dq"``, ``"area"``,
        ``"var_poisson"``, ...); all by default.  A job that needs only a
        few then reads only those from disk.
    with_wcs : bool
        Read the WCS (the default).  False leaves ``wcs`` None and skips
        deserializing the gwcs, for jobs that work from a precomputed
        pixel map or need no coordinates.
    with_input_range : bool
        Also return the pixel range inside the WCS's bounding box
        (`read_bounding_box_range`), from the file already open.
    verify_checksums : bool or str or Path
        Check the ``DATASUM`` and ``CHECKSUM`` of every HDU that carries
        them (MAST files do) against the bytes on disk; this reads every
        HDU's data, also of arrays not asked for.  HDUs without them pass.
        A folder: the same, unless a record there says that the file, with
        its present size and modification time, passed in an earlier job;
        a file that passes is recorded there (`layout.checksum_records`:
        each member is then verified by the first job that reads it).

    Returns
    -------
    Exposure, or ``(Exposure, (xmin, xmax, ymin, ymax))`` with ``with_input_range``

    Raises
    ------
    InputFileError
        Missing file, corrupt or truncated FITS, a checksum that differs
        (with ``verify_checksums``), no SCI, shape mismatch or no WCS.
    """
    wanted = set(ARRAY_EXTENSIONS) if arrays is None else set(arrays) | {"data"}
    with _open_fits(path, verify_checksums=verify_checksums) as hdul:
        sci = hdul["SCI"].data
        if sci.ndim != 2:
            raise InputFileError(path, f"SCI must be a 2-D image, found {sci.ndim} dimensions")
        shape = sci.shape
        loaded = {}
        for attr, (extname, dtype) in ARRAY_EXTENSIONS.items():
            if attr in wanted and extname in hdul:
                try:
                    array = hdul[extname].data
                    if array is None:
                        continue
                    array = np.asarray(array, dtype=dtype)
                except (ValueError, TypeError, OSError, EOFError) as exc:
                    raise InputFileError(path, f"{extname} data cannot be read ({exc})") from None
                if array.shape != shape:
                    raise InputFileError(path, f"{extname} shape {array.shape} differs from SCI {shape}")
                loaded[attr] = array
        if "err" in wanted and "err" not in loaded:
            raise InputFileError(path, "no ERR extension")
        loaded.setdefault("err", None)
        if "dq" not in loaded:
            loaded["dq"] = np.zeros(shape, np.uint32)
        wcs, source = _read_wcs(hdul, path, shape) if with_wcs else (None, None)
        meta = _read_meta(hdul)
        used = _bounding_box_range_in(hdul, path) if with_input_range else None
    exposure = Exposure(wcs=wcs, meta=meta, name=Path(path).name, wcs_source=source, **loaded)
    return (exposure, used) if with_input_range else exposure


def read_aligned_exposure(cal_path, wcs_path, sky_path, *, arrays=None, verify_checksums=False):
    """A ``_cal`` exposure with its tweakreg WCS and skymatch level applied to the metadata.

    Parameters
    ----------
    cal_path : str or Path
        The exposure.
    wcs_path : str or Path or None
        Its WCS after assign_mtwcs/tweakreg (`write_wcs_file` format); None
        reads no WCS at all (``exposure.wcs`` is None), for jobs working
        from a precomputed pixel map.
    sky_path : str or Path
        The skymatch JSON of the association.
    arrays : iterable of str or None
        Arrays to read (see `read_exposure`); all by default.
    verify_checksums : bool or str or Path
        Verify the file's FITS checksums (see `read_exposure`).

    Returns
    -------
    exposure : Exposure
        ``wcs`` replaced; ``meta`` gains the step status keywords
        (``S_MTWCS``, ``S_TWKREG``, ``S_SKYMAT``) and ``BKGLEVEL``/``BKGSUB``.
        When skymatch ran with ``subtract=True`` the level is already
        subtracted from ``data``.
    sky_level : float
        Sky still present in ``data`` (MJy/sr): subtract it before
        comparing or combining exposures.
    """
    from .association import exposure_root

    # The _cal's own gwcs is replaced by the tweakreg one: never deserialize it.
    exposure = read_exposure(cal_path, arrays, with_wcs=False, verify_checksums=verify_checksums)
    sky = read_json(sky_path)
    if wcs_path is not None:
        wcs, _, info = read_wcs_file(wcs_path)
        exposure.wcs = wcs
        exposure.wcs_source = "asdf"
        for key, value in info.items():
            if len(key) <= 8 and isinstance(value, (str, int, float, bool)):
                exposure.meta[key] = value
    level = float(sky["levels"][exposure_root(cal_path)])
    exposure.meta["S_SKYMAT"] = sky["status"]
    exposure.meta["BKGLEVEL"] = level
    if sky.get("method"):
        exposure.meta["BKGMETH"] = sky["method"]
    if sky.get("subtract"):
        exposure.data = exposure.data - np.float32(level)
        exposure.meta["BKGSUB"] = True
        return exposure, 0.0
    exposure.meta["BKGSUB"] = False
    return exposure, level


# --------------------------------------------------------------------------
# Input integrity: FITS layout, checksums, and the input-check cache

_BLOCK = 2880
_CARD = 80
# Keywords that fix the size of an HDU's data (FITS standard 4.4.1).
_SIZE_KEYS = (b"BITPIX", b"NAXIS", b"PCOUNT", b"GCOUNT", b"GROUPS", b"EXTNAME")
# More header blocks than this without an END card is not a header.
_MAX_HEADER_BLOCKS = 4096
# The bytes a FITS header may hold: printable ASCII (FITS standard 4.1.1).
_HEADER_TEXT = bytes(range(0x20, 0x7F))


def _card_value(card):
    """The value of a fixed-format FITS card (bytes), as int, bool or str."""
    text = card[10:].decode("ascii", "replace")
    if text.lstrip().startswith("'"):
        return text.lstrip()[1:].split("'", 1)[0].strip()
    word = text.split("/", 1)[0].strip()
    if word in ("T", "F"):
        return word == "T"
    try:
        return int(word)
    except ValueError:
        return word


def _read_size_cards(fh, hdu_index, offset, size):
    """Size keywords of the header starting at ``offset``: (cards, header bytes), or a problem string."""
    cards = {}
    for n_blocks in range(1, _MAX_HEADER_BLOCKS + 1):
        block = fh.read(_BLOCK)
        if n_blocks == 1 and not block.startswith(b"XTENSION" if hdu_index else b"SIMPLE  "):
            if hdu_index == 0:
                return "does not start with SIMPLE: not a FITS file"
            return f"{size - offset} bytes after HDU {hdu_index - 1} that are not a FITS extension"
        if len(block) < _BLOCK:
            return f"truncated: the file ends inside the header of HDU {hdu_index} (byte {offset})"
        if block.translate(None, _HEADER_TEXT):
            # a damaged END card makes the data look like more header; the standard allows only text
            return (f"HDU {hdu_index}: header block at byte {offset + (n_blocks - 1) * _BLOCK} holds bytes that "
                    f"are not FITS header text (damaged header, or no END card before the data)")
        for start in range(0, _BLOCK, _CARD):
            card = block[start:start + _CARD]
            key = card[:8].rstrip()
            if key == b"END":
                return cards, n_blocks * _BLOCK
            if card[8:10] == b"= " and (key in _SIZE_KEYS or (key.startswith(b"NAXIS") and key[5:].isdigit())):
                cards[key.decode()] = _card_value(card)
    return f"HDU {hdu_index} has no END card in its first {_MAX_HEADER_BLOCKS} header blocks"


def _data_bytes(cards, primary):
    """Bytes of data an HDU's size keywords declare (before padding), or a problem string."""
    try:
        bitpix, naxis = int(cards["BITPIX"]), int(cards["NAXIS"])
        axes = [int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
        pcount, gcount = int(cards.get("PCOUNT", 0)), int(cards.get("GCOUNT", 1))
    except KeyError as exc:
        return f"keyword {exc.args[0]} is missing"
    except (TypeError, ValueError):
        return "a size keyword (BITPIX, NAXISn, PCOUNT, GCOUNT) is not an integer"
    if bitpix not in (8, 16, 32, 64, -32, -64) or naxis < 0 or naxis > 999 or min(axes, default=0) < 0 \
            or pcount < 0 or gcount < 0:
        return f"invalid size keywords (BITPIX={bitpix}, NAXIS={naxis}, axes {axes}, PCOUNT={pcount}, GCOUNT={gcount})"
    if naxis == 0:
        return 0
    if primary and cards.get("GROUPS") is True and axes[0] == 0:
        axes = axes[1:]  # random groups: NAXIS1 = 0 is not an axis
    return abs(bitpix) // 8 * gcount * (pcount + int(np.prod(axes, dtype=np.int64)))


def fits_layout_problem(path):
    """What is wrong with a FITS file's layout, from its headers alone.

    Walks the HDUs header by header, adding to each header's blocks the
    padded data size its ``BITPIX``, ``NAXISn``, ``PCOUNT`` and ``GCOUNT``
    declare, and compares the total with the file's size.  Only the header
    blocks are read (a few kB per HDU), never the data.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str or None
        A one-line description of the problem (truncated file, unreadable
        header, bytes after the last HDU that are not an HDU); None when
        the layout is consistent.  Gzip-compressed files are not walked
        (None): astropy checks them as it decompresses.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            return None
        if size == 0:
            return "empty file (0 bytes)"
        offset, index = 0, 0
        while offset < size:
            fh.seek(offset)
            if index > 0 and not fh.read(_BLOCK).strip(b"\0"):
                offset += _BLOCK  # zero padding after the last HDU: tolerated, as astropy does
                continue
            fh.seek(offset)
            found = _read_size_cards(fh, index, offset, size)
            if isinstance(found, str):
                return found
            cards, header_bytes = found
            nbytes = _data_bytes(cards, primary=index == 0)
            name = f"HDU {index}" + (f" ({cards['EXTNAME']})" if cards.get("EXTNAME") else "")
            if isinstance(nbytes, str):
                return f"{name}: {nbytes}"
            end = offset + header_bytes + -(-nbytes // _BLOCK) * _BLOCK
            if end > size:
                return (f"truncated: {name} ends at byte {end} by its header's size keywords, "
                        f"but the file has {size} bytes")
            offset, index = end, index + 1
    return None


def verify_fits_checksums(hdul, path):
    """Check every HDU's ``DATASUM`` and ``CHECKSUM`` against its bytes.

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList
        Opened from ``path``; each HDU's data is read.
    path : str or Path
        For the message.

    Returns
    -------
    bool
        Whether any HDU carried a checksum (a file with none has nothing to record).

    Raises
    ------
    InputFileError
        Naming the HDU whose data or header differ from their checksum.
        HDUs that carry neither keyword pass.
    """
    carried = False
    for index, hdu in enumerate(hdul):
        name = f"HDU {index}" + (f" ({hdu.name})" if hdu.name and hdu.name != "PRIMARY" else "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "DATASUM" in hdu.header and hdu.verify_datasum() == 0:
                raise InputFileError(path, f"{name}: its data do not match DATASUM: the file is damaged "
                                           f"(set verify_checksums: false to read it anyway)")
            if "CHECKSUM" in hdu.header and hdu.verify_checksum() == 0:
                raise InputFileError(path, f"{name}: its header and data do not match CHECKSUM: the file is "
                                           f"damaged (set verify_checksums: false to read it anyway)")
        carried = carried or "DATASUM" in hdu.header or "CHECKSUM" in hdu.header
    return carried


def _checksum_record(path, records):
    """The file in folder ``records`` that says ``path`` passed its checksums (None: no folder)."""
    if isinstance(records, bool) or records is None:
        return None
    return Path(records) / f"{Path(path).name}.json"


def _checksums_on_record(path, records):
    """Whether ``path``, as it is now (`file_identity`), passed its checksums in an earlier job of the run."""
    record = _checksum_record(path, records)
    if record is None:
        return False
    try:
        return json.loads(record.read_text()) == list(file_identity(path) or ())
    except (OSError, ValueError):
        return False


def _record_checksums(path, records):
    """Note in folder ``records`` that ``path``, as it is now, passed its checksums."""
    record = _checksum_record(path, records)
    identity = file_identity(path)
    if record is not None and identity is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json(record, list(identity))


def file_identity(path, resolved_folders=None):
    """``(resolved path, size in bytes, modification time in ns)`` of a file, or None when it is missing.

    The key under which the input checks cache what they found in a file:
    a file whose size or modification time changed is checked again.

    Parameters
    ----------
    path : str or Path
    resolved_folders : dict or None
        Folder -> its resolved path, filled and reused across calls: the
        members of a campaign sit in a few folders, so each file then
        costs one ``lstat`` (plus a ``stat`` if it is a symbolic link).
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.join(os.getcwd(), path))
    if resolved_folders is None:
        resolved_folders = {}
    try:
        real_folder = resolved_folders.get(folder)
        if real_folder is None:
            real_folder = resolved_folders[folder] = os.path.realpath(folder)
        resolved = os.path.join(real_folder, name)
        status = os.lstat(resolved)
        if stat.S_ISLNK(status.st_mode):
            resolved = os.path.realpath(resolved)
            status = os.stat(resolved)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return resolved, int(status.st_size), int(status.st_mtime_ns)


def read_check_cache(path, version):
    """Entries of an input-check cache written by `write_check_cache`.

    Parameters
    ----------
    path : str or Path
    version : int or str
        The check's version; a cache of another version is ignored.

    Returns
    -------
    dict
        What was written as ``entries``; empty when the file is missing,
        unreadable, corrupt or of another version (the checks then simply
        run again).  The caller validates each entry before trusting it.
    """
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("version") != version:
        return {}
    entries = content.get("entries")
    return entries if isinstance(entries, dict) else {}


def write_check_cache(path, version, entries):
    """Write the input-check cache atomically (see `read_check_cache`).

    A folder or file that cannot be written only costs the next start its
    checks: the failure is logged, not raised.
    """
    try:
        # unique: on a cluster every job's Snakemake start may write it at once
        with atomic_path(path, unique=True) as tmp:
            Path(tmp).write_text(json.dumps({"version": version, "entries": entries}, separators=(",", ":")))
    except OSError as exc:
        log.warning("input-check cache %s not written: %s", path, exc)


# --------------------------------------------------------------------------
# Writing data models


def _asdf_hdu(tree):
    import asdf

    buffer = _io.BytesIO()
    asdf.AsdfFile(tree).write_to(buffer)
    data = np.frombuffer(buffer.getvalue(), dtype=np.uint8)[None, :]
    column = fits.Column(name="ASDF_METADATA", format=f"{data.shape[1]}B", array=data)
    return fits.BinTableHDU.from_columns([column], name="ASDF")


def _step_status(value):
    """A step status keyword's value as the JWST schema allows it, or None."""
    status = str(value).strip().upper()
    if status.startswith("FAILED"):
        return "FAILED"
    return status if status in _STEP_STATUSES else None


def _primary_header(meta, path):
    """Primary header of a JWST product: ``meta`` less SCI keywords, file name and model type.

    Step status keywords (``S_*``) take the schema's values so that the
    product validates: ``FAILED: reason`` becomes ``FAILED``, and a value
    that is none of COMPLETE, SKIPPED, FAILED is left out with a warning.
    """
    header = _header_from_meta(meta, skip=_SCI_KEYWORDS)
    for key in [k for k in header if k.startswith("S_")]:
        status = _step_status(header[key])
        if status is None:
            log.warning("%s: step status %s=%r is not one of %s; not written", Path(path).name, key,
                        header[key], _STEP_STATUSES)
            del header[key]
        else:
            header[key] = status
    header.setdefault("TELESCOP", "JWST")
    header["DATAMODL"] = _DATA_MODEL
    header["FILENAME"] = Path(path).name
    return header


def _wcs_sci_keywords(wcs, shape, sip_max_pix_error):
    """SCI-header keywords derived from the gwcs: ``S_REGION`` and the TAN-SIP approximation."""
    header = fits.Header()
    from .wcs_tools import s_region

    try:  # the footprint of the WCS written, which tweakreg may have changed
        header["S_REGION"] = s_region(wcs, shape)
    except Exception as exc:  # a WCS that cannot reach the corners: keep the input's
        log.warning("could not compute S_REGION: %s", exc)
    try:
        from .wcs_tools import sip_header

        header.update(sip_header(wcs, shape, max_pix_error=sip_max_pix_error))
    except Exception as exc:  # the gwcs stays authoritative in the ASDF extension
        log.warning("could not fit a SIP approximation: %s", exc)
    return header


def _sci_header(wcs, shape, meta, sip_max_pix_error, wcs_keywords=None):
    """SCI header: the data keywords of ``meta``, then ``wcs_keywords`` (derived from ``wcs`` when None)."""
    header = _header_from_meta({k: meta[k] for k in _SCI_KEYWORDS if k in meta})
    header.setdefault("BUNIT", "MJy/sr")
    if wcs_keywords is None:
        wcs_keywords = _wcs_sci_keywords(wcs, shape, sip_max_pix_error)
    header.update(wcs_keywords)
    return header


def _array_header(extname, bunit):
    """Header of a non-SCI image extension: ``BUNIT`` as JWST writes it."""
    if extname == "ERR":
        return fits.Header([("BUNIT", bunit)])
    if extname.startswith("VAR_"):
        return fits.Header([("BUNIT", f"({bunit})^2")])
    return None


def _array_hdus(arrays, extensions, bunit):
    """One ImageHDU per array present, in ``extensions`` order (SCI excluded)."""
    hdus = []
    for key, (extname, dtype) in extensions.items():
        if key != "data" and arrays.get(key) is not None:
            hdus.append(fits.ImageHDU(np.asarray(arrays[key], dtype=dtype), header=_array_header(extname, bunit),
                                      name=extname))
    return hdus


def write_exposure(path, exposure, *, sip_max_pix_error=0.01, rendered_wcs=None):
    """Write an `Exposure` as a JWST-layout image FITS file (``_cal``/``_crf``).

    The file opens as a stdatamodels ``ImageModel`` that passes strict
    schema validation.

    Parameters
    ----------
    path : str or Path
    exposure : Exposure
    sip_max_pix_error : float
        Accuracy of the SIP approximation written in the SCI header, pixels.
    rendered_wcs : RenderedWcs or None
        The exposure's WCS already rendered (`read_rendered_wcs`): its SCI
        keywords and ASDF extension are written as they are, and
        ``exposure.wcs`` is not used (it may be None).
    """
    if rendered_wcs is None:
        wcs_keywords, asdf_hdu = None, _asdf_hdu({"meta": {"wcs": exposure.wcs}})
    else:
        if tuple(rendered_wcs.shape) != tuple(exposure.shape):
            raise ValueError(f"rendered_wcs: shape {rendered_wcs.shape} differs from the exposure's {exposure.shape}")
        wcs_keywords, asdf_hdu = rendered_wcs.sci_keywords, rendered_wcs.asdf_hdu.copy()
    sci = _sci_header(exposure.wcs, exposure.shape, exposure.meta, sip_max_pix_error, wcs_keywords)
    arrays = {attr: getattr(exposure, attr) for attr in ARRAY_EXTENSIONS}
    hdus = [
        fits.PrimaryHDU(header=_primary_header(exposure.meta, path)),
        fits.ImageHDU(np.asarray(exposure.data, dtype=np.float32), header=sci, name="SCI"),
        *_array_hdus(arrays, ARRAY_EXTENSIONS, sci["BUNIT"]),
        asdf_hdu,
    ]
    _write_hdus(path, hdus)


@dataclass
class RenderedWcs:
    """An exposure's WCS in the form a JWST product carries it, ready to write.

    Attributes
    ----------
    info : dict
        Step keywords that came with the WCS (``S_TWKREG``, ``TWK*``...),
        for the primary header.
    shape : tuple of int
        ``(ny, nx)`` of the image the WCS describes.
    sci_keywords : astropy.io.fits.Header
        ``S_REGION`` and the TAN-SIP approximation, for the SCI header.
    asdf_hdu : astropy.io.fits.BinTableHDU
        The ``ASDF`` extension holding the gwcs.
    """

    info: dict
    shape: tuple
    sci_keywords: fits.Header
    asdf_hdu: fits.BinTableHDU


def write_rendered_wcs(path, wcs, shape, info=None, *, sip_max_pix_error=0.01, pixel_area=False):
    """Render a WCS once as `write_exposure` writes it, into a small FITS file.

    Serialising a gwcs needs asdf, whose extensions take about a second to
    load in each process; rendering every exposure's WCS in one job lets the
    per-exposure jobs write their ``_crf`` with astropy.io.fits alone
    (`read_rendered_wcs`, then ``write_exposure(..., rendered_wcs=)``).

    Parameters
    ----------
    path : str or Path
    wcs : gwcs.WCS
    shape : tuple of int
        ``(ny, nx)`` of the exposure.
    info : dict or None
        Keywords stored with the WCS (`RenderedWcs.info`).
    sip_max_pix_error : float
        Accuracy of the SIP approximation, pixels.
    pixel_area : bool
        Also store ``PIXAR_SR``/``PIXAR_A2`` at the image centre (for an
        output grid; an exposure's come from its calibration).
    """
    keywords = _wcs_sci_keywords(wcs, shape, sip_max_pix_error)
    if pixel_area:
        from .wcs_tools import pixel_area_keywords

        keywords.update(pixel_area_keywords(wcs, shape))
    primary = _header_from_meta(info or {})
    primary[_RENDERED_NY], primary[_RENDERED_NX] = (int(n) for n in shape)
    hdus = [
        fits.PrimaryHDU(header=primary),
        fits.ImageHDU(header=keywords, name="WCS_KEYS"),
        _asdf_hdu({"meta": {"wcs": wcs}}),
    ]
    _write_hdus(path, hdus)


def read_rendered_wcs(path):
    """Read a file written by `write_rendered_wcs` (no asdf or gwcs needed).

    Returns
    -------
    RenderedWcs
    """
    with fits.open(path, memmap=False) as hdul:
        info = {k: v for k, v in hdul[0].header.items() if k not in _PRIMARY_STRUCTURE_KEYS}
        shape = (int(info.pop(_RENDERED_NY)), int(info.pop(_RENDERED_NX)))
        keys = hdul["WCS_KEYS"].header.copy()
        for key in _IMAGE_STRUCTURE_KEYS:
            keys.remove(key, ignore_missing=True, remove_all=True)
        asdf_hdu = fits.BinTableHDU(data=hdul["ASDF"].data.copy(), header=hdul["ASDF"].header.copy(), name="ASDF")
    return RenderedWcs(info=info, shape=shape, sci_keywords=keys, asdf_hdu=asdf_hdu)


_I2D_EXTENSIONS = {
    "err": ("ERR", np.float32),
    "con": ("CON", np.int32),
    "wht": ("WHT", np.float32),
    "var_poisson": ("VAR_POISSON", np.float32),
    "var_rnoise": ("VAR_RNOISE", np.float32),
    "var_flat": ("VAR_FLAT", np.float32),
}


def _mosaic_sci_keywords(meta, pixel_area):
    """SCI keywords of a mosaic that can be derived when ``meta`` lacks them.

    ``PIXAR_SR``/``PIXAR_A2`` from ``pixel_area`` (the grid's, at its
    centre) and ``XPOSURE`` (the SCI copy of the effective exposure time)
    from ``EFFEXPTM``; values in ``meta`` win.
    """
    derived = dict(pixel_area)
    if "EFFEXPTM" in meta:
        derived["XPOSURE"] = meta["EFFEXPTM"]
    return derived | dict(meta)


def write_i2d(path, arrays, wcs, meta, *, hdrtab=None, sip_max_pix_error=0.01, rendered_wcs=None):
    """Write a resampled mosaic in the JWST ``_i2d`` layout.

    Extensions SCI, ERR, CON, WHT, VAR_POISSON, VAR_RNOISE, VAR_FLAT (those
    present), HDRTAB and ASDF; the file opens as a stdatamodels
    ``ImageModel`` (what jwst's resample writes) that passes strict schema
    validation.

    Parameters
    ----------
    path : str or Path
    arrays : dict
        ``data`` (SCI), ``err``, ``con`` (int32, (nplanes, ny, nx)), ``wht``,
        ``var_poisson``, ``var_rnoise``, ``var_flat``.
    wcs : gwcs.WCS or None
        Output WCS (None when ``rendered_wcs`` is given).
    meta : dict
        Primary header keywords (and SCI keywords such as PIXAR_SR).
        ``PIXAR_SR``, ``PIXAR_A2``, ``XPOSURE`` and ``BUNIT`` are derived
        from the WCS and ``EFFEXPTM`` when absent; ``S_REGION`` is always
        the footprint of the WCS.
    hdrtab : astropy.table.Table or None
        Key header values of the input exposures (the JWST HDRTAB).
    sip_max_pix_error : float
        Accuracy of the SIP approximation written in the SCI header, pixels.
    rendered_wcs : RenderedWcs or None
        The output WCS already rendered (``write_rendered_wcs(...,
        pixel_area=True)``), written as it is: no gwcs is needed here.
    """
    shape = arrays["data"].shape
    if rendered_wcs is None:
        from .wcs_tools import pixel_area_keywords

        wcs_keywords, pixel_area = None, pixel_area_keywords(wcs, shape)
        asdf_hdu = _asdf_hdu({"meta": {"wcs": wcs}})
    else:
        if tuple(rendered_wcs.shape) != tuple(shape):
            raise ValueError(f"rendered_wcs: shape {rendered_wcs.shape} differs from the mosaic's {shape}")
        wcs_keywords = rendered_wcs.sci_keywords.copy()
        pixel_area = {k: wcs_keywords.pop(k) for k in ("PIXAR_SR", "PIXAR_A2") if k in wcs_keywords}
        asdf_hdu = rendered_wcs.asdf_hdu.copy()
    sci = _sci_header(wcs, shape, _mosaic_sci_keywords(meta, pixel_area), sip_max_pix_error, wcs_keywords)
    hdus = [
        fits.PrimaryHDU(header=_primary_header(meta, path)),
        fits.ImageHDU(np.asarray(arrays["data"], dtype=np.float32), header=sci, name="SCI"),
        *_array_hdus(arrays, _I2D_EXTENSIONS, sci["BUNIT"]),
    ]
    if hdrtab is not None and len(hdrtab):
        from astropy.table import Table

        hdus.append(fits.BinTableHDU(Table(hdrtab), name="HDRTAB"))
    hdus.append(asdf_hdu)
    _write_hdus(path, hdus)


def _read_i2d_arrays(hdul, names=None):
    """The arrays (lower-case extension name; ``data`` for SCI) of an open mosaic.

    ``names`` selects which (SCI is always read); None reads all present.
    """
    arrays = {"data": np.asarray(hdul["SCI"].data, dtype=np.float32)}
    for extname in ("ERR", "WHT", "CON", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"):
        if extname in hdul and (names is None or extname.lower() in names):
            arrays[extname.lower()] = np.asarray(hdul[extname].data)
    return arrays


def read_i2d(path):
    """Read a resampled mosaic written by `write_i2d`.

    Returns
    -------
    arrays : dict
        Lower-case extension name -> array (``data`` for SCI).
    wcs : gwcs.WCS
    meta : dict
        Primary header and SCI photometric keywords.
    """
    with _open_fits(path) as hdul:
        arrays = _read_i2d_arrays(hdul)
        wcs, _ = _read_wcs(hdul, path, arrays["data"].shape)
        meta = _read_meta(hdul)
    return arrays, wcs, meta


def read_i2d_rendered(path, arrays=None):
    """Read a mosaic like `read_i2d`, its WCS as written (no asdf or gwcs needed).

    Parameters
    ----------
    path : str or Path
    arrays : iterable of str or None
        Which arrays to read besides ``data`` (``"err"``, ``"wht"``,
        ``"con"``, ``"var_poisson"``...); all present by default.

    Returns
    -------
    arrays : dict
        As for `read_i2d`.
    rendered : RenderedWcs
        The SCI header's WCS keywords (``S_REGION``, the TAN(-SIP) WCS and
        its ``SIPMXERR``) and the ASDF extension, unparsed; with
        `calimage3.fits_wcs.exact_fits_wcs` the header may stand in for
        the gwcs, else read it with `read_exposure_wcs`.
    meta : dict
        As for `read_i2d`.
    """
    names = None if arrays is None else set(arrays)
    with _open_fits(path) as hdul:
        arrays = _read_i2d_arrays(hdul, names)
        if "ASDF" not in hdul:
            raise InputFileError(path, "no ASDF extension holding the mosaic's gwcs")
        drop = _IMAGE_STRUCTURE_KEYS + ("NAXIS1", "NAXIS2") + tuple(k for k in _SCI_KEYWORDS if k != "S_REGION")
        keys = fits.Header([card for card in hdul["SCI"].header.cards if card.keyword not in drop])
        asdf_hdu = hdul["ASDF"].copy()  # a table, or a uint8 image in older files
        meta = _read_meta(hdul)
    rendered = RenderedWcs(info={}, shape=arrays["data"].shape, sci_keywords=keys, asdf_hdu=asdf_hdu)
    return arrays, rendered, meta


def write_segmentation(path, segm, wcs, meta, *, rendered_wcs=None):
    """Write a segmentation map (int32 labels, 0 = background) with its WCS.

    ``rendered_wcs`` (`RenderedWcs`, e.g. the mosaic's from
    `read_i2d_rendered`) is written as it is, with ``wcs`` None: no gwcs
    is needed then.
    """
    primary = fits.PrimaryHDU(header=_header_from_meta(meta, skip=_SCI_KEYWORDS))
    primary.header["FILENAME"] = Path(path).name
    if rendered_wcs is None:
        header = _sci_header(wcs, segm.shape, {}, 0.01)
        header.remove("BUNIT", ignore_missing=True)
        asdf_hdu = _asdf_hdu({"meta": {"wcs": wcs}})
    else:
        if tuple(rendered_wcs.shape) != tuple(segm.shape):
            raise ValueError(f"rendered_wcs: shape {rendered_wcs.shape} differs from the map's {segm.shape}")
        header, asdf_hdu = rendered_wcs.sci_keywords.copy(), rendered_wcs.asdf_hdu.copy()
    hdus = [primary, fits.ImageHDU(np.asarray(segm, dtype=np.int32), header=header, name="SCI"), asdf_hdu]
    _write_hdus(path, hdus)


def write_image(path, arrays, *, header=None, meta=None):
    """Write named float arrays as image extensions of a plain FITS file.

    Used for intermediates (single-exposure drizzles, the median, resample
    contributions); read them back section by section with
    `open_image_sections`, and their keywords with `read_image_meta`.

    Parameters
    ----------
    path : str or Path
    arrays : dict
        Extension name -> array.
    header : astropy.io.fits.Header or None
        Primary header.
    meta : dict or None
        Keywords added to the primary header (non-FITS values are skipped).
    """
    header = fits.Header() if header is None else header.copy()
    if meta:
        header.update(_header_from_meta(meta))
    hdus = [fits.PrimaryHDU(header=header)]
    for name, array in arrays.items():
        hdus.append(fits.ImageHDU(np.asarray(array), name=name.upper()))
    _write_hdus(path, hdus)


def read_image_meta(path):
    """Primary-header keywords and image-extension names of a file from `write_image`.

    Returns
    -------
    meta : dict
    extensions : list of str
        Lower-case names of the image extensions present.
    """
    with fits.open(path, memmap=True) as hdul:
        meta = {k: v for k, v in hdul[0].header.items() if k not in ("COMMENT", "HISTORY", "")}
        extensions = [h.name.lower() for h in hdul[1:]]
    return meta, extensions


_SECTION_BAND_ROWS = 128  # rows per read in ImageSection when it reads whole rows


def _column_range(key, shape):
    """The column range of a 2-D ``[rows, columns]`` key of unit-step slices narrower than ``shape``, else None."""
    if len(shape) != 2 or not isinstance(key, tuple) or len(key) != 2:
        return None
    if not all(isinstance(k, slice) and k.step in (None, 1) for k in key):
        return None
    c0, c1, _ = key[1].indices(shape[1])
    if c1 <= c0 or (c0, c1) == (0, shape[1]):
        return None
    return slice(c0, c1)


class ImageSection:
    """An image extension read from disk only as far as it is sliced.

    ``section[r0:r1]`` reads those rows (astropy ``ImageHDU.section``) and
    returns a native-endian array; nothing stays mapped, so a job streaming
    bands of rows from many files holds one band per file, however many
    files there are (a memory map would keep every page it touched).
    ``np.asarray(section)`` reads the whole image.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
        Native-endian dtype of the data.
    """

    def __init__(self, hdu):
        self._hdu = hdu
        self.shape = tuple(hdu.shape)
        first = hdu.section[tuple(slice(0, 1) for _ in self.shape)]
        self.dtype = first.dtype.newbyteorder("=")

    @property
    def ndim(self):
        return len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        columns = _column_range(key, self.shape)
        if columns is None:
            return np.asarray(self._hdu.section[key], dtype=self.dtype)
        # astropy reads a section narrower than the image one row at a time
        # (a 2048-row footprint: 2048 reads); whole rows, a band at a time, are
        # one read each.
        r0, r1, _ = key[0].indices(self.shape[0])
        out = np.empty((max(r1 - r0, 0), columns.stop - columns.start), dtype=self.dtype)
        for start in range(r0, r1, _SECTION_BAND_ROWS):
            stop = min(start + _SECTION_BAND_ROWS, r1)
            out[start - r0:stop - r0] = self._hdu.section[start:stop][:, columns]
        return out

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[...], dtype=dtype or self.dtype)


@contextmanager
def open_image_sections(path, names):
    """Read-on-demand views (`ImageSection`) of image extensions of a FITS file.

    Slicing a view (``view[r0:r1]``) reads only those rows from disk, so a
    caller can stream large images section by section.

    Yields
    ------
    dict
        Extension name -> `ImageSection`, or None for an empty extension.
    """
    with fits.open(path, memmap=False, mode="readonly", do_not_scale_image_data=True) as hdul:
        yield {name: ImageSection(hdul[name.upper()]) if hdul[name.upper()].header.get("NAXIS", 0) else None
               for name in names}


# --------------------------------------------------------------------------
# Small intermediate files


def write_wcs_file(path, wcs, shape=None, info=None):
    """Store a gwcs (and optional shape and JSON-able info) in an ASDF file."""
    tree = {"wcs": wcs}
    if shape is not None:
        tree["shape"] = [int(s) for s in shape]
    if info is not None:
        tree["info"] = info
    import asdf

    with atomic_path(path) as tmp:
        asdf.AsdfFile(tree).write_to(tmp)


def read_wcs_file(path):
    """Read a file written by `write_wcs_file`.

    Returns
    -------
    wcs : gwcs.WCS
    shape : tuple of int or None
    info : dict
    """
    import asdf

    with asdf.open(path, lazy_load=False, memmap=False) as af:
        wcs = af.tree["wcs"]
        shape = tuple(af.tree["shape"]) if "shape" in af.tree else None
        info = dict(af.tree.get("info", {}))
    return wcs, shape, _plain(info)


def write_pixel_map(path, coarse):
    """Write a `calimage3.pixmap.CoarsePixelMap` (a small FITS file).

    The primary array holds the node positions ``(2, n_nodes_y, n_nodes_x)``
    (output x, output y); NODES_X and NODES_Y extensions the input pixel
    columns and rows of the nodes; keywords the input shape and range and
    the output grid's shape.
    """
    xmin, xmax, ymin, ymax = (int(v) for v in coarse.input_range)
    header = fits.Header([
        ("IN_NY", int(coarse.shape[0]), "input image rows"),
        ("IN_NX", int(coarse.shape[1]), "input image columns"),
        ("IN_XMIN", xmin, "first input column inside the WCS bounding box"),
        ("IN_XMAX", xmax, "last input column inside the WCS bounding box"),
        ("IN_YMIN", ymin, "first input row inside the WCS bounding box"),
        ("IN_YMAX", ymax, "last input row inside the WCS bounding box"),
    ])
    if coarse.output_shape is not None:
        header["OUT_NY"] = (int(coarse.output_shape[0]), "output grid rows")
        header["OUT_NX"] = (int(coarse.output_shape[1]), "output grid columns")
    hdus = [
        fits.PrimaryHDU(np.stack([coarse.x_out, coarse.y_out]).astype(np.float64), header=header),
        fits.ImageHDU(np.asarray(coarse.nodes_x, np.float64), name="NODES_X"),
        fits.ImageHDU(np.asarray(coarse.nodes_y, np.float64), name="NODES_Y"),
    ]
    _write_hdus(path, hdus)


def read_pixel_map(path):
    """Read a file written by `write_pixel_map` into a `calimage3.pixmap.CoarsePixelMap`."""
    from .pixmap import CoarsePixelMap

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "pixel map file does not exist")
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header
        nodes = np.asarray(hdul[0].data, dtype=np.float64)
        nodes_x = np.asarray(hdul["NODES_X"].data, dtype=np.float64)
        nodes_y = np.asarray(hdul["NODES_Y"].data, dtype=np.float64)
    if nodes.shape != (2, nodes_y.size, nodes_x.size):
        raise InputFileError(path, f"pixel map nodes have shape {nodes.shape}, expected "
                                   f"(2, {nodes_y.size}, {nodes_x.size})")
    return CoarsePixelMap(
        shape=(int(header["IN_NY"]), int(header["IN_NX"])), nodes_x=nodes_x, nodes_y=nodes_y,
        x_out=nodes[0], y_out=nodes[1],
        input_range=tuple(int(header[k]) for k in ("IN_XMIN", "IN_XMAX", "IN_YMIN", "IN_YMAX")),
        output_shape=(int(header["OUT_NY"]), int(header["OUT_NX"])) if "OUT_NY" in header else None,
    )


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_table(path, table):
    """Write an astropy table as ECSV (atomically)."""
    with atomic_path(path) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)


def read_table(path):
    """Read an ECSV table written by `write_table`."""
    from astropy.table import QTable

    return QTable.read(path, format="ascii.ecsv")


def write_json(path, content):
    """Write a JSON document (atomically)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(content, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path):
    """Read a JSON document."""
    return json.loads(Path(path).read_text())


# Unresolvable by design (RFC 2606): CRDS is used offline, on the local cache only.
_CRDS_OFFLINE_SERVER = "https://crds-offline.invalid"


def crds_reference_files(parameters, reftypes):
    """Reference files the local CRDS cache picks for a dataset, offline.

    Used only when ``CRDS_PATH`` names an existing folder (a cache made
    with ``crds sync``) and the ``crds`` package is installed.  No server is
    ever contacted: ``CRDS_MODE`` is ``local``, and ``CRDS_SERVER_URL``,
    unless set, is an unresolvable address; the context is the cache's
    (``CRDS_CONTEXT`` or its ``config/jwst/server_config``).

    Parameters
    ----------
    parameters : dict
        CRDS matching parameters (`calimage3.reference_data.crds_parameters`).
    reftypes : list of str
        e.g. ``["apcorr", "abvegaoffset"]``.

    Returns
    -------
    found : dict
        reftype -> path of the selected file in the cache.
    missing : dict
        reftype -> why no file was selected (no cache, no crds, no match).
    """
    reftypes = list(reftypes)
    cache = os.environ.get("CRDS_PATH", "")
    if not reftypes:
        return {}, {}
    if not cache or not Path(cache).is_dir():
        return {}, {t: "no local CRDS cache (CRDS_PATH unset)" for t in reftypes}
    os.environ["CRDS_MODE"] = "local"
    os.environ.setdefault("CRDS_SERVER_URL", _CRDS_OFFLINE_SERVER)
    try:
        import crds
    except ImportError:
        return {}, {t: "the crds package is not installed (pip install crds)" for t in reftypes}
    found, missing = {}, {}
    for reftype in reftypes:  # one at a time: a type the rules lack must not hide another
        try:
            path = crds.getreferences(parameters, reftypes=[reftype], observatory="jwst").get(reftype)
        except Exception as exc:  # noqa: BLE001 - crds raises many kinds; the catalog goes on without it
            missing[reftype] = f"CRDS cache {cache}: {type(exc).__name__}: {exc}".splitlines()[0]
            continue
        if path and Path(path).is_file():
            found[reftype] = str(path)
        else:
            missing[reftype] = f"CRDS cache {cache}: no {reftype} file for this mosaic ({path})"
    return found, missing


def write_manifest(path, content):
    """Write the campaign manifest (calimage3.campaign) unless it already says the same.

    Snakemake starts the workflow again in every cluster job; rewriting an
    unchanged manifest there would only race with other jobs.
    """
    text = json.dumps(content, indent=1, sort_keys=True) + "\n"
    try:
        if Path(path).read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def read_manifest(path):
    """Read the campaign manifest; InputFileError naming it when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputFileError(path, "no campaign manifest: the workflow has not been started with this output_dir") from None
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"unreadable campaign manifest ({exc})") from None


def read_text_tail(path, size=65536):
    """The last ``size`` bytes of a text file (a log), decoded leniently; '' when unreadable."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def list_files(folder, pattern):
    """Files under ``folder`` (recursively) matching ``pattern``, sorted; [] when it does not exist."""
    return sorted(str(p) for p in Path(folder).rglob(pattern) if p.is_file())


def file_sha256(path, chunk_size=1 << 22):
    """SHA-256 hex digest of a file, read in 4 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def input_checksums(paths):
    """``(file name, sha256)`` of each input, for provenance records."""
    return [(Path(p).name, file_sha256(p)) for p in paths]


def read_provenance(path):
    """The provenance keywords of a product: a FITS primary header or an ECSV catalog's meta."""
    path = Path(path)
    if path.suffix == ".ecsv":
        return dict(read_table(path).meta.get("provenance", {}))
    return dict(fits.getheader(path, 0))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_user_output_wcs(path):
    """A user-supplied output WCS (the JWST ``resample`` ``output_wcs`` file).

    Parameters
    ----------
    path : str or Path
        ASDF file with a gwcs under the ``"wcs"`` key and optionally
        ``pixel_shape`` ``(nx, ny)`` or ``array_shape`` ``(ny, nx)``.

    Returns
    -------
    wcs : gwcs.WCS
    pixel_shape : tuple of int or None
        ``(nx, ny)`` from ``pixel_shape``, else from ``array_shape``
        reversed; None when the file has neither.

    Raises
    ------
    InputFileError
        When the file is missing, is not ASDF, or has no ``"wcs"``.
    """
    if not Path(path).is_file():
        raise InputFileError(path, "output_wcs file does not exist")
    import asdf

    try:
        with asdf.open(path, lazy_load=False, memmap=False) as af:
            tree = af.tree
            wcs = tree.get("wcs")
            pixel_shape = tree.get("pixel_shape")
            array_shape = tree.get("array_shape")
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"output_wcs is not a readable ASDF file ({exc})") from None
    if wcs is None or not hasattr(wcs, "forward_transform"):
        raise InputFileError(path, "output_wcs file has no gwcs under the 'wcs' key")
    if pixel_shape is None and array_shape is not None:
        pixel_shape = tuple(array_shape)[::-1]
    return wcs, (None if pixel_shape is None else tuple(int(v) for v in pixel_shape))


def read_skylist(path):
    """Read a skymatch ``skylist``: exposure file names and their sky levels.

    The format jwst's skymatch reads for ``skymethod='user'``: one exposure
    per line, its file name and its sky value (MJy/sr, the units of the
    data) separated by white space; blank lines and text after ``#`` are
    skipped.  An ECSV table (first line ``# %ECSV``) is read by its first
    two columns, file name then sky value.

    Returns
    -------
    names : list of str
        File names as listed.
    values : ndarray of float64
        Sky value of each, same order.

    Raises
    ------
    InputFileError
        Missing or unreadable file, a line without exactly two fields, a
        sky value that is not a number, or no entries at all.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "skylist file does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"skylist is not a readable text file ({exc})") from None
    if text.lstrip().startswith("# %ECSV"):
        from astropy.table import Table

        try:
            table = Table.read(path, format="ascii.ecsv")
        except Exception as exc:
            raise InputFileError(path, f"skylist is not a valid ECSV table ({exc})") from None
        if len(table.colnames) < 2:
            raise InputFileError(path, f"skylist needs two columns (file name, sky value), found {table.colnames}")
        rows = [(f"row {k + 1}", str(a), str(b)) for k, (a, b) in enumerate(zip(table.columns[0], table.columns[1]))]
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 2:
                raise InputFileError(path, f"skylist line {number}: expected a file name and a sky value, got {line.strip()!r}")
            rows.append((f"line {number}", *fields))
    if not rows:
        raise InputFileError(path, "skylist has no entries")
    values = []
    for where, _, value in rows:
        try:
            values.append(float(value))
        except ValueError:
            raise InputFileError(path, f"skylist {where}: sky value {value!r} is not a number") from None
    return [name for _, name, _ in rows], np.asarray(values, dtype=np.float64)


def _plain_table(value, path, what):
    """An astropy Table of a reference-file table (FITS record array, ASDF table or dict of columns)."""
    from astropy.table import Table

    try:
        table = Table(value, masked=False) if not isinstance(value, Table) else Table(value, copy=True)
    except (TypeError, ValueError) as exc:
        raise InputFileError(path, f"its {what} is not a table ({exc})") from exc
    for name in table.colnames:
        if table[name].dtype.kind == "S":
            table[name] = np.char.decode(np.asarray(table[name]), "ascii")
        if table[name].dtype.kind == "U":
            table[name] = np.char.strip(np.asarray(table[name]))
    table.rename_columns(table.colnames, [c.lower() for c in table.colnames])
    return table


def _read_reference_table(path, fits_names, asdf_key, what):
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic.startswith(b"SIMPLE"):
        try:
            hdul = fits.open(path, memmap=False)
        except Exception as exc:
            raise InputFileError(path, f"not a readable FITS file ({exc})") from None
        with hdul:
            for name in fits_names:
                if name in hdul:
                    return _plain_table(hdul[name].data, path, what)
            tables = [h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)]
            if not tables:
                raise InputFileError(path, f"no {'/'.join(fits_names)} binary table")
            return _plain_table(tables[0].data, path, what)
    import asdf

    try:
        with asdf.open(path, lazy_load=False, memmap=False) as af:
            if asdf_key not in af.tree:
                raise InputFileError(path, f"no {asdf_key!r} in its ASDF tree")
            return _plain_table(af.tree[asdf_key], path, what)
    except InputFileError:
        raise
    except Exception as exc:  # asdf raises many kinds on a corrupt file
        raise InputFileError(path, f"not a readable FITS or ASDF file ({exc})") from exc


def read_apcorr(path):
    """The aperture-correction table of a JWST APCORR reference file.

    NIRCam, NIRISS, MIRI and FGS imaging APCORR files are FITS with an
    ``APCORR`` binary table (columns ``filter``, ``pupil`` -- ``subarray``
    for MIRI, neither for FGS -- ``eefraction``, ``radius``, ``apcorr``,
    ``skyin``, ``skyout``); an ASDF file with ``apcorr_table`` is read too.

    Returns
    -------
    astropy.table.Table
        Lower-case column names, string columns stripped.
    """
    return _read_reference_table(path, ("APCORR",), "apcorr_table", "APCORR table")


def read_abvegaoffset(path):
    """The ``abvega_offset`` table of a JWST ABVEGAOFFSET reference file (ASDF).

    Columns ``filter`` and ``pupil`` (NIRCam, NIRISS), ``filter`` (MIRI) or
    ``detector`` (FGS), and ``abvega_offset`` (m_AB - m_Vega).  A FITS file
    with an ``ABVEGA_OFFSET`` binary table is read too.

    Returns
    -------
    astropy.table.Table
    """
    return _read_reference_table(path, ("ABVEGA_OFFSET", "ABVEGAOFFSET"), "abvega_offset",
                                 "abvega_offset table")
