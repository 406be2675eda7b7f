"""The JSON the ``--json`` flags print: strict (RFC 8259) and rounded for reading.

Python's ``json`` writes ``NaN``/``Infinity`` (not JSON: ``jq`` and JavaScript refuse them) and
floats such as ``70.89999999999999``; :func:`dumps` writes ``null`` for a non-finite number and
keeps :data:`DIGITS` significant digits.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["DIGITS", "dumps", "rounded"]

#: Significant digits of the floats printed (70.89999999999999 -> 70.9, 1/3 -> 0.333333).
DIGITS = 6


def rounded(obj: Any, digits: int = DIGITS) -> Any:
    """``obj`` with every float (in dicts, lists and tuples) rounded to ``digits`` significant
    digits and every NaN or infinity replaced by ``None``."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def dumps(obj: Any, digits: int = DIGITS) -> str:
    """One line of strict JSON of ``obj`` (see :func:`rounded`)."""
    return json.dumps(rounded(obj, digits), allow_nan=False)
