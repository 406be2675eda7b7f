"""The values the flags choose from, in a module that imports nothing.

The command line builds its parser (``deit --help``, ``deit <command> --help``, argument errors)
from these without importing torch or timm; the modules that use a value import it from here
under its usual name (``deit.models.HEAD_CHOICES``, ``deit.precision.AMP``, ...).
"""

from __future__ import annotations

__all__ = [
    "AMP",
    "DISTILLATION_TYPES",
    "EXPORT_FORMATS",
    "HEAD_CHOICES",
    "INAT_CATEGORIES",
    "KL_REDUCTIONS",
    "PRECISIONS",
    "TEACHER_PRECISIONS",
]

#: Values of ``--amp``: ``auto`` picks per device (see :func:`deit.precision.resolve_precision`).
AMP = ("auto", "fp32", "bf16", "fp16")
#: Values of ``--teacher-precision`` (the frozen teacher's number format, see
#: :func:`deit.teacher.optimize_teacher`): ``auto`` picks the hardware's native reduced format
#: when its targets match fp32's.
TEACHER_PRECISIONS = ("fp32", "auto", "bf16", "fp16", "int8")
#: Accepted values of ``distillation_type`` (the official ``--distillation-type`` choices).
DISTILLATION_TYPES = ("none", "soft", "hard")
#: Normalisations of the soft (KL) term: ``"mean"`` divides the summed KL by ``B * C`` (official
#: DeiT code), ``"batchmean"`` by ``B`` (the mathematical KL per sample; timm's token distillation).
KL_REDUCTIONS = ("mean", "batchmean")
#: The outputs of a distilled model: the averaged heads (the paper's late fusion, section 5.2),
#: the class head or the distillation head -- what inference returns (``--head`` of predict and
#: export) and what :func:`deit.engine.evaluate` reports as ``acc1`` (``--eval-head``).
HEAD_CHOICES = ("both", "cls", "dist")
#: Autocast precisions of ``deit benchmark`` (``--precision``, besides ``auto``).
PRECISIONS = ("fp32", "bf16", "fp16")
#: Formats of ``deit export``.
EXPORT_FORMATS = ("onnx", "torchscript")
#: Levels of the iNaturalist taxonomy selectable with ``category=`` (official ``--inat-category``).
INAT_CATEGORIES = (
    "kingdom",
    "phylum",
    "class",
    "order",
    "supercategory",
    "family",
    "genus",
    "name",
)
