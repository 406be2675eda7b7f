"""The hot loops: :func:`train_one_epoch` and :func:`evaluate` (official ``engine.py``'s role).

Nothing here parses arguments or writes files; :mod:`deit.train` sets up a run and calls these.
Precision and device choice live in :mod:`deit.precision` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.utils import unwrap_model
from torch import nn

from ._choices import EVAL_HEADS
from .data.transforms import mix_batch
from .precision import Precision, cpu_flags, fast_bf16_available, resolve_precision

__all__ = [
    "EVAL_HEADS",
    "NonFiniteLossError",
    "Precision",
    "StepOptions",
    "cpu_flags",
    "fast_bf16_available",
    "resolve_precision",
    "train_one_epoch",
    "evaluate",
    "unwrap_model",
]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


_ADVICE = "lower --lr, enable --clip-grad, or check the data."


class _Tally:
    """An epoch's running sums, kept on the device so that no step waits for it: the loss
    terms ``(total, base, distillation, teacher disagreement)``, steps and images; on
    accelerators also whether a loss was non-finite (read by :meth:`check`)."""

    def __init__(self, device: torch.device, num_updates: int) -> None:
        self.totals = torch.zeros(4, dtype=torch.float64, device=device)
        cpu = device.type == "cpu"  # there _train_step checks every loss before its step
        self.bad = None if cpu else torch.zeros((), dtype=torch.bool, device=device)
        self.checked = num_updates  # updates before the range the next check covers
        self.steps = self.images = 0

    def add(
        self, terms: tuple[Any, ...], images: int, epoch: int, updates: int, every: int
    ) -> None:
        """Count one step's detached terms (``None`` ones skipped); check every ``every``."""
        for j, term in enumerate(terms):
            if term is not None:
                self.totals[j] += term
        self.steps += 1
        self.images += images
        if self.bad is not None:
            self.bad |= ~torch.isfinite(terms[0])
            if updates % max(every, 1) == 0:
                self.check(epoch, updates)

    def check(self, epoch: int, updates: int) -> None:
        """Raise when a loss counted since the last check was non-finite on any process (one
        host read; every rank checks at the same updates, so all raise together)."""
        bad = _ranks_with(self.bad) if self.bad is not None else []
        if bad:
            raise NonFiniteLossError(
                f"The training loss became non-finite{_on(bad)} at epoch {epoch + 1}, between "
                f"updates {self.checked + 1} and {updates} (checked every log interval on this "
                f"device); {_ADVICE}"
            )
        self.checked = updates


def _ranks_with(flag: torch.Tensor) -> list[int]:
    """The ranks whose ``flag`` (a bool tensor) is set, agreed by an all-reduce under
    ``torch.distributed`` (every rank must call this at the same step); ``[0]`` or ``[]`` in one
    process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [0] if bool(flag) else []
    flags = torch.zeros(dist.get_world_size(), device=flag.device)
    flags[dist.get_rank()] = flag.float()
    dist.all_reduce(flags)
    return [rank for rank, f in enumerate(flags.tolist()) if f]


def _on(ranks: list[int]) -> str:
    """`` on process 1 of 4`` under ``torch.distributed``; nothing in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return ""
    which = ", ".join(map(str, ranks))
    return f" on process{'es' if len(ranks) > 1 else ''} {which} of {dist.get_world_size()}"


