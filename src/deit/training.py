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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
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
from .engine import (
    NonFiniteLossError,
    evaluate,
    resolve_precision,
    train_one_epoch,
    unwrap_model,
)
from .models import (
    CheckpointError,
    atomic_save,
    build_classifier,
    is_deit_model,
    load_state_dict_into,
    read_state_dict,
    safe_torch_load,
)
from .models.checkpoint import mismatch
from .optim import build_ema, build_optimizer, build_scheduler

__all__ = ["DistEnv", "init_distributed", "wrap_ddp", "run", "add_subcommand", "LAST", "BEST"]

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
    device = _resolve_device(device_pref, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://")
    return DistEnv(rank, world, local, world > 1), device


def _resolve_device(pref: str, local_rank: int) -> torch.device:
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {pref!r} was asked but no CUDA GPU is visible; use cpu.")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


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


def _load_finetune(model: nn.Module, cfg: Config) -> None:
    """Initialise from ``cfg.finetune``: heads of another class count are dropped, position
    embeddings interpolated (DeiT); any other mismatch names the architecture."""
    path = Path(cfg.finetune)
    obj = safe_torch_load(path) if path.is_file() and path.suffix != ".safetensors" else None
    if isinstance(obj, dict) and obj.get("model_name") and obj["model_name"] != cfg.model:
        raise CheckpointError(
            f"--finetune {cfg.finetune!r} holds a {obj['model_name']} but --model is {cfg.model}; "
            "pass the matching --model."
        )
    if is_deit_model(cfg.model):
        sd = obj["model"] if isinstance(obj, dict) and "model_name" in obj else None
        if sd is None:
            sd, meta = read_state_dict(path)
        else:
            meta = {}
        load_state_dict_into(model, sd, finetune=True, meta=meta, source=cfg.finetune)
        return
    # a CNN: its classifier layers (timm's pretrained_cfg names them, e.g. 'fc' or LeViT's two
    # heads; otherwise the last Linear, as torchvision's fc / classifier.N) alone are dropped
    # when the class count differs
    sd, _ = read_state_dict(path)
    own = model.state_dict()
    heads = getattr(model, "pretrained_cfg", {}).get("classifier")
    if not heads:
        heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    heads = [heads] if isinstance(heads, str) else list(heads)
    head_keys = tuple(f"{n}.{p}" for n in heads for p in ("weight", "bias"))
    sd = {
        k: v for k, v in sd.items() if not (k in own and k in head_keys and v.shape != own[k].shape)
    }
    parts, _ = mismatch(own, sd, ignore_missing=head_keys)
    if parts:
        raise CheckpointError(
            f"--finetune {cfg.finetune!r} does not fit {cfg.model}: {', '.join(parts)}; "
            "pass the matching --model."
        )
    model.load_state_dict(sd, strict=False)


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
        unused = build_dataset(cfg.data_set, root, "train", transform=val_tf)
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
def run(
    cfg: Config,
    *,
    max_epochs_this_run: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or with ``cfg.eval`` only evaluate) as ``cfg`` says; see the module docstring.

    Args:
        cfg: the configuration (validated here).
        max_epochs_this_run: stop after this many epochs of this invocation (the schedule still
            spans ``cfg.epochs``; resume later with ``cfg.resume``/``auto_resume``).
        progress: show progress bars (rank 0 only).

    Returns:
        ``history`` (one dict per epoch, the ``log.txt`` lines), ``best_acc1``, ``final``
        (last evaluation), ``output_dir``, ``status`` ('completed', 'stopped' (signal) or
        'paused' (``max_epochs_this_run``)).

    Raises:
        ValueError / FileNotFoundError / CheckpointError: bad configuration, data path, teacher
            path, fine-tuning checkpoint or output folder — all raised before the first step.
        NonFiniteLossError: the loss became NaN/inf; the last checkpoint is kept.
    """
    cfg.validate()
    env, device = init_distributed(cfg.device)
    out = _check_output_dir(cfg.output_dir) if env.is_main else None
    if cfg.distillation_type != "none" and not cfg.teacher_path:
        raise ValueError(
            f"--distillation-type {cfg.distillation_type} needs a trained teacher: pass "
            "--teacher-path with its weights (train one with `deit train --model resnet18 ...`)."
        )
    seed_everything(cfg.seed + env.rank)
    precision = resolve_precision(cfg.amp, device)

    # data
    info = dataset_info(cfg.data_set)
    root = cfg.data_path or None
    train_tf = build_transform_from_config(cfg, True, mean=info.mean, std=info.std)
    val_tf = build_transform_from_config(cfg, False, mean=info.mean, std=info.std)
    train_set = build_dataset(cfg.data_set, root, "train", transform=train_tf)
    val_set = build_dataset(cfg.data_set, root, "val", transform=val_tf)
    num_classes = len(train_set.classes)
    class_names = list(train_set.classes)
    train_set, val_set = _subset(cfg, train_set, val_set, val_tf)

    # models, loss
    model = _build_model(cfg, num_classes).to(device)
    teacher = None
    if cfg.distillation_type != "none":
        teacher = build_teacher(
            cfg.teacher_model or None,
            cfg.teacher_path,
            num_classes=num_classes,
            img_size=cfg.input_size,
            student_mean=info.mean,
            student_std=info.std,
            channels_last=cfg.channels_last_teacher,
            device=device,
        )
    check_student(model, cfg.distillation_type, teacher)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)

    sampler_train = build_sampler(
        train_set,
        True,
        repeated_aug=cfg.repeated_aug,
        num_repeats=cfg.num_repeats,
        distributed=True,  # a seeded DistributedSampler also in one process: set_epoch is exact
        num_replicas=env.world_size,
        rank=env.rank,
        seed=cfg.seed,
    )
    sampler_val = build_sampler(
        val_set,
        False,
        distributed=env.distributed and cfg.dist_eval,
        num_replicas=env.world_size,
        rank=env.rank,
    )
    loader_train = _loader(train_set, sampler_train, cfg, device, train=True)
    loader_val = _loader(val_set, sampler_val, cfg, device, train=False)
    if len(loader_train) == 0:
        raise ValueError(
            f"The training set has {len(train_set)} images, fewer than one batch of "
            f"{cfg.batch_size}; lower --batch-size."
        )

    mixup_fn = build_mixup_from_config(cfg, num_classes)
    criterion = DistillationLoss(
        _base_criterion(cfg, mixup_fn),
        teacher,
        cfg.distillation_type,
        alpha=cfg.distillation_alpha,
        tau=cfg.distillation_tau,
        kl_reduction=cfg.kl_reduction,
    )
    optimizer = build_optimizer(cfg, model, world_size=env.world_size)
    scheduler = build_scheduler(cfg, optimizer, len(loader_train))
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    ema = build_ema(
        model,
        cfg.model_ema_decay if cfg.model_ema else None,
        device="cpu" if cfg.model_ema_force_cpu else None,
    )
    train_model: nn.Module = model
    if cfg.compile:
        train_model = torch.compile(train_model)
    if env.distributed:
        train_model = wrap_ddp(train_model, device, cfg.distillation_type)

    # resume
    start_epoch, num_updates, skip, best_acc1 = 0, 0, 0, 0.0
    history: list[dict[str, Any]] = []
    resume = cfg.resume
    if not resume and cfg.auto_resume and cfg.output_dir:
        candidate = Path(cfg.output_dir) / LAST
        resume = str(candidate) if candidate.is_file() else ""
    if resume:
        ck = safe_torch_load(resume, map_location="cpu")
        if not isinstance(ck, dict) or "optimizer" not in ck:
            raise CheckpointError(
                f"--resume {resume!r} is not a training checkpoint of `deit train` (no optimizer "
                "state); use --finetune to start from weights."
            )
        if ck.get("model_name") != cfg.model:
            raise CheckpointError(
                f"--resume {resume!r} holds a {ck.get('model_name')} but --model is {cfg.model}."
            )
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck.get("scheduler"):
            scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("model_ema") is not None:
            ema.module.load_state_dict(ck["model_ema"])
        start_epoch, num_updates = int(ck["epoch"]), int(ck["step"])
        skip = int(ck.get("batches_done", 0))
        best_acc1 = float(ck.get("best_acc1", 0.0))
        history = list(ck.get("history", []))
        if ck.get("rng") and env.world_size == ck.get("world_size", 1):
            _set_rng_state(ck["rng"][env.rank] if isinstance(ck["rng"], list) else ck["rng"])
        if scheduler is not None:
            if cfg.sched_per_step:
                scheduler.step_update(num_updates)
            else:
                scheduler.step(start_epoch)
        if env.is_main:
            print(
                f"Resumed from {resume}: epoch {start_epoch}, step {num_updates}.", file=sys.stderr
            )

    def checkpoint(epoch: int, batches_done: int, name: str) -> None:
        rng = _rng_state()
        if env.distributed:  # each rank's RNG, so every process resumes exactly
            gathered: list[Any] = [None] * env.world_size
            dist.all_gather_object(gathered, rng)
            rng = gathered
        if out is None:
            return
        state = {
            "model": model.state_dict(),
            "model_name": cfg.model,
            "num_classes": num_classes,
            "img_size": cfg.input_size,
            "in_chans": 3,
            "class_names": class_names,
            "mean": list(info.mean),
            "std": list(info.std),
            "crop_pct": cfg.eval_crop_ratio,
            "data_set": cfg.data_set,
            "config": cfg.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "model_ema": ema.module.state_dict() if ema is not None else None,
            "epoch": epoch,
            "step": num_updates,
            "batches_done": batches_done,
            "best_acc1": best_acc1,
            "history": history,
            "rng": rng,
            "world_size": env.world_size,
            "n_parameters": n_parameters,
        }
        atomic_save(state, out / name)

    writer = None
    if out is not None:
        save_run_config(cfg, out)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))

    show = progress and env.is_main
    if cfg.eval:
        stats = evaluate(train_model, loader_val, device, teacher=teacher, precision=precision)
        if env.is_main:
            print(json.dumps({f"test_{k}": v for k, v in stats.items()}))
        return {"history": history, "final": stats, "status": "evaluated", "output_dir": out}

    stop = _StopFlag(device)
    stop.install()
    status = "completed"
    stats: dict[str, float] = {}
    try:
        last_epoch = cfg.epochs
        if max_epochs_this_run is not None:
            last_epoch = min(cfg.epochs, start_epoch + max_epochs_this_run)
        for epoch in range(start_epoch, last_epoch):
            if hasattr(sampler_train, "set_epoch"):
                sampler_train.set_epoch(epoch)
            if scheduler is not None and not cfg.sched_per_step:
                scheduler.step(epoch)
            t0 = time.time()
            bar = _progress(len(loader_train) - skip, f"epoch {epoch + 1}/{cfg.epochs}", show)
            try:
                train_stats = train_one_epoch(
                    train_model,
                    criterion,
                    loader_train,
                    optimizer,
                    device,
                    epoch,
                    num_updates=num_updates,
                    scheduler=scheduler,
                    sched_per_step=cfg.sched_per_step,
                    mixup_fn=mixup_fn,
                    precision=precision,
                    scaler=scaler,
                    clip_grad=cfg.clip_grad,
                    model_ema=ema,
                    progress=bar,
                    should_stop=stop,
                    skip_batches=skip,
                )
            finally:
                if bar is not None:
                    bar.close()
            num_updates = int(train_stats["num_updates"])
            if not train_stats["completed"]:
                checkpoint(epoch, skip + int(train_stats["steps"]), LAST)
                status = "stopped"
                if env.is_main:
                    print(
                        f"Stopped by a signal at epoch {epoch}, update {num_updates}; checkpoint "
                        f"written, continue with --auto-resume.",
                        file=sys.stderr,
                    )
                break
            skip = 0
            due = cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0
            if not (due or epoch + 1 == cfg.epochs):
                # not evaluated this epoch: train statistics only, the best checkpoint is kept
                history.append(_train_log(train_stats, epoch, n_parameters, t0))
                checkpoint(epoch + 1, 0, LAST)
                if env.is_main:
                    _write_log(out, writer, history[-1])
                    print(
                        f"epoch {epoch + 1}/{cfg.epochs}: loss {train_stats['loss']:.4f}, "
                        f"{train_stats['images_per_s']:.1f} img/s",
                        file=sys.stderr,
                    )
                continue
            stats = evaluate(train_model, loader_val, device, teacher=None, precision=precision)
            log = {
                **_train_log(train_stats, epoch, n_parameters, t0),
                **{f"test_{k}": v for k, v in stats.items()},
            }
            if ema is not None:
                ema_stats = evaluate(ema.module, loader_val, device, precision=precision)
                log["test_ema_acc1"] = ema_stats["acc1"]
            new_best = stats["acc1"] > best_acc1
            best_acc1 = max(best_acc1, stats["acc1"])
            log["best_acc1"] = best_acc1
            history.append(log)
            checkpoint(epoch + 1, 0, LAST)
            if new_best:
                checkpoint(epoch + 1, 0, BEST)
            if env.is_main:
                _write_log(out, writer, log)
                print(
                    f"epoch {epoch + 1}/{cfg.epochs}: loss {train_stats['loss']:.4f}, "
                    f"test acc1 {stats['acc1']:.2f}% (best {best_acc1:.2f}%), "
                    f"{train_stats['images_per_s']:.1f} img/s",
                    file=sys.stderr,
                )
        else:
            if last_epoch < cfg.epochs:
                status = "paused"
    finally:
        stop.restore()
        if writer is not None:
            writer.close()
    return {
        "history": history,
        "best_acc1": best_acc1,
        "final": stats,
        "output_dir": out,
        "status": status,
        "n_parameters": n_parameters,
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
