"""Where a run's process stands and how it stops: the process group (torchrun or SLURM:
:func:`init_distributed`), DistributedDataParallel around the student (:func:`wrap_ddp`), and
SIGTERM/SIGINT/SIGHUP as a clean stop.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.utils import unwrap_model
from torch import nn

from ..precision import resolve_device, set_cuda_backends

__all__ = ["STOP_SIGNALS", "DistEnv", "init_distributed", "wrap_ddp"]


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

    def from_rank_0(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object, broadcast; every rank must call
        this at the same point); ``value`` itself in one process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device_pref: str = "auto") -> tuple[DistEnv, torch.device]:
    """Join the process group described by torchrun's or SLURM's environment variables.

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
    under SLURM ``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID`` are used (with
    ``MASTER_ADDR``/``MASTER_PORT`` exported by the job script). Backend: NCCL on CUDA, gloo
    otherwise. The GPU: ``cuda:LOCAL_RANK`` under torchrun; under SLURM ``SLURM_LOCALID``
    modulo the visible GPUs (``cuda:0`` where a task sees one GPU). A CUDA device is made the
    current one (``torch.cuda.set_device``) in every process, one process on ``cuda:N`` too,
    and the cuDNN / TF32 policy applied (:func:`deit.precision.set_cuda_backends`).

    Returns:
        ``(env, device)``; a single process when neither launcher is present.

    Raises:
        ValueError: SLURM variables without ``MASTER_ADDR``/``MASTER_PORT``; a CUDA device asked
            where none exists.
    """
    env = os.environ
    gpu = None  # the GPU index among the visible ones; the local rank when None
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
        # with --gpus-per-task=1 (or a GPU bound per task) each task sees one GPU, cuda:0;
        # with the node's GPUs shared by its tasks, the local id picks one
        gpu = local % max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 0
    else:
        rank, world, local = 0, 1, 0
    device = resolve_device(device_pref, local if gpu is None else gpu)
    if device.type == "cuda":  # also one process on cuda:N: the pin-memory thread follows it
        torch.cuda.set_device(device)
        set_cuda_backends(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return DistEnv(rank, world, local, world > 1), device


def wrap_ddp(model: nn.Module, device: torch.device, distillation_type: str) -> nn.Module:
    """Wrap the student (only) in DistributedDataParallel.

    DDP looks for unused parameters (an extra traversal of the autograd graph every step) only
    where some are: a distilled model whose training output is the pair ``(cls_logits,
    dist_logits)`` trained with ``distillation_type='none'``, whose loss reads the class head
    alone. A distilled model trained with ``'none'`` by :func:`deit.train.run` is not switched
    to that output (:func:`deit.distillation.prepare_student`): its logits average both heads, and
    every parameter has a gradient at every step, as with ``'hard'``/``'soft'`` and plain models.
    """
    student = unwrap_model(model)
    unused = distillation_type == "none" and bool(getattr(student, "distilled_training", False))
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused,
    )


#: The signals that stop a run cleanly: a scheduler's pre-emption or time limit (SIGTERM),
#: Ctrl-C (SIGINT), a closed terminal or SSH session (SIGHUP). The exit status is 128 + signal.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


class _StopFlag:
    """Set by SIGTERM, SIGINT or SIGHUP (:data:`STOP_SIGNALS`); a signal this process was
    started with ignored (``nohup``: SIGHUP) stays ignored.

    Polled after every step; in a process group the ranks agree on it (an all-reduce and a host
    read, a synchronisation) only every ``every``-th poll, so that the steps between need not
    wait for the device. Every rank polls as often, so they all stop after the same step."""

    def __init__(self, device: torch.device, every: int = 1) -> None:
        self.device = device
        self.every = max(int(every), 1)
        self.raised = False
        self.signum = 0  # the signal that stopped the run (for the exit status 128 + signum)
        self._old: dict[int, Any] = {}
        self._polls = 0

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) == signal.SIG_IGN:
                continue
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
        self._polls += 1
        if self._polls % self.every:
            return False
        flag = torch.tensor([float(self.raised)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        return bool(flag.item())