def _sum_across_processes(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@dataclass
class StepOptions:
    """How :func:`train_one_epoch` takes each optimiser step, besides model, loss, data and
    optimiser.

    Attributes:
        precision: autocast setting (default fp32).
        mixup_fn: timm ``Mixup`` applied to each batch, or ``None``; a
            :class:`~deit.data.transforms.SeededMixup` is keyed by ``(epoch, batch index)``.
        scaler: ``torch.amp.GradScaler`` (fp16 only), or ``None``.
        clip_grad: gradient-norm clipping threshold, or ``None``.
        scheduler: a timm scheduler; ``step_update(num_updates)`` after each step when
            ``sched_per_step`` (the caller steps it per epoch otherwise).
        sched_per_step: update the learning rate every step.
        model_ema: timm ``ModelEmaV3`` updated after each step, or ``None``.
        log_interval: refresh the progress bar's loss / lr / images-per-second every N steps.
        teacher_labels: stored teacher outputs (a :class:`deit.teacher.TeacherLabelStore`,
            ``batch(epoch, index, device)``) handed to the loss instead of running a teacher.
    """

    precision: Precision | None = None
    mixup_fn: Callable | None = None
    scaler: torch.amp.GradScaler | None = None
    clip_grad: float | None = None
    scheduler: Any = None
    sched_per_step: bool = True
    model_ema: Any = None
    log_interval: int = 10
    teacher_labels: Any = None


def _backward_and_step(
    loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, opts: StepOptions
) -> None:
    """Backward (scaled for fp16), optional gradient-norm clipping, optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    if opts.scaler is not None:
        opts.scaler.scale(loss).backward()
        if opts.clip_grad:
            opts.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
        opts.scaler.step(optimizer)
        opts.scaler.update()
        return
    loss.backward()
    if opts.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
    optimizer.step()


def _train_step(
    model: nn.Module,
    criterion: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    opts: StepOptions,
    where: tuple[int, int, int],
) -> tuple[Any, ...]:
    """One optimiser step on ``batch`` (already on the device); ``where`` is ``(epoch, batch
    index, updates done)`` for the error message. Returns the detached ``(total, base,
    distillation, teacher_disagreement)``; a criterion without ``compute`` (any callable taking
    ``(images, outputs, targets)``) gives its value as total and base."""
    samples, targets = batch
    samples, targets = mix_batch(opts.mixup_fn, samples, targets, where[:2])
    with opts.precision.autocast():
        outputs = model(samples)
        if hasattr(criterion, "compute"):
            stored = opts.teacher_labels
            t_out = stored.batch(*where[:2], samples.device) if stored is not None else None
            terms = tuple(criterion.compute(samples, outputs, targets, teacher_outputs=t_out))
        else:
            loss = criterion(samples, outputs, targets)
            terms = (loss, loss.detach(), None, None)
    loss = terms[0]
    # on the CPU reading the loss waits for nothing: check before the step is applied (as the
    # official code does), agreed by every rank (one that stopped alone would leave the others
    # waiting in the gradient all-reduce); on accelerators train_one_epoch checks once per log
    # interval
    bad = _ranks_with(~torch.isfinite(loss.detach())) if loss.device.type == "cpu" else []
    if bad:
        epoch, i, num_updates = where
        value = loss.item() if not math.isfinite(loss.item()) else "non-finite"
        raise NonFiniteLossError(
            f"The training loss is {value}{_on(bad)} at epoch {epoch + 1}, batch {i + 1} "
            f"(update {num_updates + 1}); {_ADVICE}"
        )
    _backward_and_step(loss, model, optimizer, opts)
    num_updates = where[2] + 1
    if opts.scheduler is not None and opts.sched_per_step:
        opts.scheduler.step_update(num_updates=num_updates)
    if opts.model_ema is not None:
        opts.model_ema.update(unwrap_model(model), step=num_updates)
    return (loss.detach(), *terms[1:])


def train_one_epoch(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    options: StepOptions | None = None,
    *,
    num_updates: int = 0,
    first_batch: int = 0,
    progress: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Train for one epoch (or until ``should_stop()``), one optimiser step per batch.

    Per batch: move to ``device`` (non-blocking), Mixup/CutMix, forward under autocast, loss
    ``criterion.compute(images, outputs, targets)`` (a :class:`deit.distillation.DistillationLoss`:
    the teacher sees the same mixed images; paper section 4), backward (scaled for fp16),
    optional gradient-norm clipping, optimiser step, per-step learning-rate update, EMA update.

    Args:
        model: the student (possibly DDP-wrapped), in training mode.
        loader: yields ``(images (B, C, H, W), labels (B,))``.
        options: see :class:`StepOptions` (default: fp32, no Mixup, no clipping, no EMA).
        num_updates: optimiser steps done before this epoch (drives the per-step schedule and
            the EMA warm-up).
        first_batch: index within the epoch of the loader's first batch (resuming mid-epoch,
            the loader starts after the batches already trained; it keys Mixup/CutMix).
        progress: a tqdm-like object with ``update()``/``set_postfix()``, or ``None``.
        should_stop: polled after each step; ``True`` ends the epoch early (pre-emption).

    Returns:
        ``loss``, ``loss_base``, ``loss_distillation`` (means over the epoch, averaged across
        processes), ``teacher_disagreement`` (% of training views whose teacher top-1 differs
        from the dominant label; 0 without a teacher), ``lr`` (last), ``images_per_s`` (this
        process), ``steps`` (done this call), ``num_updates`` and ``completed`` (1.0 when the
        loader was exhausted).

    No host synchronisation per step: the loss terms are summed on the device and read at the
    progress bar's ``log_interval`` and at the end.

    Raises:
        NonFiniteLossError: the loss is NaN/inf on any process (all raise at the same step):
            checked every step on the CPU (nothing of it applied), once per ``log_interval``
            steps on accelerators (naming the range of updates), so no step waits for them.
    """
    opts = options or StepOptions()
    if opts.precision is None:
        opts = dataclasses.replace(opts, precision=Precision("fp32", None, device.type))
    model.train()
    tally = _Tally(device, num_updates)
    completed = True
    start = time.perf_counter()
    for i, (samples, targets) in enumerate(loader, start=first_batch):
        batch = (samples.to(device, non_blocking=True), targets.to(device, non_blocking=True))
        terms = _train_step(model, criterion, batch, optimizer, opts, (epoch, i, num_updates))
        num_updates += 1
        tally.add(terms, samples.shape[0], epoch, num_updates, opts.log_interval)
        if progress is not None:
            _show_progress(progress, tally, optimizer, start, opts.log_interval)
        if should_stop is not None and should_stop():
            completed = False
            break
    tally.check(epoch, num_updates)
    elapsed = time.perf_counter() - start
    steps, images = tally.steps, tally.images
    sums = _sum_across_processes([*tally.totals.tolist(), float(steps)], device)
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


def _show_progress(
    bar: Any, tally: _Tally, optimizer: torch.optim.Optimizer, start: float, every: int
) -> None:
    """Advance the bar; every ``every`` steps show mean loss, lr and images per second (the
    ``.item()`` there is the only host read of the running sums)."""
    bar.update(1)
    if (tally.steps - 1) % max(every, 1) == 0:
        rate = tally.images / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(
            loss=f"{tally.totals[0].item() / tally.steps:.4f}",
            lr=f"{optimizer.param_groups[0]['lr']:.2e}",
            img_s=f"{rate:.1f}",
        )


def _accumulate(
    sums: dict[str, float],
    targets: torch.Tensor,
    logits: torch.Tensor,
    heads: tuple[torch.Tensor, torch.Tensor] | None,
    t_logits: torch.Tensor | None,
) -> None:
    """Add one batch's summed loss, top-1/top-5 hits and agreements to ``sums``."""
    sums["loss"] += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
    c1, c5 = _topk_correct(logits, targets, (1, 5))
    sums["acc1"] += c1
    sums["acc5"] += c5
    if heads is not None:
        for key, out in zip(("cls", "dist"), heads):
            a1, a5 = _topk_correct(out.float(), targets, (1, 5))
            sums[f"acc1_{key}"] += a1
            sums[f"acc5_{key}"] += a5
        sums["head_agreement"] += int((heads[0].argmax(1) == heads[1].argmax(1)).sum())
    if t_logits is not None:
        t1, t5 = _topk_correct(t_logits.float(), targets, (1, 5))
        sums["teacher_acc1"] += t1
        sums["teacher_acc5"] += t5
        sums["agreement"] += int((logits.argmax(1) == t_logits.argmax(1)).sum())


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
    head: str = "both",
    sum_across_processes: bool = True,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and cross-entropy loss on a labelled data set.

    A distilled model is run once per batch for both heads; ``acc1``, ``acc5`` and ``loss`` are
    those of ``head`` (default the averaged heads, the paper's late fusion, section 5.2), and
    each head alone is reported too
    (``acc1_cls``, ``acc5_cls``, ``acc1_dist``, ``acc5_dist``), plus ``head_agreement`` (% of
    images where both heads' top-1 agree). With a ``teacher``: ``teacher_acc1``,
    ``teacher_acc5`` and ``agreement`` (% of images where the student's (``head``) and the
    teacher's top-1 agree).

    Args:
        model: any classifier ``(B, C, H, W) -> (B, num_classes)``; distilled DeiT models are
            detected through their ``forward_heads``.
        loader: yields ``(images, labels (B,))``.
        head: one of :data:`EVAL_HEADS`; ignored for a model without a distillation head.
        sum_across_processes: the loader holds this process's share of the data: counts are
            summed over the process group when one is up. ``False``: every process evaluated
            the whole set, nothing is summed.

    Returns:
        Metrics in percent (accuracies, agreements) and nats (loss), plus ``n`` (images).

    Raises:
        ValueError: ``head`` not one of :data:`EVAL_HEADS`.
    """
    if head not in EVAL_HEADS:
        raise ValueError(f"head is {head!r}; use one of {', '.join(EVAL_HEADS)}.")
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
    for samples, targets in loader:
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with precision.autocast():
            if distilled:
                cls_logits, dist_logits = inner.forward_heads(samples)
                logits = {"cls": cls_logits, "dist": dist_logits}.get(head)
                if logits is None:
                    logits = (cls_logits + dist_logits) / 2
            else:
                logits = model(samples)
            t_logits = teacher(samples) if teacher is not None else None
        heads = (cls_logits, dist_logits) if distilled else None
        _accumulate(sums, targets, logits.float(), heads, t_logits)
        n += samples.shape[0]
        if progress is not None:
            progress.update(1)
    values = [*sums.values(), float(n)]
    if sum_across_processes:
        values = _sum_across_processes(values, device)
    total = max(values[-1], 1.0)
    out = {k: v / total * (1.0 if k == "loss" else 100.0) for k, v in zip(names, values)}
    out["n"] = values[-1]
    if math.isnan(out["loss"]):
        out["loss"] = float("inf")
    return out
