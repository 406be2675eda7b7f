"""Saving a run (:func:`save`) and resuming it exactly (:func:`resume`)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .._notes import print_note
from .._rng import rng_state, set_rng_state
from ..checkpoints import CheckpointError, RunCheckpoint
from .state import BEST, LAST, RunState

__all__ = ["RESUME_DATA", "RESUME_FREE", "RESUME_SCHEDULE", "resume", "save"]


# Settings a checkpoint's run was shaped by. SCHEDULE ones may change on resume with
# --new-schedule (the schedule is rebuilt from the same epoch); DATA ones never (start a new run
# with --finetune instead).
RESUME_SCHEDULE = (
    "lr", "unscale_lr", "sched", "sched_per_step", "warmup_lr", "warmup_epochs", "min_lr",
    "decay_epochs", "decay_rate", "cooldown_epochs", "patience_epochs", "lr_noise",
    "lr_noise_pct", "lr_noise_std", "epochs", "batch_size", "seed", "repeated_aug",
    "num_repeats", "grad_accum_steps",
)  # fmt: skip
RESUME_DATA = ("data_set", "train_subset", "input_size", "opt", "distillation_type")


# Settings that change how a run is carried out, not what it computes.
RESUME_FREE = (
    "output_dir", "resume", "auto_resume", "overwrite", "new_schedule", "eval", "num_workers",
    "pin_mem", "device", "dist_eval", "eval_interval", "log_interval", "data_path",
    "teacher_path", "teacher_labels", "compile",
)  # fmt: skip


def _check_resume(state: RunState, ck: RunCheckpoint, path: str) -> bool:
    """Refuse a resume whose run-shaping settings differ from the checkpoint's, unless only
    schedule settings differ and ``--new-schedule`` accepts them. Returns whether the schedule
    is rebuilt (settings accepted).

    Raises:
        CheckpointError: a data / model setting differs, or a schedule setting without
            ``--new-schedule``.
    """
    saved = {**ck.config, "world_size": ck.world_size}
    now = {**state.cfg.to_dict(), "world_size": state.env.world_size}
    diff = {k: f"{k} {saved[k]!r} -> {now[k]!r}" for k in now if k in saved and saved[k] != now[k]}
    shaping = (*RESUME_DATA, *RESUME_SCHEDULE, "world_size")
    recipe = [d for k, d in diff.items() if k not in (*shaping, *RESUME_FREE)]
    if recipe and state.env.is_main:  # e.g. a stronger augmentation from here on: allowed
        print_note(
            f"resumed with other settings than the checkpoint's ({'; '.join(recipe)}); "
            "config.yaml records the new ones."
        )
    changed = [diff[k] for k in shaping if k in diff]
    if not changed:
        return False
    data = any(k in diff for k in RESUME_DATA)
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
        print_note(f"new schedule from epoch {ck.epoch + 1}: {'; '.join(changed)}.")
    return True


def _load_or_name_best(path: str) -> RunCheckpoint:
    """:meth:`RunCheckpoint.load`; a run's unreadable last checkpoint names the run's intact
    ``best_checkpoint.pth`` to continue from instead.

    Raises:
        CheckpointError: the file cannot be read (or is not a run checkpoint).
    """
    try:
        return RunCheckpoint.load(path)
    except CheckpointError as e:
        best = Path(path).with_name(BEST)
        if Path(path).name != LAST or "truncated or corrupt" not in str(e) or not best.is_file():
            raise
        try:
            epoch = RunCheckpoint.load(best).epoch
        except CheckpointError:
            raise e from None
        raise CheckpointError(
            f"The run's last checkpoint {path!r} is truncated or corrupt, but its {BEST} (after "
            f"epoch {epoch}) is intact: continue from it with --resume {str(best)!r}, or start "
            "the run again with --overwrite."
        ) from None


def resume(state: RunState) -> None:
    """Continue from ``--resume`` (or ``<output_dir>/checkpoint.pth`` with ``--auto-resume``):
    weights, optimiser, schedule, scaler, EMA, position in the run, history and every RNG, so
    that the continued run equals an uninterrupted one.

    Raises:
        CheckpointError: not a ``deit train`` checkpoint, one of another model, or one whose
            run-shaping settings differ (:func:`_check_resume`).
    """
    cfg, env = state.cfg, state.env
    path = cfg.resume
    last = Path(cfg.output_dir) / LAST if cfg.output_dir else None
    if not path and cfg.auto_resume and last is not None and last.is_file():
        path = str(last)
    if not path:
        return
    ck = _load_or_name_best(path)
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
    step, done = state.step, state.progress
    state.student.model.load_state_dict(ck.model)
    state.optimizer.load_state_dict(ck.optimizer)
    saved_scheduler = None if rebuilt else ck.scheduler
    for part, saved in ((step.scheduler, saved_scheduler), (step.scaler, ck.scaler)):
        if part is not None and saved:
            part.load_state_dict(saved)
    if step.model_ema is not None and ck.model_ema is not None:
        step.model_ema.module.load_state_dict(ck.model_ema)
    done.start_epoch, done.num_updates, done.skip_batches = ck.epoch, ck.step, ck.batches_done
    done.partial_stats = ck.epoch_stats if ck.batches_done else None
    done.best_acc1, done.history = ck.best_acc1, list(ck.history)
    if rebuilt:  # the new schedule starts at the epoch boundary, counted in its own steps
        if ck.batches_done and env.is_main:
            print_note(f"epoch {ck.epoch + 1} restarts from its beginning.")
        updates = math.ceil(len(state.data.loader_train) / cfg.grad_accum_steps)  # an epoch
        done.num_updates, done.skip_batches = ck.epoch * updates, 0
        done.partial_stats = None
    elif ck.rng and env.world_size == ck.world_size:
        set_rng_state(ck.rng[env.rank] if isinstance(ck.rng, list) else ck.rng)
    if step.scheduler is not None:
        if cfg.sched_per_step:
            step.scheduler.step_update(done.num_updates)
        else:
            step.scheduler.step(done.start_epoch)
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
    """Write a :class:`deit.checkpoints.RunCheckpoint` to ``<output_dir>/<name>`` (rank 0 only,
    atomically). Every rank must call it: each one's RNG state is gathered."""
    rng: Any = rng_state()
    if state.env.distributed:  # each rank's RNG, so every process resumes exactly
        gathered: list[Any] = [None] * state.env.world_size
        dist.all_gather_object(gathered, rng)
        rng = gathered
    if state.out is None:
        return
    if state.lock is not None and not state.lock.held():
        when = f" (found saving epoch {epoch + (batches_done > 0)})"
        raise state.lock.gone_error(when)
    cfg, data, step, done = state.cfg, state.data, state.step, state.progress
    RunCheckpoint(
        model=state.student.model.state_dict(),
        model_name=cfg.model,
        num_classes=data.num_classes,
        img_size=cfg.input_size,
        in_chans=3,
        class_names=data.class_names,
        mean=list(data.mean),
        std=list(data.std),
        crop_pct=cfg.eval_crop_ratio,
        data_set=cfg.data_set,
        config=cfg.to_dict(),
        optimizer=state.optimizer.state_dict(),
        scheduler=_state_dict(step.scheduler),
        scaler=_state_dict(step.scaler),
        model_ema=_state_dict(step.model_ema.module if step.model_ema is not None else None),
        epoch=epoch,
        step=done.num_updates,
        batches_done=batches_done,
        epoch_stats=epoch_stats,
        best_acc1=done.best_acc1,
        history=done.history,
        rng=rng,
        world_size=state.env.world_size,
        n_parameters=state.student.n_parameters,
    ).save(state.out / name)
