"""Logging set-up for the workflow's job scripts."""

import logging
import sys

__all__ = ["configure_logging", "JOB_FAILED"]

# The line a job's log ends with when the job raised: `calimage3-status`
# looks for it to tell a failed association from a pending one.
JOB_FAILED = "JOB FAILED"


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
    # An uncaught error also goes to the log (Snakemake sends it only to the
    # terminal), so the log of a failed job says why it failed.
    sys.excepthook = _log_uncaught
    # Astropy and asdf are chatty at INFO; their warnings still come through.
    for name in ("astropy", "asdf", "stpipe"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _log_uncaught(exc_type, exc, tb):
    """Log an uncaught exception with its traceback (to the job log and stderr, once).

    Python still exits with status 1 afterwards, so Snakemake sees the failure.
    """
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("calimage3").critical("%s: %s: %s", JOB_FAILED, exc_type.__name__, exc,
                                            exc_info=(exc_type, exc, tb))
