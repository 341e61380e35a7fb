"""Logging set-up for the workflow's job scripts."""

import logging
import sys

__all__ = ["configure_logging"]


def configure_logging(path=None, level=logging.INFO):
    """Send log records to ``path`` (the job's Snakemake log) and to stderr.

    Each job's log then holds what it did, in sentences, and the terminal
    shows the one-line summaries as jobs finish.
    """
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="w"))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    # Astropy and asdf are chatty at INFO; their warnings still come through.
    for name in ("astropy", "asdf", "stpipe"):
        logging.getLogger(name).setLevel(logging.WARNING)
