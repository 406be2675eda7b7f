"""A whole training run (official ``main.py``'s role): :func:`run`.

:func:`run` takes a :class:`deit.config.Config` and builds data, student, teacher, loss,
optimiser, schedule and EMA from the library's builders, checks every input before the first
step, then alternates :func:`deit.engine.train_one_epoch` and :func:`deit.engine.evaluate`,
writing ``checkpoint.pth`` (last) and ``best_checkpoint.pth`` atomically, ``log.txt`` (one JSON
line per epoch, the official keys), TensorBoard scalars and ``config.yaml``. While it trains, the
output folder is locked (:mod:`deit.train.lock`): a second run into it is refused.
"""

from __future__ import annotations

from typing import Any

import torch

from .._json import dumps
from .._notes import print_note
from .._rng import seed_everything
from ..config import Config
from ..precision import resolve_precision
from .checkpointing import resume
from .data import build_data, resolve_config
from .distributed import DistEnv, init_distributed
from .lock import OutputLock
from .loop import _evaluate, fit
from .memory import check_step_memory
from .model import build_student
from .optimisation import build_optimisation
from .output import _check_output_dir, _check_output_path, _open_output, lock_folder
from .state import RunState

__all__ = ["run"]


def run(
    cfg: Config,
    *,
    max_epochs_this_run: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or with ``cfg.eval`` only evaluate) as ``cfg`` says: build the run
    (:func:`_build`), :func:`resume`, :func:`fit`; see the module docstring.

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
    cfg = cfg.validate()
    env, device = init_distributed(cfg.device)
    lock = None  # a training run (not --eval) locks its output folder: a second run is refused
    if cfg.output_dir and not cfg.eval:
        lock = lock_folder(cfg.output_dir, env, lambda: _check_output_path(cfg))
    try:  # whatever fails before the run starts leaves neither the lock nor a folder it made
        state = _build(cfg, env, device, lock)
        resume(state)
        progress_ = state.progress
        if cfg.eval:
            progress_.final = _evaluate(state, state.student.eval_model, state.student.teacher)
            progress_.status = "evaluated"
            if env.is_main:
                print(dumps({f"test_{k}": v for k, v in progress_.final.items()}))
        else:
            _train(state, max_epochs_this_run, progress)
    finally:  # a folder created for the lock and still empty (the run failed before it
        if lock is not None:  # wrote anything) is removed
            lock.release(remove_created=True)
    return {
        "history": progress_.history,
        "best_acc1": progress_.best_acc1,
        "final": progress_.final,
        "output_dir": state.out,
        "status": progress_.status,
        "stop_signal": int(progress_.stop_signal),
        "n_parameters": state.student.n_parameters,
    }


def _build(cfg: Config, env: DistEnv, device: torch.device, lock: OutputLock | None) -> RunState:
    """Check the output folder and the student's name, then build the run, each part once: the
    resolved configuration, the data, the student with its task, the optimisation. The seed is
    set here alone: the student's initial weights from ``cfg.seed`` (the same on every rank),
    then every RNG from ``cfg.seed + rank`` for training's draws."""
    checked = _check_output_dir(cfg)  # on every rank: all stop, none waits for the others
    _check_student_name(cfg)
    _check_teacher_given(cfg)
    cfg = resolve_config(cfg, device, say=env.is_main)
    data = build_data(cfg, env, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = build_student(cfg, data, env, device)
    precision = resolve_precision(cfg.amp, device)
    optimizer, step = build_optimisation(
        cfg, student.model, data.loader_train, env, device, precision, data.mixup_fn
    )
    seed_everything(cfg.seed + env.rank)  # training's draws depend on the config only
    out = checked if env.is_main else None
    return RunState(cfg, env, device, precision, out, lock, data, student, optimizer, step)


def _train(state: RunState, max_epochs_this_run: int | None, progress: bool) -> None:
    """Open the output folder, note what the run should know, and :func:`fit`."""
    _open_output(state)
    cfg = state.cfg
    if state.env.is_main:  # after every input is checked: a run that cannot start gets no note
        if cfg.warmup_epochs >= cfg.epochs:
            print_note(
                f"the warm-up ({cfg.warmup_epochs} of {cfg.epochs} epochs) is not shorter "
                "than the run, so the learning rate never reaches --lr; lower --warmup-epochs."
            )
        ema, amp = state.step.model_ema is not None, state.precision.name
        check_step_memory(state.student.model, cfg.batch_size, state.device, amp, ema)
    try:  # prints its error alone
        fit(state, max_epochs_this_run, progress)
    finally:
        if state.writer is not None:
            state.writer.close()


def _check_student_name(cfg: Config) -> None:
    """A DeiT student without a distillation token asked to distil: refused by its name, before
    the data, the model or the teacher is built (other models: when built, by prepare_student)."""
    from ..distillation import not_distilled_message
    from ..models.registry import get_model_spec, is_deit_model

    name = cfg.model
    if cfg.distillation_type != "none" and is_deit_model(name):
        if not get_model_spec(name).distilled:
            raise ValueError(not_distilled_message(name, cfg.distillation_type))


def _check_teacher_given(cfg: Config) -> None:
    if cfg.distillation_type != "none" and not (cfg.teacher_path or cfg.teacher_labels):
        # the demo's student preset has its own teacher preset
        how = (
            "--preset demo_teacher"
            if cfg.teacher_model == "test_resnet"
            else "--model resnet18 ..."
        )
        raise ValueError(
            f"--distillation-type {cfg.distillation_type} needs a trained teacher: pass "
            f"--teacher-path with its weights (train one with `deit train {how}`) "
            "or --teacher-labels with a store of its labels."
        )
