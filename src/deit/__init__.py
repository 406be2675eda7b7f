"""deit: DeiT vision transformers and distillation through attention (Touvron et al., 2021).

One training step reads in three modules: the loop, :func:`deit.engine.train_one_epoch`; the
task, :class:`deit.distillation.DistillationTask` (student, loss and teacher, returning the
named ``StepOutput``); and the model, :mod:`deit.models.distilled`. ``docs/recipe.md`` follows
it from ``deit train`` to ``optimizer.step()``.

Importing the package changes nothing global (no environment variable, no torch setting) and
loads torch only when a name below is first used, so the ``deit`` command can set
``OMP_WAIT_POLICY`` before torch starts (see :mod:`deit.cli`).
"""

from . import _lazy

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

__getattr__, __dir__ = _lazy.exports(globals(), _EXPORTS, submodules=True)
