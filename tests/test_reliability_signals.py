"""A run's process tree under the signals a user, a terminal or a cluster sends (issue 32).

Each test starts ``deit train --num_workers 2`` as the leader of its own process group (as
``setsid``, Slurm and ``timeout`` do), acts on it once training has begun, and checks the exit
status, the checkpoint and that no process of the group is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deit.checkpoints import RunCheckpoint
from deit.cli import main
from deit.train import LAST
from deit.train.lock import LOCK_NAME

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads process groups from /proc"
)

DEIT = str(Path(sys.executable).parent / "deit")
STEPS = 24  # batches of 4 per epoch


def _argv(out: Path, workers: int = 2, epochs: int = 1) -> list[str]:
    """A distilled-free pico run on 48 digits: RandAugment, erasing, Mixup/CutMix, drop-path."""
    return [
        DEIT, "train", "--model", "deit_pico_patch7_28", "--input-size", "28",
        "--data-set", "digits", "--train-subset", str(4 * STEPS), "--batch-size", "4",
        "--epochs", str(epochs), "--warmup-epochs", "0", "--num_workers", str(workers),
        "--device", "cpu", "--no-model-ema", "--no-repeated-aug", "--eval-interval", "0",
        "--aa", "rand-m9-mstd0.5-inc1", "--no-progress", "--output_dir", str(out),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    # one compute thread: the workers get a core, and every run computes alike
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _new_session() -> None:  # as `setsid`: its own group; the stop signals at their defaults
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _start(argv: list[str], err: Path) -> subprocess.Popen:
    with open(err, "w") as f:
        return subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=f, env=_env(), preexec_fn=_new_session
        )


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from the state on (state, ppid, pgrp, ...); ``None`` when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _live(pids: list[int]) -> list[int]:
    return [p for p in pids if (s := _stat(p)) is not None and s[0] != "Z"]


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    return [p for p in _live(pids) if (s := _stat(p)) is not None and int(s[2]) == pgid]


def _children(pid: int) -> list[int]:
    return [p for p in _group(pid) if (s := _stat(p)) is not None and int(s[1]) == pid]


def _wait_for_workers(proc: subprocess.Popen, err: Path, after: Path | None = None) -> list[int]:
    """The run's two loader workers, once running (each has a second thread: its SIGTERM
    reader, or the queue feeder of a first batch), and ``after`` written when given."""
    end = time.time() + 180
    while time.time() < end:
        assert proc.poll() is None, err.read_text()[-3000:]
        kids = _children(proc.pid)
        ready = len(kids) >= 2 and all(len(os.listdir(f"/proc/{k}/task")) > 1 for k in kids)
        if ready and (after is None or after.is_file()):
            return kids
        time.sleep(0.05)
    raise AssertionError(f"the run's loader workers never started: {err.read_text()[-3000:]}")


def _gone(pids_or_group: int | list[int], within: float) -> list[int]:
    """What is still alive of a group (an int) or of some pids after ``within`` seconds."""
    end = time.time() + within
    while True:
        if isinstance(pids_or_group, int):
            left = _group(pids_or_group)
        else:
            left = _live(pids_or_group)
        if not left or time.time() > end:
            return left
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, err: Path, timeout: float = 120) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return rc, err.read_text()


@pytest.fixture
def cleanup():
    """Process groups started by a test, killed whatever the test's outcome."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        for pid in _group(pgid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signal_to_the_whole_group_stops_cleanly_and_resumes_exactly(sig, tmp_path, cleanup):
    """SIGTERM (Slurm, ``timeout``) or SIGHUP (a closed terminal) to every process of the run,
    loader workers included: exit 128 + signal, a mid-epoch checkpoint, the lock released, no
    process left; ``--auto-resume`` then gives an uninterrupted run's weights bit for bit."""
    out, err = tmp_path / "run", tmp_path / "err.txt"
    proc = _start(_argv(out), err)
    cleanup.append(proc.pid)
    _wait_for_workers(proc, err)  # training has begun
    os.killpg(proc.pid, sig)
    rc, text = _finish(proc, err)
    assert rc == 128 + sig, text[-3000:]
    assert "Stopped by a signal during epoch 1/1" in text and "Traceback" not in text, text
    assert _gone(proc.pid, 10) == []
    assert not (out / LOCK_NAME).exists()
    ck = RunCheckpoint.load(out / LAST)
    assert ck.epoch == 0 and 0 < ck.batches_done < STEPS, (ck.epoch, ck.batches_done)
    if sig != signal.SIGTERM:
        return
    done = subprocess.run(
        [*_argv(out), "--auto-resume"], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs above (OMP_NUM_THREADS=1): the same kernels
    try:
        assert main([*_argv(tmp_path / "whole", workers=0)[1:]]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = RunCheckpoint.load(out / LAST), RunCheckpoint.load(tmp_path / "whole" / LAST)
    assert a.step == b.step == STEPS
    assert all(torch.equal(a.model[k], b.model[k]) for k in b.model)


def test_kill_9_of_the_run_takes_its_loader_workers_with_it(tmp_path, cleanup):
    """``kill -9`` of the training process: its workers notice at once (the kernel kills them
    with it), not after PyTorch's 5-second watchdog or never (a feeder thread stuck on a full
    pipe)."""
    out, err = tmp_path / "run", tmp_path / "err.txt"
    proc = _start(_argv(out, epochs=5), err)
    cleanup.append(proc.pid)
    workers = _wait_for_workers(proc, err)
    os.kill(proc.pid, signal.SIGKILL)
    rc, _ = _finish(proc, err)
    assert rc == -signal.SIGKILL
    assert _gone(workers, 3) == []


def test_a_killed_loader_worker_is_one_sentence_naming_the_checkpoint(tmp_path, cleanup):
    """A worker killed by the kernel (the out-of-memory killer's SIGKILL): one line naming the
    worker, the signal and the checkpoint kept, exit 1, no traceback, no process left."""
    out, err = tmp_path / "run", tmp_path / "err.txt"
    proc = _start(_argv(out, epochs=3), err)
    cleanup.append(proc.pid)
    workers = _wait_for_workers(proc, err, after=out / LAST)  # epoch 1 saved
    os.kill(workers[0], signal.SIGKILL)
    rc, text = _finish(proc, err)
    last = text.strip().splitlines()[-1]
    assert rc == 1 and "Traceback" not in text, text[-3000:]
    assert last == (
        f"deit train: error: The run stopped: the data-loader worker (pid {workers[0]}) was "
        "killed by signal SIGKILL (Killed; the kernel's out-of-memory killer sends it); "
        f"{out / LAST} is kept; continue with --auto-resume (with fewer --num_workers or a "
        "smaller --batch-size if memory ran out)."
    )
    assert _gone(proc.pid, 10) == []
    assert RunCheckpoint.load(out / LAST).epoch >= 1


def test_a_worker_takes_sigterm_from_its_parent_only():
    """A loader worker ignores a SIGTERM from any other process (Slurm, ``timeout``, a group
    kill: its run stops it) and exits at once, quietly, on its parent's (PyTorch's shutdown of a
    stuck worker, multiprocessing's at exit), so that no exit waits for it."""
    from torch.utils.data import DataLoader

    from deit._workers import LoaderWorkerInit

    loader = DataLoader(range(8), batch_size=2, num_workers=1, worker_init_fn=LoaderWorkerInit())
    batches = iter(loader)
    assert next(batches).tolist() == [0, 1]
    worker = batches._workers[0]
    try:
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # another sender
        time.sleep(0.5)
        assert worker.is_alive() and next(batches).tolist() == [2, 3]
        os.kill(worker.pid, signal.SIGTERM)  # the parent's
        worker.join(timeout=10)
        assert worker.exitcode == 0
    finally:
        del batches


def test_worker_deaths_are_named_with_their_signal():
    from deit._workers import worker_death

    killed = RuntimeError("DataLoader worker (pid 41) is killed by signal: Killed. ")
    assert worker_death(killed) == (
        "the data-loader worker (pid 41) was killed by signal SIGKILL (Killed; the kernel's "
        "out-of-memory killer sends it)"
    )
    gone = RuntimeError("DataLoader worker (pid(s) 41, 42) exited unexpectedly")
    assert worker_death(gone, {41: 0, 42: -signal.SIGSEGV}) == (
        "the data-loader worker (pid 41, 42) was killed by signal SIGSEGV (Segmentation fault)"
    )
    assert worker_death(gone) == "the data-loader worker (pid 41, 42) exited unexpectedly"
    assert worker_death(RuntimeError("CUDA out of memory")) is None
    assert worker_death(ValueError(str(killed))) is None
