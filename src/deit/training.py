"""A whole training run: `deit train` (official ``main.py``'s role).

:func:`run` takes a :class:`deit.config.Config` and builds data, student, teacher, loss,
optimiser, schedule and EMA from the library's builders, checks every input before the first
step, then alternates :func:`deit.engine.train_one_epoch` and :func:`deit.engine.evaluate`,
writing ``checkpoint.pth`` (last) and ``best_checkpoint.pth`` atomically, ``log.txt`` (one JSON
line per epoch, the official keys), TensorBoard scalars and ``config.yaml``. While it trains, the
output folder is locked (:mod:`deit._runlock`): a second run into it is refused.

Distributed training uses PyTorch's own stack: launch with ``torchrun`` (env:// rendezvous,
single or multi-node) or under SLURM (``srun``; ``MASTER_ADDR``/``MASTER_PORT`` must be set);
gloo on CPU, NCCL on CUDA; DistributedDataParallel wraps the student only; only rank 0 writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.utils import unwrap_model
from torch import nn
from torch.utils.data import DataLoader

from ._runlock import OutputLock
from .checkpoints import CheckpointError, RunCheckpoint, fit_weights, read_weights
from .config import Config, add_config_args, config_from_args, save_run_config
from .data import (
    build_dataset,
    build_mixup_from_config,
    build_sampler,
    build_transform_from_config,
    dataset_info,
    subset_split,
)
from .data.align import align_classes
from .data.inputs import resolve_inputs
from .data.transforms import PositionSampler, SeededViews
from .distillation import DistillationLoss, build_teacher, check_student
from .engine import NonFiniteLossError, StepOptions, evaluate, train_one_epoch
from .inference import draw_views, optimize_teacher
from .models import build_classifier, is_deit_model
from .optim import build_ema, build_optimizer, build_scheduler
from .precision import Precision, resolve_device, resolve_precision

__all__ = [
    "BEST",
    "LAST",
    "DistEnv",
    "RunState",
    "add_subcommand",
    "build_run_teacher",
    "init_distributed",
    "label_pass_state",
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
        self.signum = 0  # the signal that stopped the run (for the exit status 128 + signum)
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
        self.signum = signum

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


RUN_FILES = (LAST, BEST, "log.txt", "config.yaml")  # what a run writes; --overwrite removes them


def _check_output_path(cfg: Config) -> Path | None:
    """The output folder's path, or ``None``; nothing is created.

    Raises:
        ValueError: the path is a file or cannot be created/written.
    """
    if not cfg.output_dir:
        return None
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"The output folder {cfg.output_dir!r} is a file; pass --output_dir with a folder."
        )
    existing = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"The output folder {cfg.output_dir!r} cannot be written ({existing} is not a "
            "writable folder); pass --output_dir with a writable folder."
        )
    return out


def _check_output_dir(cfg: Config) -> Path | None:
    """The run's output folder, checked (:func:`_check_output_path`) but not created by this
    function (:func:`_lock_output` creates it for its lock, :func:`_open_output` writes).

    Raises:
        ValueError: the path is a file or cannot be created/written; it holds another run and
            neither ``--resume``/``--auto-resume`` nor ``--overwrite`` says what to do with it.
    """
    out = _check_output_path(cfg)
    if out is None:
        return None
    found = [name for name in (LAST, "log.txt") if (out / name).exists()]
    continues = (cfg.auto_resume and (out / LAST).is_file()) or (
        cfg.resume and Path(cfg.resume).resolve() == (out / LAST).resolve()
    )  # this folder's own run; a resume from elsewhere must not write over another run
    if found and not (cfg.overwrite or continues or cfg.eval):
        raise ValueError(
            f"The output folder {cfg.output_dir!r} already holds a run ({', '.join(found)}); "
            "continue it with --auto-resume, or pass --overwrite to replace it, or choose "
            "another --output_dir."
        )
    return out


def _lock_output(cfg: Config, env: DistEnv) -> OutputLock | None:
    """Lock the output folder for this run (rank 0 only; a training run, not ``--eval``), so
    that a second run into it is refused naming this one; every rank learns the outcome and
    stops with the same sentence. The folder is created for its lock file.

    Raises:
        ValueError: the folder is a file, not writable, or another live run holds its lock
            (:class:`deit._runlock.OutputFolderBusyError`, naming its pid and host).
    """
    if not cfg.output_dir or cfg.eval:
        return None
    lock, error = None, None
    if env.is_main:
        try:
            _check_output_path(cfg)
            lock = OutputLock.acquire(cfg.output_dir)
        except (ValueError, OSError) as e:
            error = e
    if env.distributed:  # the other ranks would otherwise wait for rank 0 forever
        box = [str(error) if error else ""]
        dist.broadcast_object_list(box, src=0)
        if box[0] and error is None:
            error = ValueError(box[0])
    if error is not None:
        raise error
    if lock is not None and lock.note:
        print(f"note: {lock.note}", file=sys.stderr)
    return lock


def _open_output(state: RunState) -> None:
    """Create the output folder (rank 0), remove the replaced run's files with ``--overwrite``
    (nothing else in the folder), write ``config.yaml``, open TensorBoard."""
    if state.out is None:
        return
    state.out.mkdir(parents=True, exist_ok=True)
    if state.cfg.overwrite and not (state.cfg.resume or state.cfg.auto_resume):
        for name in RUN_FILES:
            (state.out / name).unlink(missing_ok=True)
        shutil.rmtree(state.out / "tensorboard", ignore_errors=True)
    save_run_config(state.cfg, state.out)
    state.writer = _tensorboard(state.out, state.env.is_main)


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
    """Initialise from ``cfg.finetune`` (any file :func:`deit.models.read_weights` reads, the
    same rules for each): heads of another class count are left fresh, position embeddings
    resampled (DeiT, paper section 6), a distillation token and head added from the class
    token's or dropped; a recorded architecture other than ``cfg.model`` is fine when its
    weights fit. Returns the adaptation notes (each also warned).

    Raises:
        CheckpointError: unreadable file, or weights that do not fit (one sentence naming the
            architecture the file holds and the ``--model`` to pass).
    """
    weights = read_weights(cfg.finetune)
    weights.meta.pop("class_names", None)  # the new data set's classes, not the old ones
    if cfg.finetune_img_size:  # the size the file does not record (its grid is ambiguous)
        size = cfg.finetune_img_size
        weights.meta["image_size"] = (size[0], size[-1])
    notes = fit_weights(model, weights, finetune=True)
    recorded = weights.run.model_name if weights.run else None
    if recorded and recorded != cfg.model:
        note = f"--finetune {cfg.finetune!r} holds a {recorded}, adapted to {cfg.model}."
        warnings.warn(note, stacklevel=2)
        notes.insert(0, note)
    return notes


def _subset(cfg: Config, train_set: Any, val_set: Any, val_tf: Any) -> tuple[Any, Any]:
    """``--train-subset N``: the first N images of a fixed permutation of the training split
    (:func:`deit.data.subset_split`: the same for every seed). ``--val-images K`` holds out the
    next K images of that permutation as validation: the run evaluates on them alone, or with
    ``--eval-unused`` on the validation split plus the images after them (seen through the
    evaluation transform), so settings chosen on the K images are never scored on them.

    Raises:
        ValueError: N + K exceeds the training split.
    """
    n, k = cfg.train_subset, cfg.val_images
    if not n or (n >= len(train_set) and not k):
        return train_set, val_set
    train, val, rest = subset_split(len(train_set), n, k)
    subset = torch.utils.data.Subset(train_set, train)
    if cfg.eval_unused or k:
        root = cfg.data_path or None
        unused = build_dataset(
            cfg.data_set, root, "train", transform=val_tf, **_dataset_kwargs(cfg)
        )
        if not cfg.eval_unused:
            return subset, torch.utils.data.Subset(unused, val)
        val_set = torch.utils.data.ConcatDataset([val_set, torch.utils.data.Subset(unused, rest)])
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
    (1.5 x ``batch_size``, as the official code). Its own generator (seeded by ``cfg.seed``)
    seeds the workers, so iterating it draws nothing from torch's global RNG (the model's)."""
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
        generator=torch.Generator().manual_seed(cfg.seed),
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
    train_images: int = 0
    sampler_train: Any = None
    loader_train: Any = None
    loader_val: Any = None
    mixup_fn: Any = None
    # model and teacher (build_model_and_teacher)
    model: Any = None  # the student itself: its state dict is what is saved
    train_model: Any = None  # compiled and/or DDP-wrapped for training
    eval_model: Any = None  # compiled, not DDP-wrapped: evaluation needs no collectives
    teacher: Any = None
    teacher_labels: Any = None  # a deit.teacher_labels.TeacherLabelStore (--teacher-labels)
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
    partial_stats: dict[str, float] | None = None  # of the skip_batches already trained
    best_acc1: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    status: str = "completed"
    stop_signal: int = 0  # the signal number when status is 'stopped'
    writer: Any = None
    lock: OutputLock | None = None  # of the output folder, held by rank 0 while training

    @property
    def num_classes(self) -> int:
        """Classes of the training set."""
        return len(self.class_names)


