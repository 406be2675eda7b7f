"""`deit eval`: top-1/top-5 and loss of a checkpoint on a data set, per head, with a teacher.

Builds the model with :func:`deit.models.load_model` (any checkpoint format), the data set with
:func:`deit.data.build_dataset` and the checkpoint's own evaluation transform, then runs
:func:`deit.engine.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .data import build_dataset
from .distillation import build_teacher
from .engine import evaluate
from .inference import optimize_for_inference
from .models import load_model
from .precision import resolve_precision
from .predict import eval_transform

__all__ = ["evaluate_checkpoint", "add_subcommand"]


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_set: str = "mnist5k",
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
) -> dict[str, Any]:
    """Evaluate a checkpoint: averaged heads, each head alone, teacher and agreement.

    Args:
        checkpoint: any file :func:`deit.models.load_model` reads.
        data_set, data_path, split: what :func:`deit.data.build_dataset` takes.
        model_name: architecture for weights files that do not record it.
        teacher_model, teacher_path: an optional teacher (see
            :func:`deit.distillation.build_teacher`); adds ``teacher_acc1/5`` and ``agreement``.
        use_ema: evaluate the EMA weights of a training checkpoint.

    Returns:
        The metrics of :func:`deit.engine.evaluate` (percent, nats) plus ``checkpoint``,
        ``data_set``, ``split`` and ``notes``.

    Raises:
        CheckpointError, FileNotFoundError, ValueError: bad checkpoint, data path or class count.
    """
    dev = torch.device(device)
    model, info = load_model(checkpoint, model_name=model_name, use_ema=use_ema, device=dev)
    dataset = build_dataset(data_set, data_path, split, transform=eval_transform(info))
    if len(dataset.classes) != info.num_classes:
        raise ValueError(
            f"The checkpoint predicts {info.num_classes} classes but {data_set} has "
            f"{len(dataset.classes)}; evaluate on the data set it was trained on."
        )
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
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    fast = optimize_for_inference(model)  # same logits (within 1e-5), fewer FLOPs
    stats = evaluate(fast, loader, dev, teacher=teacher, precision=resolve_precision(amp, dev))
    return {
        **stats,
        "checkpoint": str(checkpoint),
        "data_set": data_set,
        "split": split,
        "notes": info.notes,
    }


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
        device=args.device,
    )
    for note in stats["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(stats) if args.json else format_metrics(stats))
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit eval``."""
    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint, per head, with a teacher")
    p.add_argument("checkpoint", help="checkpoint file (deit train, official, timm, safetensors)")
    p.add_argument("--data-set", default="mnist5k", help="data set name (default mnist5k)")
    p.add_argument("--data-path", default=None, help="data set root folder")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--model", default=None, help="architecture, for files that do not record it")
    p.add_argument("--teacher-model", default=None, help="teacher architecture")
    p.add_argument("--teacher-path", default=None, help="teacher weights")
    p.add_argument("--ema", action="store_true", help="use the EMA weights when present")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval_cmd)
