"""`deit demo`: the paper's claims as a small controlled study on 5,000 real MNIST digits (CPU).

The study's parts: :mod:`.settings` (the runs, the claims as paired comparisons, the budget),
:mod:`.study` (its ``deit train`` runs on worker processes, each recorded once), :mod:`.stats`
(means and paired intervals over seeds), :mod:`.report` (``results.md``), :mod:`.figures` and
:mod:`.run` (:func:`run_demo` and the ``deit demo`` flags; the design in full is that module's
docstring).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule that defines it (imported on first use, so that ``deit demo
#: --help`` builds from :mod:`~deit.demo.run` without importing torch).
_EXPORTS = {
    "Variant": "settings",
    "TEACHER": "settings",
    "NONE": "settings",
    "HARD": "settings",
    "PAPER_SOFT": "settings",
    "LEADING": "settings",
    "DemoSettings": "settings",
    "RunSpec": "settings",
    "Claim": "settings",
    "CLAIMS": "settings",
    "claims": "settings",
    "paired_gain": "stats",
    "paired_interval": "stats",
    "summarize": "stats",
    "run_demo": "run",
    "comparisons": "run",
    "claim_figure": "figures",
    "tokens_figure": "figures",
    "claims_figure": "figures",
    "markdown": "report",
    "add_subcommand": "run",
}

__all__ = [
    "Variant",
    "TEACHER",
    "NONE",
    "HARD",
    "PAPER_SOFT",
    "LEADING",
    "DemoSettings",
    "RunSpec",
    "Claim",
    "CLAIMS",
    "claims",
    "paired_gain",
    "paired_interval",
    "summarize",
    "run_demo",
    "comparisons",
    "claim_figure",
    "tokens_figure",
    "claims_figure",
    "markdown",
    "add_subcommand",
]


def __getattr__(name: str) -> Any:
    """Import the submodule defining a public name on its first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
