"""JSON as the standard defines it, read and written one way wherever the studio stores or sends it.

Python's json module writes NaN and Infinity as bare words (`"guidance":NaN`) and reads them back, and it
reads 1e400 as infinity; none of that is JSON, and strict parsers (browsers, jq, other tools reading our
PNG recipes) reject the whole document. So recipes, project manifests, journal headers, settings and the
CLI's JSON go through `dumps`, which refuses a non-finite number (a bug to fix where the number came in),
and `loads`, which refuses one in a file.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NonFiniteNumber(ValueError):
    """A JSON text holds NaN, an infinity or a number too large for a float."""


def _constant(word: str) -> Any:
    raise NonFiniteNumber(f"{word} is not a number JSON allows")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text[:40]} is too large a number")
    return value


def loads(text: str | bytes) -> Any:
    """Parse JSON text; NaN, Infinity and numbers beyond a float raise NonFiniteNumber (a ValueError)."""
    return json.loads(text, parse_constant=_constant, parse_float=_float)


def dumps(value: Any, **options: Any) -> str:
    """JSON text of `value` (non-ASCII kept unless told otherwise); a NaN or infinity raises ValueError."""
    options.setdefault("ensure_ascii", False)
    return json.dumps(value, allow_nan=False, **options)
