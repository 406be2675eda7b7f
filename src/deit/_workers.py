"""Data-loader workers that leave signals to their run and never outlive it.

A leaf (python and torch only) shared by the run's loaders (:mod:`deit.train.data`),
``deit eval``'s (:mod:`deit.evaluate`) and the demo's process pool (:mod:`deit.demo.study`).

A cluster scheduler (Slurm's ``scancel``, its time limit), ``timeout`` and a closed terminal
signal every process of a job, loader workers included. PyTorch's worker exits quietly only when
its own parent sends SIGTERM; from anyone else the signal kills it, the run's process then raises
"DataLoader worker ... is killed by signal" at whatever line it is on, and the clean stop (a
checkpoint at the current step) never happens. :class:`LoaderWorkerInit` leaves SIGINT, SIGHUP
and a SIGTERM from anyone but the parent to the parent, which stops the run and then shuts its
workers down; a SIGTERM from the parent (its shutdown of a stuck worker) still ends the worker.
On Linux a worker is also killed by the kernel the moment its parent dies (``PR_SET_PDEATHSIG``),
so a ``kill -9`` of the run leaves no worker behind.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import threading
from collections.abc import Callable

__all__ = [
    "LoaderWorkerError",
    "LoaderWorkerInit",
    "die_with_parent",
    "loader_exit_codes",
    "worker_death",
]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class LoaderWorkerInit:
    """A loader's ``worker_init_fn``: the worker ignores SIGINT and SIGHUP, takes SIGTERM from
    its parent only (it then exits at once, as PyTorch's own handler does), dies with its parent
    (Linux), then runs ``then(worker_id)`` (e.g. :func:`deit._rng.seed_worker`).

    The parent is the process that started the worker (the one iterating the loader, wherever
    the loader was built). Picklable, for the ``spawn`` start method.
    """

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        parent = os.getppid()
        die_with_parent(parent)
        _leave_signals_to_parent(parent)
        if self.then is not None:
            self.then(worker_id)


def die_with_parent(parent: int) -> None:
    """Ask Linux for SIGKILL when the parent dies; exit now if it died meanwhile."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: PyTorch's watchdog polls the parent
            pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


def _leave_signals_to_parent(parent: int) -> None:
    """SIGINT and SIGHUP ignored; SIGTERM blocked in every thread and read by one that exits
    only when the parent sent it (sender pids are not visible to Python signal handlers)."""
    for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # no sender pid here: keep PyTorch's handler
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit
    threading.Thread(
        target=_sigterm_from_parent_only, args=(parent,), name="deit-sigterm", daemon=True
    ).start()


def _sigterm_from_parent_only(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(0)


class LoaderWorkerError(RuntimeError):
    """A data-loader worker died (killed by a signal, e.g. the kernel's out-of-memory killer,
    or exited); the message is one sentence naming the worker and the signal."""


_DEATH = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) "
    r"(?:is killed by signal: ([^.]+)|exited unexpectedly(?: with exit code (-?\d+))?)"
)


def worker_death(
    error: BaseException, exit_codes: dict[int, int | None] | None = None
) -> str | None:
    """For PyTorch's error about a dead loader worker, one clause naming it, e.g. ``"the
    data-loader worker (pid 123) was killed by signal SIGKILL (Killed; the kernel's
    out-of-memory killer sends it)"``; ``None`` for any other error.

    Args:
        error: what the loader raised.
        exit_codes: the workers' exit codes by pid where known (a negative code: killed by that
            signal); PyTorch's message names the signal only when it saw the death first.
    """
    match = _DEATH.search(str(error)) if isinstance(error, RuntimeError) else None
    if match is None:
        return None
    pids = [int(p) for p in match.group(1).replace(" ", "").split(",") if p]
    signame, code = match.group(2), match.group(3)
    who = f"the data-loader worker (pid {', '.join(map(str, pids))})"
    codes = [(exit_codes or {}).get(p) for p in pids]
    number = next((-c for c in codes if c is not None and c < 0), None)
    if signame is not None:
        number = next((s for s in signal.Signals if signal.strsignal(s) == signame.strip()), None)
    if number is None:
        return f"{who} exited unexpectedly" + (f" with exit code {code}" if code else "")
    sig = signal.Signals(number)
    why = "; the kernel's out-of-memory killer sends it" if sig == signal.SIGKILL else ""
    return f"{who} was killed by signal {sig.name} ({signal.strsignal(sig)}{why})"


def loader_exit_codes(*loaders: object) -> dict[int, int | None]:
    """The exit codes by pid of the workers of ``loaders`` (``torch.utils.data.DataLoader``s)
    that have started some; empty where PyTorch keeps them elsewhere."""
    codes: dict[int, int | None] = {}
    for loader in loaders:
        for w in getattr(getattr(loader, "_iterator", None), "_workers", None) or ():
            if getattr(w, "pid", None) is not None:
                codes[w.pid] = w.exitcode
    return codes
