"""Parameter checks shared by the science modules (no heavy imports)."""

import numbers

__all__ = ["require_positive"]


def require_positive(name, value, *, integer=False, allow_none=False):
    """Raise ValueError naming ``name`` unless ``value`` is a positive number (or integer, or None if allowed)."""
    if value is None and allow_none:
        return
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        what = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
