"""Argument types for numeric command-line options (flowdpo and flowdpo-operator).

Every numeric option uses one of these, so a bad value, on the command line or in the environment variable
that sets its default, ends in argparse's usage error naming the option, never in a traceback at the first
`bind()` or `sleep()`. argparse also applies the type to a string default, so an environment default is
checked the same way: `default=os.environ.get("FLOWDPO_LEASE_SECONDS", "60")`."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port to listen on: 1-65535."""
    value = int(_number(text, int))
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return value


def port_or_off(text: str) -> int:
    """A TCP port, or 0 for off."""
    return 0 if str(text).strip() == "0" else port(text)


def positive_seconds(text: str) -> float:
    """A duration in seconds: finite and > 0."""
    value = float(_number(text, float))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count: an integer >= 1."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def any_int(text: str) -> int:
    """Any integer (a seed, a priority)."""
    return int(_number(text, int))


def number(text: str) -> float:
    """A finite number (checked further where it is used, e.g. a learning rate or a share)."""
    return float(_number(text, float))
