"""The typed state of one run: what its steps build and update, in order.

:func:`deit.train.run` fills a :class:`RunState` step by step: the environment
(:mod:`~deit.train.runner`), data (:mod:`~deit.train.data`), model and teacher
(:mod:`~deit.train.model`), optimisation (:mod:`~deit.train.optimisation`), resume
(:mod:`~deit.train.checkpointing`), then the epoch loop (:mod:`~deit.train.loop`). A field is ``None``
until its step has run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from timm.data import Mixup
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config
from ..data.transforms import PositionSampler
from ..distillation import DistillationLoss
from ..precision import Precision
from ..teacher.frozen import Teacher
from ..teacher.store import TeacherLabelStore
from .distributed import DistEnv
from .lock import OutputLock

if TYPE_CHECKING:  # the tensorboard extra is optional
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["BEST", "LAST", "RunState"]

LAST = "checkpoint.pth"
BEST = "best_checkpoint.pth"


@dataclass
class RunState:
    """Everything a run builds and updates, filled in by the steps of :func:`deit.train.run` in
    order: ``_start`` (environment), :func:`~deit.train.build_data`,
    :func:`~deit.train.build_model_and_teacher`, :func:`~deit.train.build_optimisation`,
    :func:`~deit.train.resume`, then :func:`~deit.train.fit` (which calls
    :func:`~deit.train.save`)."""

    cfg: Config
    env: DistEnv
    device: torch.device
    precision: Precision
    out: Path | None
    # data (build_data)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: list[str] = field(default_factory=list)
    train_images: int = 0
    sampler_train: PositionSampler | None = None
    loader_train: DataLoader | None = None
    loader_val: DataLoader | None = None
    mixup_fn: Mixup | None = None  # a deit.data.transforms.SeededMixup
    # model and teacher (build_model_and_teacher)
    model: nn.Module | None = None  # the student itself: its state dict is what is saved
    train_model: nn.Module | None = None  # compiled and/or DDP-wrapped for training
    eval_model: nn.Module | None = (
        None  # compiled, not DDP-wrapped: evaluation needs no collectives
    )
    teacher: Teacher | None = None  # a FastTeacher when --teacher-precision found a fast path
    teacher_labels: TeacherLabelStore | None = None  # --teacher-labels (the teacher is not built)
    criterion: DistillationLoss | None = None
    n_parameters: int = 0
    # optimisation (build_optimisation)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Scheduler | None = None
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    ema: ModelEmaV3 | None = None
    # progress (resume, fit)
    start_epoch: int = 0
    num_updates: int = 0
    skip_batches: int = 0
    partial_stats: dict[str, float] | None = None  # of the skip_batches already trained
    best_acc1: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    status: str = "completed"
    stop_signal: int = 0  # the signal number when status is 'stopped'
    writer: SummaryWriter | None = None  # None without the tensorboard extra
    lock: OutputLock | None = None  # of the output folder, held by rank 0 while training

    @property
    def num_classes(self) -> int:
        """Classes of the training set."""
        return len(self.class_names)
