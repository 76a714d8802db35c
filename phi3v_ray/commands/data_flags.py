"""argparse types for the data commands' numeric flags: nonsense numbers are refused while parsing, naming the flag.

`--retries -1` used to parse, make no request and label every good row `timeout`; a type here turns it into
`argument --retries: expected a whole number >= 0 (got '-1')` before anything runs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """A type accepting whole numbers >= `minimum` (argparse names the flag in its message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum} (got {text!r})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum} (got {text!r})")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def positive_number(text: str) -> float:
    """A finite number greater than 0 (seconds, megabytes)."""
    value = _number(text, "a number greater than 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0 (got {text!r})")
    return value


def fraction_below_one(text: str) -> float:
    """A share in [0, 1): 1 would leave no row with an image."""
    value = _number(text, "a fraction in [0, 1)")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1) (got {text!r})")
    return value


def _number(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})")
    return value
