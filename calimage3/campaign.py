"""A campaign's plan: shards of it, and the manifest `calimage3-status` reads.

A campaign (``--config asns=GLOB``) may be too large for one Snakemake
invocation; ``shard=I/N`` keeps every N-th association starting at the I-th
(1-based), so N invocations on the same ``output_dir`` build the whole
campaign and share its per-exposure detection (``output_dir/work``).

At each start the workflow records, in ``output_dir/.calimage3/manifest.json``,
every association it plans (its product folder, the files that make it
complete, its logs) and every association the input checks refused (with
the reason).  `calimage3.status` turns that, and the files on disk, into a
state per association.
"""

import re

__all__ = ["parse_shard", "select_shard", "manifest_entry", "MANIFEST"]

# Where the manifest is, under output_dir.
MANIFEST = ".calimage3/manifest.json"


def parse_shard(spec):
    """``"I/N"`` -> ``(I, N)`` with 1 <= I <= N; ``""`` or None -> None.

    Raises
    ------
    ValueError
        Naming the bad value.
    """
    if spec in (None, ""):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not match:
        raise ValueError(f"shard must look like I/N (e.g. 2/8), got {spec!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise ValueError(f"shard {spec!r}: I must be from 1 to N")
    return index, count


def select_shard(items, spec):
    """The items of shard ``spec`` (``"I/N"``): every N-th item from the I-th; all for no shard.

    Parameters
    ----------
    items : list
        The campaign's associations, in their stable order (sorted paths).
    spec : str or None
        As for `parse_shard`.

    Returns
    -------
    list
        A sublist; the N shards partition ``items``.
    """
    shard = parse_shard(spec)
    if shard is None:
        return list(items)
    index, count = shard
    return list(items)[index - 1 :: count]


def manifest_entry(asn_path, folder, outputs, logs, member_logs=()):
    """One planned association in the manifest.

    Parameters
    ----------
    asn_path : str
        The association file.
    folder : str
        The product's folder.
    outputs : list of str
        The files whose presence makes the association complete.
    logs : str
        The product's log folder.
    member_logs : list of str
        Logs of shared per-exposure jobs of its members (tweakreg detection).
    """
    return {"asn": str(asn_path), "folder": str(folder), "outputs": [str(o) for o in outputs],
            "logs": str(logs), "member_logs": [str(m) for m in member_logs]}
