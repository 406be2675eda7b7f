"""Optimiser, learning-rate schedule and EMA of the DeiT recipe, built with timm.

- :func:`build_optimizer`: ``timm.optim.create_optimizer_v2`` — AdamW, eps 1e-8, weight decay
  0.05, none on biases, 1-d (norm) parameters and the names in ``model.no_weight_decay()``
  (``pos_embed``, ``cls_token``, ``dist_token``); learning rate scaled linearly with the global
  batch (:func:`scale_lr`).
- :func:`build_scheduler`: ``timm.scheduler.create_scheduler_v2`` — cosine, linear warm-up
  from ``warmup_lr``, floor ``min_lr``; per optimiser update (``sched_per_step=True``, default)
  or per epoch (official behaviour).
- :func:`build_ema`: ``timm.utils.ModelEmaV3`` of the weights.

Gradient clipping is the engine's job (``torch.nn.utils.clip_grad_norm_(params,
cfg.clip_grad)`` when ``cfg.clip_grad`` is not ``None``).

How the engine drives the schedule (timm convention; calling both is always safe, the one that
does not match ``sched_per_step`` does nothing)::

    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=len(loader))
    for epoch in range(start_epoch, cfg.epochs):   # start_epoch: 0, or the checkpoint's
        for i, batch in enumerate(loader):
            ...; optimizer.step()
            scheduler.step_update(num_updates=epoch * len(loader) + i + 1)
        scheduler.step(epoch + 1)       # lr of the next epoch

Before the first update the optimiser holds ``warmup_lr``. When resuming at ``start_epoch``
call ``scheduler.step(start_epoch)`` and ``scheduler.step_update(start_epoch *
steps_per_epoch)`` once. (The official code calls ``step(epoch)`` at the end of each epoch, so
its first two epochs both run at ``warmup_lr``.)
"""

from __future__ import annotations

import inspect
from collections.abc import Collection
from typing import Any

import torch
from timm.optim import create_optimizer_v2, get_optimizer_class
from timm.optim import param_groups_weight_decay as _timm_param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn

__all__ = [
    "BASE_BATCH_SIZE",
    "scale_lr",
    "effective_lr",
    "param_groups_weight_decay",
    "weight_decay_param_names",
    "optimizer_param_names",
    "build_optimizer",
    "optimizer_impl",
    "build_scheduler",
    "build_ema",
]

#: The global batch at which ``lr`` is given (official: ``lr * batch_size * world_size / 512``).
BASE_BATCH_SIZE = 512


