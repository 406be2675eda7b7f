"""Distillation through attention (paper section 4): the loss and the task that owns a step.

The student is a distilled DeiT whose training-mode output is the pair
``(cls_logits, dist_logits)``, each ``(B, num_classes)``. :class:`DistillationLoss` (the
official ``losses.py``) trains the class head on the labels and the distillation head on the
teacher:

- ``"none"``: ``L = base(cls_logits, y)``;
- ``"soft"`` (paper eq. 2): ``L = (1 - alpha) * base(cls_logits, y)
  + alpha * tau^2 * KL(psi(Z_t / tau) || psi(dist_logits / tau))``;
- ``"hard"`` (paper eq. 3, "hard-label distillation"): ``L = (1 - alpha) * base(cls_logits, y)
  + alpha * CE(dist_logits, argmax Z_t)``; ``alpha = 0.5`` is the paper's 1/2, 1/2.

``base`` is whatever criterion the trainer uses (soft-target cross-entropy under Mixup/CutMix,
label smoothing otherwise); the teacher term never uses label smoothing. The teacher sees the
same (mixed) images as the student, in eval mode, without gradients.

:class:`DistillationTask` is one training step's computation (as timm's
``TokenDistillationTask``): it holds the student, the loss and one :class:`TeacherSource`, and
``task(images, targets, epoch, index)`` returns the named :class:`StepOutput`.

Example::

    teacher = build_teacher("regnety_160", "regnety_160.pth", num_classes=1000,
                            student_mean=mean, student_std=std, device=device)
    task = DistillationTask(model, SoftTargetCrossEntropy(), teacher, "hard", alpha=0.5)
    out = task(images, targets)        # StepOutput(loss, base, distillation, disagreement)
    out.loss.backward()
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from timm.utils import unwrap_model
from torch import nn

from ._choices import DISTILLATION_TYPES, KL_REDUCTIONS
from .models.distilled import DistilledVisionTransformer
from .teacher.frozen import Teacher

__all__ = [
    "DistillationLoss",
    "DistillationTask",
    "LossOutput",
    "StepOutput",
    "TeacherSource",
    "prepare_student",
]


def _check_type(distillation_type: str) -> None:
    if distillation_type not in DISTILLATION_TYPES:
        raise ValueError(
            f"Unknown distillation type {distillation_type!r}; choose one of "
            f"{', '.join(repr(t) for t in DISTILLATION_TYPES)}."
        )


def not_distilled_message(name: str, distillation_type: str) -> str:
    """The one sentence refusing distillation of ``name``, a model without a distillation token
    and head, pointing to its distilled twin where one is registered."""
    from .models.registry import distilled_twin

    twin = distilled_twin(name)
    fix = (
        f"train its distilled twin {twin} (--model {twin})"
        if twin
        else "train a distilled DeiT such as deit_tiny_distilled_patch16_224 "
        "(deit list-models '*distilled*')"
    )
    return (
        f"Distillation ({distillation_type}) needs a student with a distillation token and "
        f"head, but {name} has none; {fix}, or pass --distillation-type none."
    )


class TeacherSource(Protocol):
    """What a :class:`DistillationTask` asks of its teacher, whichever it is: the frozen teacher
    run on the views (:class:`deit.teacher.Teacher`), its fast path
    (:class:`deit.teacher.FastTeacher`), or its answers computed once and read back
    (:class:`deit.teacher.TeacherLabelStore`)."""

    #: The teacher's class count (``None``: unknown).
    num_classes: int | None

    def answer(self, images: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        """The teacher's answer on ``images`` ``(B, C, H, W)``, batch ``index`` of ``epoch``:
        ``(B, num_classes)`` logits, or ``(B,)`` top-1 classes (hard distillation only)."""
        ...


def prepare_student(
    model: nn.Module, distillation_type: str, teacher: TeacherSource | None = None
) -> None:
    """Check a student before training and, for ``"soft"``/``"hard"``, switch on its
    training-mode ``(cls_logits, dist_logits)`` output (``set_distilled_training(True)``).

    Wrappers (DistributedDataParallel, ``torch.compile``) are looked through.

    Raises:
        ValueError: unknown ``distillation_type``; distillation asked of a model without a
            distillation token and head (naming its distilled twin); a ``teacher`` whose
            ``num_classes`` differs from the student's.
    """
    _check_type(distillation_type)
    student = unwrap_model(model)
    if distillation_type == "none":
        return
    if not isinstance(student, DistilledVisionTransformer):
        cfg = getattr(student, "default_cfg", None) or getattr(student, "pretrained_cfg", {})
        name = cfg.get("architecture", type(student).__name__)
        raise ValueError(not_distilled_message(name, distillation_type))
    t_nc = teacher.num_classes if teacher is not None else None
    if t_nc is not None and int(student.num_classes) != int(t_nc):
        raise ValueError(
            f"The teacher predicts {t_nc} classes but the student {student.num_classes}; use a "
            "teacher trained on the student's classes."
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
            is one), the official ``DistillationLoss(base, teacher_model, ...)`` convention.
            ``None`` for ``"none"``, or when every :meth:`compute` call is given the
            teacher's outputs (as :class:`DistillationTask` gives them).
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
    its terms (:class:`LossOutput`).

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
                "set_distilled_training(True) (prepare_student does this)."
            )
        if teacher_outputs is None:
            if self.teacher is None:
                raise ValueError(
                    f"distillation_type={self.distillation_type!r} needs a teacher or the "
                    "teacher's outputs for these views; build one with "
                    "deit.teacher.build_teacher(...) or pass teacher_outputs."
                )
            with torch.no_grad():
                teacher_outputs = self.teacher(inputs)
        top1 = self._teacher_top1(teacher_outputs, dist_out)
        if self.distillation_type == "hard":  # paper eq. 3, the teacher's class unsmoothed
            dist = F.cross_entropy(dist_out, top1)
        else:
            dist = self._soft(dist_out, teacher_outputs)
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        disagreement = (top1 != labels).float().mean().detach()
        total = base * (1.0 - self.alpha) + dist * self.alpha
        return LossOutput(total, base.detach(), dist.detach(), disagreement)

    def _teacher_top1(self, answer: torch.Tensor, dist_out: torch.Tensor) -> torch.Tensor:
        """The teacher's ``(B,)`` top-1 classes from its logits or its stored classes, checked
        against the distillation head's ``(B, C)`` logits."""
        if answer.ndim == 1 and self.distillation_type != "hard":
            raise ValueError(
                "Teacher top-1 classes (a (B,) tensor) can only drive hard distillation; soft "
                "distillation needs the teacher's (B, num_classes) logits."
            )
        if answer.ndim == 1 and answer.shape != dist_out.shape[:1]:
            raise ValueError(
                f"Got {tuple(answer.shape)} teacher labels for a batch of "
                f"{dist_out.shape[0]}; give one teacher class per view."
            )
        if answer.ndim != 1 and answer.shape != dist_out.shape:
            raise ValueError(
                f"The teacher's logits have shape {tuple(answer.shape)} but the student's "
                f"distillation head {tuple(dist_out.shape)}; use a teacher trained on the "
                "student's classes."
            )
        return answer.long() if answer.ndim == 1 else answer.argmax(dim=1)

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

    def extra_repr(self) -> str:
        return (
            f"distillation_type={self.distillation_type!r}, alpha={self.alpha}, tau={self.tau}, "
            f"kl_reduction={self.kl_reduction!r}"
        )


