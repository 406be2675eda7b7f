"""The memory a training step needs, what the machine has, and one sentence when it runs out.

A ViT's training step keeps, for the backward pass, about :data:`SAVED_PER_TOKEN` values of
every block per token and embedding channel (measured with
``torch.autograd.graph.saved_tensors_hooks`` on DeiT-Tiny and -Pico, 197 to 785 tokens: 16.5;
PyTorch's fused attention keeps no ``N x N`` matrix), so a step's memory grows with the batch
size and the token count, the square of ``--input-size``: DeiT-Pico at 994 px (20,165 tokens)
needs about 1 GB per image. :func:`check_step_memory` notes before the first step that it will
not fit; :func:`out_of_memory_error` turns the allocator's failure into one sentence naming
``--batch-size`` and ``--input-size``.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import torch
from torch import nn

from .._notes import print_note
from ..models import VisionTransformer

__all__ = [
    "SAVED_PER_TOKEN",
    "StepOutOfMemoryError",
    "available_bytes",
    "check_step_memory",
    "is_out_of_memory",
    "out_of_memory_error",
    "step_memory_bytes",
]

#: Values kept for the backward pass per block, token and embedding channel (see above).
SAVED_PER_TOKEN = 16.5
_GIB = 2**30


class StepOutOfMemoryError(MemoryError):
    """A training step ran out of memory; the message is one sentence with the estimate and
    the flags that lower it."""


def step_memory_bytes(
    model: nn.Module, batch_size: int, amp: str = "fp32", ema: bool = False
) -> int | None:
    """About the bytes a training step of ``model`` (built at its input size) needs: the
    activations kept for the backward pass, the weights, their gradients and two AdamW moments
    (and an EMA copy), and the batch. ``None`` for a model that is not a
    :class:`~deit.models.VisionTransformer`."""
    if not isinstance(model, VisionTransformer):
        return None
    tokens = model.pos_embed.shape[1]
    h, w = model.patch_embed.img_size
    width = 4 if amp == "fp32" else 2.5  # under autocast some tensors stay fp32
    blocks = len(model.blocks)
    activations = SAVED_PER_TOKEN * blocks * tokens * model.embed_dim * width * batch_size
    params = sum(p.numel() for p in model.parameters()) * 4 * (5 if ema else 4)
    images = 3 * batch_size * 3 * h * w * 4  # the loader's batch, its device copy, mixed
    return int(activations + params + images)


def _proc_bytes(path: str, key: str) -> int | None:
    """The ``key:`` line of a ``/proc`` file (in kB there) in bytes, or ``None``."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup(total: bool) -> int | None:
    """The memory limit of this process's cgroup (v2), or what it still allows."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = 0 if total else int(Path("/sys/fs/cgroup/memory.current").read_text())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def _address_space(total: bool) -> int | None:
    """``ulimit -v`` (RLIMIT_AS), or what it still allows this process to map."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or total:
        return None if soft == resource.RLIM_INFINITY else soft
    mapped = _proc_bytes(f"/proc/{os.getpid()}/status", "VmSize")
    return soft if mapped is None else max(soft - mapped, 0)


def available_bytes(device: torch.device, total: bool = False) -> int | None:
    """The memory free for a step on ``device`` (``total``: all it may use): CUDA's, else the
    least of the machine's, its cgroup's limit and ``ulimit -v`` (``None``: unknown)."""
    if device.type == "cuda":
        free, whole = torch.cuda.mem_get_info(device)
        return int(whole if total else free)
    machine = _proc_bytes("/proc/meminfo", "MemTotal" if total else "MemAvailable")
    known = [n for n in (machine, _cgroup(total), _address_space(total)) if n is not None]
    return min(known) if known else None


def _need(model: nn.Module, batch_size: int, amp: str, ema: bool) -> str:
    """``about 1.2 GiB for a step of 64 x 20,165 tokens`` (empty for a model not estimated)."""
    need = step_memory_bytes(model, batch_size, amp, ema)
    if need is None:
        return ""
    tokens = model.pos_embed.shape[1]
    return f"a step of {batch_size} x {tokens:,} tokens needs about {need / _GIB:.1f} GiB"


def check_step_memory(
    model: nn.Module, batch_size: int, device: torch.device, amp: str = "fp32", ema: bool = False
) -> None:
    """Print a note before the first step when the step's memory (:func:`step_memory_bytes`)
    exceeds what ``device`` has free (:func:`available_bytes`)."""
    need = step_memory_bytes(model, batch_size, amp, ema)
    free = available_bytes(device)
    if need is None or free is None or need <= free:
        return
    print_note(
        f"{_need(model, batch_size, amp, ema)} but {device.type} has {free / _GIB:.1f} GiB "
        "free, so training will likely run out of memory; lower --batch-size or --input-size."
    )


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure: CUDA's ``OutOfMemoryError``, Python's
    ``MemoryError`` or the CPU allocator's ``RuntimeError``."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text or "out of memory" in text
    )


def out_of_memory_error(
    model: nn.Module,
    batch_size: int,
    img_size: int | None,
    device: torch.device,
    epoch: int,
    amp: str = "fp32",
    ema: bool = False,
) -> StepOutOfMemoryError:
    """The one sentence for a step that ran out of memory in ``epoch`` (counted from 1)."""
    whole = available_bytes(device, total=True)  # what is free now says little: the step took it
    parts = [_need(model, batch_size, amp, ema)]
    parts += [f"{device.type} has {whole / _GIB:.1f} GiB in all" if whole is not None else ""]
    detail = "; ".join(p for p in parts if p)
    detail = f" ({detail})" if detail else ""
    size = f" (now {img_size})" if img_size else ""
    return StepOutOfMemoryError(
        f"Training ran out of {device.type} memory in epoch {epoch}{detail}; lower --batch-size "
        f"(now {batch_size}) or --input-size{size}."
    )