def scale_lr(lr: float, global_batch_size: int, base_batch_size: int = BASE_BATCH_SIZE) -> float:
    """Linear scaling rule: ``lr * global_batch_size / 512``.

    Example: the paper's 5e-4 at global batch 1024 gives 1e-3.

    Raises:
        ValueError: ``global_batch_size < 1``.
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1 (got {global_batch_size}).")
    return lr * global_batch_size / base_batch_size


def effective_lr(cfg: Any, world_size: int = 1) -> float:
    """Peak learning rate actually used: ``cfg.lr`` scaled by the global batch
    ``cfg.batch_size * cfg.grad_accum_steps * world_size`` (:func:`scale_lr`), or ``cfg.lr`` as
    is when ``cfg.unscale_lr``. ``warmup_lr`` and ``min_lr`` are never scaled (official
    behaviour)."""
    if cfg.unscale_lr:
        return float(cfg.lr)
    batch = int(cfg.batch_size) * int(cfg.grad_accum_steps) * int(world_size)
    return scale_lr(float(cfg.lr), batch)


def param_groups_weight_decay(
    model: nn.Module,
    weight_decay: float = 0.05,
    no_weight_decay_list: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """timm's parameter groups for weight decay (the ones :func:`build_optimizer` uses).

    A parameter gets no decay when it is 1-d or fewer (biases, norm weights), its name ends
    in ``.bias``, or it matches a name (``fnmatch`` pattern) in ``no_weight_decay_list``
    (default: ``model.no_weight_decay()``). Frozen parameters are left out.

    Returns:
        ``[{'params': [...], 'weight_decay': 0.0}, {'params': [...], 'weight_decay': wd}]``
        (empty groups omitted; one no-decay group when ``weight_decay`` is 0).
    """
    if no_weight_decay_list is None:
        fn = getattr(model, "no_weight_decay", None)
        no_weight_decay_list = set(fn()) if callable(fn) else set()
    return _timm_param_groups_weight_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay_list
    )


def _names_of(model: nn.Module, params: list[torch.Tensor]) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


def weight_decay_param_names(
    model: nn.Module,
    weight_decay: float = 0.05,
    no_weight_decay_list: Collection[str] | None = None,
) -> dict[str, list[str]]:
    """Parameter names per weight-decay group, from :func:`param_groups_weight_decay`.

    Returns:
        ``{'decay': [names...], 'no_decay': [names...]}`` in ``named_parameters`` order.
    """
    out: dict[str, list[str]] = {"decay": [], "no_decay": []}
    for g in param_groups_weight_decay(model, weight_decay, no_weight_decay_list):
        key = "decay" if g["weight_decay"] else "no_decay"
        out[key] += _names_of(model, g["params"])
    return out


def optimizer_param_names(
    optimizer: torch.optim.Optimizer, model: nn.Module
) -> list[tuple[float, list[str]]]:
    """``(weight_decay, [parameter names])`` for each group of a built optimiser."""
    return [
        (float(g["weight_decay"]), _names_of(model, g["params"])) for g in optimizer.param_groups
    ]


def optimizer_impl(opt: str, model: nn.Module) -> dict[str, bool]:
    """The fastest exact implementation flag for optimiser ``opt`` on ``model``'s device.

    - CUDA, and the class takes ``fused`` (torch's Adam, AdamW, SGD...): ``{"fused": True}``,
      one kernel for all parameters (torch picks the multi-tensor ``foreach`` path there by
      default; fused rounds differently in the last bits).
    - CPU, and the class takes ``foreach``: ``{"foreach": True}``. torch leaves CPU tensors on
      the per-tensor loop by default; ``foreach`` gives bit-identical weights in less time
      (``benchmarks/README.md``). (CPU ``fused`` is not bit-identical to either.)
    - otherwise (timm's own optimisers too) ``{}``: the class's default.
    """
    params = list(model.parameters())
    if not params:
        return {}
    try:
        cls = get_optimizer_class(opt.lower().split("_")[-1], bind_defaults=False)
        accepted = inspect.signature(cls).parameters
    except (ValueError, TypeError):  # unknown name: create_optimizer_v2 reports it
        return {}
    if not cls.__module__.startswith("torch.optim"):  # timm's own: keep their default path
        return {}
    device = params[0].device.type
    if device == "cuda" and "fused" in accepted:
        return {"fused": True}
    if device == "cpu" and "foreach" in accepted:
        return {"foreach": True}
    return {}


def build_optimizer(
    cfg: Any, model: nn.Module, world_size: int = 1, lr: float | None = None
) -> torch.optim.Optimizer:
    """Optimiser of the recipe via ``timm.optim.create_optimizer_v2``.

    Reads ``cfg.opt`` (e.g. 'adamw'), ``opt_eps``, ``opt_betas``, ``momentum``,
    ``weight_decay``; parameter groups as in :func:`param_groups_weight_decay` (no decay on
    biases, norms and ``model.no_weight_decay()``); the implementation flag of
    :func:`optimizer_impl` (``foreach`` on CPU, ``fused`` on CUDA).

    Args:
        cfg: a :class:`deit.config.Config` (or any object with those attributes).
        model: the student.
        world_size: number of processes; the peak learning rate is
            :func:`effective_lr` ``(cfg, world_size)`` unless ``lr`` is given.
        lr: explicit peak learning rate (no scaling applied).

    Returns:
        The optimiser; each group's ``lr`` (and ``initial_lr`` once a scheduler is attached)
        is the peak learning rate.

    Raises:
        ValueError: unknown optimiser name (from timm).
    """
    kwargs: dict[str, Any] = {}
    if getattr(cfg, "opt_eps", None) is not None:
        kwargs["eps"] = cfg.opt_eps
    if getattr(cfg, "opt_betas", None) is not None:
        kwargs["betas"] = tuple(cfg.opt_betas)
    kwargs.update(optimizer_impl(cfg.opt, model))
    return create_optimizer_v2(
        model,
        opt=cfg.opt,
        lr=effective_lr(cfg, world_size) if lr is None else lr,
        weight_decay=cfg.weight_decay,
        momentum=getattr(cfg, "momentum", 0.9),
        filter_bias_and_bn=True,
        **kwargs,
    )


def build_scheduler(
    cfg: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> Scheduler | None:
    """Learning-rate schedule via ``timm.scheduler.create_scheduler_v2``.

    With the defaults (``sched='cosine'``): linear warm-up from ``warmup_lr`` over
    ``warmup_epochs``, then ``min_lr + (peak - min_lr) * (1 + cos(pi * t / T)) / 2`` with ``t``
    counted from the start of training (warm-up included, timm's ``warmup_prefix=False`` as in
    the official code) and ``T = epochs``; ``min_lr`` from ``T`` on. Peak = each group's lr
    at build time (see :func:`build_optimizer`).

    Units: ``cfg.sched_per_step=True`` (default) → ``t`` counts optimiser updates
    (``T = epochs * steps_per_epoch``), driven by ``scheduler.step_update(num_updates)``;
    ``False`` → ``t`` counts epochs, driven by ``scheduler.step(epoch)`` (official). See the
    module docstring for the loop.

    Also reads ``decay_epochs``, ``decay_rate``, ``cooldown_epochs``, ``patience_epochs``,
    ``lr_noise``/``lr_noise_pct``/``lr_noise_std`` (noise seeded with ``cfg.seed``) for the
    other timm schedules ('step', 'multistep', 'tanh', 'poly', 'plateau', 'constant').

    Returns:
        A timm scheduler, or ``None`` for ``sched='none'``. The run lasts ``cfg.epochs``
        epochs (timm's extra ``cooldown_epochs`` are not added, as in the official code).

    Raises:
        ValueError: ``steps_per_epoch < 1`` with ``sched_per_step``, or 'plateau' per step.
    """
    per_step = bool(getattr(cfg, "sched_per_step", True))
    if per_step and steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1 (got {steps_per_epoch}).")
    if per_step and cfg.sched == "plateau":
        raise ValueError("sched 'plateau' steps per epoch only; set sched_per_step to false.")
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        decay_epochs=getattr(cfg, "decay_epochs", 30),
        cooldown_epochs=getattr(cfg, "cooldown_epochs", 0),
        patience_epochs=getattr(cfg, "patience_epochs", 10),
        decay_rate=getattr(cfg, "decay_rate", 0.1),
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        noise=getattr(cfg, "lr_noise", None),
        noise_pct=getattr(cfg, "lr_noise_pct", 0.67),
        noise_std=getattr(cfg, "lr_noise_std", 1.0),
        noise_seed=getattr(cfg, "seed", 42),
        step_on_epochs=not per_step,
        updates_per_epoch=steps_per_epoch if per_step else 0,
    )
    return scheduler


def build_ema(
    model: nn.Module, decay: float | None, device: str | torch.device | None = None
) -> ModelEmaV3 | None:
    """Exponential moving average of the weights (``timm.utils.ModelEmaV3``).

    Update after each optimiser step with ``ema.update(model, step=num_updates)``; evaluate
    ``ema.module``. ``ema_weight = decay * ema_weight + (1 - decay) * weight``.

    Args:
        model: the model to track (deep-copied; the copy is in eval mode, no gradients).
        decay: e.g. 0.99996 (official default); ``None`` or ``0`` → no EMA.
        device: where the copy lives (``'cpu'`` for the official ``--model-ema-force-cpu``);
            ``None`` keeps the model's device.

    Returns:
        ``ModelEmaV3`` or ``None``.

    Raises:
        ValueError: ``decay`` outside [0, 1).
    """
    if not decay:
        return None
    if not 0 < decay < 1:
        raise ValueError(f"EMA decay must be in (0, 1) (got {decay}).")
    return ModelEmaV3(model, decay=decay, device=device)
