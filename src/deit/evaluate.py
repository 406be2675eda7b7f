"""`deit eval`: top-1/top-5 and loss of a checkpoint on a data set, per head, with a teacher
(:func:`evaluate_checkpoint`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import DataLoader

from ._checks import check_batch_size
from ._json import dumps
from ._notes import print_note
from ._workers import LoaderWorkerInit
from .checkpoints import ModelInfo, load_model
from .config import Config
from .data import build_dataset, dataset_info
from .data.align import align_classes
from .data.images import to_display_mode
from .engine import evaluate
from .inference import optimize_for_inference
from .precision import resolve_device, resolve_precision
from .predict import eval_transform
from .teacher.build import build_teacher

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_set: str | None = None,
    data_path: str | None = None,
    split: str = "val",
    model_name: str | None = None,
    teacher_model: str | None = None,
    teacher_path: str | None = None,
    use_ema: bool = False,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str = "cpu",
    amp: str = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint: averaged heads, each head alone, teacher and agreement.

    Images reach the model through its own evaluation transform, in its channel count (a
    1-channel model sees greyscale images). A folder data set's classes are matched to the
    checkpoint's by the names it records (a ``val/`` may hold a subset of them, in any order).

    Args:
        checkpoint: any file :func:`deit.checkpoints.load_model` reads.
        data_set: what :func:`deit.data.build_dataset` takes; default: the data set a
            ``deit train`` checkpoint records, else ``deit train``'s default (``imagenet``).
        data_path, split: what :func:`deit.data.build_dataset` takes.
        model_name: architecture for weights files that do not record it.
        teacher_model, teacher_path: an optional teacher (see
            :func:`deit.teacher.build_teacher`); adds ``teacher_acc1/5`` and ``agreement``.
        use_ema: evaluate the EMA weights of a training checkpoint.
        mean, std: input normalisation per channel ([0, 1] units) instead of the checkpoint's
            (recorded by ``deit train``; the architecture's defaults for other files).

    Returns:
        The metrics of :func:`deit.engine.evaluate` (percent, nats) plus ``checkpoint``,
        ``data_set``, ``split``, ``mean``, ``std`` and ``notes`` (sentences about what was
        assumed: normalisation not recorded or overridden, another data set than the
        checkpoint's).

    Raises:
        CheckpointError, FileNotFoundError, ValueError: bad checkpoint, data path, class count,
            a folder class the checkpoint's recorded class names lack, or ``mean``/``std``.
    """
    check_batch_size(batch_size, "pass a positive batch size (default 128)")
    dev = resolve_device(device)
    model, info = load_model(checkpoint, model_name=model_name, use_ema=use_ema, device=dev)
    data_set = data_set or info.data_set or Config().data_set
    notes = list(info.notes) + _set_normalisation(info, mean, std)
    dataset = build_dataset(data_set, data_path, split, transform=_ModelInput(info))
    notes += _match_classes(info, dataset, data_set, checkpoint)
    teacher = None
    if teacher_path or teacher_model:
        teacher = build_teacher(
            teacher_model,
            teacher_path,
            num_classes=info.num_classes,
            img_size=info.img_size[0],
            student_mean=info.mean,
            student_std=info.std,
            device=dev,
        )
    init = LoaderWorkerInit() if num_workers else None  # no worker outlives this process
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, worker_init_fn=init
    )
    fast = optimize_for_inference(model)  # same logits (within 1e-5), fewer FLOPs
    stats = evaluate(fast, loader, dev, teacher=teacher, precision=resolve_precision(amp, dev))
    return {
        **stats,
        "checkpoint": str(checkpoint),
        "data_set": data_set,
        "split": split,
        "mean": list(info.mean),
        "std": list(info.std),
        "notes": notes,
    }


class _ModelInput:
    """PIL image -> the model's channel count (8-bit, as a viewer shows it) -> its evaluation
    transform (a class, not a closure, so data-loader workers can pickle it)."""

    def __init__(self, info: ModelInfo) -> None:
        self.mode = "L" if info.in_chans == 1 else "RGB"
        self.transform = eval_transform(info)

    def __call__(self, img: Any) -> torch.Tensor:
        return self.transform(to_display_mode(img, self.mode))


