"""`deit demo`: the paper's claim as a small controlled study on 5,000 real MNIST digits (CPU).

The study's parts: :mod:`.settings` (the models compared and the budget), :mod:`.study` (its
``deit train`` runs and teacher-label passes on worker processes), :mod:`.stats` (means and
paired intervals over seeds), :mod:`.report` (``results.md``), :mod:`.figures` and :mod:`.run`
(:func:`run_demo` and the ``deit demo`` flags; the design in full is that module's docstring).
"""

from .figures import curve_figure, top1_figure
from .report import markdown
from .run import add_subcommand, run_demo
from .settings import HARD, LEADING, NONE, PAPER_SOFT, TEACHER, DemoSettings, Variant
from .stats import paired_interval, summarize

__all__ = [
    "Variant",
    "TEACHER",
    "NONE",
    "HARD",
    "PAPER_SOFT",
    "LEADING",
    "DemoSettings",
    "paired_interval",
    "summarize",
    "run_demo",
    "top1_figure",
    "curve_figure",
    "markdown",
    "add_subcommand",
]
