"""Number types for command-line options: NaN and infinity parse as floats but are no setting at all."""

from __future__ import annotations

import math


def finite_number(text: str) -> float:
    """A float option that refuses nan, inf and overflow (argparse: "invalid finite number value")."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def amount(text: str) -> float:
    """A finite float of at least 0: CPUs, GPUs, memory shares (argparse: "invalid amount value")."""
    value = finite_number(text)
    if value < 0:
        raise ValueError(text)
    return value


finite_number.__name__ = "finite number"
amount.__name__ = "amount"