def _set_normalisation(
    info: ModelInfo, mean: Sequence[float] | None, std: Sequence[float] | None
) -> list[str]:
    """Put ``mean``/``std`` given by the user into ``info``; a note names what changed."""
    if mean is None and std is None:
        return []
    new_mean = tuple(float(v) for v in (mean if mean is not None else info.mean))
    new_std = tuple(float(v) for v in (std if std is not None else info.std))
    if len(new_mean) != len(info.mean) or len(new_std) != len(info.std) or min(new_std) <= 0:
        raise ValueError(
            f"--mean/--std need {len(info.mean)} values each (std above 0), got {mean} / {std}."
        )
    note = (
        f"Normalising with mean {new_mean}, std {new_std} as set, instead of mean "
        f"{tuple(info.mean)}, std {tuple(info.std)}."
    )
    info.mean, info.std = new_mean, new_std
    return [note]


def _match_classes(
    info: ModelInfo, dataset: Any, data_set: str, checkpoint: str | Path
) -> list[str]:
    """Give a folder data set's labels the checkpoint's class indices, by the class names the
    checkpoint records (a ``val/`` may hold fewer classes; its sub-folders are numbered on their
    own); other data sets, or a checkpoint without names, must have its class count. Returns a
    note when a ``deit train`` checkpoint matched by index is evaluated on another data set than
    its own, or on classes of other names.

    Raises:
        ValueError: a folder class the checkpoint does not know, or another class count.
    """
    if info.class_names_recorded and hasattr(dataset, "samples"):
        trained = SimpleNamespace(classes=info.class_names)
        align_classes(trained, dataset, trained_on=f"checkpoint {str(checkpoint)!r}")
        return []
    if len(dataset.classes) != info.num_classes:
        raise ValueError(
            f"The checkpoint predicts {info.num_classes} classes but {data_set} has "
            f"{len(dataset.classes)}; evaluate on the data set it was trained on."
        )
    if info.data_set is None:
        return []
    if dataset_info(data_set).name != dataset_info(info.data_set).name:
        return [
            f"The checkpoint was trained on {info.data_set} but is evaluated on {data_set}: its "
            "class indices are taken to mean the same classes there."
        ]
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(info.class_names, dataset.classes)) if a != b]
    if not diff:
        return []
    i, a, b = diff[0]
    return [
        f"{len(diff)} class names differ from the checkpoint's (e.g. class {i}: {b!r} here, "
        f"{a!r} in the checkpoint): its class indices are taken to mean the same classes."
    ]


def format_metrics(stats: dict[str, Any]) -> str:
    """A small text table of the metrics of :func:`evaluate_checkpoint`."""
    rows = [("averaged heads" if "acc1_cls" in stats else "model", "acc1", "acc5")]
    if "acc1_cls" in stats:
        rows += [("class token head", "acc1_cls", "acc5_cls")]
        rows += [("distillation head", "acc1_dist", "acc5_dist")]
    if "teacher_acc1" in stats:
        rows += [("teacher", "teacher_acc1", "teacher_acc5")]
    lines = [f"{'':<20} {'top-1 %':>8} {'top-5 %':>8}"]
    lines += [f"{name:<20} {stats[a]:>8.2f} {stats[b]:>8.2f}" for name, a, b in rows]
    lines.append(f"loss {stats['loss']:.4f} on {int(stats['n'])} images")
    if "head_agreement" in stats:
        lines.append(f"class/distillation heads agree on {stats['head_agreement']:.2f}%")
    if "agreement" in stats:
        lines.append(f"student/teacher top-1 agreement {stats['agreement']:.2f}%")
    return "\n".join(lines)


def _eval_cmd(args: argparse.Namespace) -> int:
    stats = evaluate_checkpoint(
        args.checkpoint,
        data_set=args.data_set,
        data_path=args.data_path,
        split=args.split,
        model_name=args.model,
        teacher_model=args.teacher_model,
        teacher_path=args.teacher_path,
        use_ema=args.ema,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device or "auto",
        mean=args.mean,
        std=args.std,
    )
    for note in stats["notes"]:  # those the loader warned about are printed already
        print_note(note)
    print(dumps(stats) if args.json else format_metrics(stats))
    return 0
