"""Where and in which number format a run computes: device choice and autocast precision.

One module for what training, evaluation and benchmarks need to agree on: :func:`resolve_device`
(``--device``), :func:`resolve_precision` (``--amp``) and the CPU checks behind it
(:func:`cpu_flags`, :func:`fast_bf16_available`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ._choices import AMP, TEACHER_PRECISIONS

__all__ = [
    "AMP",
    "Precision",
    "TEACHER_PRECISIONS",
    "cpu_flags",
    "fast_bf16_available",
    "fast_int8_available",
    "resolve_device",
    "resolve_precision",
    "set_cuda_backends",
]


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fast_int8_available() -> bool:
    """Whether this CPU has the instructions PyTorch's x86 int8 kernels (fbgemm / oneDNN) run
    on: ``/proc/cpuinfo`` flags ``avx2`` (8-bit multiply-adds) or the faster ``avx512_vnni``,
    ``avx_vnni``, ``amx_int8`` (what an int8 teacher gains there: ``benchmarks/README.md``)."""
    return bool(cpu_flags() & {"avx2", "avx512_vnni", "avx_vnni", "amx_int8"})


def fast_bf16_available(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 autocast is a speed-up on ``device`` rather than a slow emulation.

    CUDA: compute capability 8.0 or newer (``torch.cuda.is_bf16_supported()`` also counts the
    emulation of older GPUs such as the V100 and T4, which is slow). CPU: the ``/proc/cpuinfo``
    flags ``amx_bf16`` (AMX tiles) or ``avx512_bf16`` (bf16 dot products); without either (an
    AVX2-only CPU), oneDNN emulates bf16 and matmuls run many times slower than fp32, so the
    answer is ``False``. ``DEIT_FAST_BF16=0`` or ``=1`` overrides the CPU answer.
    """
    dev = torch.device(device)
    if dev.type == "cuda":  # native bf16 from Ampere (8.0) on; older GPUs emulate it
        return torch.cuda.is_available() and torch.cuda.get_device_capability(dev) >= (8, 0)
    if dev.type != "cpu":
        return False
    override = os.environ.get("DEIT_FAST_BF16")
    if override in ("0", "1"):
        return override == "1"
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


@dataclass(frozen=True)
class Precision:
    """Numeric precision of a run: ``dtype`` for autocast (``None`` = plain fp32) and whether
    gradients need loss scaling (fp16 only)."""

    name: str
    dtype: torch.dtype | None
    device_type: str

    @property
    def use_scaler(self) -> bool:
        """fp16 needs a gradient scaler; bf16 and fp32 do not."""
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the forward pass (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device | str) -> Precision:
    """Turn the ``amp`` setting into a :class:`Precision` for ``device``.

    ``auto``: on CUDA bf16 where supported, else fp16 with gradient scaling; on CPUs always fp32
    (the paper's numbers are fp32 and CPU autocast training changes results; ask for ``bf16``
    explicitly where :func:`fast_bf16_available` says it pays). ``fp32``, ``bf16``, ``fp16``
    force a choice.

    Raises:
        ValueError: unknown ``amp`` value, or fp16 asked on a CPU (no gradient scaling there).
    """
    device = torch.device(device)
    if amp == "auto":
        if device.type == "cuda":
            amp = "bf16" if fast_bf16_available(device) else "fp16"
        else:
            amp = "fp32"
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in table:
        raise ValueError(f"amp must be one of {', '.join(AMP)}; got {amp!r}.")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU.")
    return Precision(amp, table[amp], device.type)


def resolve_device(pref: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """Turn ``--device`` into a :class:`torch.device`: the one device check of every command.

    ``auto`` (or ``None``): ``cuda:<local_rank>`` when a GPU is visible, else the CPU; ``cuda``
    without an index becomes ``cuda:<local_rank>`` (one GPU per process under torchrun).

    Raises:
        ValueError: one sentence for a name that is not ``auto``, ``cpu``, ``cuda``,
            ``cuda:N`` or ``mps``; a CUDA device where none is visible or an index past the
            GPUs there are; ``mps`` where Apple's Metal backend is not available.
    """
    if pref is None or str(pref) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(pref)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(pref)!r} is not a device name; {_DEVICES}.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {str(pref)!r} was asked but Apple's Metal (MPS) backend is not available "
            "on this machine; use cpu."
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(pref)!r} was asked but no CUDA GPU is visible; use cpu.")
        n = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= n:
            shown = "cuda:0" if n == 1 else f"cuda:0 to cuda:{n - 1}"
            raise ValueError(
                f"device {str(device)!r} was asked but this machine shows {n} CUDA GPU(s) "
                f"({shown}); pass one of those."
            )
    return device


_DEVICES = "use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def set_cuda_backends(device: torch.device | str) -> dict[str, bool]:
    """Apply a run's cuDNN / TF32 policy for ``device`` (process-wide, where PyTorch keeps
    these settings); ``deit train``, the label pass and the benchmarks all call it.

    On CUDA: cuDNN autotuning on (``torch.backends.cudnn.benchmark = True``, as the official
    code): cuDNN times its algorithms for each new input shape and keeps the fastest, and a
    run's training batches all have one shape (the last partial batch is dropped); it matters
    for the convolutions of a CNN teacher (RegNetY-16GF) and the patch embedding. Left off
    where deterministic algorithms were asked (``torch.use_deterministic_algorithms(True)`` or
    ``torch.backends.cudnn.deterministic``), since autotuning may pick other kernels from one
    process to the next. TF32 is left at PyTorch's defaults: matmuls in full fp32 (``--amp
    fp32`` computes what the paper's fp32 figures did; AMP runs them in bf16/fp16 anyway),
    cuDNN convolutions allowed TF32 on Ampere and newer. Elsewhere nothing changes.

    Returns:
        The settings in force: ``cudnn_benchmark``, ``matmul_tf32``, ``cudnn_tf32``.
    """
    if torch.device(device).type == "cuda":
        deterministic = (
            torch.are_deterministic_algorithms_enabled() or torch.backends.cudnn.deterministic
        )
        torch.backends.cudnn.benchmark = not deterministic
    return {
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
    }
