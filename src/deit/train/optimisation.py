"""The run's optimisation step: :func:`build_optimisation` (timm's parts, :mod:`deit.optim`)."""

from __future__ import annotations

import math

import torch
from timm.data import Mixup
from torch import nn
from torch.utils.data import DataLoader

from .._notes import print_note
from ..config import Config
from ..engine import StepOptions
from ..optim import build_ema, build_optimizer, build_scheduler
from ..precision import Precision
from .distributed import DistEnv

__all__ = ["build_optimisation"]


def build_optimisation(
    cfg: Config,
    model: nn.Module,
    loader_train: DataLoader,
    env: DistEnv,
    device: torch.device,
    precision: Precision,
    mixup_fn: Mixup | None = None,
) -> tuple[torch.optim.Optimizer, StepOptions]:
    """The optimiser of ``model`` and the options of every training step: its learning-rate
    schedule (an epoch's optimiser steps: ``len(loader_train) / cfg.grad_accum_steps``, rounded
    up), gradient scaler (fp16 only) and weight EMA (each timm's), ``precision``, ``mixup_fn``.

    Raises:
        ValueError: fewer training images than one batch; a batch of one for a model with
            BatchNorm.
    """
    if len(loader_train) == 0:  # checked after the teacher, whose errors come first
        raise ValueError(
            f"The training set has {len(loader_train.dataset)} images, fewer than one "
            f"batch of {cfg.batch_size}; lower --batch-size."
        )
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if batch_norm and cfg.batch_size == 1:  # the last partial batch is dropped: all are full
        raise ValueError(
            f"--batch-size 1 cannot train {cfg.model}: its BatchNorm layers need more than one "
            "image per training batch to normalise; use --batch-size 2 or more."
        )
    optimizer = build_optimizer(cfg, model, world_size=env.world_size)
    updates = math.ceil(len(loader_train) / cfg.grad_accum_steps)  # the last takes the rest
    scheduler = build_scheduler(cfg, optimizer, updates)
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    ema = build_ema(
        model,
        cfg.model_ema_decay if cfg.model_ema else None,
        device="cpu" if cfg.model_ema_force_cpu else None,
    )
    if ema is not None and cfg.model_ema_force_cpu and device.type != "cpu" and env.is_main:
        print_note(
            "the EMA kept on the CPU (--model-ema-force-cpu) is not evaluated during "
            "training, as in timm; its weights are in the checkpoint: `deit eval --ema`."
        )
    return optimizer, StepOptions(
        precision=precision,
        mixup_fn=mixup_fn,
        scaler=scaler,
        clip_grad=cfg.clip_grad,
        scheduler=scheduler,
        sched_per_step=cfg.sched_per_step,
        model_ema=ema,
        log_interval=cfg.log_interval,
        grad_accum_steps=cfg.grad_accum_steps,
    )
