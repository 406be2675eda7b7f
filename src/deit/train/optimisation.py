"""The run's optimisation step: optimiser, learning-rate schedule, gradient scaler (fp16 only)
and weight EMA, all timm's (:mod:`deit.optim`).
"""

from __future__ import annotations

import torch
from torch import nn

from .._notes import print_note
from .._rng import seed_everything
from ..optim import build_ema, build_optimizer, build_scheduler
from .state import RunState

__all__ = ["build_optimisation"]


def build_optimisation(state: RunState) -> None:
    """Optimiser, learning-rate schedule, gradient scaler (fp16 only) and weight EMA (timm)."""
    cfg = state.cfg
    if len(state.loader_train) == 0:  # checked after the teacher, whose errors come first
        raise ValueError(
            f"The training set has {len(state.loader_train.dataset)} images, fewer than one "
            f"batch of {cfg.batch_size}; lower --batch-size."
        )
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in state.model.modules())
    if batch_norm and cfg.batch_size == 1:  # the last partial batch is dropped: all are full
        raise ValueError(
            f"--batch-size 1 cannot train {cfg.model}: its BatchNorm layers need more than one "
            "image per training batch to normalise; use --batch-size 2 or more."
        )
    state.optimizer = build_optimizer(cfg, state.model, world_size=state.env.world_size)
    state.scheduler = build_scheduler(cfg, state.optimizer, len(state.loader_train))
    if state.precision.use_scaler:
        state.scaler = torch.amp.GradScaler(state.device.type)
    state.ema = build_ema(
        state.model,
        cfg.model_ema_decay if cfg.model_ema else None,
        device="cpu" if cfg.model_ema_force_cpu else None,
    )
    if state.ema is not None and cfg.model_ema_force_cpu and state.device.type != "cpu":
        if state.env.is_main:
            print_note(
                "the EMA kept on the CPU (--model-ema-force-cpu) is not evaluated during "
                "training, as in timm; its weights are in the checkpoint: `deit eval --ema`."
            )
    seed_everything(cfg.seed + state.env.rank)  # training's draws depend on the config only
