"""Measuring one model: device and precision, timing, and :func:`benchmark_model`'s
:class:`BenchmarkResult` (what is measured, and how: :mod:`deit.benchmark`)."""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_batch_size
from .._choices import PRECISIONS
from ..inference import optimize_for_inference
from ..precision import fast_bf16_available, resolve_device
from .flops import _input_channels, _input_hw, _unwrap, count_gmacs

__all__ = [
    "OFFICIAL_MODELS",
    "PAPER_TOP1",
    "PAPER_THROUGHPUT",
    "PRECISIONS",
    "BenchmarkResult",
    "benchmark_model",
    "checked_device_and_precision",
    "default_precision",
    "device_name",
    "precision_context",
    "resolve_device",
    "time_call",
]

#: The eight configurations with official weights, in the order of the paper's Table 1.
OFFICIAL_MODELS = (
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_base_patch16_384",
    "deit_tiny_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_224",
    "deit_base_distilled_patch16_384",
)
#: ImageNet-1k top-1 (%) of the official weights (paper Tables 1 and 5; distilled: both heads).
PAPER_TOP1 = dict(zip(OFFICIAL_MODELS, (72.2, 79.8, 81.8, 83.1, 74.5, 81.2, 83.4, 84.5)))
#: Throughput (images/s) the paper measured on one V100 in fp32 (Table 1 and 5).
PAPER_THROUGHPUT = dict(
    zip(OFFICIAL_MODELS, (2536.0, 940.0, 292.0, 85.9, 2529.0, 936.0, 290.0, 85.8))
)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- device and precision ---------------------------------------------------------------------
def default_precision(device: str | torch.device = "cpu") -> str:
    """The precision to use when the user does not choose: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    CUDA: bf16 where supported, else fp16. CPU: bf16 only when :func:`fast_bf16_available`
    (``DEIT_FAST_BF16=0`` keeps fp32), else fp32. Other devices: fp32. Training differs on
    CPUs: :func:`deit.precision.resolve_precision` keeps fp32 there unless bf16 is asked for.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if fast_bf16_available(dev) else "fp16"
    if dev.type == "cpu" and fast_bf16_available(dev):
        return "bf16"
    return "fp32"


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or 'auto', got {precision!r}.")
    return precision


def precision_context(
    device: str | torch.device, precision: str
) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` on ``device`` (a no-op context for ``"fp32"``).

    Raises:
        ValueError: unknown precision.
    """
    _check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def device_name(device: str | torch.device) -> str:
    """A human-readable name of ``device``: the GPU name, or the CPU model and thread count."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} CPU, {torch.get_num_threads()} threads"


def _timer_class() -> type:
    """:class:`torch.utils.benchmark.Timer`, imported without the line its import logs where a
    CUDA toolkit is installed but no GPU is present ("No CUDA runtime is found, using
    CUDA_HOME=..."): it concerns compiling C++ extensions, which no benchmark here does."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        log.setLevel(level)
    return Timer


def time_call(fn: Callable[[], Any], warmup: int = 1, min_time: float = 1.0) -> list[float]:
    """Seconds per call of ``fn``, one value per timed block, by
    :class:`torch.utils.benchmark.Timer` (``blocked_autorange(min_run_time=min_time)``, torch's
    current thread count, CUDA synchronised) after ``warmup`` untimed calls."""
    Timer = _timer_class()
    for _ in range(warmup):
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return list(timer.blocked_autorange(min_run_time=min_time).times)


# -- the benchmark --------------------------------------------------------------------------------
@dataclass
class BenchmarkResult:
    """One model's measurements. Units: images/s, ms, GMACs, MiB, seconds.

    Attributes:
        model: model name.
        device: ``"cpu"`` or ``"cuda:0"`` ...
        device_name: GPU name or CPU model with thread count.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        optimized: whether :func:`~deit.inference.optimize_for_inference` was used.
        compiled: whether ``torch.compile`` was used.
        batch_size: inference batch size of ``throughput``.
        img_size: input side in pixels.
        throughput: inference images/s (batch / median time of one batch).
        throughput_runs: images/s of every timed block of calls.
        latency_ms: median time of one image at batch 1 (ms), ``None`` when not measured.
        params: parameter count.
        gmacs: multiply-accumulates of one image, in 10^9.
        peak_memory_mib: peak CUDA memory of one inference batch (MiB); ``None`` on CPU or when
            not measured.
        compile_time_s: seconds of the first (compiling) call, ``None`` when not compiled.
        top1: paper's ImageNet top-1 (%) of the official weights, ``None`` for other models.
        paper_throughput: the paper's V100 images/s, ``None`` for other models.
        threads: CPU threads torch used.
        torch_version: ``torch.__version__``.
    """

    model: str
    device: str
    device_name: str
    precision: str
    optimized: bool
    compiled: bool
    batch_size: int
    img_size: int
    throughput: float
    throughput_runs: list[float] = field(default_factory=list)
    latency_ms: float | None = None
    params: int = 0
    gmacs: float = 0.0
    peak_memory_mib: float | None = None
    compile_time_s: float | None = None
    top1: float | None = None
    paper_throughput: float | None = None
    threads: int = 0
    torch_version: str = torch.__version__

    @property
    def params_millions(self) -> float:
        """The parameter count in millions (the table's unit)."""
        return self.params / 1e6

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (JSON-serialisable)."""
        return asdict(self)


def _largest_cuda_batch(fn: Callable[[int], Any], device: torch.device) -> int:
    """The largest power of two ``<= 4096`` for which ``fn(batch)`` runs without CUDA OOM."""
    best, bs = 0, 1
    while bs <= 4096:
        try:
            fn(bs)
            torch.cuda.synchronize(device)
            best = bs
            bs *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    if best == 0:
        raise ValueError("Not even one image fits in GPU memory; use a smaller model or the CPU.")
    return best


def checked_device_and_precision(
    batch_size: int | None, device: str | torch.device, precision: str
) -> tuple[torch.device, str]:
    """``(device, precision)`` with ``"auto"`` resolved, once a batch size below 1 is refused in
    one sentence (``None`` picks the default)."""
    check_batch_size(
        batch_size,
        "pass a positive batch size, or leave it out for the default (the largest power of two "
        "that fits on CUDA, 32 on CPU)",
    )
    dev = resolve_device(device)
    return dev, default_precision(dev) if precision == "auto" else _check_precision(precision)


def benchmark_model(
    model: str | nn.Module,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    optimize: bool = True,
    compile: bool = False,
    warmup: int = 2,
    min_time: float = 2.0,
    latency: bool = True,
    memory: bool = True,
    num_classes: int = 1000,
    img_size: int | None = None,
    name: str | None = None,
) -> BenchmarkResult:
    """Measure one model's inference throughput (images/s), batch-1 latency (ms), parameters,
    GMACs and peak CUDA memory (MiB).

    Args:
        model: a registered name (built with random weights: speed does not depend on them) or a
            module (put in eval mode, otherwise not modified).
        batch_size: inference batch; ``None``: the largest power of two that fits on CUDA, 32 on
            CPU.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast) or ``"auto"``
            (:func:`default_precision`).
        optimize: run through :func:`deit.inference.optimize_for_inference` (what ``deit
            predict`` and ``deit eval`` run); ``False`` times the plain model.
        compile: also ``torch.compile`` it, with weight freezing (implies ``optimize``).
        warmup: untimed calls before timing (compilation happens there).
        min_time: seconds of timed calls per measurement (:func:`time_call`).
        latency: also measure batch-1 latency.
        memory: also measure peak memory (CUDA only).
        num_classes, img_size: head classes and input side of a registered name.
        name: label of the result (default: the registered name or the class name).

    Returns:
        :class:`BenchmarkResult`.

    Raises:
        ValueError: unknown model name, precision or device, a batch size below 1.
    """
    from ..models import build_classifier

    dev, precision = checked_device_and_precision(batch_size, device, precision)
    if isinstance(model, str):
        label = name or model
        model = build_classifier(model, num_classes, img_size=img_size)
    else:
        label = name or type(_unwrap(model)).__name__
    net = _unwrap(model).to(dev).eval()
    optimize = optimize or compile
    forward = optimize_for_inference(net, compile) if optimize else net

    def infer(x: torch.Tensor) -> Any:
        with torch.inference_mode(), precision_context(dev, precision):
            return forward(x)

    h, w = _input_hw(net, img_size)
    result = BenchmarkResult(
        model=label,
        device=str(dev),
        device_name=device_name(dev),
        precision=precision,
        optimized=optimize,
        compiled=compile,
        batch_size=0,
        img_size=h,
        throughput=0.0,
        params=sum(p.numel() for p in net.parameters()),
        gmacs=count_gmacs(net, (h, w), _input_channels(net)),
        top1=PAPER_TOP1.get(label),
        paper_throughput=PAPER_THROUGHPUT.get(label),
        threads=torch.get_num_threads(),
    )
    shape = (_input_channels(net), h, w)
    _time_inference(result, infer, dev, shape, batch_size, warmup, min_time, latency, memory)
    return result


def _time_inference(
    result: BenchmarkResult,
    infer: Callable[[torch.Tensor], Any],
    dev: torch.device,
    shape: tuple[int, int, int],
    batch_size: int | None,
    warmup: int,
    min_time: float,
    latency: bool,
    memory: bool,
) -> None:
    """Fill ``result``'s batch size, throughput, compile time, latency and peak memory by timing
    ``infer`` on random images of ``shape`` ``(C, H, W)`` (see :func:`benchmark_model`)."""
    if batch_size is None:
        batch_size = 32  # on CPU
        if dev.type == "cuda":
            probe = lambda b: infer(torch.randn(b, *shape, device=dev))  # noqa: E731
            batch_size = _largest_cuda_batch(probe, dev)
    x = torch.randn(batch_size, *shape, device=dev)
    if result.compiled:  # the first call compiles
        start = time.perf_counter()
        infer(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        result.compile_time_s = time.perf_counter() - start
    times = time_call(lambda: infer(x), warmup=warmup, min_time=min_time)
    result.batch_size = batch_size
    result.throughput = batch_size / statistics.median(times)
    result.throughput_runs = [batch_size / t for t in times]
    if latency:
        x1 = x[:1].clone()
        result.latency_ms = 1e3 * statistics.median(time_call(lambda: infer(x1), warmup, min_time))
    if memory and dev.type == "cuda":  # one call's peak, weights included
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        infer(x)
        torch.cuda.synchronize(dev)
        result.peak_memory_mib = torch.cuda.max_memory_allocated(dev) / 2**20
