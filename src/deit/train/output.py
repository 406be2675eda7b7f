"""A run's output folder: its checks, its lock (:mod:`deit.train.lock`), ``config.yaml``,
``log.txt`` (one JSON line per epoch, the official keys) and TensorBoard scalars.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._notes import print_note
from .._write import atomic_write_bytes
from ..config import Config, save_run_config
from .distributed import DistEnv
from .lock import OutputLock
from .state import BEST, LAST, RunState

if TYPE_CHECKING:  # the tensorboard extra is optional
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["RUN_FILES", "lock_folder"]

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
    function (:func:`lock_folder` creates it for its lock, :func:`_open_output` writes).

    Raises:
        ValueError: the path is a file or cannot be created/written; it holds another run and
            neither ``--resume``/``--auto-resume`` nor ``--overwrite`` says what to do with it.
    """
    out = _check_output_path(cfg)
    if out is None:
        return None
    found = [name for name in (LAST, "log.txt") if (out / name).exists()]
    continues = (cfg.auto_resume and (out / LAST).is_file()) or (
        cfg.resume and Path(cfg.resume).resolve() in {(out / n).resolve() for n in (LAST, BEST)}
    )  # this folder's own run; a resume from elsewhere must not write over another run
    if found and not (cfg.overwrite or continues or cfg.eval):
        raise ValueError(
            f"The output folder {cfg.output_dir!r} already holds a run ({', '.join(found)}); "
            "continue it with --auto-resume, or pass --overwrite to replace it, or choose "
            "another --output_dir."
        )
    return out


def lock_folder(
    folder: str | Path,
    env: DistEnv,
    check: Callable[[], object] = lambda: None,
    user: str = "run",
    flag: str = "--output_dir",
) -> OutputLock | None:
    """Lock ``folder`` (created for its lock file) for this process: rank 0 calls ``check``
    (raising the folder's problem) and takes the lock (the other ranks get ``None``); every
    rank learns the outcome and stops with the same sentence. ``user`` and ``flag`` word the refusal
    (:meth:`deit.train.lock.OutputLock.acquire`).

    Raises:
        ValueError / OSError: what ``check`` raises, or another live process holds the lock
            (:class:`deit.train.lock.OutputFolderBusyError`, naming its pid and host).
    """
    lock, error = None, None
    if env.is_main:
        try:
            check()
            lock = OutputLock.acquire(folder, user, flag)
        except (ValueError, OSError) as e:
            error = e
    if env.distributed:  # the other ranks would otherwise wait for rank 0 forever
        message = env.from_rank_0(str(error) if error else "")
        if message and error is None:
            error = ValueError(message)
    if error is not None:
        raise error
    if lock is not None and lock.note:
        print_note(lock.note)
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
    try:  # the tensorboard extra is optional: log.txt holds the same scalars
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print_note(
            "TensorBoard logging is off (log.txt has the same scalars); "
            "pip install 'deit[tensorboard]' to turn it on."
        )
        return
    state.writer = SummaryWriter(str(state.out / "tensorboard"))


def _write_log(
    out: Path | None, writer: SummaryWriter | None, history: list[dict[str, Any]]
) -> None:
    """``log.txt``: one line per epoch of ``history`` (the run's, as its checkpoint holds it, so
    a run resumed from an earlier checkpoint logs each epoch once); TensorBoard: the last."""
    if out is None:
        return
    lines = "".join(json.dumps(log) + "\n" for log in history)
    # rewritten whole (a few kB): a full disk never cuts a line short
    atomic_write_bytes(out / "log.txt", lines.encode())
    log = history[-1]
    if writer is not None:
        for k, v in log.items():
            if k != "epoch" and isinstance(v, int | float):
                writer.add_scalar(k.replace("_", "/", 1), v, log["epoch"])
        writer.flush()
