"""A whole training run: `deit train` (official ``main.py``'s role).

:func:`run` takes a :class:`deit.config.Config` and builds data, student, teacher, loss,
optimiser, schedule and EMA from the library's builders, checks every input before the first
step, then alternates :func:`deit.engine.train_one_epoch` and :func:`deit.engine.evaluate`,
writing ``checkpoint.pth`` (last) and ``best_checkpoint.pth`` atomically, ``log.txt`` (one JSON
line per epoch, the official keys), TensorBoard scalars and ``config.yaml``.

Distributed training uses PyTorch's own stack: launch with ``torchrun`` (env:// rendezvous,
single or multi-node) or under SLURM (``srun``; ``MASTER_ADDR``/``MASTER_PORT`` must be set);
gloo on CPU, NCCL on CUDA; DistributedDataParallel wraps the student only; only rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.utils import unwrap_model
from torch import nn
from torch.utils.data import DataLoader

from .config import Config, add_config_args, config_from_args, save_run_config
from .data import (
    build_dataset,
    build_mixup_from_config,
    build_sampler,
    build_transform_from_config,
    dataset_info,
)
from .distillation import DistillationLoss, build_teacher, check_student
from .engine import NonFiniteLossError, StepOptions, evaluate, train_one_epoch
from .inference import draw_views, optimize_teacher
from .models import (
    CheckpointError,
    RunCheckpoint,
    build_classifier,
    fit_weights,
    is_deit_model,
    read_weights,
)
from .optim import build_ema, build_optimizer, build_scheduler
from .precision import Precision, resolve_device, resolve_precision

__all__ = [
    "BEST",
    "LAST",
    "DistEnv",
    "RunState",
    "add_subcommand",
    "init_distributed",
    "run",
    "wrap_ddp",
]

LAST = "checkpoint.pth"
BEST = "best_checkpoint.pth"


# ----------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its
    node, and whether a process group is up."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints."""
        return self.rank == 0


def init_distributed(device_pref: str = "auto") -> tuple[DistEnv, torch.device]:
    """Join the process group described by torchrun's or SLURM's environment variables.

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
    under SLURM ``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID`` are used (with
    ``MASTER_ADDR``/``MASTER_PORT`` exported by the job script). Backend: NCCL on CUDA, gloo
    otherwise.

    Returns:
        ``(env, device)``; a single process when neither launcher is present.

    Raises:
        ValueError: SLURM variables without ``MASTER_ADDR``/``MASTER_PORT``; a CUDA device asked
            where none exists.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", 0))
        if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
            raise ValueError(
                "Running under SLURM with several tasks but MASTER_ADDR/MASTER_PORT are not set; "
                "export them in the job script (e.g. the first host of $SLURM_JOB_NODELIST)."
            )
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    else:
        rank, world, local = 0, 1, 0
    device = resolve_device(device_pref, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://")
    return DistEnv(rank, world, local, world > 1), device


# ----------------------------------------------------------------------------- state
def _rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # Each loader worker gets torch's per-worker seed; numpy and random follow it (timm does too).
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _StopFlag:
    """Set by SIGTERM/SIGINT (what a cluster scheduler sends before pre-emption)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.raised = False
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __call__(self) -> bool:
        if not dist.is_initialized():
            return self.raised
        flag = torch.tensor([float(self.raised)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        return bool(flag.item())


# ----------------------------------------------------------------------------- set-up
def wrap_ddp(model: nn.Module, device: torch.device, distillation_type: str) -> nn.Module:
    """Wrap the student (only) in DistributedDataParallel.

    A distilled model trained without distillation never uses ``head_dist``; DDP must then be
    told to look for unused parameters, or their buckets are never all-reduced.
    """
    unused = distillation_type == "none" and hasattr(unwrap_model(model), "head_dist")
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused,
    )


def _check_output_dir(path: str) -> Path | None:
    if not path:
        return None
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"The output folder {path!r} cannot be written ({e.strerror}); pass --output_dir with "
            "a writable folder."
        ) from None
    return out


def _build_model(cfg: Config, num_classes: int) -> nn.Module:
    model = build_classifier(
        cfg.model,
        num_classes,
        img_size=cfg.input_size if is_deit_model(cfg.model) else None,
        drop_rate=cfg.drop,
        drop_path_rate=cfg.drop_path,
    )
    if cfg.finetune:
        _load_finetune(model, cfg)
    return model