def _start(cfg: Config) -> RunState:
    """Validate, join the process group, check the output folder, seed, pick the precision.
    The run works on a copy of ``cfg`` (:func:`build_data` fills in the model's defaults)."""
    cfg = dataclasses.replace(cfg.validate())
    env, device = init_distributed(cfg.device)
    lock = _lock_output(cfg, env)
    try:
        checked = _check_output_dir(cfg)  # on every rank: all stop, none waits for the others
        _check_teacher_given(cfg)
    except BaseException:
        if lock is not None:
            lock.release(remove_created=True)
        raise
    out = checked if env.is_main else None
    if env.is_main and not cfg.eval and cfg.warmup_epochs >= cfg.epochs:
        print(
            f"note: the warm-up ({cfg.warmup_epochs} of {cfg.epochs} epochs) is not shorter "
            "than the run, so the learning rate never reaches --lr; lower "
            "--warmup-epochs.",
            file=sys.stderr,
        )
    seed_everything(cfg.seed + env.rank)
    state = RunState(cfg, env, device, resolve_precision(cfg.amp, device), out)
    state.lock = lock
    return state


def _check_teacher_given(cfg: Config) -> None:
    if cfg.distillation_type != "none" and not (cfg.teacher_path or cfg.teacher_labels):
        raise ValueError(
            f"--distillation-type {cfg.distillation_type} needs a trained teacher: pass "
            "--teacher-path with its weights (train one with `deit train --model resnet18 ...`) "
            "or --teacher-labels with a store of its labels."
        )


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
    inputs = resolve_inputs(cfg, dataset_info(cfg.data_set))  # None: the model's own
    cfg.input_size, cfg.mean, cfg.std = inputs.input_size, list(inputs.mean), list(inputs.std)
    state.mean, state.std = inputs.mean, inputs.std
    for note in inputs.notes if env.is_main else ():
        print(f"note: {note}", file=sys.stderr)
    train_tf = build_transform_from_config(cfg, True, mean=state.mean, std=state.std)
    val_tf = build_transform_from_config(cfg, False, mean=state.mean, std=state.std)
    root, kw = cfg.data_path or None, _dataset_kwargs(cfg)
    train_set = build_dataset(cfg.data_set, root, "train", transform=train_tf, **kw)
    val_set = build_dataset(cfg.data_set, root, "val", transform=val_tf, **kw)
    align_classes(train_set, val_set)  # before anything trains: val indexed by train's names
    state.class_names = list(train_set.classes)
    train_set, val_set = _subset(cfg, train_set, val_set, val_tf)
    state.train_images = len(train_set)  # unreadable files skipped (--skip-corrupt)
    sampler = build_sampler(
        train_set,
        True,
        repeated_aug=cfg.repeated_aug,
        num_repeats=cfg.num_repeats,
        distributed=True,  # a seeded DistributedSampler also in one process: set_epoch is exact
        num_replicas=env.world_size,
        rank=env.rank,
        seed=cfg.seed,
    )
    # every view a pure function of (seed, epoch, position): see deit.data.transforms
    state.sampler_train = PositionSampler(sampler)
    train_set = SeededViews(train_set, cfg.seed)
    val_set = _eval_share(val_set, env, cfg.dist_eval)
    state.loader_train = _loader(train_set, state.sampler_train, cfg, state.device, train=True)
    sampler_val = build_sampler(val_set, False)
    state.loader_val = _loader(val_set, sampler_val, cfg, state.device, train=False)
    state.mixup_fn = build_mixup_from_config(cfg, state.num_classes, cfg.seed, env.rank)


