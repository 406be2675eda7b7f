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

from .checkpointing import resume, save
from .cli import add_subcommand
from .data import build_data, label_pass_state
from .distributed import DistEnv, init_distributed, wrap_ddp
from .loop import fit
from .model import build_model_and_teacher
from .optimisation import build_optimisation
from .runner import run
from .state import BEST, LAST, RunState

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
