"""The epoch loop: :func:`deit.engine.train_one_epoch` then :func:`deit.engine.evaluate` when
due, logs and checkpoints; a SIGTERM/SIGINT/SIGHUP stops it after the current step with a
mid-epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time

from torch import nn

from .._workers import LoaderWorkerError, loader_exit_codes, worker_death
from ..engine import STAT_NAMES, NonFiniteLossError, evaluate, train_one_epoch
from ..teacher.frozen import Teacher
from .checkpointing import save
from .distributed import _StopFlag
from .memory import StepOutOfMemoryError, is_out_of_memory, out_of_memory_error
from .output import _write_log
from .state import BEST, LAST, RunState

__all__ = ["fit"]


def _evaluate(
    state: RunState, model: nn.Module, teacher: Teacher | None = None
) -> dict[str, float]:
    return evaluate(
        model,
        state.data.loader_val,
        state.device,
        teacher=teacher,
        precision=state.precision,
        head=state.cfg.eval_head,
        sum_across_processes=state.cfg.dist_eval,
    )


def _train_epoch(state: RunState, epoch: int, show: bool, stop: _StopFlag) -> dict[str, float]:
    """One epoch of :func:`deit.engine.train_one_epoch` with the run's task and step options."""
    cfg, done, step = state.cfg, state.progress, state.step
    # resuming mid-epoch, the sampler starts after the batches already trained
    state.data.sampler_train.set_epoch(epoch, done.skip_batches * cfg.batch_size)
    if step.scheduler is not None and not cfg.sched_per_step:
        step.scheduler.step(epoch)
    loader, bar = state.data.loader_train, None
    if show:
        from tqdm.auto import tqdm

        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        bar = tqdm(total=len(loader), desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
    try:
        stats = train_one_epoch(
            state.student.task,
            loader,
            state.optimizer,
            state.device,
            epoch,
            step,
            num_updates=done.num_updates,
            first_batch=done.skip_batches,
            progress=bar,
            should_stop=stop,
        )
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise out_of_memory_error(
            state.student.model,
            cfg.batch_size,
            cfg.input_size,
            state.device,
            epoch + 1,
            state.precision.name,
            step.model_ema is not None,
        ) from None
    finally:
        if bar is not None:
            with contextlib.suppress(OSError):  # a terminal closed (SIGHUP) fails every write
                bar.close()
    done.num_updates = int(stats["num_updates"])
    return stats


def _ema_on_run_device(state: RunState) -> bool:
    """Whether the run has an EMA on its own device (``--model-ema-force-cpu`` keeps it on the
    CPU: its evaluation would meet the device's images with CPU weights)."""
    if state.step.model_ema is None:
        return False
    weights = next(state.step.model_ema.module.parameters(), None)
    return weights is None or weights.device.type == state.device.type


def _end_epoch(state: RunState, epoch: int, train_stats: dict[str, float], t0: float) -> None:
    """Evaluate when due (every ``eval_interval`` epochs and after the last), log, checkpoint."""
    cfg, done = state.cfg, state.progress
    log = {  # the official keys
        **{f"train_{k}": v for k, v in train_stats.items() if k != "completed"},
        "epoch": epoch,
        "n_parameters": state.student.n_parameters,
        "epoch_time_s": time.time() - t0,
        "train_images": state.data.train_images,
    }
    due = cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0
    new_best = False
    if due or epoch + 1 == cfg.epochs:
        final = _evaluate(state, state.student.eval_model)
        ema = {}
        if _ema_on_run_device(state):  # an EMA forced to the CPU is not evaluated (timm)
            ema["test_ema_acc1"] = _evaluate(state, state.step.model_ema.module)["acc1"]
        # rank 0's figures on every rank: without --dist-eval each rank scored the whole set
        # (other kernels may score it otherwise), and saving a new best is a collective
        done.final, ema = state.env.from_rank_0((final, ema))
        log.update({f"test_{k}": v for k, v in done.final.items()})
        log.update(ema)
        new_best = done.final["acc1"] > done.best_acc1
        done.best_acc1 = max(done.best_acc1, done.final["acc1"])
        log["best_acc1"] = done.best_acc1
    done.history.append(log)
    save(state, epoch + 1, 0, LAST)
    if new_best:
        save(state, epoch + 1, 0, BEST)
    if state.env.is_main:
        _write_log(state.out, state.writer, done.history)
        acc = ""
        if "test_acc1" in log:
            acc = f"test acc1 {log['test_acc1']:.2f}% (best {done.best_acc1:.2f}%), "
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {train_stats['loss']:.4f}, {acc}"
            f"{train_stats['images_per_s']:.1f} img/s",
            file=sys.stderr,
        )