def _load_finetune(model: nn.Module, cfg: Config) -> list[str]:
    """Initialise from ``cfg.finetune`` (any file :func:`deit.models.read_weights` reads):
    heads of another class count are left fresh, position embeddings interpolated (DeiT, paper
    section 6); any other mismatch names the architecture. Returns the adaptation notes.

    Raises:
        CheckpointError: unreadable file, a recorded architecture other than ``cfg.model``, or
            weights that do not fit.
    """
    weights = read_weights(cfg.finetune)
    recorded = weights.run.model_name if weights.run else None
    if recorded and recorded != cfg.model:
        raise CheckpointError(
            f"--finetune {cfg.finetune!r} holds a {recorded} but --model is {cfg.model}; "
            "pass the matching --model."
        )
    weights.meta.pop("class_names", None)  # the new data set's classes, not the old ones
    hint = f"pass the --model it was trained as (not {cfg.model})."
    return fit_weights(model, weights, finetune=True, hint=hint)


def _subset(cfg: Config, train_set: Any, val_set: Any, val_tf: Any) -> tuple[Any, Any]:
    """``--train-subset N``: the first N images of a fixed permutation of the training split
    (independent of ``--seed``, so runs with several seeds see the same images, and a smaller
    N's images are part of every larger N's). With ``--eval-unused`` the images left out join
    the validation set (seen through the evaluation transform)."""
    if not cfg.train_subset or cfg.train_subset >= len(train_set):
        return train_set, val_set
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0)).tolist()
    subset = torch.utils.data.Subset(train_set, order[: cfg.train_subset])
    if cfg.eval_unused:
        root = cfg.data_path or None
        unused = build_dataset(
            cfg.data_set, root, "train", transform=val_tf, **_dataset_kwargs(cfg)
        )
        rest = torch.utils.data.Subset(unused, sorted(order[cfg.train_subset :]))
        val_set = torch.utils.data.ConcatDataset([val_set, rest])
    return subset, val_set


def _base_criterion(cfg: Config, mixup: Any) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup is not None:  # smoothing is folded into the mixed targets
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def _loader(dataset: Any, sampler: Any, cfg: Config, device: torch.device, train: bool) -> Any:
    """Training loader (``batch_size``, last partial batch dropped) or evaluation loader
    (1.5 x ``batch_size``, as the official code)."""
    workers = cfg.num_workers
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size if train else int(1.5 * cfg.batch_size),
        sampler=sampler,
        num_workers=workers,
        pin_memory=cfg.pin_mem and device.type == "cuda",
        drop_last=train,
        worker_init_fn=_seed_worker if workers else None,
        persistent_workers=False,
    )


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


# ----------------------------------------------------------------------------- the run
@dataclass
class RunState:
    """Everything a run builds and updates, filled in by the steps of :func:`run` in order:
    :func:`_start` (environment), :func:`build_data`, :func:`build_model_and_teacher`,
    :func:`build_optimisation`, :func:`resume`, then :func:`fit` (which calls :func:`save`)."""

    cfg: Config
    env: DistEnv
    device: torch.device
    precision: Precision
    out: Path | None
    # data (build_data)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: list[str] = field(default_factory=list)
    sampler_train: Any = None
    loader_train: Any = None
    loader_val: Any = None
    mixup_fn: Any = None
    # model and teacher (build_model_and_teacher)
    model: Any = None  # the student itself: its state dict is what is saved
    train_model: Any = None  # compiled and/or DDP-wrapped for training
    eval_model: Any = None  # compiled, not DDP-wrapped: evaluation needs no collectives
    teacher: Any = None
    criterion: Any = None
    n_parameters: int = 0
    # optimisation (build_optimisation)
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    ema: Any = None
    # progress (resume, fit)
    start_epoch: int = 0
    num_updates: int = 0
    skip_batches: int = 0
    best_acc1: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    status: str = "completed"
    writer: Any = None

    @property
    def num_classes(self) -> int:
        """Classes of the training set."""
        return len(self.class_names)