class StepOutput(NamedTuple):
    """What one :class:`DistillationTask` step gives: ``loss`` (with gradient) and, detached,
    its unweighted terms ``base`` and ``distillation`` and the teacher's ``disagreement`` (the
    fraction of views whose teacher top-1 differs from the dominant label); the last two are
    ``None`` without distillation. Scalar tensors on the logits' device."""

    loss: torch.Tensor
    base: torch.Tensor
    distillation: torch.Tensor | None
    disagreement: torch.Tensor | None


class DistillationTask:
    """One training step's computation: the student's outputs on a batch, the teacher's answer
    on the same views, and the loss (paper section 4). Modelled on timm's
    ``TokenDistillationTask``, whose ``forward`` also returns the loss with its named parts.

    Args:
        student: the model trained (possibly DDP-wrapped or compiled); switched to its
            ``(cls_logits, dist_logits)`` training output when distilling
            (:func:`prepare_student`).
        base_criterion: the loss on the class head, ``(B, C)`` logits and the targets.
        teacher: a :class:`TeacherSource` (``None`` for ``"none"``).
        distillation_type, alpha, tau, kl_reduction: as :class:`DistillationLoss`.

    Raises:
        ValueError: what :class:`DistillationLoss` and :func:`prepare_student` raise; a
            distillation type other than ``"none"`` without a teacher.
    """

    def __init__(
        self,
        student: nn.Module,
        base_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        teacher: TeacherSource | None = None,
        distillation_type: str = "none",
        alpha: float = 0.5,
        tau: float = 1.0,
        kl_reduction: str = "mean",
    ) -> None:
        self.loss = DistillationLoss(
            base_criterion, None, distillation_type, alpha, tau, kl_reduction
        )
        if distillation_type != "none" and teacher is None:
            raise ValueError(
                f"distillation_type={distillation_type!r} needs a teacher: a frozen teacher "
                "(deit.teacher.build_teacher) or a store of its labels (TeacherLabelStore)."
            )
        prepare_student(student, distillation_type, teacher)
        self.student = student
        self.teacher = teacher if distillation_type != "none" else None

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, epoch: int = 0, index: int = 0
    ) -> StepOutput:
        """The step's loss and terms for ``images`` ``(B, C, H, W)`` (already mixed) and
        ``targets`` (``(B,)`` labels or ``(B, num_classes)`` mixed targets), batch ``index`` of
        ``epoch`` (the key of a teacher's stored answers).

        Raises:
            ValueError: see :meth:`DistillationLoss.compute`.
        """
        outputs = self.student(images)
        answer = self.teacher.answer(images, epoch, index) if self.teacher is not None else None
        parts = self.loss.compute(images, outputs, targets, teacher_outputs=answer)
        return StepOutput(parts.total, parts.base, parts.distillation, parts.teacher_disagreement)
