"""The hot loops: :func:`train_one_epoch` and :func:`evaluate` (official ``engine.py``'s role).

Nothing here parses arguments or writes files; :mod:`deit.train` sets up a run and calls these.
Precision and device choice live in :mod:`deit.precision`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3, unwrap_model
from torch import nn

from ._choices import HEAD_CHOICES
from .data.transforms import mix_batch
from .distillation import DistillationTask, StepOutput
from .inference import DistilledInferenceModel
from .models.distilled import DistilledVisionTransformer, late_fusion
from .precision import Precision

__all__ = [
    "NonFiniteLossError",
    "StepOptions",
    "train_one_epoch",
    "evaluate",
]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


_ADVICE = "lower --lr, enable --clip-grad, or check the data."


class _Tally:
    """An epoch's running sums of the step outputs by name, kept on the device so that no step
    waits for them, with the steps and images; on accelerators also whether a loss was
    non-finite (read by :meth:`check`)."""

    def __init__(self, device: torch.device, num_updates: int) -> None:
        self.sums = {
            name: torch.zeros((), dtype=torch.float64, device=device) for name in STAT_NAMES
        }
        cpu = device.type == "cpu"  # there the loop checks every loss before its step
        self.bad = None if cpu else torch.zeros((), dtype=torch.bool, device=device)
        self.checked = num_updates  # updates before the range the next check covers
        self.steps = self.images = 0
        self.start = time.perf_counter()

    @property
    def totals(self) -> torch.Tensor:
        """The sums in :data:`STAT_NAMES`' order, one tensor."""
        return torch.stack(list(self.sums.values()))

    def add(self, out: StepOutput, images: int, epoch: int, updates: int, every: int) -> None:
        """Count one batch's detached outputs (``None`` ones skipped); check when ``updates`` is
        a multiple of ``every`` (0: no check, the optimiser step is still to come)."""
        for name, value in out._asdict().items():
            if value is not None:
                self.sums[name] += value.detach()
        self.steps += 1
        self.images += images
        if self.bad is not None:
            self.bad |= ~torch.isfinite(out.loss.detach())
            if every and updates % every == 0:
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

    def stats(
        self, device: torch.device, optimizer: torch.optim.Optimizer, updates: int, completed: bool
    ) -> dict[str, float]:
        """The epoch's statistics (see :func:`train_one_epoch`): the means by name
        (:data:`STAT_NAMES`) over the batches of every process (the disagreement in %), then
        this process's."""
        elapsed = time.perf_counter() - self.start
        values = [*self.totals.tolist(), float(self.steps)]
        *values, n = _sum_across_processes(values, device)
        scale = {"disagreement": 100.0}  # a fraction per batch, a percentage per epoch
        return {
            **{
                STAT_NAMES[k]: scale.get(k, 1.0) * v / max(n, 1.0)
                for k, v in zip(self.sums, values)
            },
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": self.images / max(elapsed, 1e-9),
            "steps": float(self.steps),
            "num_updates": float(updates),
            "completed": float(completed),
        }


#: The epoch statistic of each :class:`~deit.distillation.StepOutput` field (``log.txt``'s
#: ``train_<statistic>``).
STAT_NAMES = {
    "loss": "loss",
    "base": "loss_base",
    "distillation": "loss_distillation",
    "disagreement": "teacher_disagreement",
}


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


@dataclass(frozen=True)
class StepOptions:
    """How :func:`train_one_epoch` takes each optimiser step, besides the task, the data and
    the optimiser.

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
        grad_accum_steps: batches whose gradients make one optimiser step (timm's name); the
            epoch's last step takes the batches left. Each batch's loss is divided by the
            batches of its step, so a step of N batches of B images is one of N x B.
    """

    precision: Precision | None = None
    mixup_fn: Mixup | None = None
    scaler: torch.amp.GradScaler | None = None
    clip_grad: float | None = None
    scheduler: Scheduler | None = None
    sched_per_step: bool = True
    model_ema: ModelEmaV3 | None = None
    log_interval: int = 10
    grad_accum_steps: int = 1


