"""The typed state of one run: what its steps build, once, and the progress the loop updates.

:func:`deit.train.run` builds, in order and each once: the run's configuration with the
model's defaults filled in (:func:`~deit.train.data.resolve_config`), its :class:`RunData`
(:func:`~deit.train.data.build_data`), its :class:`Student` with the distillation task
(:func:`~deit.train.model.build_student`), its :class:`Optimisation`
(:func:`~deit.train.optimisation.build_optimisation`), and holds them in one :class:`RunState`;
only its :class:`Progress` (and the TensorBoard writer, opened with the output folder) change
while it trains.
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
from ..distillation import DistillationTask
from ..engine import StepOptions
from ..precision import Precision
from ..teacher.frozen import Teacher
from .distributed import DistEnv
from .lock import OutputLock

if TYPE_CHECKING:  # the tensorboard extra is optional
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["BEST", "LAST", "Optimisation", "Progress", "RunData", "RunState", "Student"]

LAST = "checkpoint.pth"
BEST = "best_checkpoint.pth"


@dataclass(frozen=True)
class RunData:
    """A run's data (:func:`~deit.train.data.build_data`): ``cfg`` is the configuration it was
    built from (the model's defaults filled in), ``mean``/``std`` the input normalisation,
    ``class_names`` the training set's classes, the training sampler and loaders, and the
    run's Mixup/CutMix (a :class:`deit.data.transforms.SeededMixup`, or ``None``)."""

    cfg: Config
    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    sampler_train: PositionSampler
    loader_train: DataLoader
    loader_val: DataLoader
    mixup_fn: Mixup | None

    @property
    def num_classes(self) -> int:
        """Classes of the training set."""
        return len(self.class_names)

    @property
    def train_images(self) -> int:
        """Images of the training set (unreadable files skipped with ``--skip-corrupt``)."""
        return len(self.loader_train.dataset)


@dataclass(frozen=True)
class Student:
    """The run's student (:func:`~deit.train.model.build_student`): ``model`` itself (its
    state dict is what is saved), ``train_model`` (DDP-wrapped and/or compiled for training),
    ``eval_model`` (compiled, never DDP-wrapped: evaluation needs no collectives), the
    distillation ``task`` on ``train_model``, and the frozen ``teacher`` when one was built
    (``None`` with stored teacher labels or without distillation)."""

    model: nn.Module
    train_model: nn.Module
    eval_model: nn.Module
    task: DistillationTask
    teacher: Teacher | None = None

    @property
    def n_parameters(self) -> int:
        """Trainable parameters of the student."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class Optimisation:
    """The run's optimiser, learning-rate schedule, fp16 gradient scaler and weight EMA (each
    timm's; ``None`` when the run has none), and the :class:`deit.engine.StepOptions` every
    epoch's steps take (:func:`~deit.train.optimisation.build_optimisation`)."""

    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    scaler: torch.amp.GradScaler | None
    ema: ModelEmaV3 | None
    step: StepOptions


@dataclass
class Progress:
    """Where the run stands: set by :func:`~deit.train.resume`, updated by the epoch loop."""

    start_epoch: int = 0
    num_updates: int = 0
    skip_batches: int = 0
    partial_stats: dict[str, float] | None = None  # of the skip_batches already trained
    best_acc1: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    status: str = "completed"
    stop_signal: int = 0  # the signal number when status is 'stopped'


@dataclass
class RunState:
    """Everything a run holds: what :func:`deit.train.run` built (frozen parts), its
    :class:`Progress`, and the TensorBoard writer once the output folder is open."""

    cfg: Config
    env: DistEnv
    device: torch.device
    precision: Precision
    out: Path | None
    lock: OutputLock | None
    data: RunData
    student: Student
    optim: Optimisation
    progress: Progress = field(default_factory=Progress)
    writer: SummaryWriter | None = None  # None without the tensorboard extra