def fit(state: RunState, max_epochs_this_run: int | None = None, progress: bool = True) -> None:
    """The epoch loop: train, evaluate when due, log and checkpoint; a SIGTERM/SIGINT/SIGHUP
    stops it after the current step with a mid-epoch checkpoint (``status`` 'stopped').

    Raises:
        NonFiniteLossError: the loss became NaN/inf (on any rank: all stop at that step).
        deit._workers.LoaderWorkerError: a data-loader worker died (one sentence naming it, the
            signal and the checkpoint kept).
    """
    cfg = state.cfg
    last_epoch = cfg.epochs
    if max_epochs_this_run is not None:
        last_epoch = min(cfg.epochs, state.progress.start_epoch + max_epochs_this_run)
    stop = _StopFlag(state.device, cfg.log_interval)
    stop.install()
    try:
        _epochs(state, last_epoch, progress, stop)
    except (NonFiniteLossError, StepOutOfMemoryError) as e:
        raise type(e)(f"{str(e).rstrip('.')}; the run stopped and {_kept(state)}.") from None
    except RuntimeError as e:
        dead = worker_death(e, loader_exit_codes(state.data.loader_train, state.data.loader_val))
        if dead is None:
            raise
        raise LoaderWorkerError(
            f"The run stopped: {dead}; {_kept(state)}; continue with --auto-resume "
            "(with fewer --num_workers or a smaller --batch-size if memory ran out)."
        ) from None
    finally:
        stop.restore()


def _kept(state: RunState) -> str:
    """``<checkpoint> is kept``, or that none was written."""
    last = state.out / LAST if state.out is not None else None
    return f"{last} is kept" if last is not None and last.is_file() else "no checkpoint was written"


def _merge_stats(before: dict[str, float] | None, after: dict[str, float]) -> dict[str, float]:
    """One epoch's statistics from the part trained before a stop and the part after it:
    step-weighted means, summed steps, images/s over both parts' time, the last lr."""
    if not before:
        return after
    n0, n1 = before["steps"], after["steps"]
    merged = dict(after, steps=n0 + n1)
    for key in STAT_NAMES.values():
        merged[key] = (before[key] * n0 + after[key] * n1) / max(n0 + n1, 1.0)
    seconds = n0 / max(before["images_per_s"], 1e-9) + n1 / max(after["images_per_s"], 1e-9)
    merged["images_per_s"] = (n0 + n1) / max(seconds, 1e-9)  # equal batches: images ~ steps
    return merged


def _epochs(state: RunState, last_epoch: int, progress: bool, stop: _StopFlag) -> None:
    """Epochs ``start_epoch`` to ``last_epoch - 1`` (counted from 1 in messages, from 0 in
    ``log.txt`` as the official code does); a stop signal saves mid-epoch."""
    cfg, env, done = state.cfg, state.env, state.progress
    show = progress and env.is_main
    for epoch in range(done.start_epoch, last_epoch):
        t0 = time.time()
        part = _train_epoch(state, epoch, show, stop)
        stats = _merge_stats(done.partial_stats, part)
        done.partial_stats = None
        if not stats["completed"]:
            batches = done.skip_batches + int(part["steps"])
            save(state, epoch, batches, LAST, epoch_stats=stats)
            done.status, done.stop_signal = "stopped", stop.signum or signal.SIGTERM
            if env.is_main:
                with contextlib.suppress(OSError):  # stderr gone (a closed terminal): stop cleanly
                    print(
                        f"Stopped by a signal during epoch {epoch + 1}/{cfg.epochs} after update "
                        f"{done.num_updates}; checkpoint written, continue with --auto-resume.",
                        file=sys.stderr,
                    )
            return
        done.skip_batches = 0
        _end_epoch(state, epoch, stats, t0)
    if last_epoch < cfg.epochs:
        done.status = "paused"
