"""Provenance of every product: software versions, step parameters, inputs.

Each product's primary header records the package and Snakemake versions,
the step that made it, a hash of that step's parameters together with the
parameters themselves (as JSON), and every input file's name and SHA-256.
``calimage3-provenance FILE`` (or ``python -m calimage3.provenance FILE``)
prints that record for any product.
"""

import argparse
import hashlib
import json
import platform
import sys
from importlib import metadata

from . import __version__

__all__ = ["parameter_hash", "provenance_keywords", "format_provenance", "main"]


def parameter_hash(params):
    """Short SHA-256 of a parameter set, independent of key order.

    Returns
    -------
    str
        16 hexadecimal characters.
    """
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance_keywords(step, params, inputs):
    """Primary-header keywords recording how a product was made.

    Parameters
    ----------
    step : str
        The step (rule) that wrote the product.
    params : dict
        The parameters it used.
    inputs : list of tuple
        ``(file name, sha256 hex digest)`` of each input file.

    Returns
    -------
    dict
        FITS keywords: ``CAL3VER``, ``SMKVER``, ``PYVER``, ``DRIZVER``,
        ``PHOTVER``, ``PRVSTEP``, ``PRVHASH``, ``PRVPARS`` (JSON),
        ``NPRVINP`` and ``PRVINnnn``/``PRVSUnnn`` per input.
    """
    keywords = {
        "CAL3VER": __version__,
        "SMKVER": _version("snakemake"),
        "PYVER": platform.python_version(),
        "DRIZVER": _version("drizzle"),
        "PHOTVER": _version("photutils"),
        "PRVSTEP": step,
        "PRVHASH": parameter_hash(params),
        "PRVPARS": json.dumps(params, sort_keys=True, default=str),
        "NPRVINP": len(inputs),
    }
    for i, (name, digest) in enumerate(inputs, start=1):
        keywords[f"PRVIN{i:03d}"] = name
        keywords[f"PRVSU{i:03d}"] = digest
    return keywords


def format_provenance(header):
    """Human-readable provenance summary from a product's primary header (or a dict)."""
    lines = [
        f"made by calimage3 {header.get('CAL3VER', '?')} (snakemake {header.get('SMKVER', '?')}, "
        f"python {header.get('PYVER', '?')}, drizzle {header.get('DRIZVER', '?')}, photutils {header.get('PHOTVER', '?')})",
        f"step: {header.get('PRVSTEP', '?')}   parameter hash: {header.get('PRVHASH', '?')}",
        f"parameters: {header.get('PRVPARS', '{}')}",
        f"inputs ({header.get('NPRVINP', 0)}):",
    ]
    for i in range(1, int(header.get("NPRVINP", 0)) + 1):
        lines.append(f"  {header.get(f'PRVIN{i:03d}', '?')}  sha256 {header.get(f'PRVSU{i:03d}', '?')}")
    return "\n".join(lines)


def main(argv=None):
    """Print the provenance record of one or more products."""
    from . import io

    parser = argparse.ArgumentParser(description="Print how a calimage3 product was made.")
    parser.add_argument("products", nargs="+", help="_crf/_i2d/_segm FITS files or _cat.ecsv catalogs")
    args = parser.parse_args(argv)
    for path in args.products:
        print(f"== {path}")
        print(format_provenance(io.read_provenance(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
