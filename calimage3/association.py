"""Image3 associations: which exposures combine into which product.

An image3 association is a JSON document with an ``asn_id``, an
``asn_type`` (``image3``) and ``products``, each with a ``name`` and
``members`` (``expname``, ``exptype``).  Only ``science`` members are
combined.  A single ``_cal`` file may stand in for an association; then
only resample and source_catalog run (as in ``calwebb_image3``).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Member", "Association", "parse_association", "single_exposure_association", "exposure_root"]

_SUFFIXES = ("_cal", "_crf", "_i2d", "_rate", "_s2d")


@dataclass(frozen=True)
class Member:
    """One science exposure of an association."""

    path: Path
    root: str
    exptype: str = "science"
    group_id: str = ""


@dataclass
class Association:
    """An image3 association reduced to what the workflow needs.

    Attributes
    ----------
    asn_id : str
        Association identifier (e.g. ``a3001``), used in ``_crf`` names.
    product : str
        Product name; the stem of ``_i2d``, ``_cat`` and ``_segm`` outputs.
    members : list of Member
        Science members, in association order.
    single : bool
        True when the input was one exposure rather than an association.
    path : Path or None
        The association file.
    moving_target : bool
        True when the members are moving-target exposures (set by the input
        checks from their headers): only then does assign_mtwcs run, in
        place of tweakreg, as in JWST's Image3Pipeline.
    footprints : dict
        Exposure root -> sky footprint from its headers (list of
        ``[RA, Dec]`` vertices, degrees; set by the input checks): what
        the sky tiling plans with.
    """

    asn_id: str
    product: str
    members: list = field(default_factory=list)
    single: bool = False
    path: Path | None = None
    moving_target: bool = False
    footprints: dict = field(default_factory=dict)

    @property
    def roots(self):
        """Exposure roots in association order."""
        return [m.root for m in self.members]

    def member(self, root):
        """The member whose exposure root is ``root``."""
        for m in self.members:
            if m.root == root:
                return m
        raise KeyError(f"exposure {root!r} is not a science member of association {self.asn_id!r}")


def exposure_root(filename):
    """Exposure root of a JWST file name (``jw..._nrca1_cal.fits`` -> ``jw..._nrca1``)."""
    stem = Path(filename).name
    for ext in (".fits.gz", ".fits"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    for suffix in _SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _safe_name(name, what):
    """``name`` when it is a plain file-name stem (letters, digits, ``_.+-``, no leading dot).

    Products, ``asn_id``s and exposure roots become file and folder names
    under the output folder: ``..``, ``.``, hidden names and path
    separators would put files elsewhere, so they are refused.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.+\-]+", name):
        raise ValueError(f"{what} {name!r} has characters that cannot appear in a file name "
                         f"(use letters, digits and _ . + -)")
    if name.startswith("."):
        raise ValueError(f"{what} {name!r} is not a plain file name: it must not start with '.' "
                         f"(files named after it would land outside the output folder or be hidden)")
    return name


def parse_association(content, base_dir="."):
    """Validate an image3 association document and resolve member paths.

    Parameters
    ----------
    content : dict
        The parsed JSON.
    base_dir : str or Path
        Folder that member ``expname`` values are relative to.

    Returns
    -------
    Association
        Of its one product.

    Raises
    ------
    ValueError
        With a message naming what is missing or wrong: not an image3
        association, several products (naming them), no science members,
        a member listed twice, or a product name, ``asn_id`` or exposure
        root that is not a plain file-name stem.
    """
    if not isinstance(content, dict):
        raise ValueError("association must be a JSON object")
    asn_type = str(content.get("asn_type", "image3"))
    if asn_type.lower() != "image3":
        raise ValueError(f"asn_type is {asn_type!r}; this workflow runs image3 associations")
    products = content.get("products")
    if not isinstance(products, list) or not products:
        raise ValueError("association has no 'products'")
    if not all(isinstance(p, dict) for p in products):
        raise ValueError("association 'products' must be a list of objects with 'name' and 'members'")
    if len(products) > 1:
        names = ", ".join(repr(p.get("name")) for p in products)
        raise ValueError(f"association has {len(products)} products ({names}); an image3 association builds one "
                         f"product here: split it into one association per product and run them together "
                         f"as a campaign (asns=...)")
    product = products[0]
    name = _safe_name(product.get("name"), "products[0].name")
    asn_id = _safe_name(str(content.get("asn_id", "a3001")), "asn_id")
    members_in = product.get("members")
    if not isinstance(members_in, list):
        raise ValueError("products[0] has no 'members' list")
    base_dir = Path(base_dir)
    members = []
    seen = set()
    for i, m in enumerate(members_in):
        if not isinstance(m, dict) or not isinstance(m.get("expname"), str) or not m["expname"].strip():
            raise ValueError(f"member {i} has no 'expname' file name")
        if str(m.get("exptype", "science")).lower() != "science":
            continue
        path = Path(m["expname"])
        if not path.is_absolute():
            path = base_dir / path
        root = _safe_name(exposure_root(path), f"member {i} exposure root")
        if root in seen:
            raise ValueError(f"exposure {root!r} appears twice among the science members")
        seen.add(root)
        members.append(Member(path=path, root=root, group_id=str(m.get("group_id", ""))))
    if not members:
        raise ValueError("association has no science members")
    return Association(asn_id=asn_id, product=name, members=members)


def single_exposure_association(path):
    """Association-like view of one ``_cal`` file: the product is named after it."""
    path = Path(path)
    root = _safe_name(exposure_root(path), "exposure root")
    return Association(asn_id="", product=root, members=[Member(path=path, root=root)], single=True, path=path)
