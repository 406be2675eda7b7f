"""A training run, `deit train` (official ``main.py``'s role): its parts built once, then fitted.

:func:`run` (:mod:`~deit.train.runner`) validates the configuration, joins the process group
(:mod:`~deit.train.distributed`) and locks the output folder (:mod:`~deit.train.lock`,
:mod:`~deit.train.output`), then builds each part of one :class:`RunState`
(:mod:`~deit.train.state`) once: :func:`resolve_config` and :func:`build_data`
(:mod:`~deit.train.data`), :func:`build_student` with its distillation task
(:mod:`~deit.train.model`), :func:`build_optimisation` (:mod:`~deit.train.optimisation`); then
:func:`resume` and :func:`fit` (:mod:`~deit.train.loop`), which :func:`save` s
(:mod:`~deit.train.checkpointing`). The command line is :mod:`~deit.train.cli`.
"""

from .. import _lazy

#: Public name -> the submodule that defines it (imported on first use, so that the command line
#: builds ``deit train``'s flags from :mod:`~deit.train.cli` without importing torch).
_EXPORTS = {
    "BEST": "state",
    "LAST": "state",
    "DistEnv": "distributed",
    "RunData": "state",
    "RunState": "state",
    "Student": "state",
    "add_subcommand": "cli",
    "build_data": "data",
    "build_student": "model",
    "build_optimisation": "optimisation",
    "fit": "loop",
    "init_distributed": "distributed",
    "label_pass_state": "data",
    "resolve_config": "data",
    "resume": "checkpointing",
    "run": "runner",
    "save": "checkpointing",
    "wrap_ddp": "distributed",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = _lazy.exports(globals(), _EXPORTS)
