"""Which absolute-astrometry reference catalog tweakreg uses (``abs_refcat``).

Kept apart from `calimage3.tweakreg` so that the Snakefile can check the
setting at startup without importing the alignment libraries.
"""

__all__ = ["REMOTE_CATALOGS", "reference_catalog_path"]

#: Catalog names for which JWST queries the web; calimage3 runs offline.
REMOTE_CATALOGS = ("GAIADR1", "GAIADR2", "GAIADR3")


def reference_catalog_path(abs_refcat):
    """The catalog file named by ``abs_refcat``, or None when absolute alignment is off.

    Parameters
    ----------
    abs_refcat : str or None
        Path of an ECSV or FITS table with RA/Dec columns; ``''`` or None
        turns absolute alignment off (the JWST default).

    Raises
    ------
    ValueError
        For a catalog name JWST fetches from the web (`REMOTE_CATALOGS`):
        calimage3 runs offline, so the catalog must be supplied as a file.
    """
    if abs_refcat is None:
        return None
    if not isinstance(abs_refcat, str):
        raise ValueError(f"abs_refcat must be a file path or '', got {abs_refcat!r}")
    name = abs_refcat.strip()
    if not name:
        return None
    if name.upper() in REMOTE_CATALOGS:
        raise ValueError(
            f"abs_refcat={abs_refcat!r} needs a web query, which calimage3 does not make: "
            "download the catalog for the field and give its path (ECSV or FITS with RA and "
            "Dec columns in degrees) as abs_refcat"
        )
    return name
