"""The hot loops: :func:`train_one_epoch` and :func:`evaluate` (official ``engine.py``'s role).

Nothing here parses arguments or writes files; :mod:`deit.training` sets up a run and calls these.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "NonFiniteLossError",
    "Precision",
    "cpu_flags",
    "fast_bf16_available",
    "resolve_precision",
    "train_one_epoch",
    "evaluate",
    "unwrap_model",
]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fast_bf16_available(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 autocast is a speed-up on ``device`` rather than a slow emulation.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: the ``/proc/cpuinfo`` flags ``amx_bf16``
    (AMX tiles) or ``avx512_bf16`` (bf16 dot products); without either, oneDNN emulates bf16 and
    matmuls run many times slower than fp32. ``DEIT_FAST_BF16=0`` or ``=1`` overrides the CPU
    answer. Measured on this project's 2-core AMD EPYC (``avx512_bf16``, no AMX): a bf16
    ``torch.mm`` ran 2.2x the fp32 rate.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    override = os.environ.get("DEIT_FAST_BF16")
    if override in ("0", "1"):
        return override == "1"
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


@dataclass(frozen=True)
class Precision:
    """Numeric precision of a run: ``dtype`` for autocast (``None`` = plain fp32) and whether
    gradients need loss scaling (fp16 only)."""

    name: str
    dtype: torch.dtype | None
    device_type: str

    @property
    def use_scaler(self) -> bool:
        """fp16 needs a gradient scaler; bf16 and fp32 do not."""
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the forward pass (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device | str) -> Precision:
    """Turn the ``amp`` setting into a :class:`Precision` for ``device``.

    ``auto``: on CUDA bf16 where supported, else fp16 with gradient scaling; on CPUs always fp32
    (the paper's numbers are fp32 and CPU autocast training changes results; ask for ``bf16``
    explicitly where :func:`fast_bf16_available` says it pays). ``fp32``, ``bf16``, ``fp16``
    force a choice.

    Raises:
        ValueError: unknown ``amp`` value, or fp16 asked on a CPU (no gradient scaling there).
    """
    device = torch.device(device)
    if amp == "auto":
        if device.type == "cuda":
            amp = "bf16" if fast_bf16_available(device) else "fp16"
        else:
            amp = "fp32"
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in table:
        raise ValueError(f"amp must be one of auto, fp32, bf16, fp16; got {amp!r}.")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU.")
    return Precision(amp, table[amp], device.type)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _sum_across_processes(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train_one_epoch(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    *,
    num_updates: int = 0,
    scheduler: Any = None,
    sched_per_step: bool = True,
    mixup_fn: Callable | None = None,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float | None = None,
    model_ema: Any = None,
    progress: Any = None,
    should_stop: Callable[[], bool] | None = None,
    skip_batches: int = 0,
) -> dict[str, float]:
    """Train for one epoch (or until ``should_stop()``), one optimiser step per batch.

    Per batch: move to ``device`` (non-blocking), Mixup/CutMix, forward under autocast, loss
    ``criterion(images, outputs, targets)`` (a :class:`deit.distillation.DistillationLoss`: the
    teacher sees the same mixed images), backward (scaled for fp16), optional gradient-norm
    clipping, optimiser step, per-step learning-rate update, EMA update.

    Args:
        model: the student (possibly DDP-wrapped), in training mode.
        loader: yields ``(images (B, C, H, W), labels (B,))``.
        num_updates: optimiser steps done before this epoch (drives the per-step schedule and
            the EMA warm-up).
        scheduler: a timm scheduler; ``step_update(num_updates)`` after each step when
            ``sched_per_step`` (the caller steps it per epoch otherwise).
        progress: a tqdm-like object with ``update()``/``set_postfix()``, or ``None``.
        should_stop: polled after each step; ``True`` ends the epoch early (pre-emption).
        skip_batches: batches at the start of the loader to skip (resuming mid-epoch).

    Returns:
        ``loss``, ``loss_base``, ``loss_distillation`` (means over the epoch, averaged across
        processes), ``teacher_disagreement`` (% of training views whose teacher top-1 differs
        from the dominant label; 0 without a teacher), ``lr`` (last), ``images_per_s`` (this process), ``steps`` (done this call),
        ``num_updates`` and ``completed`` (1.0 when the loader was exhausted).

    Raises:
        NonFiniteLossError: the loss is NaN/inf; nothing of that step is applied.
    """
    precision = precision or Precision("fp32", None, device.type)
    model.train()
    # loss, base, distillation, teacher disagreement
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    steps = images = 0
    completed = True
    start = time.perf_counter()
    for i, (samples, targets) in enumerate(loader):
        if i < skip_batches:
            continue
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        with precision.autocast():
            outputs = model(samples)
            loss = criterion(samples, outputs, targets)
        if not torch.isfinite(loss):  # one sync per step; the official code checks too
            raise NonFiniteLossError(
                f"The training loss is {loss.item()} at epoch {epoch}, step {i} (update "
                f"{num_updates + 1}); lower --lr, enable --clip-grad, or check the data. The "
                "last checkpoint written is kept."
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        num_updates += 1
        if scheduler is not None and sched_per_step:
            scheduler.step_update(num_updates=num_updates)
        if model_ema is not None:
            model_ema.update(unwrap_model(model), step=num_updates)
        parts = getattr(criterion, "last_parts_tensors", None)  # a plain loss has none
        totals[0] += loss.detach()
        if parts is not None:
            totals[1] += parts[0]
            if parts[1] is not None:
                totals[2] += parts[1]
        disagreement = getattr(criterion, "last_teacher_disagreement", None)
        if disagreement is not None:
            totals[3] += disagreement
        steps += 1
        images += samples.shape[0]
        if progress is not None:
            progress.update(1)
            if steps % 10 == 1:
                rate = images / max(time.perf_counter() - start, 1e-9)
                progress.set_postfix(
                    loss=f"{totals[0].item() / steps:.4f}",
                    lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                    img_s=f"{rate:.1f}",
                )
        if should_stop is not None and should_stop():
            completed = False
            break
    elapsed = time.perf_counter() - start
    sums = _sum_across_processes([*totals.tolist(), float(steps)], device)
    n = max(sums[4], 1.0)
    return {
        "loss": sums[0] / n,
        "loss_base": sums[1] / n,
        "loss_distillation": sums[2] / n,
        "teacher_disagreement": 100.0 * sums[3] / n,
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": images / max(elapsed, 1e-9),
        "steps": float(steps),
        "num_updates": float(num_updates),
        "completed": float(completed),
    }


def _topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    k = min(max(ks), logits.shape[1])
    pred = logits.topk(k, dim=1).indices
    hit = pred.eq(targets[:, None])
    return [int(hit[:, : min(kk, k)].any(dim=1).sum()) for kk in ks]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    teacher: nn.Module | None = None,
    precision: Precision | None = None,
    progress: Any = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and cross-entropy loss on a labelled data set.

    A distilled model is run once per batch for both heads; the result holds the averaged heads
    (the paper's late fusion, keys ``acc1``, ``acc5``, ``loss``) and each head alone
    (``acc1_cls``, ``acc5_cls``, ``acc1_dist``, ``acc5_dist``), plus ``head_agreement`` (% of
    images where both heads' top-1 agree). With a ``teacher``: ``teacher_acc1``,
    ``teacher_acc5`` and ``agreement`` (% of images where the averaged student's and the
    teacher's top-1 agree). Counts are summed across processes when distributed.

    Args:
        model: any classifier ``(B, C, H, W) -> (B, num_classes)``; distilled DeiT models are
            detected through their ``forward_heads``.
        loader: yields ``(images, labels (B,))``.

    Returns:
        Metrics in percent (accuracies, agreements) and nats (loss), plus ``n`` (images).
    """
    precision = precision or Precision("fp32", None, device.type)
    model.eval()
    inner = unwrap_model(model)
    distilled = hasattr(inner, "forward_heads")
    names = ["loss", "acc1", "acc5"]
    if distilled:
        names += ["acc1_cls", "acc5_cls", "acc1_dist", "acc5_dist", "head_agreement"]
    if teacher is not None:
        names += ["teacher_acc1", "teacher_acc5", "agreement"]
    sums = dict.fromkeys(names, 0.0)
    n = 0
    ce = nn.CrossEntropyLoss(reduction="sum")
    for samples, targets in loader:
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with precision.autocast():
            if distilled:
                cls_logits, dist_logits = inner.forward_heads(samples)
                logits = (cls_logits + dist_logits) / 2
            else:
                logits = model(samples)
            t_logits = teacher(samples) if teacher is not None else None
        logits = logits.float()
        sums["loss"] += ce(logits, targets).item()
        c1, c5 = _topk_correct(logits, targets, (1, 5))
        sums["acc1"] += c1
        sums["acc5"] += c5
        if distilled:
            for key, out in (("cls", cls_logits), ("dist", dist_logits)):
                a1, a5 = _topk_correct(out.float(), targets, (1, 5))
                sums[f"acc1_{key}"] += a1
                sums[f"acc5_{key}"] += a5
            same = cls_logits.argmax(1) == dist_logits.argmax(1)
            sums["head_agreement"] += int(same.sum())
        if t_logits is not None:
            t1, t5 = _topk_correct(t_logits.float(), targets, (1, 5))
            sums["teacher_acc1"] += t1
            sums["teacher_acc5"] += t5
            sums["agreement"] += int((logits.argmax(1) == t_logits.argmax(1)).sum())
        n += samples.shape[0]
        if progress is not None:
            progress.update(1)
    values = _sum_across_processes([*sums.values(), float(n)], device)
    total = max(values[-1], 1.0)
    out = {k: v / total * (1.0 if k == "loss" else 100.0) for k, v in zip(names, values)}
    out["n"] = values[-1]
    if math.isnan(out["loss"]):
        out["loss"] = float("inf")
    return out
