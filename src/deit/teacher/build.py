"""Building the frozen teacher from a model name and/or a checkpoint (paper section 4):
:func:`build_teacher`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import Weights, fit_weights, read_weights
from ..checkpoints.fetch import local_file
from ..checkpoints.hub import is_hub_id
from ..checkpoints.safe_load import checkpoint_path_error
from ..models.distilled import DistilledVisionTransformer
from ..models.registry import build_classifier
from .frozen import Teacher, _default_norm, _floats

__all__ = ["build_teacher"]


def _as_size(value: Any) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    vals = [int(v) for v in value]
    if len(vals) == 3:  # (C, H, W) as in timm's input_size
        vals = vals[1:]
    return vals[0] if len(vals) == 1 or vals[0] == vals[1] else (vals[0], vals[1])


def _read_teacher_weights(path: Path | None) -> tuple[Weights | None, dict[str, Any]]:
    """The teacher's weights, and what a ``deit train`` checkpoint records about the teacher
    (``{}`` for other files)."""
    if path is None:
        return None, {}
    if is_hub_id(path):  # hf-hub:ORG/NAME, through huggingface_hub's cache
        weights = read_weights(str(path))
    else:
        fix = "pass the path of the teacher's trained weights (--teacher-path)"
        error = checkpoint_path_error(path, "Teacher checkpoint", fix, hf_folder=True)
        if error is not None:
            raise error
        weights = read_weights(path)
    keys = ("model_name", "num_classes", "img_size", "in_chans", "class_names", "mean", "std")
    run = weights.run
    return weights, {k: getattr(run, k) for k in keys if run and getattr(run, k) is not None}


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
    sd, key = weights.state_dict, None  # key: the weight of the last num_classes-wide Linear
    for module_name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            key = f"{module_name}.weight"
    w = sd.get(key, sd.get(f"module.{key}")) if key is not None else None
    if w is not None and w.shape[0] != num_classes:
        raise ValueError(
            f"Teacher checkpoint {str(Path(weights.source))!r} has {w.shape[0]} classes ({key}) "
            f"but the student has {num_classes}; distil from a teacher trained on the same data."
        )
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

    Weights are read and fitted as everywhere in deit (:func:`deit.checkpoints.read_weights`, any
    supported format; :func:`deit.checkpoints.fit_weights`: position embeddings resampled to
    ``img_size`` for a DeiT, a strict load otherwise). A checkpoint written by ``deit train``
    (a :class:`deit.checkpoints.RunCheckpoint`) supplies every argument left ``None``, including
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
        deit.checkpoints.CheckpointError (a ``ValueError``): missing or unreadable checkpoint, or
            weights that do not fit the model.
    """
    if checkpoint_path is not None:  # a URL: torch.hub's cached copy, as the official code
        checkpoint_path = local_file(checkpoint_path, "teacher checkpoint")
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    weights, meta = _read_teacher_weights(path)
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