def _start(cfg: Config) -> RunState:
    """Validate, join the process group, check the output folder, seed, pick the precision."""
    cfg.validate()
    env, device = init_distributed(cfg.device)
    out = _check_output_dir(cfg.output_dir) if env.is_main else None
    if cfg.distillation_type != "none" and not cfg.teacher_path:
        raise ValueError(
            f"--distillation-type {cfg.distillation_type} needs a trained teacher: pass "
            "--teacher-path with its weights (train one with `deit train --model resnet18 ...`)."
        )
    seed_everything(cfg.seed + env.rank)
    return RunState(cfg, env, device, resolve_precision(cfg.amp, device), out)


def _dataset_kwargs(cfg: Config) -> dict[str, Any]:
    """``skip_corrupt`` and the iNaturalist ``category``, for the data sets that take them
    (:meth:`deit.config.Config.validate` refuses them elsewhere)."""
    kw: dict[str, Any] = {}
    if cfg.skip_corrupt:
        kw["skip_corrupt"] = True
    if cfg.inat_category != "name":
        kw["category"] = cfg.inat_category
    return kw


def _eval_share(val_set: Any, env: DistEnv, split: bool) -> Any:
    """With ``--dist-eval`` each process evaluates every ``world_size``-th image from its rank
    on: the shares cover the set once (no padding duplicates, unlike DistributedSampler), and
    :func:`deit.engine.evaluate` sums the counts."""
    if not (split and env.distributed):
        return val_set
    return torch.utils.data.Subset(val_set, range(env.rank, len(val_set), env.world_size))


def build_data(state: RunState) -> None:
    """Data sets, transforms (timm), samplers, loaders and Mixup/CutMix of the recipe."""
    cfg, env = state.cfg, state.env
    info = dataset_info(cfg.data_set)
    state.mean, state.std = tuple(info.mean), tuple(info.std)
    train_tf = build_transform_from_config(cfg, True, mean=info.mean, std=info.std)
    val_tf = build_transform_from_config(cfg, False, mean=info.mean, std=info.std)
    root, kw = cfg.data_path or None, _dataset_kwargs(cfg)
    train_set = build_dataset(cfg.data_set, root, "train", transform=train_tf, **kw)
    val_set = build_dataset(cfg.data_set, root, "val", transform=val_tf, **kw)
    state.class_names = list(train_set.classes)
    train_set, val_set = _subset(cfg, train_set, val_set, val_tf)
    state.sampler_train = build_sampler(
        train_set,
        True,
        repeated_aug=cfg.repeated_aug,
        num_repeats=cfg.num_repeats,
        distributed=True,  # a seeded DistributedSampler also in one process: set_epoch is exact
        num_replicas=env.world_size,
        rank=env.rank,
        seed=cfg.seed,
    )
    val_set = _eval_share(val_set, env, cfg.dist_eval)
    state.loader_train = _loader(train_set, state.sampler_train, cfg, state.device, train=True)
    sampler_val = build_sampler(val_set, False)
    state.loader_val = _loader(val_set, sampler_val, cfg, state.device, train=False)
    state.mixup_fn = build_mixup_from_config(cfg, state.num_classes)


def build_model_and_teacher(state: RunState) -> None:
    """The student (fine-tuned from ``--finetune`` when given), the frozen teacher and the
    DeiT loss (paper section 4); the training and evaluation wrappers of the student."""
    cfg, device = state.cfg, state.device
    state.model = _build_model(cfg, state.num_classes).to(device)
    if cfg.distillation_type != "none":
        state.teacher = build_teacher(
            cfg.teacher_model or None,
            cfg.teacher_path,
            num_classes=state.num_classes,
            img_size=cfg.input_size,
            student_mean=state.mean,
            student_std=state.std,
            channels_last=cfg.channels_last_teacher,
            device=device,
        )
        if cfg.teacher_precision != "fp32":  # calibrate on 32 views, check on 64 others
            rng = _rng_state()  # drawing the views leaves the run's own draws as they were
            views = draw_views(state.loader_train, 96, device, state.mixup_fn)
            _set_rng_state(rng)
            state.teacher, report = optimize_teacher(
                state.teacher,
                cfg.teacher_precision,
                views[-64:],
                calibration=views[:32],
                distillation_type=cfg.distillation_type,
                tau=cfg.distillation_tau,
                compile=cfg.compile,
            )
            if state.env.is_main:
                print(report.line(), file=sys.stderr)
    check_student(state.model, cfg.distillation_type, state.teacher)
    state.n_parameters = sum(p.numel() for p in state.model.parameters() if p.requires_grad)
    state.criterion = DistillationLoss(
        _base_criterion(cfg, state.mixup_fn),
        state.teacher,
        cfg.distillation_type,
        alpha=cfg.distillation_alpha,
        tau=cfg.distillation_tau,
        kl_reduction=cfg.kl_reduction,
    )
    state.eval_model = torch.compile(state.model) if cfg.compile else state.model
    state.train_model = state.eval_model
    if state.env.distributed:
        state.train_model = wrap_ddp(state.eval_model, device, cfg.distillation_type)


