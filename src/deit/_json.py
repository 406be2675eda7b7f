r"""The JSON the ``--json`` flags print: strict (RFC 8259) and rounded for reading.

Python's ``json`` writes ``NaN``/``Infinity`` (not JSON: ``jq`` and JavaScript refuse them) and
floats such as ``70.89999999999999``; :func:`dumps` writes ``null`` for a non-finite number and
keeps :data:`DIGITS` significant digits. A file name that is not UTF-8 (``caf\xe9.png`` written
in Latin-1) reaches Python as a lone surrogate (``\udce9``), which no UTF-8 reader accepts;
:func:`printable` writes its bytes as ``\xe9`` instead, as ``ls -b`` shows them.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["DIGITS", "dumps", "printable", "rounded"]

#: Significant digits of the floats printed (70.89999999999999 -> 70.9, 1/3 -> 0.333333).
DIGITS = 6


def printable(text: str) -> str:
    r"""``text`` as valid Unicode: the bytes of a file name that is not UTF-8 (lone surrogates,
    Python's ``surrogateescape``) written as ``\xNN``; other text unchanged."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def rounded(obj: Any, digits: int = DIGITS) -> Any:
    """``obj`` with every float (in dicts, lists and tuples) rounded to ``digits`` significant
    digits, every NaN or infinity replaced by ``None`` and every string :func:`printable`."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else None
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {rounded(k, digits): rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def dumps(obj: Any, digits: int = DIGITS) -> str:
    """One line of strict JSON of ``obj`` (see :func:`rounded`)."""
    return json.dumps(rounded(obj, digits), allow_nan=False)
