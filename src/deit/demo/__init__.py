"""`deit demo`: the paper's claims as a small controlled study on 5,000 real MNIST digits (CPU).

The study's parts: :mod:`.settings` (the runs, the claims as paired comparisons, the budget),
:mod:`.study` (its ``deit train`` runs on worker processes, each recorded once), :mod:`.stats`
(means and paired intervals over seeds), :mod:`.report` (``results.md``), :mod:`.figures` and
:mod:`.run` (:func:`run_demo` and the ``deit demo`` flags; the design in full is that module's
docstring).
"""

from .. import _lazy

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

__all__ = list(_EXPORTS)

__getattr__, __dir__ = _lazy.exports(globals(), _EXPORTS)
