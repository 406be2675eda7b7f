"""Distillation through attention: the DeiT losses and frozen teachers (paper section 4).

The student is a distilled DeiT whose training-mode output is the pair
``(cls_logits, dist_logits)``, each ``(B, num_classes)``. :class:`DistillationLoss` trains the
class head on the labels and the distillation head on the teacher:

- ``"none"``: ``L = base(cls_logits, y)``;
- ``"soft"`` (paper eq. 2): ``L = (1 - alpha) * base(cls_logits, y)
  + alpha * tau^2 * KL(psi(Z_t / tau) || psi(dist_logits / tau))``;
- ``"hard"`` (paper eq. 3, "hard-label distillation"): ``L = (1 - alpha) * base(cls_logits, y)
  + alpha * CE(dist_logits, argmax Z_t)``; ``alpha = 0.5`` is the paper's 1/2, 1/2.

``base`` is whatever criterion the trainer uses (soft-target cross-entropy under Mixup/CutMix,
label smoothing otherwise); the teacher term never uses label smoothing. The teacher sees the
same (mixed) images as the student, in eval mode, without gradients.

:class:`Teacher` wraps any classifier into a frozen module that stays in eval mode and converts
the student's input normalisation to its own; :func:`build_teacher` builds one from a timm name,
a ``torchvision:<name>``, a DeiT name, or a checkpoint written by ``deit train``.
:func:`check_student` validates a student before training.

Example (what the trainer does)::

    teacher = build_teacher("regnety_160", "regnety_160.pth", num_classes=1000,
                            student_mean=mean, student_std=std, device=device)
    check_student(model, "hard", teacher)          # also enables the (cls, dist) output
    criterion = DistillationLoss(SoftTargetCrossEntropy(), teacher, "hard", alpha=0.5)
    loss = criterion(images, model(images), targets)          # the scalar total
    out = criterion.compute(images, model(images), targets)   # LossOutput(total, base, ...)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.utils import unwrap_model
from torch import nn

from .checkpoints import CheckpointError, Weights, fit_weights, read_weights
from .models.distilled import DistilledVisionTransformer
from .models.registry import IMAGENET_MEAN, IMAGENET_STD, build_classifier

__all__ = [
    "DISTILLATION_TYPES",
    "KL_REDUCTIONS",
    "DistillationLoss",
    "LossOutput",
    "Teacher",
    "build_teacher",
    "check_student",
]

#: Accepted values of ``distillation_type`` (the official ``--distillation-type`` choices).
DISTILLATION_TYPES = ("none", "soft", "hard")
#: Normalisations of the soft (KL) term: ``"mean"`` divides the summed KL by ``B * C`` (official
#: DeiT code), ``"batchmean"`` by ``B`` (the mathematical KL per sample; timm's token distillation).
KL_REDUCTIONS = ("mean", "batchmean")


def _check_type(distillation_type: str) -> None:
    if distillation_type not in DISTILLATION_TYPES:
        raise ValueError(
            f"Unknown distillation type {distillation_type!r}; choose one of "
            f"{', '.join(repr(t) for t in DISTILLATION_TYPES)}."
        )


# --------------------------------------------------------------------------------------------
# Teacher
# --------------------------------------------------------------------------------------------


def _floats(values: Sequence[float] | torch.Tensor | None, what: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    out = tuple(float(v) for v in values)
    if not out:
        raise ValueError(f"{what} is empty; pass one value per input channel.")
    return out


def _default_norm(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation a model declares (timm ``pretrained_cfg``, DeiT ``default_cfg``) or
    ImageNet's (torchvision models and anything else)."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("mean") is not None and cfg.get("std") is not None:
            return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))
    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


class Teacher(nn.Module):
    """A frozen classifier used as a distillation teacher.

    - every parameter has ``requires_grad=False``; :meth:`forward` runs under
      :func:`torch.no_grad` (not ``inference_mode``: inference tensors could not be saved for the
      backward pass of the KL term, which reads the teacher's probabilities);
    - it stays in eval mode: :meth:`train` ignores the requested mode, so ``parent.train()``
      never switches batch-norm statistics or dropout on (the official code calls
      ``teacher.eval()`` once; this makes it impossible to undo by accident);
    - images normalised for the student are converted to the teacher's normalisation,
      ``x_t = (x * std_s + mean_s - mean_t) / std_t``, fused as one per-channel affine
      ``x_t = x * scale + shift`` (identity when both normalisations are equal or the student's is
      not given);
    - a model returning a pair (a distilled DeiT in training mode) gives the average of the two
      heads, the paper's late fusion;
    - optionally channels-last (faster convolutions on GPUs).

    Args:
        model: any classifier mapping ``(B, C, H, W)`` images to ``(B, num_classes)`` logits.
        num_classes: its class count; read from ``model.num_classes`` when omitted.
        mean, std: normalisation the teacher was trained with, one value per channel; default to
            the model's ``pretrained_cfg``/``default_cfg``, else ImageNet's.
        student_mean, student_std: normalisation of the images the student receives; ``None``
            means the same as the teacher's (no conversion).
        channels_last: run the teacher in channels-last memory format.
        model_name: name it was built from (for logs).
        class_names: class names it was trained on, when known.

    Attributes:
        num_classes (int | None), mean, std, student_mean, student_std (tuples or ``None``),
        model_name, class_names.

    Raises:
        ValueError: ``mean``/``std`` (or the student's pair) of different lengths, a zero std,
            or channel counts that cannot broadcast.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        student_mean: Sequence[float] | None = None,
        student_std: Sequence[float] | None = None,
        channels_last: bool = False,
        model_name: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, Teacher):
            model = model.model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if isinstance(model, DistilledVisionTransformer):
            model.set_distilled_training(False)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        nc = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        self.num_classes = int(nc) if nc is not None else None
        self.model_name = model_name
        self.class_names = list(class_names) if class_names is not None else None

        d_mean, d_std = _default_norm(model)
        self.mean = _floats(mean, "Teacher mean") or d_mean
        self.std = _floats(std, "Teacher std") or d_std
        self.student_mean = _floats(student_mean, "Student mean")
        self.student_std = _floats(student_std, "Student std")
        if (self.student_mean is None) != (self.student_std is None):
            raise ValueError(
                "Pass both student_mean and student_std (or neither) to convert the student's "
                "normalisation to the teacher's."
            )
        pairs = [("teacher", self.mean, self.std)]
        if self.student_mean is not None:
            pairs.append(("student", self.student_mean, self.student_std))
        for who, m, s in pairs:
            if len(m) != len(s):
                raise ValueError(
                    f"The {who} mean has {len(m)} values but its std has {len(s)}; give one "
                    "value per input channel for both."
                )
            if any(v == 0 for v in s):
                raise ValueError(f"The {who} std {s} contains a zero; every std must be non-zero.")

        self.register_buffer("scale", None, persistent=False)
        self.register_buffer("shift", None, persistent=False)
        if self.student_mean is not None and (
            self.student_mean != self.mean or self.student_std != self.std
        ):
            n_s, n_t = len(self.student_mean), len(self.mean)
            if n_s != n_t and 1 not in (n_s, n_t):
                raise ValueError(
                    f"The student normalisation has {n_s} channels but the teacher's has {n_t}; "
                    "both must describe the same input channels."
                )
            mean_s, std_s = torch.tensor(self.student_mean), torch.tensor(self.student_std)
            mean_t, std_t = torch.tensor(self.mean), torch.tensor(self.std)
            scale = (std_s / std_t).reshape(1, -1, 1, 1)
            shift = ((mean_s - mean_t) / std_t).reshape(1, -1, 1, 1)
            self.scale, self.shift = scale, shift

    def train(self, mode: bool = True) -> Teacher:
        """Keep eval mode whatever ``mode`` is (the teacher is never trained); returns ``self``."""
        self.training = False
        self.model.eval()
        return self

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Convert student-normalised images ``(B, C, H, W)`` to the teacher's normalisation."""
        if self.scale is None:
            return x
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``(B, num_classes)`` for student-normalised images ``(B, C, H, W)``,
        without gradients."""
        with torch.no_grad():
            return self._logits(x, self.model)

    def _logits(self, x: torch.Tensor, run: Callable[[torch.Tensor], Any]) -> torch.Tensor:
        """``run`` on ``x`` in the teacher's normalisation and memory format; a pair of heads
        averaged (late fusion)."""
        x = self.normalize_input(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = run(x)
        return (out[0] + out[1]) / 2 if isinstance(out, tuple | list) else out

    def extra_repr(self) -> str:
        conv = "none" if self.scale is None else "affine"
        return f"model_name={self.model_name!r}, num_classes={self.num_classes}, norm_conversion={conv}"


def _as_size(value: Any) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    vals = [int(v) for v in value]
    if len(vals) == 3:  # (C, H, W) as in timm's input_size
        vals = vals[1:]
    return vals[0] if len(vals) == 1 or vals[0] == vals[1] else (vals[0], vals[1])


def _classifier_key(model: nn.Module, num_classes: int) -> str | None:
    """Name of the weight of the model's last ``Linear`` with ``num_classes`` outputs."""
    key = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            key = f"{name}.weight"
    return key


def _check_head(
    model: nn.Module, sd: dict[str, torch.Tensor], path: Path, num_classes: int
) -> None:
    """Raise a class-count error when the checkpoint's classifier has another output size."""
    key = _classifier_key(model, num_classes)
    if key is None:
        return
    w = sd.get(key, sd.get(f"module.{key}"))
    if w is not None and w.shape[0] != num_classes:
        raise ValueError(
            f"Teacher checkpoint {str(path)!r} has {w.shape[0]} classes ({key}) but the student "
            f"has {num_classes}; distil from a teacher trained on the same data."
        )


def _read_teacher_weights(path: Path | None) -> Weights | None:
    if path is None:
        return None
    if not path.exists():
        raise CheckpointError(
            f"Teacher checkpoint {str(path)!r} does not exist; pass the path of the "
            "teacher's trained weights (--teacher-path)."
        )
    return read_weights(path)


def _recorded(weights: Weights | None) -> dict[str, Any]:
    """What a ``deit train`` checkpoint records about the teacher (``{}`` for other files)."""
    run = weights.run if weights is not None else None
    if run is None:
        return {}
    keys = ("model_name", "num_classes", "img_size", "in_chans", "class_names", "mean", "std")
    return {k: getattr(run, k) for k in keys if getattr(run, k) is not None}


def _teacher_architecture(
    model_name: str | None,
    meta: dict[str, Any],
    path: Path | None,
    num_classes: int | None,
    in_chans: int | None,
) -> tuple[str, int, int]:
    """``(name, num_classes, in_chans)`` from the arguments, else what the checkpoint records;
    a recorded class or channel count must equal the student's."""
    name = model_name or meta.get("model_name")
    if not name:
        where = f"checkpoint {str(path)!r} records none" if path else "no checkpoint was given"
        raise ValueError(
            f"No teacher model name: {where}; pass model_name (e.g. 'regnety_160' or "
            "'torchvision:resnet50')."
        )
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        stored = meta.get(key)
        if value is not None and stored is not None and int(stored) != int(value):
            what = "classes" if key == "num_classes" else "input channels"
            raise ValueError(
                f"Teacher checkpoint {str(path)!r} was trained with {int(stored)} {what} but the "
                f"student has {int(value)}; distil from a teacher trained on the same data."
            )
    num_classes = num_classes if num_classes is not None else meta.get("num_classes")
    if num_classes is None:
        raise ValueError(
            f"The class count of teacher {name!r} is unknown; pass num_classes (the student's)."
        )
    in_chans = in_chans if in_chans is not None else meta.get("in_chans", 3)
    return name, int(num_classes), int(in_chans)


def _load_teacher_weights(
    model: nn.Module, name: str, weights: Weights | None, num_classes: int
) -> None:
    """Fit the teacher's weights (after a class-count check), or warn that it has none.

    Raises:
        ValueError: the checkpoint's classifier has another class count than ``num_classes``.
        CheckpointError: weights of another architecture; one sentence with the counts of
            mismatched/missing/unexpected keys, examples, the architecture the file holds and
            the ``--teacher-model`` to pass.
    """
    if weights is None:
        warnings.warn(
            f"Teacher {name!r} has random weights (no checkpoint_path); pass the trained "
            "teacher's weights unless this is a test.",
            stacklevel=3,
        )
        return
    _check_head(model, weights.state_dict, Path(weights.source), num_classes)
    fit_weights(model, weights, flag="--teacher-model")


def _teacher_norm(
    model: nn.Module,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    student_mean: Sequence[float] | None,
    in_chans: int,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The teacher's normalisation: given, recorded, else the model's own (averaged to one value
    per channel for a model with fewer channels than its declared normalisation)."""
    if mean is None or std is None:
        d_mean, d_std = _default_norm(model)
        if len(d_mean) not in (1, in_chans):  # e.g. ImageNet's 3 values for a 1-channel model
            d_mean = (sum(d_mean) / len(d_mean),) * in_chans
            d_std = (sum(d_std) / len(d_std),) * in_chans
        mean, std = mean or d_mean, std or d_std
    for who, values in (("teacher", mean), ("student", student_mean)):
        if values is not None and len(values) not in (1, in_chans):
            raise ValueError(
                f"The {who} normalisation has {len(values)} values but the teacher takes "
                f"{in_chans} input channels; give one value per channel."
            )
    return mean, std


def build_teacher(
    model_name: str | None = None,
    checkpoint_path: str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    student_mean: Sequence[float] | None = None,
    student_std: Sequence[float] | None = None,
    channels_last: bool = False,
    device: str | torch.device = "cpu",
    teacher_mean: Sequence[float] | None = None,
    teacher_std: Sequence[float] | None = None,
) -> Teacher:
    """Build a frozen :class:`Teacher` from a model name and/or a checkpoint.

    The model is built by :func:`deit.models.build_classifier` (no download): a timm name (any
    CNN; the paper's teacher is ``regnety_160``, whose timm head already pools with
    ``global_pool='avg'`` like the official code's), ``torchvision:<name>``, or a DeiT name
    (built at ``img_size``, the student's resolution). A distilled DeiT teacher outputs the
    average of its two heads.

    Weights are read and fitted as everywhere in deit (:func:`deit.models.read_weights`, any
    supported format; :func:`deit.models.fit_weights`: position embeddings resampled to
    ``img_size`` for a DeiT, a strict load otherwise). A checkpoint written by ``deit train``
    (a :class:`deit.models.RunCheckpoint`) supplies every argument left ``None``, including
    ``model_name`` itself and the teacher's normalisation.

    Args:
        model_name: teacher architecture; taken from the checkpoint when omitted.
        checkpoint_path: teacher weights; ``None`` leaves random weights (a warning says so).
        num_classes: the student's class count; the teacher must have the same.
        in_chans: input channels; the checkpoint's or 3 when omitted.
        img_size: input size for a DeiT teacher; the checkpoint's or the configuration's.
        student_mean, student_std: the student's input normalisation; the teacher converts it to
            its own (see :class:`Teacher`).
        channels_last: run the teacher channels-last.
        device: where to put the teacher.
        teacher_mean, teacher_std: override the teacher's normalisation (else the checkpoint's,
            else the model's default).

    Returns:
        :class:`Teacher` mapping ``(B, C, H, W)`` student-normalised images to
        ``(B, num_classes)`` logits.

    Raises:
        ValueError: no model name, no class count, or a class / channel count that differs from
            the student's.
        deit.models.CheckpointError (a ``ValueError``): missing or unreadable checkpoint, or
            weights that do not fit the model.
    """
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    weights = _read_teacher_weights(path)
    meta = _recorded(weights)
    name, num_classes, in_chans = _teacher_architecture(
        model_name, meta, path, num_classes, in_chans
    )
    size = img_size if img_size is not None else _as_size(meta.get("img_size"))

    model = build_classifier(name, num_classes=num_classes, in_chans=in_chans, img_size=size)
    _load_teacher_weights(model, name, weights, num_classes)
    if isinstance(model, DistilledVisionTransformer):
        model.set_head("both")
    mean = _floats(teacher_mean, "Teacher mean") or _floats(meta.get("mean"), "Teacher mean")
    std = _floats(teacher_std, "Teacher std") or _floats(meta.get("std"), "Teacher std")
    mean, std = _teacher_norm(model, mean, std, student_mean, in_chans)
    teacher = Teacher(
        model,
        num_classes=num_classes,
        mean=mean,
        std=std,
        student_mean=student_mean,
        student_std=student_std,
        channels_last=channels_last,
        model_name=name,
        class_names=meta.get("class_names"),
    )
    return teacher.to(device)


# --------------------------------------------------------------------------------------------
# Student check and loss
# --------------------------------------------------------------------------------------------


def check_student(
    model: nn.Module, distillation_type: str, teacher: nn.Module | None = None
) -> None:
    """Validate a student before training and, for ``"soft"``/``"hard"``, switch on its
    training-mode ``(cls_logits, dist_logits)`` output (``set_distilled_training(True)``).

    Wrappers (DistributedDataParallel, ``torch.compile``) are looked through.

    Raises:
        ValueError: unknown ``distillation_type``; distillation asked of a model without a
            distillation token and head; a ``teacher`` whose ``num_classes`` differs from the
            student's.
    """
    _check_type(distillation_type)
    student = unwrap_model(model)
    if distillation_type == "none":
        return
    if not hasattr(student, "set_distilled_training"):
        raise ValueError(
            f"distillation_type={distillation_type!r} needs a model with a distillation token "
            f"and head, but {type(student).__name__} has none; use a distilled model such as "
            "deit_tiny_distilled_patch16_224, or distillation_type='none'."
        )
    s_nc = getattr(student, "num_classes", None)
    t_nc = getattr(teacher, "num_classes", None) if teacher is not None else None
    if s_nc is not None and t_nc is not None and int(s_nc) != int(t_nc):
        raise ValueError(
            f"The teacher predicts {t_nc} classes but the student {s_nc}; use a teacher trained "
            "on the student's classes."
        )
    student.set_distilled_training(True)


class LossOutput(NamedTuple):
    """What :meth:`DistillationLoss.compute` returns: the total to back-propagate and its terms.

    ``total = (1 - alpha) * base + alpha * distillation`` (paper eq. 2 / eq. 3; ``total = base``
    for ``"none"``). ``base`` and ``distillation`` are unweighted and detached;
    ``distillation`` and ``teacher_disagreement`` are ``None`` for ``"none"``.
    ``teacher_disagreement`` is the fraction (0-1) of the batch's views on which the teacher's
    top-1 class differs from the label that dominates the target (the label itself, or the mixed
    target's largest entry under Mixup/CutMix): a hard label only teaches something where it
    does. All are scalar tensors on the logits' device (reading them as tensors never
    synchronises).
    """

    total: torch.Tensor
    base: torch.Tensor
    distillation: torch.Tensor | None
    teacher_disagreement: torch.Tensor | None


class DistillationLoss(nn.Module):
    """The DeiT training loss: base criterion on the class head plus distillation on the
    distillation head (paper section 4; official ``losses.py``).

    Args:
        base_criterion: loss on the class-token logits, ``(B, C)`` logits and the targets: timm's
            ``SoftTargetCrossEntropy`` with ``(B, C)`` Mixup/CutMix targets (smoothing folded
            in), ``LabelSmoothingCrossEntropy`` or ``nn.CrossEntropyLoss`` with ``(B,)`` labels.
        teacher: the teacher (any ``nn.Module``; wrapped in a frozen :class:`Teacher` unless it
            is one). ``None`` for ``"none"``, or when every :meth:`compute` call is given the
            teacher's outputs (a stored label set).
        distillation_type: ``"none"``, ``"soft"`` (paper eq. 2) or ``"hard"`` (eq. 3).
        alpha: weight of the distillation term, in [0, 1]; the base term gets ``1 - alpha``.
            0.5 (default) is the paper's hard-distillation setting; its soft setting is 0.1.
        tau: softmax temperature of the soft term (> 0); the paper's soft setting uses 3.0.
        kl_reduction: ``"mean"`` (default) divides the summed KL by ``B * C``, exactly as the
            official code, so that its alpha/tau settings and published numbers carry over;
            ``"batchmean"`` divides by ``B`` (the per-sample KL of the equation, ``C`` times
            larger; what timm's ``TokenDistillationTask`` computes).

    Soft term: ``tau^2 * sum(KL(psi(Z_t / tau) || psi(Z_d / tau))) / (B*C or B)`` with
    ``psi`` the softmax, ``Z_t`` the teacher's and ``Z_d`` the distillation head's ``(B, C)``
    logits (computed in float32). Hard term: ``CE(Z_d, argmax_c Z_t)`` without label smoothing.

    ``loss(images, outputs, targets)`` is the scalar total; :meth:`compute` returns it with
    its terms (:class:`LossOutput`), which is what the training loop logs.

    Raises:
        ValueError: unknown ``distillation_type`` or ``kl_reduction``; ``alpha`` outside [0, 1];
            ``tau <= 0``.
    """

    def __init__(
        self,
        base_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        teacher: nn.Module | None,
        distillation_type: str,
        alpha: float = 0.5,
        tau: float = 1.0,
        kl_reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_type(distillation_type)
        if not (0.0 <= float(alpha) <= 1.0):  # also rejects NaN
            raise ValueError(
                f"alpha (the distillation weight) must be in [0, 1], got {alpha}; 0.5 is the "
                "paper's setting."
            )
        if not (float(tau) > 0.0) or math.isinf(float(tau)):
            raise ValueError(
                f"tau (the distillation temperature) must be a positive number, got {tau}; 1.0 "
                "is the official default, 3.0 the paper's soft setting."
            )
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(
                f"Unknown kl_reduction {kl_reduction!r}; choose 'mean' (official DeiT, divides "
                "by B*C) or 'batchmean' (divides by B)."
            )
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}.")
        self.base_criterion = base_criterion
        self.teacher = (
            teacher if teacher is None or isinstance(teacher, Teacher) else Teacher(teacher)
        )
        self.distillation_type = distillation_type
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.kl_reduction = kl_reduction

    def forward(
        self,
        inputs: torch.Tensor,
        outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """The scalar loss, ``compute(inputs, outputs, targets).total`` (see :meth:`compute`)."""
        return self.compute(inputs, outputs, targets).total

    def compute(
        self,
        inputs: torch.Tensor,
        outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        targets: torch.Tensor,
        teacher_outputs: torch.Tensor | None = None,
    ) -> LossOutput:
        """The loss and its terms (paper section 4, eq. 2 for ``"soft"``, eq. 3 for ``"hard"``).

        Args:
            inputs: the images ``(B, C, H, W)`` the student saw (after Mixup/CutMix); the
                teacher is run on them, without gradients.
            outputs: the student's ``(cls_logits, dist_logits)``, each ``(B, num_classes)``; a
                single ``(B, num_classes)`` tensor is accepted for ``"none"`` only.
            targets: ``(B,)`` class indices or ``(B, num_classes)`` soft targets, whatever
                ``base_criterion`` takes.
            teacher_outputs: the teacher's answer for these exact views, computed elsewhere (a
                stored label set, a faster teacher path): ``(B, num_classes)`` logits, or for
                ``"hard"`` only, ``(B,)`` top-1 class indices. ``None`` (default) runs
                ``self.teacher`` on ``inputs``.

        Returns:
            :class:`LossOutput`: ``total`` (with gradient) and the detached terms.

        Raises:
            ValueError: a single tensor (or anything but a pair) while distilling; teacher logits
                whose shape differs from the distillation head's (another class count); neither a
                teacher nor ``teacher_outputs``; top-1 classes for ``"soft"`` or of another
                batch size.
        """
        if isinstance(outputs, torch.Tensor):
            cls_out, dist_out = outputs, None
        elif isinstance(outputs, tuple | list) and len(outputs) == 2:
            cls_out, dist_out = outputs
        else:
            raise ValueError(
                "The student output must be a (B, C) tensor or the (cls_logits, dist_logits) "
                f"pair, got {type(outputs).__name__}"
                f"{f' of length {len(outputs)}' if isinstance(outputs, tuple | list) else ''}."
            )
        base = self.base_criterion(cls_out, targets)
        if self.distillation_type == "none":
            return LossOutput(base, base.detach(), None, None)
        if dist_out is None:
            raise ValueError(
                f"distillation_type={self.distillation_type!r} needs the student's "
                f"(cls_logits, dist_logits) pair but got one tensor of shape "
                f"{tuple(cls_out.shape)}; use a distilled model in training mode with "
                "set_distilled_training(True) (check_student does this)."
            )
        if teacher_outputs is None:
            if self.teacher is None:
                raise ValueError(
                    f"distillation_type={self.distillation_type!r} needs a teacher or the "
                    "teacher's outputs for these views; build one with "
                    "deit.distillation.build_teacher(...) or pass teacher_outputs."
                )
            with torch.no_grad():
                teacher_outputs = self.teacher(inputs)
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        if teacher_outputs.ndim == 1:
            return self._hard_from_labels(base, dist_out, teacher_outputs, labels)
        teacher_out = teacher_outputs
        if teacher_out.shape != dist_out.shape:
            raise ValueError(
                f"The teacher's logits have shape {tuple(teacher_out.shape)} but the student's "
                f"distillation head {tuple(dist_out.shape)}; use a teacher trained on the "
                "student's classes."
            )
        if self.distillation_type == "hard":
            return self._hard_from_labels(base, dist_out, teacher_out.argmax(dim=1), labels)
        dist = self._soft(dist_out, teacher_out)
        disagreement = (teacher_out.argmax(dim=1) != labels).float().mean().detach()
        total = base * (1.0 - self.alpha) + dist * self.alpha
        return LossOutput(total, base.detach(), dist.detach(), disagreement)

    def _soft(self, dist_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        """Paper eq. 2's KL term, ``tau^2 * KL(psi(Z_t/tau) || psi(Z_d/tau))`` summed and divided
        by ``B*C`` (``"mean"``) or ``B`` (``"batchmean"``), in float32."""
        t = self.tau
        kl = F.kl_div(
            F.log_softmax(dist_out.float() / t, dim=1),
            F.log_softmax(teacher_out.float() / t, dim=1),
            reduction="sum",
            log_target=True,
        )
        denom = dist_out.numel() if self.kl_reduction == "mean" else dist_out.shape[0]
        return kl * (t * t) / denom

    def _hard_from_labels(
        self,
        base: torch.Tensor,
        dist_out: torch.Tensor,
        teacher_labels: torch.Tensor,
        labels: torch.Tensor,
    ) -> LossOutput:
        """Paper eq. 3 from the teacher's ``(B,)`` top-1 classes: ``CE(Z_d, y_t)``, unsmoothed."""
        if self.distillation_type != "hard":
            raise ValueError(
                "Teacher top-1 classes (a (B,) tensor) can only drive hard distillation; soft "
                "distillation needs the teacher's (B, num_classes) logits."
            )
        if teacher_labels.shape != dist_out.shape[:1]:
            raise ValueError(
                f"Got {tuple(teacher_labels.shape)} teacher labels for a batch of "
                f"{dist_out.shape[0]}; give one teacher class per view."
            )
        dist = F.cross_entropy(dist_out, teacher_labels.long())
        disagreement = (teacher_labels != labels).float().mean().detach()
        total = base * (1.0 - self.alpha) + dist * self.alpha
        return LossOutput(total, base.detach(), dist.detach(), disagreement)

    def extra_repr(self) -> str:
        return (
            f"distillation_type={self.distillation_type!r}, alpha={self.alpha}, tau={self.tau}, "
            f"kl_reduction={self.kl_reduction!r}"
        )
