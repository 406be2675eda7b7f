"""A training run, `deit train` (official ``main.py``'s role), as named steps over one state.

:func:`run` (:mod:`~deit.train.runner`) validates the configuration, joins the process group
(:mod:`~deit.train.distributed`) and locks the output folder (:mod:`~deit.train.lock`,
:mod:`~deit.train.output`), then fills one :class:`RunState` (:mod:`~deit.train.state`) step by
step: :func:`build_data` (:mod:`~deit.train.data`), :func:`build_model_and_teacher`
(:mod:`~deit.train.model`), :func:`build_optimisation` (:mod:`~deit.train.optimisation`),
:func:`resume`, then :func:`fit` (:mod:`~deit.train.loop`), which :func:`save` s
(:mod:`~deit.train.checkpointing`). The command line is :mod:`~deit.train.cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule that defines it (imported on first use, so that the command line
#: builds ``deit train``'s flags from :mod:`~deit.train.cli` without importing torch).
_EXPORTS = {
    "BEST": "state",
    "LAST": "state",
    "DistEnv": "distributed",
    "RunState": "state",
    "add_subcommand": "cli",
    "build_data": "data",
    "build_model_and_teacher": "model",
    "build_optimisation": "optimisation",
    "fit": "loop",
    "init_distributed": "distributed",
    "label_pass_state": "data",
    "resume": "checkpointing",
    "run": "runner",
    "save": "checkpointing",
    "wrap_ddp": "distributed",
}

__all__ = [
    "BEST",
    "LAST",
    "DistEnv",
    "RunState",
    "add_subcommand",
    "build_data",
    "build_model_and_teacher",
    "build_optimisation",
    "fit",
    "init_distributed",
    "label_pass_state",
    "resume",
    "run",
    "save",
    "wrap_ddp",
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
