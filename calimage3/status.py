"""Where a campaign stands: ``calimage3-status OUTPUT_DIR``.

Reads the manifest the workflow writes at each start
(`calimage3.campaign.MANIFEST`) and classifies every association:

* ``complete``: every file of it exists;
* ``failed``: the input checks refused it (the reason is shown), or a job of
  it, or of the shared detection of one of its members, logged
  ``JOB FAILED`` (the log to read is shown);
* ``pending``: neither (not started yet, running, or waiting on others).

Prints one line per association and a summary; ``--json`` prints the same
as JSON.  Exits 1 when any association failed, else 0.
"""

import argparse
import json
import sys
from pathlib import Path

from . import io
from .campaign import MANIFEST
from .logs import JOB_FAILED

__all__ = ["association_states", "main"]


def _failed_log(log_paths):
    """The first log that records a failed job, or None."""
    for path in log_paths:
        if JOB_FAILED in io.read_text_tail(path):
            return str(path)
    return None


def association_states(output_dir):
    """State of every association of the campaign in ``output_dir``.

    Parameters
    ----------
    output_dir : str or Path
        The workflow's ``output_dir``.

    Returns
    -------
    list of dict
        ``product``, ``asn``, ``state`` (complete, failed, pending),
        ``done``/``total`` (files present / expected) and ``detail`` (the
        log to read, or why the association was refused).

    Raises
    ------
    calimage3.io.InputFileError
        When ``output_dir`` has no manifest (the workflow never started there).
    """
    manifest = io.read_manifest(Path(output_dir) / MANIFEST)
    rows = []
    for product, entry in manifest.get("products", {}).items():
        present = [Path(p).exists() for p in entry["outputs"]]
        done, total = sum(present), len(present)
        row = {"product": product, "asn": entry["asn"], "done": done, "total": total}
        if done == total:
            row.update(state="complete", detail="")
        else:
            logs = io.list_files(entry["logs"], "*.log") + [p for p in entry.get("member_logs", ())
                                                            if Path(p).is_file()]
            failed = _failed_log(logs)
            row.update(state="failed" if failed else "pending", detail=failed or "")
        rows.append(row)
    for asn, reason in manifest.get("rejected", {}).items():
        rows.append({"product": "", "asn": asn, "state": "failed", "done": 0, "total": 0,
                     "detail": f"refused by the input checks: {reason}"})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="calimage3-status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="the output_dir of a run or campaign")
    parser.add_argument("--json", action="store_true", help="print the states as JSON")
    args = parser.parse_args(argv)
    try:
        rows = association_states(args.output_dir)
    except io.InputFileError as exc:
        print(f"calimage3-status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max([len(r["product"] or r["asn"]) for r in rows] + [7])
        for r in rows:
            name = r["product"] or r["asn"]
            files = f"{r['done']}/{r['total']} files" if r["total"] else ""
            print(f"{name:<{width}}  {r['state']:<8}  {files:<12}  {r['detail']}".rstrip())
        counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "failed", "pending")}
        print(f"{len(rows)} associations: {counts['complete']} complete, {counts['failed']} failed, "
              f"{counts['pending']} pending")
    return 1 if any(r["state"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