def build_model_and_teacher(state: RunState) -> None:
    """The student (fine-tuned from ``--finetune`` when given), the frozen teacher and the
    DeiT loss (paper section 4); the training and evaluation wrappers of the student."""
    cfg, device = state.cfg, state.device
    # seeded here again, and before training in build_optimisation: lazy imports while the data
    # was built (scikit-learn's data sets draw from `random`) must not change the run
    seed_everything(cfg.seed)
    state.model = _build_model(cfg, state.num_classes).to(device)
    if cfg.distillation_type != "none" and cfg.teacher_labels:
        _open_teacher_labels(state)  # the teacher is not built
    elif cfg.distillation_type != "none":
        state.teacher = build_run_teacher(state)
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


def build_run_teacher(state: RunState) -> Any:
    """The run's frozen teacher (:func:`deit.distillation.build_teacher` with the run's
    teacher fields, class count, resolution and normalisation), on the run's device, made fast
    by :func:`deit.inference.optimize_teacher` as ``--teacher-precision`` says (checked against
    fp32 on training views). Built under a forked CPU RNG and with the RNG states restored after
    the views are drawn: the student's dropout / drop-path stream is the same whether the
    teacher is built or its labels are read from a store."""
    cfg = state.cfg
    with torch.random.fork_rng(devices=[]):
        teacher = build_teacher(
            cfg.teacher_model or None,
            cfg.teacher_path,
            num_classes=state.num_classes,
            img_size=cfg.input_size,
            student_mean=state.mean,
            student_std=state.std,
            channels_last=cfg.channels_last_teacher,
            device=state.device,
        )
    if cfg.teacher_precision == "fp32" or len(state.loader_train) == 0:  # (the latter: refused
        return teacher  # with its own message in build_optimisation)
    rng = _rng_state()  # drawing the views leaves the run's own draws as they were
    # 256 views to check: 99.5 % agreement then allows one disagreement (on 64 it allowed none)
    views = draw_views(state.loader_train, 32 + 256, state.device, state.mixup_fn)
    _set_rng_state(rng)
    calibrate = min(32, len(views) // 4)  # disjoint from the views checked
    teacher, report = optimize_teacher(
        teacher,
        cfg.teacher_precision,
        views[calibrate:],
        calibration=views[:calibrate],
        distillation_type=cfg.distillation_type,
        tau=cfg.distillation_tau,
        compile=cfg.compile,
    )
    if state.env.is_main:
        print(report.line(), file=sys.stderr)
    return teacher


def _open_teacher_labels(state: RunState) -> None:
    """``--teacher-labels DIR``: open the store and refuse it unless it matches the run."""
    from .teacher_labels import TeacherLabelStore

    store = TeacherLabelStore(state.cfg.teacher_labels)
    train_images = len(state.loader_train.dataset)
    store.check_run(state.cfg, state.num_classes, train_images, state.env.world_size)
    state.teacher_labels = store


def label_pass_state(cfg: Config) -> RunState:
    """A single-process :class:`RunState` with the run's data built (:func:`build_data`),
    nothing written: what :func:`deit.teacher_labels.compute_teacher_labels` iterates."""
    cfg = dataclasses.replace(cfg.validate())  # build_data fills in the model's defaults
    device = resolve_device(cfg.device)
    state = RunState(cfg, DistEnv(), device, resolve_precision(cfg.amp, device), None)
    build_data(state)
    return state


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
    seed_everything(cfg.seed + state.env.rank)  # training's draws depend on the config only


def _resume_path(cfg: Config) -> str:
    if cfg.resume:
        return cfg.resume
    candidate = Path(cfg.output_dir) / LAST if cfg.output_dir else None
    if cfg.auto_resume and candidate is not None and candidate.is_file():
        return str(candidate)
    return ""


# Settings a checkpoint's run was shaped by. SCHEDULE ones may change on resume with
# --new-schedule (the schedule is rebuilt from the same epoch); DATA ones never (start a new run
# with --finetune instead).
RESUME_SCHEDULE = (
    "lr", "unscale_lr", "sched", "sched_per_step", "warmup_lr", "warmup_epochs", "min_lr",
    "decay_epochs", "decay_rate", "cooldown_epochs", "patience_epochs", "lr_noise",
    "lr_noise_pct", "lr_noise_std", "epochs", "batch_size", "seed", "repeated_aug",
    "num_repeats",
)  # fmt: skip
RESUME_DATA = ("data_set", "train_subset", "input_size", "opt", "distillation_type")


# Settings that change how a run is carried out, not what it computes.
RESUME_FREE = (
    "output_dir", "resume", "auto_resume", "overwrite", "new_schedule", "eval", "num_workers",
    "pin_mem", "device", "dist_eval", "eval_interval", "log_interval", "data_path",
    "teacher_path", "teacher_labels", "compile",
)  # fmt: skip


def _resume_differences(
    cfg: Config, ck: RunCheckpoint, world_size: int, keys: Sequence[str] | None = None
) -> list[str]:
    """``"name checkpoint -> now"`` for each setting of ``keys`` (default: the run-shaping
    ones) that differs from the checkpoint's."""
    saved = {**ck.config, "world_size": ck.world_size}
    now = {**cfg.to_dict(), "world_size": world_size}
    keys = keys if keys is not None else [*RESUME_DATA, *RESUME_SCHEDULE, "world_size"]
    return [f"{k} {saved[k]!r} -> {now[k]!r}" for k in keys if k in saved and saved[k] != now[k]]


def _check_resume(state: RunState, ck: RunCheckpoint, path: str) -> bool:
    """Refuse a resume whose run-shaping settings differ from the checkpoint's, unless only
    schedule settings differ and ``--new-schedule`` accepts them. Returns whether the schedule
    is rebuilt (settings accepted).

    Raises:
        CheckpointError: a data / model setting differs, or a schedule setting without
            ``--new-schedule``.
    """
    shaping = {*RESUME_DATA, *RESUME_SCHEDULE, *RESUME_FREE}
    others = [k for k in state.cfg.field_names() if k not in shaping]
    recipe = _resume_differences(state.cfg, ck, state.env.world_size, others)
    if recipe and state.env.is_main:  # e.g. a stronger augmentation from here on: allowed
        print(
            f"note: resumed with other settings than the checkpoint's ({'; '.join(recipe)}); "
            "config.yaml records the new ones.",
            file=sys.stderr,
        )
    changed = _resume_differences(state.cfg, ck, state.env.world_size)
    if not changed:
        return False
    data = [c for c in changed if c.split(" ")[0] in RESUME_DATA]
    if data or not state.cfg.new_schedule:
        fix = (
            "start a new run with --finetune to reuse its weights"
            if data
            else "resume with the checkpoint's settings, or pass --new-schedule to rebuild the "
            "schedule with the new ones from the same epoch"
        )
        raise CheckpointError(
            f"--resume {path!r} was trained with other settings ({'; '.join(changed)}); {fix}."
        )
    if state.env.is_main:
        print(
            f"note: new schedule from epoch {ck.epoch + 1}: {'; '.join(changed)}.", file=sys.stderr
        )
    return True


def resume(state: RunState) -> None:
    """Continue from ``--resume`` (or ``<output_dir>/checkpoint.pth`` with ``--auto-resume``):
    weights, optimiser, schedule, scaler, EMA, position in the run, history and every RNG, so
    that the continued run equals an uninterrupted one.

    Raises:
        CheckpointError: not a ``deit train`` checkpoint, one of another model, or one whose
            run-shaping settings differ (:func:`_check_resume`).
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
    rebuilt = False if cfg.eval else _check_resume(state, ck, path)  # evaluating trains nothing
    state.model.load_state_dict(ck.model)
    state.optimizer.load_state_dict(ck.optimizer)
    saved_scheduler = None if rebuilt else ck.scheduler
    for part, saved in ((state.scheduler, saved_scheduler), (state.scaler, ck.scaler)):
        if part is not None and saved:
            part.load_state_dict(saved)
    if state.ema is not None and ck.model_ema is not None:
        state.ema.module.load_state_dict(ck.model_ema)
    state.start_epoch, state.num_updates, state.skip_batches = ck.epoch, ck.step, ck.batches_done
    state.partial_stats = ck.epoch_stats if ck.batches_done else None
    state.best_acc1, state.history = ck.best_acc1, list(ck.history)
    if rebuilt:  # the new schedule starts at the epoch boundary, counted in its own steps
        if ck.batches_done and env.is_main:
            print(f"note: epoch {ck.epoch + 1} restarts from its beginning.", file=sys.stderr)
        state.num_updates, state.skip_batches = ck.epoch * len(state.loader_train), 0
        state.partial_stats = None
    elif ck.rng and env.world_size == ck.world_size:
        _set_rng_state(ck.rng[env.rank] if isinstance(ck.rng, list) else ck.rng)
    if state.scheduler is not None:
        if cfg.sched_per_step:
            state.scheduler.step_update(state.num_updates)
        else:
            state.scheduler.step(state.start_epoch)
    if env.is_main:
        where = f"in epoch {ck.epoch + 1}" if ck.batches_done else f"after epoch {ck.epoch}"
        print(f"Resumed from {path} {where}, update {ck.step}.", file=sys.stderr)


def _state_dict(part: Any) -> dict[str, Any] | None:
    return part.state_dict() if part is not None else None


def save(
    state: RunState,
    epoch: int,
    batches_done: int,
    name: str,
    epoch_stats: dict[str, float] | None = None,
) -> None:
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
        epoch_stats=epoch_stats,
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
    # resuming mid-epoch, the sampler starts after the batches already trained
    state.sampler_train.set_epoch(epoch, state.skip_batches * cfg.batch_size)
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
        teacher_labels=state.teacher_labels,
    )
    total = len(state.loader_train)  # the sampler starts after the batches already trained
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
            first_batch=state.skip_batches,
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
    log["train_images"] = state.train_images
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
    cfg = state.cfg
    last_epoch = cfg.epochs
    if max_epochs_this_run is not None:
        last_epoch = min(cfg.epochs, state.start_epoch + max_epochs_this_run)
    stop = _StopFlag(state.device)
    stop.install()
    try:
        _epochs(state, last_epoch, progress, stop)
    except NonFiniteLossError as e:
        last = state.out / LAST if state.out is not None else None
        kept = (
            f"{last} is kept"
            if last is not None and last.is_file()
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(f"{str(e).rstrip('.')}; the run stopped and {kept}.") from None
    finally:
        stop.restore()


_MEAN_STATS = ("loss", "loss_base", "loss_distillation", "teacher_disagreement")


def _merge_stats(before: dict[str, float] | None, after: dict[str, float]) -> dict[str, float]:
    """One epoch's statistics from the part trained before a stop and the part after it:
    step-weighted means, summed steps, images/s over both parts' time, the last lr."""
    if not before:
        return after
    n0, n1 = before["steps"], after["steps"]
    merged = dict(after, steps=n0 + n1)
    for key in _MEAN_STATS:
        merged[key] = (before[key] * n0 + after[key] * n1) / max(n0 + n1, 1.0)
    seconds = n0 / max(before["images_per_s"], 1e-9) + n1 / max(after["images_per_s"], 1e-9)
    merged["images_per_s"] = (n0 + n1) / max(seconds, 1e-9)  # equal batches: images ~ steps
    return merged


def _epochs(state: RunState, last_epoch: int, progress: bool, stop: Any) -> None:
    """Epochs ``state.start_epoch`` to ``last_epoch - 1`` (counted from 1 in messages, from 0
    in ``log.txt`` as the official code does); a stop signal saves mid-epoch."""
    cfg, env = state.cfg, state.env
    show = progress and env.is_main
    for epoch in range(state.start_epoch, last_epoch):
        t0 = time.time()
        part = _train_epoch(state, epoch, show, stop)
        stats = _merge_stats(state.partial_stats, part)
        state.partial_stats = None
        if not stats["completed"]:
            done = state.skip_batches + int(part["steps"])
            save(state, epoch, done, LAST, epoch_stats=stats)
            state.status, state.stop_signal = "stopped", stop.signum or signal.SIGTERM
            if env.is_main:
                print(
                    f"Stopped by a signal during epoch {epoch + 1}/{cfg.epochs} after update "
                    f"{state.num_updates}; checkpoint written, continue with --auto-resume.",
                    file=sys.stderr,
                )
            return
        state.skip_batches = 0
        _end_epoch(state, epoch, stats, t0)
    if last_epoch < cfg.epochs:
        state.status = "paused"


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
        'paused' (``max_epochs_this_run``) or 'evaluated' (``cfg.eval``)), ``stop_signal``
        (the signal number when stopped, else 0), ``n_parameters``.

    Raises:
        ValueError / FileNotFoundError / CheckpointError: bad configuration, data path, teacher
            path, fine-tuning checkpoint or output folder — all raised before the first step;
            an output folder another live run holds (its lock names its pid and host).
        NonFiniteLossError: the loss became NaN/inf; the last checkpoint is kept.
    """
    state = _start(cfg)
    try:
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
            _open_output(state)
            try:
                fit(state, max_epochs_this_run, progress)
            finally:
                if state.writer is not None:
                    state.writer.close()
    finally:  # a folder created for the lock and still empty (the run failed before it
        if state.lock is not None:  # wrote anything) is removed
            state.lock.release(remove_created=True)
    return {
        "history": state.history,
        "best_acc1": state.best_acc1,
        "final": state.final,
        "output_dir": state.out,
        "status": state.status,
        "stop_signal": int(state.stop_signal),
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
        result = run(cfg, progress=not args.no_progress)
    except NonFiniteLossError as e:
        if int(os.environ.get("RANK", "0")) == 0:  # every rank stops at the same step
            print(f"deit train: error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # the shell's convention for a process ended by a signal (130 SIGINT, 143 SIGTERM): a
    # script can tell a stopped run from a finished one
    return 128 + result["stop_signal"] if result["status"] == "stopped" else 0


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
