"""deit: DeiT vision transformers and distillation through attention (Touvron et al., 2021).

One training step reads in three modules: the loop, :func:`deit.engine.train_one_epoch`; the
task, :class:`deit.distillation.DistillationTask` (student, loss and teacher, returning the
named ``StepOutput``); and the model, :mod:`deit.models.distilled`. ``docs/recipe.md`` follows
it from ``deit train`` to ``optimizer.step()``.

Importing the package changes nothing global (no environment variable, no torch setting) and
loads torch only when a name below is first used, so the ``deit`` command can set
``OMP_WAIT_POLICY`` before torch starts (see :mod:`deit.cli`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the submodule that defines it (imported on first use).
_EXPORTS = {
    "Config": "config",
    "get_preset": "config",
    "build_dataset": "data",
    "build_mixup": "data",
    "build_sampler": "data",
    "build_transform": "data",
    "DistillationLoss": "distillation",
    "DistillationTask": "distillation",
    "Teacher": "teacher",
    "build_teacher": "teacher",
    "optimize_for_inference": "inference",
    "CheckpointError": "checkpoints",
    "create_model": "checkpoints",
    "load_checkpoint": "checkpoints",
    "load_model": "checkpoints",
    "save_weights": "checkpoints",
    "DistilledVisionTransformer": "models",
    "VisionTransformer": "models",
    "build_classifier": "models",
    "list_models": "models",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import ``deit.<submodule>`` for a public name or a submodule on first access."""
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