def build_optimisation(state: RunState) -> None:
    """Optimiser, learning-rate schedule, gradient scaler (fp16 only) and weight EMA (timm)."""
    cfg = state.cfg
    if len(state.loader_train) == 0:  # checked after the teacher, whose errors come first
        raise ValueError(
            f"The training set has {len(state.loader_train.dataset)} images, fewer than one "
            f"batch of {cfg.batch_size}; lower --batch-size."
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


def _resume_path(cfg: Config) -> str:
    if cfg.resume:
        return cfg.resume
    candidate = Path(cfg.output_dir) / LAST if cfg.output_dir else None
    if cfg.auto_resume and candidate is not None and candidate.is_file():
        return str(candidate)
    return ""


def resume(state: RunState) -> None:
    """Continue from ``--resume`` (or ``<output_dir>/checkpoint.pth`` with ``--auto-resume``):
    weights, optimiser, schedule, scaler, EMA, position in the run, history and every RNG, so
    that the continued run equals an uninterrupted one.

    Raises:
        CheckpointError: not a ``deit train`` checkpoint, or one of another model.
    """
    cfg, env = state.cfg, state.env
    path = _resume_path(cfg)
    if not path:
        return
    ck = RunCheckpoint.load(path)
    if ck.optimizer is None:
        raise CheckpointError(
            f"--resume {path!r} is not a training checkpoint of `deit train` (no optimizer "
            "state); use --finetune to start from weights."
        )
    if ck.model_name != cfg.model:
        raise CheckpointError(
            f"--resume {path!r} holds a {ck.model_name} but --model is {cfg.model}."
        )
    state.model.load_state_dict(ck.model)
    state.optimizer.load_state_dict(ck.optimizer)
    for part, saved in ((state.scheduler, ck.scheduler), (state.scaler, ck.scaler)):
        if part is not None and saved:
            part.load_state_dict(saved)
    if state.ema is not None and ck.model_ema is not None:
        state.ema.module.load_state_dict(ck.model_ema)
    state.start_epoch, state.num_updates, state.skip_batches = ck.epoch, ck.step, ck.batches_done
    state.best_acc1, state.history = ck.best_acc1, list(ck.history)
    if ck.rng and env.world_size == ck.world_size:
        _set_rng_state(ck.rng[env.rank] if isinstance(ck.rng, list) else ck.rng)
    if state.scheduler is not None:
        if cfg.sched_per_step:
            state.scheduler.step_update(state.num_updates)
        else:
            state.scheduler.step(state.start_epoch)
    if env.is_main:
        print(f"Resumed from {path}: epoch {ck.epoch}, step {ck.step}.", file=sys.stderr)


def _state_dict(part: Any) -> dict[str, Any] | None:
    return part.state_dict() if part is not None else None


def save(state: RunState, epoch: int, batches_done: int, name: str) -> None:
    """Write a :class:`deit.models.RunCheckpoint` to ``<output_dir>/<name>`` (rank 0 only,
    atomically). Every rank must call it: each one's RNG state is gathered."""
    rng: Any = _rng_state()
    if state.env.distributed:  # each rank's RNG, so every process resumes exactly
        gathered: list[Any] = [None] * state.env.world_size
        dist.all_gather_object(gathered, rng)
        rng = gathered
    if state.out is None:
        return
    cfg = state.cfg
    RunCheckpoint(
        model=state.model.state_dict(),
        model_name=cfg.model,
        num_classes=state.num_classes,
        img_size=cfg.input_size,
        in_chans=3,
        class_names=state.class_names,
        mean=list(state.mean),
        std=list(state.std),
        crop_pct=cfg.eval_crop_ratio,
        data_set=cfg.data_set,
        config=cfg.to_dict(),
        optimizer=state.optimizer.state_dict(),
        scheduler=_state_dict(state.scheduler),
        scaler=_state_dict(state.scaler),
        model_ema=_state_dict(state.ema.module if state.ema is not None else None),
        epoch=epoch,
        step=state.num_updates,
        batches_done=batches_done,
        best_acc1=state.best_acc1,
        history=state.history,
        rng=rng,
        world_size=state.env.world_size,
        n_parameters=state.n_parameters,
    ).save(state.out / name)


def _evaluate(state: RunState, model: nn.Module, teacher: Any = None) -> dict[str, float]:
    return evaluate(
        model,
        state.loader_val,
        state.device,
        teacher=teacher,
        precision=state.precision,
        head=state.cfg.eval_head,
        sum_across_processes=state.cfg.dist_eval,
    )


def _train_epoch(state: RunState, epoch: int, show: bool, stop: Any) -> dict[str, float]:
    """One epoch of :func:`deit.engine.train_one_epoch` with the run's settings."""
    cfg = state.cfg
    if hasattr(state.sampler_train, "set_epoch"):
        state.sampler_train.set_epoch(epoch)
    if state.scheduler is not None and not cfg.sched_per_step:
        state.scheduler.step(epoch)
    options = StepOptions(
        precision=state.precision,
        mixup_fn=state.mixup_fn,
        scaler=state.scaler,
        clip_grad=cfg.clip_grad,
        scheduler=state.scheduler,
        sched_per_step=cfg.sched_per_step,
        model_ema=state.ema,
        log_interval=cfg.log_interval,
    )
    total = len(state.loader_train) - state.skip_batches
    bar = _progress(total, f"epoch {epoch + 1}/{cfg.epochs}", show)
    try:
        stats = train_one_epoch(
            state.train_model,
            state.criterion,
            state.loader_train,
            state.optimizer,
            state.device,
            epoch,
            options,
            num_updates=state.num_updates,
            skip_batches=state.skip_batches,
            progress=bar,
            should_stop=stop,
        )
    finally:
        if bar is not None:
            bar.close()
    state.num_updates = int(stats["num_updates"])
    return stats


def _end_epoch(state: RunState, epoch: int, train_stats: dict[str, float], t0: float) -> None:
    """Evaluate when due (every ``eval_interval`` epochs and after the last), log, checkpoint."""
    cfg = state.cfg
    log = _train_log(train_stats, epoch, state.n_parameters, t0)
    due = cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0
    new_best = False
    if due or epoch + 1 == cfg.epochs:
        state.final = _evaluate(state, state.eval_model)
        log.update({f"test_{k}": v for k, v in state.final.items()})
        if state.ema is not None:
            log["test_ema_acc1"] = _evaluate(state, state.ema.module)["acc1"]
        new_best = state.final["acc1"] > state.best_acc1
        state.best_acc1 = max(state.best_acc1, state.final["acc1"])
        log["best_acc1"] = state.best_acc1
    state.history.append(log)
    save(state, epoch + 1, 0, LAST)
    if new_best:
        save(state, epoch + 1, 0, BEST)
    if state.env.is_main:
        _write_log(state.out, state.writer, log)
        acc = ""
        if "test_acc1" in log:
            acc = f"test acc1 {log['test_acc1']:.2f}% (best {state.best_acc1:.2f}%), "
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {train_stats['loss']:.4f}, {acc}"
            f"{train_stats['images_per_s']:.1f} img/s",
            file=sys.stderr,
        )


