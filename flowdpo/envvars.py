"""Numbers read from environment variables: one reader, one error.

A bad value names the variable and what it must be (exit code 2 on the command line), and is read when the
value is needed, not at import: a typo in one variable must not break commands that never use it."""

from __future__ import annotations

import math
import os


class EnvError(ValueError):
    """An environment variable holds a value its reader cannot use."""


def env_number(name: str, default: float, *, integer: bool = False, minimum: float | None = None,
               positive: bool = False) -> float:  # fmt: skip
    """The number in $name, or `default` when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    want = "an integer" if integer else "a number"
    if positive:
        want += " > 0"
    elif minimum is not None:
        want += f" >= {minimum:g}"
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise EnvError(f"{name}={raw!r}: expected {want}") from None
    if not math.isfinite(value) or (positive and value <= 0) or (minimum is not None and value < minimum):
        raise EnvError(f"{name}={raw!r}: expected {want}")
    return value
