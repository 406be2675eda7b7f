"""The frozen teacher of distillation through attention (paper section 4): :class:`Teacher`.

It depends on the models only, so the loss (:mod:`deit.distillation`) can wrap a bare module in
it; building one from a name or checkpoint is :func:`deit.teacher.build.build_teacher`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..models.distilled import DistilledVisionTransformer, late_fusion
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Teacher", "fp32_region"]


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


def fp32_region(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off for ``device_type`` where it is on: a teacher asked to run in fp32
    is called inside the student's autocast region (the loss), which would otherwise run it in
    bf16/fp16."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class Teacher(nn.Module):
    """A frozen classifier used as a distillation teacher.

    - every parameter has ``requires_grad=False``; :meth:`forward` runs under
      :func:`torch.no_grad` (not ``inference_mode``: inference tensors could not be saved for the
      backward pass of the KL term, which reads the teacher's probabilities);
    - it computes in fp32 even when called inside the student's autocast region (the run's AMP);
      a reduced-precision teacher is :class:`deit.teacher.FastTeacher`'s checked choice;
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
        model_name, class_names; ``name``, the path it runs (``"fp32"``; a
        :class:`deit.teacher.FastTeacher` names its own).

    Raises:
        ValueError: ``mean``/``std`` (or the student's pair) of different lengths, a zero std,
            or channel counts that cannot broadcast.
    """

    name = "fp32"

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
        self.training = False  # eval mode from the start, as the docstring says, not nn.Module's
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
            self.scale = (std_s / std_t).reshape(1, -1, 1, 1)
            self.shift = ((mean_s - mean_t) / std_t).reshape(1, -1, 1, 1)

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
        without gradients, in fp32 even inside the student's autocast region."""
        with torch.no_grad(), fp32_region(x.device.type):
            return self._logits(x, self.model)

    def answer(self, images: torch.Tensor, epoch: int = 0, index: int = 0) -> torch.Tensor:
        """The teacher's logits on these views, whichever batch they are (the
        :class:`deit.distillation.TeacherSource` a distillation task asks)."""
        return self(images)

    def _logits(self, x: torch.Tensor, run: Callable[[torch.Tensor], Any]) -> torch.Tensor:
        """``run`` on ``x`` in the teacher's normalisation and memory format; a pair of heads
        averaged (late fusion)."""
        x = self.normalize_input(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = run(x)
        return late_fusion(*out) if isinstance(out, tuple | list) else out

    def extra_repr(self) -> str:
        conv = "none" if self.scale is None else "affine"
        return f"model_name={self.model_name!r}, num_classes={self.num_classes}, norm_conversion={conv}"