def fit(state: RunState, max_epochs_this_run: int | None = None, progress: bool = True) -> None:
    """The epoch loop: train, evaluate when due, log and checkpoint; a SIGTERM/SIGINT stops
    it after the current step with a mid-epoch checkpoint (``status`` 'stopped')."""
    cfg, env = state.cfg, state.env
    last_epoch = cfg.epochs
    if max_epochs_this_run is not None:
        last_epoch = min(cfg.epochs, state.start_epoch + max_epochs_this_run)
    stop = _StopFlag(state.device)
    stop.install()
    try:
        for epoch in range(state.start_epoch, last_epoch):
            t0 = time.time()
            stats = _train_epoch(state, epoch, progress and env.is_main, stop)
            if not stats["completed"]:
                save(state, epoch, state.skip_batches + int(stats["steps"]), LAST)
                state.status = "stopped"
                if env.is_main:
                    print(
                        f"Stopped by a signal at epoch {epoch}, update {state.num_updates}; "
                        "checkpoint written, continue with --auto-resume.",
                        file=sys.stderr,
                    )
                return
            state.skip_batches = 0
            _end_epoch(state, epoch, stats, t0)
        if last_epoch < cfg.epochs:
            state.status = "paused"
    finally:
        stop.restore()


def run(
    cfg: Config,
    *,
    max_epochs_this_run: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or with ``cfg.eval`` only evaluate) as ``cfg`` says; see the module docstring.

    The steps, over one :class:`RunState`: :func:`build_data`, :func:`build_model_and_teacher`,
    :func:`build_optimisation`, :func:`resume`, :func:`fit` (which :func:`save` s).

    Args:
        cfg: the configuration (validated here).
        max_epochs_this_run: stop after this many epochs of this invocation (the schedule still
            spans ``cfg.epochs``; resume later with ``cfg.resume``/``auto_resume``).
        progress: show progress bars (rank 0 only).

    Returns:
        ``history`` (one dict per epoch, the ``log.txt`` lines), ``best_acc1``, ``final``
        (last evaluation), ``output_dir``, ``status`` ('completed', 'stopped' (signal),
        'paused' (``max_epochs_this_run``) or 'evaluated' (``cfg.eval``)), ``n_parameters``.

    Raises:
        ValueError / FileNotFoundError / CheckpointError: bad configuration, data path, teacher
            path, fine-tuning checkpoint or output folder — all raised before the first step.
        NonFiniteLossError: the loss became NaN/inf; the last checkpoint is kept.
    """
    state = _start(cfg)
    build_data(state)
    build_model_and_teacher(state)
    build_optimisation(state)
    resume(state)
    if cfg.eval:
        state.final = _evaluate(state, state.eval_model, state.teacher)
        state.status = "evaluated"
        if state.env.is_main:
            print(json.dumps({f"test_{k}": v for k, v in state.final.items()}))
    else:
        if state.out is not None:
            save_run_config(cfg, state.out)
            state.writer = _tensorboard(state.out, state.env.is_main)
        try:
            fit(state, max_epochs_this_run, progress)
        finally:
            if state.writer is not None:
                state.writer.close()
    return {
        "history": state.history,
        "best_acc1": state.best_acc1,
        "final": state.final,
        "output_dir": state.out,
        "status": state.status,
        "n_parameters": state.n_parameters,
    }


def _train_log(
    train_stats: dict[str, float], epoch: int, n_parameters: int, t0: float
) -> dict[str, Any]:
    """The training half of an epoch's ``log.txt`` line (official keys)."""
    return {
        **{f"train_{k}": v for k, v in train_stats.items() if k != "completed"},
        "epoch": epoch,
        "n_parameters": n_parameters,
        "epoch_time_s": time.time() - t0,
    }


def _tensorboard(out: Path, say: bool) -> Any:
    """A TensorBoard writer for ``out/tensorboard``, or ``None`` (with a note) when the
    ``tensorboard`` extra is not installed: log.txt holds the same scalars."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if say:
            print(
                "note: TensorBoard logging is off (log.txt has the same scalars); "
                "pip install 'deit[tensorboard]' to turn it on.",
                file=sys.stderr,
            )
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _write_log(out: Path | None, writer: Any, log: dict[str, Any]) -> None:
    if out is None:
        return
    with open(out / "log.txt", "a") as f:
        f.write(json.dumps(log) + "\n")
    if writer is not None:
        for k, v in log.items():
            if k != "epoch" and isinstance(v, int | float):
                writer.add_scalar(k.replace("_", "/", 1), v, log["epoch"])
        writer.flush()


# ----------------------------------------------------------------------------- CLI
def _train_cmd(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        run(cfg, progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"deit train: error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit train`` (every :class:`~deit.config.Config` field as a flag)."""
    p = sub.add_parser(
        "train",
        help="train a DeiT student (optionally distilled) or a CNN teacher",
        description="Train with the data-efficient recipe; flags follow the official DeiT code.",
    )
    add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_train_cmd)