def _backward_and_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    opts: StepOptions,
    first: bool = True,
    last: bool = True,
) -> None:
    """Backward (scaled for fp16) into gradients zeroed at the ``first`` batch of an optimiser
    step; at its ``last`` batch, optional gradient-norm clipping and the optimiser step (under
    DDP the gradients are all-reduced then only)."""
    if first:
        optimizer.zero_grad(set_to_none=True)
    with contextlib.nullcontext() if last else _no_sync(model):
        (opts.scaler.scale(loss) if opts.scaler is not None else loss).backward()
    if not last:
        return
    if opts.scaler is not None:
        if opts.clip_grad:
            opts.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
        opts.scaler.step(optimizer)
        opts.scaler.update()
        return
    if opts.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
    optimizer.step()


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` (through a ``torch.compile`` wrapper): no gradient all-reduce for a
    batch whose optimiser step is still to come; nothing for a model in one process."""
    for m in (model, getattr(model, "_orig_mod", None)):
        if isinstance(m, nn.parallel.DistributedDataParallel):
            return m.no_sync()
    return contextlib.nullcontext()


def _check_finite(loss: torch.Tensor, epoch: int, index: int, num_updates: int) -> None:
    """On the CPU, where reading the loss waits for nothing, refuse a non-finite one before its
    step is applied (as the official code does), agreed by every rank (one that stopped alone
    would leave the others waiting in the gradient all-reduce); on accelerators the tally checks
    once per log interval."""
    bad = _ranks_with(~torch.isfinite(loss.detach())) if loss.device.type == "cpu" else []
    if bad:
        value = loss.item() if not math.isfinite(loss.item()) else "non-finite"
        raise NonFiniteLossError(
            f"The training loss is {value}{_on(bad)} at epoch {epoch + 1}, batch {index + 1} "
            f"(update {num_updates + 1}); {_ADVICE}"
        )


def train_one_epoch(
    task: DistillationTask,
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
    """Train for one epoch (or until ``should_stop()``): fetch a batch, mix it (Mixup/CutMix),
    ``task(images, targets, epoch, index)`` under autocast (the student's outputs and the loss,
    :class:`deit.distillation.DistillationTask`), backward (scaled for fp16), and every
    ``grad_accum_steps`` batches optional gradient-norm clipping, the optimiser step, the
    per-step learning rate and the EMA; each batch's outputs are tallied by name.

    Args:
        task: the student (possibly DDP-wrapped), its loss and its teacher.
        loader: yields ``(images (B, C, H, W), labels (B,))``.
        options: see :class:`StepOptions` (default: fp32, no Mixup, no clipping, no EMA).
        num_updates: optimiser steps done before this epoch (drives the per-step schedule and
            the EMA warm-up).
        first_batch: index within the epoch of the loader's first batch (resuming mid-epoch,
            the loader starts after the batches already trained, at an optimiser step; it keys
            Mixup/CutMix and the stored teacher labels).
        progress: a tqdm-like object with ``update()``/``set_postfix()``, or ``None``.
        should_stop: polled after each optimiser step; ``True`` ends the epoch early there
            (pre-emption).

    Returns:
        ``loss``, ``loss_base``, ``loss_distillation`` (means over the epoch, averaged across
        processes), ``teacher_disagreement`` (% of training views whose teacher top-1 differs
        from the dominant label; 0 without a teacher), ``lr`` (last), ``images_per_s`` (this
        process), ``steps`` (batches done this call), ``num_updates`` (optimiser steps) and
        ``completed`` (1.0 when the loader was exhausted).

    No host synchronisation per step: the step's outputs are summed on the device and read at
    the progress bar's ``log_interval`` and at the end.

    Raises:
        NonFiniteLossError: the loss is NaN/inf on any process (all raise at the same step):
            checked every step on the CPU (nothing of it applied), once per ``log_interval``
            steps on accelerators (naming the range of updates), so no step waits for them.
    """
    opts = options or StepOptions()
    precision = opts.precision or Precision("fp32", None, device.type)
    model, accum = task.student, opts.grad_accum_steps
    batches = first_batch + len(loader)  # the epoch's: its last optimiser step takes the rest
    model.train()
    tally, completed = _Tally(device, num_updates), True
    for i, (samples, targets) in enumerate(loader, start=first_batch):
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        samples, targets = mix_batch(opts.mixup_fn, samples, targets, (epoch, i))
        with precision.autocast():
            out = task(samples, targets, epoch, i)
        _check_finite(out.loss, epoch, i, num_updates)
        begin, end = i - i % accum, min(i - i % accum + accum, batches)  # this step's batches
        stepped = i + 1 == end
        loss = out.loss / (end - begin) if end - begin > 1 else out.loss
        _backward_and_step(loss, model, optimizer, opts, first=i == begin, last=stepped)
        if stepped:
            num_updates += 1
            if opts.scheduler is not None and opts.sched_per_step:
                opts.scheduler.step_update(num_updates=num_updates)
            if opts.model_ema is not None:
                opts.model_ema.update(unwrap_model(model), step=num_updates)
        tally.add(out, samples.shape[0], epoch, num_updates, opts.log_interval if stepped else 0)
        if progress is not None:
            _show_progress(progress, tally, optimizer, opts.log_interval)
        if stepped and should_stop is not None and should_stop():
            completed = False
            break
    tally.check(epoch, num_updates)
    return tally.stats(device, optimizer, num_updates, completed)


def _show_progress(bar: Any, tally: _Tally, optimizer: torch.optim.Optimizer, every: int) -> None:
    """Advance the bar; every ``every`` steps show mean loss, lr and images per second (the
    ``.item()`` there is the only host read of the running sums)."""
    bar.update(1)
    if (tally.steps - 1) % max(every, 1) == 0:
        rate = tally.images / max(time.perf_counter() - tally.start, 1e-9)
        bar.set_postfix(
            loss=f"{tally.sums['loss'].item() / tally.steps:.4f}",
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
    _add_top1_top5(sums, "acc1", "acc5", logits, targets)
    if heads is not None:
        for key, out in zip(("cls", "dist"), heads):
            _add_top1_top5(sums, f"acc1_{key}", f"acc5_{key}", out.float(), targets)
        sums["head_agreement"] += int((heads[0].argmax(1) == heads[1].argmax(1)).sum())
    if t_logits is not None:
        _add_top1_top5(sums, "teacher_acc1", "teacher_acc5", t_logits.float(), targets)
        sums["agreement"] += int((logits.argmax(1) == t_logits.argmax(1)).sum())


def _add_top1_top5(
    sums: dict[str, float], top1: str, top5: str, logits: torch.Tensor, targets: torch.Tensor
) -> None:
    """Add the batch's top-1 and top-5 hits (top-k of all classes when fewer) to ``sums``."""
    hit = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
    sums[top1] += int(hit[:, :1].any(dim=1).sum())
    sums[top5] += int(hit.any(dim=1).sum())


def _two_heads(model: nn.Module) -> Callable | None:
    """``forward_heads`` of a distilled DeiT (through DDP / compile wrappers, or its
    :class:`~deit.inference.DistilledInferenceModel`): images to both heads' logits; ``None``
    for any other classifier."""
    inner = unwrap_model(model)
    distilled = isinstance(inner, DistilledVisionTransformer | DistilledInferenceModel)
    return inner.forward_heads if distilled else None


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
        model: any classifier ``(B, C, H, W) -> (B, num_classes)``; a distilled DeiT (bare,
            wrapped, or in an :class:`~deit.inference.InferenceModel`) is run for both heads.
        loader: yields ``(images, labels (B,))``.
        head: one of :data:`~deit.models.HEAD_CHOICES`; ignored for a model without a distillation head.
        sum_across_processes: the loader holds this process's share of the data: counts are
            summed over the process group when one is up. ``False``: every process evaluated
            the whole set, nothing is summed.

    Returns:
        Metrics in percent (accuracies, agreements) and nats (loss), plus ``n`` (images).

    Raises:
        ValueError: ``head`` not one of :data:`~deit.models.HEAD_CHOICES`.
    """
    if head not in HEAD_CHOICES:
        raise ValueError(f"head is {head!r}; use one of {', '.join(HEAD_CHOICES)}.")
    precision = precision or Precision("fp32", None, device.type)
    model.eval()
    forward_heads = _two_heads(model)
    distilled = forward_heads is not None
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
                cls_logits, dist_logits = forward_heads(samples)
                logits = {"cls": cls_logits, "dist": dist_logits}.get(head)
                if logits is None:
                    logits = late_fusion(cls_logits, dist_logits)
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
