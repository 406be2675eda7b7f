"""The typed state of one run: the parts :func:`deit.train.run` builds once (:class:`RunData`,
:class:`Student`, the optimiser and step options) and the :class:`Progress` the loop updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from timm.data import Mixup
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

__all__ = ["BEST", "LAST", "Progress", "RunData", "RunState", "Student"]

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
    optimizer: torch.optim.Optimizer
    step: StepOptions  # the schedule, scaler and EMA with the other options of every step
    progress: Progress = field(default_factory=Progress)
    writer: SummaryWriter | None = None  # None without the tensorboard extra
