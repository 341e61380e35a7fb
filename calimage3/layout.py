"""Names of the per-exposure files inside a product's work folders.

Some group jobs write one file per exposure of their association (the
aligned WCSs of tweakreg, the pixel maps onto a grid).  Each Snakemake rule
is defined once for every association, so such a job declares its folder as
its output and the files in it are named here, once, for the job that
writes them and the jobs that read them.
"""

import os

__all__ = [
    "moving_target_wcs",
    "aligned_wcs",
    "grid_wcs",
    "pixel_map",
    "rendered_wcs",
    "member_files",
    "files_or_folder",
    "checksum_records",
]

# The grid's own WCS file in a grid folder (outlier detection: an ASDF gwcs;
# resample: the mosaic WCS rendered as the _i2d carries it).
_GRID_FILES = {"outlier_detection": "grid_wcs.asdf", "resample": "output_wcs.fits"}


def moving_target_wcs(folder, root):
    """Exposure ``root``'s WCS shifted onto the moving target (assign_mtwcs)."""
    return f"{folder}/{root}_wcs.asdf"


def aligned_wcs(folder, root):
    """Exposure ``root``'s WCS after tweakreg."""
    return f"{folder}/{root}_tweakreg.asdf"


def grid_wcs(folder, step):
    """The WCS of the grid in a grid folder of ``step`` (outlier_detection or resample)."""
    try:
        return f"{folder}/{_GRID_FILES[step]}"
    except KeyError:
        raise ValueError(f"no grid folder for step {step!r}; expected one of {sorted(_GRID_FILES)}") from None


def pixel_map(folder, root):
    """Exposure ``root``'s pixel map onto the grid of a grid folder (calimage3.pixmap)."""
    return f"{folder}/{root}_pixmap.fits"


def rendered_wcs(folder, root):
    """Exposure ``root``'s aligned WCS rendered for its _crf (calimage3.io.write_rendered_wcs)."""
    return f"{folder}/{root}_crf_wcs.fits"


def member_files(name_of, folder, roots):
    """``name_of(folder, root)`` for every root, in association order."""
    return [name_of(folder, root) for root in roots]


def files_or_folder(paths, name_of, roots):
    """A job's input as a list of files: a lone folder output stands for its
    ``name_of(folder, root)`` files, one per root; plain files stay as they are.

    ``paths`` is what Snakemake gives for a named input (a string when it
    holds one path).
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    if len(paths) == 1 and os.path.isdir(paths[0]):
        return member_files(name_of, paths[0], roots)
    return paths


def checksum_records(config):
    """How a job verifies the FITS checksums of the members it reads (`calimage3.io.read_exposure`).

    The folder ``output_dir/work/checksums`` (shared by a campaign's
    products), where each member that passed is recorded with its size and
    modification time, so that only the first job to read it verifies it;
    False when ``verify_checksums`` is off.
    """
    if not config.get("verify_checksums", True):
        return False
    return os.path.join(str(config["output_dir"]), "work", "checksums")
