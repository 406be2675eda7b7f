"""The teacher of a training run: built from the run's fields, made fast, checked.

:func:`build_run_teacher` is the one step that turns a configuration's teacher fields into the
frozen teacher a run (``deit train``) or a label pass (``deit teacher-labels``) uses. It takes
what it needs as arguments, so the teacher package never imports the run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from .._rng import rng_state, set_rng_state
from ..config import Config
from .build import build_teacher
from .fast import draw_views, optimize_teacher
from .frozen import Teacher

__all__ = ["build_run_teacher"]


def build_run_teacher(
    cfg: Config,
    device: torch.device,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    loader: DataLoader,
    mixup_fn: Callable | None = None,
    *,
    verbose: bool = True,
) -> Teacher:
    """The run's frozen teacher (:func:`deit.teacher.build_teacher` with ``cfg``'s teacher
    fields, the run's class count, resolution and normalisation), on ``device``, made fast by
    :func:`deit.teacher.optimize_teacher` as ``cfg.teacher_precision`` says (checked against
    fp32 on training views). Built under a forked CPU RNG and with the RNG states restored after
    the views are drawn: the student's dropout / drop-path stream is the same whether the
    teacher is built or its labels are read from a store.

    Args:
        cfg: the run's configuration (``teacher_model``, ``teacher_path``, ``input_size``,
            ``channels_last_teacher``, ``teacher_precision``, ``distillation_type``,
            ``distillation_tau``, ``compile``).
        device: where the teacher runs.
        num_classes: the student's class count.
        mean, std: the student's input normalisation (converted to the teacher's).
        loader: the run's training loader, yielding ``(B, C, H, W)`` images and targets: the
            views the fast path is checked on.
        mixup_fn: the run's Mixup/CutMix, applied to those views as training applies it.
        verbose: print the fast path's report line on stderr (rank 0 of a run).

    Returns:
        :class:`deit.teacher.Teacher` (a :class:`deit.teacher.FastTeacher` when a fast path
        passed the check) mapping ``(B, C, H, W)`` student-normalised images to
        ``(B, num_classes)`` logits.

    Raises:
        ValueError / deit.checkpoints.CheckpointError: what :func:`deit.teacher.build_teacher` and
            :func:`deit.teacher.optimize_teacher` raise (bad path, class count, precision).
    """
    with torch.random.fork_rng(devices=[]):
        teacher = build_teacher(
            cfg.teacher_model or None,
            cfg.teacher_path,
            num_classes=num_classes,
            img_size=cfg.input_size,
            student_mean=mean,
            student_std=std,
            channels_last=cfg.channels_last_teacher,
            device=device,
        )
    if cfg.teacher_precision == "fp32" or len(loader) == 0:  # (the latter: refused with its
        return teacher  # own message by the run's optimisation step)
    rng = rng_state()  # drawing the views leaves the run's own draws as they were
    # 256 views to check: 99.5 % agreement then allows one disagreement (64 would allow none)
    views = draw_views(loader, 32 + 256, device, mixup_fn)
    set_rng_state(rng)
    calibrate = min(32, len(views) // 4)  # disjoint from the views checked
    teacher, report = optimize_teacher(
        teacher,
        cfg.teacher_precision,
        views[calibrate:],
        calibration=views[:calibrate],
        distillation_type=cfg.distillation_type,
        tau=cfg.distillation_tau,
        compile=cfg.compile,
    )
    if verbose:
        print(report.line(), file=sys.stderr)
    return teacher
