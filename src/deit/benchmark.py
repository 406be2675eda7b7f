"""Throughput, latency, FLOPs and memory of DeiT models: ``deit benchmark`` (paper Table 1, Fig. 1).

What is measured, per model:

- **throughput** (images/s): inference at a given batch size (default: the largest power of two
  that fits on CUDA, 32 on CPU), ``warmup`` untimed batches, then the median time of ``runs``
  timed batches, as the paper did (one V100, largest batch that fits). ``torch.inference_mode``;
  ``torch.cuda.synchronize()`` around every timed batch on CUDA.
- **latency** (ms): the median time of one image (batch 1), measured the same way.
- **parameters** and **GMACs** (multiply-accumulates, FLOPs / 2) of one image, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on a copy of the model on the ``meta`` device
  (convolutions, linear layers and the two attention matmuls; elementwise work is not counted,
  as in the paper's 1.3 / 4.6 / 17.6 GFLOPs figures).
- **peak memory** (MiB) of one inference batch. CUDA: ``torch.cuda.max_memory_allocated``.
  CPU (no allocator statistics exist): weights + input + the peak of the running sum of the CPU
  allocator's allocation/free events recorded by ``torch.profiler`` (``profile_memory=True``)
  during one forward — tensors only; scratch space that oneDNN/MKL allocate outside PyTorch's
  allocator is not seen.
- optionally (``train=True``) the **training step** (images/s): student forward + backward +
  AdamW step, plus a frozen teacher forward and the hard-distillation loss for distilled models.

Precision is chosen with autocast (``fp32``, ``bf16``, ``fp16``); :func:`default_precision`
never picks bf16 on a CPU without native bf16 instructions (see :func:`fast_bf16_available`).
The paper's throughputs are fp32: pass ``precision="fp32"`` (``--precision fp32``) to compare.
``compile=True`` runs the model through ``torch.compile`` (with Inductor weight freezing for
inference).

Outputs of :func:`run_benchmark` / ``deit benchmark``: a table on the terminal and, with an
output folder, ``benchmark.csv``, ``benchmark.json`` and ``benchmark.png`` (top-1 of the official
weights from the paper against the throughput measured here, the paper's Figure 1).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .engine import cpu_flags, fast_bf16_available
from .models import VisionTransformer

__all__ = [
    "OFFICIAL_MODELS",
    "PAPER_TOP1",
    "PAPER_THROUGHPUT",
    "PRECISIONS",
    "BenchmarkResult",
    "add_subcommand",
    "benchmark_model",
    "compile_for_inference",
    "count_flops",
    "count_gmacs",
    "cpu_flags",
    "default_precision",
    "device_name",
    "fast_bf16_available",
    "format_table",
    "load_note",
    "matmul_flops",
    "peak_memory_mib",
    "plot_throughput_accuracy",
    "precision_context",
    "resolve_device",
    "run_benchmark",
    "time_runs",
    "write_csv",
    "write_json",
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
#: ImageNet-1k top-1 (%) of the official weights (REFERENCE.md section 4; distilled: both heads).
PAPER_TOP1 = dict(zip(OFFICIAL_MODELS, (72.2, 79.8, 81.8, 83.1, 74.5, 81.2, 83.4, 84.5)))
#: Throughput (images/s) the paper measured on one V100 in fp32.
PAPER_THROUGHPUT = dict(
    zip(OFFICIAL_MODELS, (2536.0, 940.0, 292.0, 85.9, 2529.0, 936.0, 290.0, 85.8))
)
#: Accepted ``precision`` values.
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEFAULT_CPU_BATCH = 32
_THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")
_MIB = 2.0**20


# -- device and precision ---------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else -> ``torch.device``.

    Raises:
        ValueError: CUDA requested but not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {str(device)!r} requested but CUDA is not available; use cpu.")
    return dev


def default_precision(device: str | torch.device = "cpu") -> str:
    """The precision to use when the user does not choose: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    CUDA: bf16 where supported, else fp16. CPU: bf16 only when :func:`fast_bf16_available`
    (``DEIT_FAST_BF16=0`` keeps fp32), else fp32. Other devices: fp32. Training differs on
    CPUs: :func:`deit.engine.resolve_precision` keeps fp32 there unless bf16 is asked for.
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- FLOPs --------------------------------------------------------------------------------------
def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU flash attention: Q K^T and P V (torch's formula for the CUDA kernels)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kw):
    """Its backward: recomputed scores, dV, dP, dQ, dK (torch's formula for the CUDA kernels)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _flop_counter(display: bool = False):
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    aten = torch.ops.aten
    # CPU's fused attention kernels have no formula in torch's table; without these the two
    # attention matmuls (~15% of DeiT-Ti's FLOPs) would silently be missing on real CPU tensors.
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    # FlopCounterMode wraps these so they receive shapes, not tensors.
    return FlopCounterMode(display=display, custom_mapping=custom)


def count_flops(model: nn.Module, images: torch.Tensor, backward: bool = False) -> int:
    """FLOPs of ``model(images)`` (and its backward with ``backward=True``), counted by
    :class:`torch.utils.flop_counter.FlopCounterMode`.

    Counts matmuls, linear layers, convolutions and fused attention (CPU flash attention
    included); one multiply-accumulate is 2 FLOPs. Works on the ``meta`` device (nothing is
    computed). For a distilled model in eval mode both heads are counted. DeiT models are
    counted nominally, every token through every block as in the paper and timm, although in
    eval mode their last block skips the patch tokens (6.3 % fewer FLOPs for DeiT-Ti/S/B).
    """
    counter = _flop_counter()
    ctx = contextlib.nullcontext() if backward else torch.no_grad()
    net = _unwrap(model)
    with ctx, counter:
        if isinstance(net, VisionTransformer):  # explicit: the counter's hooks decide otherwise
            out = net.forward_head(net.forward_features(images))
        else:
            out = model(images)
        if backward:
            out = out if isinstance(out, torch.Tensor) else sum(o.sum() for o in out)
            out.sum().backward()
    return int(counter.get_total_flops())


def count_gmacs(
    model: str | nn.Module,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    num_classes: int = 1000,
) -> float:
    """GMACs (10^9 multiply-accumulates = FLOPs / 2) of one image through ``model``.

    ``model`` is a registered name (built on the ``meta`` device: no memory, no compute) or a
    module (deep-copied to ``meta``). DeiT-Ti / S / B at 224 count 1.25 / 4.61 / 17.56,
    REFERENCE.md: 1.26 / 4.61 / 17.58.
    """
    if isinstance(model, str):
        from .models import build_classifier

        with torch.device("meta"):
            net = build_classifier(
                model, num_classes, in_chans=in_chans or 3, img_size=_side(img_size)
            )
    else:
        net = _unwrap(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = copy.deepcopy(net).to("meta")
    net.eval()
    h, w = _input_hw(net, img_size)
    c = in_chans or _input_channels(net)
    x = torch.empty(1, c, h, w, device="meta")
    return count_flops(net, x) / 2e9


def _side(img_size: int | tuple[int, int] | None) -> int | None:
    if img_size is None or isinstance(img_size, int):
        return img_size
    return int(img_size[0]) if img_size[0] == img_size[1] else None


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def _input_hw(model: nn.Module, img_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    if img_size is not None:
        return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    model = _unwrap(model)
    if hasattr(model, "img_size"):
        size = model.img_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if "input_size" in cfg:
        return int(cfg["input_size"][1]), int(cfg["input_size"][2])
    return 224, 224


def _input_channels(model: nn.Module) -> int:
    model = _unwrap(model)
    pe = getattr(model, "patch_embed", None)
    if pe is not None and hasattr(pe, "in_chans"):
        return int(pe.in_chans)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def matmul_flops(
    size: int = 2048,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    min_time: float = 1.0,
) -> float:
    """The machine's dense matmul rate in FLOP/s: ``torch.mm`` of two ``size x size`` matrices.

    Median over repeated products for at least ``min_time`` seconds (after one warm-up) in the
    dtype of ``precision``; the yardstick for "fraction of the matmul rate" a model reaches.
    """
    dev = torch.device(device)
    dtype = _DTYPES[_check_precision(precision)]
    a = torch.randn(size, size, device=dev).to(dtype)
    b = torch.randn(size, size, device=dev).to(dtype)
    times = time_runs(lambda: torch.mm(a, b), warmup=1, runs=3, device=dev, min_time=min_time)
    return 2.0 * size**3 / statistics.median(times)


# -- timing and memory ------------------------------------------------------------------------
def time_runs(
    fn: Callable[[], Any],
    warmup: int = 2,
    runs: int = 5,
    device: str | torch.device = "cpu",
    min_time: float = 0.0,
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then time each further call; returns seconds per call.

    At least ``runs`` calls are timed, more while their total is under ``min_time`` seconds. On
    CUDA the device is synchronised before and after every timed call.
    """
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(dev)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(runs, 1) or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return times


def peak_memory_mib(
    fn: Callable[[], Any], device: str | torch.device = "cpu", baseline_bytes: int = 0
) -> tuple[float, str]:
    """Peak memory of one call of ``fn`` in MiB, and the name of the method used.

    CUDA: ``torch.cuda.max_memory_allocated`` (everything allocated, weights included; the
    ``baseline_bytes`` argument is ignored). CPU: ``baseline_bytes`` (pass the weights and input
    already in memory) + the peak of the running sum of allocation/free events of PyTorch's CPU
    allocator recorded by ``torch.profiler(profile_memory=True)`` during the call.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        _sync(dev)
        return torch.cuda.max_memory_allocated(dev) / _MIB, "cuda max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence kineto's "no GPU" complaints
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto prints start/stop notices on the C-level stderr
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    cpu = torch._C._autograd.DeviceType.CPU
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == cpu
    ]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return (baseline_bytes + peak) / _MIB, "cpu: weights+input + torch.profiler allocator peak"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (C++ libraries' notices)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tensor_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


# -- compilation --------------------------------------------------------------------------------
def compile_for_inference(
    model: nn.Module,
    mode: str | None = "default",
    freeze: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` a model in eval mode for inference, with Inductor weight freezing.

    Freezing turns the weights into constants of the graph, so Inductor can pre-pack them for
    oneDNN (CPU) and fold constant work; the model must then only be called under
    ``torch.inference_mode()`` / ``no_grad`` and its weights must not change. Shapes are
    specialised (``dynamic=False``): a new batch size recompiles. Compilation happens on the first
    call; CPU Inductor needs a C++ compiler.

    Returns:
        A callable ``images (B, C, H, W) -> logits`` that enables freezing around every call.
    """
    model.eval()
    compiled = torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
    if not freeze:
        return compiled

    def run(x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return compiled(x)

    run._orig_mod = model  # type: ignore[attr-defined]
    return run


# -- the benchmark --------------------------------------------------------------------------------
@dataclass
class BenchmarkResult:
    """One model's measurements. Units: images/s, ms, GMACs, MiB, seconds.

    Attributes:
        model: model name.
        device: ``"cpu"`` or ``"cuda:0"`` ...
        device_name: GPU name or CPU model with thread count.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        compiled: whether ``torch.compile`` was used.
        batch_size: inference batch size of ``throughput``.
        img_size: input side in pixels.
        throughput: inference images/s (batch / median time of one batch).
        throughput_runs: images/s of every timed batch.
        latency_ms: median time of one image at batch 1 (ms), ``None`` when not measured.
        params: parameter count.
        gmacs: multiply-accumulates of one image, in 10^9.
        peak_memory_mib: peak memory of one inference batch (MiB), ``None`` when not measured.
        memory_method: how ``peak_memory_mib`` was measured.
        matmul_fraction: model FLOP/s at ``throughput`` divided by the machine's dense matmul rate
            (:func:`matmul_flops`), ``None`` when not measured.
        matmul_gflops: that matmul rate in GFLOP/s (set by :func:`run_benchmark`).
        compile_time_s: seconds of the first (compiling) call, ``None`` when not compiled.
        train_throughput: training step images/s, ``None`` when not measured.
        train_batch_size: batch size of the training step.
        train_peak_memory_mib: peak memory of one training step (MiB).
        teacher: teacher model of the training step of a distilled model.
        top1: paper's ImageNet top-1 (%) of the official weights, ``None`` for other models.
        paper_throughput: the paper's V100 images/s, ``None`` for other models.
        threads: CPU threads torch used.
        torch_version: ``torch.__version__``.
    """

    model: str
    device: str
    device_name: str
    precision: str
    compiled: bool
    batch_size: int
    img_size: int
    throughput: float
    throughput_runs: list[float] = field(default_factory=list)
    latency_ms: float | None = None
    params: int = 0
    gmacs: float = 0.0
    peak_memory_mib: float | None = None
    memory_method: str = ""
    matmul_fraction: float | None = None
    matmul_gflops: float | None = None
    compile_time_s: float | None = None
    train_throughput: float | None = None
    train_batch_size: int | None = None
    train_peak_memory_mib: float | None = None
    teacher: str | None = None
    top1: float | None = None
    paper_throughput: float | None = None
    threads: int = 0
    torch_version: str = torch.__version__

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (JSON-serialisable)."""
        return asdict(self)


def _largest_cuda_batch(
    fn: Callable[[int], Any], device: torch.device, start: int = 1, limit: int = 4096
) -> int:
    """The largest power of two ``<= limit`` for which ``fn(batch)`` runs without CUDA OOM."""
    best, bs = 0, start
    while bs <= limit:
        try:
            fn(bs)
            _sync(device)
            best = bs
            bs *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    if best == 0:
        raise ValueError("Not even one image fits in GPU memory; use a smaller model or the CPU.")
    return best


def benchmark_model(
    model: str | nn.Module,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    compile: bool = False,
    compile_mode: str | None = "default",
    freeze: bool = True,
    warmup: int = 2,
    runs: int = 5,
    latency: bool = True,
    memory: bool = True,
    flops: bool = True,
    matmul_rate: float | None = None,
    train: bool = False,
    train_batch_size: int | None = None,
    teacher_model: str = "regnety_160",
    num_classes: int = 1000,
    img_size: int | None = None,
    name: str | None = None,
) -> BenchmarkResult:
    """Measure one model's inference throughput (images/s), batch-1 latency (ms), parameters,
    GMACs, peak memory (MiB) and optionally its training step (images/s).

    Args:
        model: a registered name (built with random weights: speed does not depend on them) or a
            module (not modified: the training step runs on a copy).
        batch_size: inference batch; ``None``: the largest power of two that fits on CUDA, 32 on
            CPU.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast) or ``"auto"``
            (:func:`default_precision`).
        compile: use ``torch.compile`` (inference: :func:`compile_for_inference`).
        compile_mode: ``torch.compile`` mode (``"default"``, ``"max-autotune-no-cudagraphs"`` ...).
        freeze: Inductor weight freezing for compiled inference.
        warmup: untimed batches before timing (compilation happens there).
        runs: timed batches; the median is reported.
        latency: also measure batch-1 latency.
        memory: also measure peak memory.
        flops: count GMACs (and the matmul fraction when ``matmul_rate`` is given).
        matmul_rate: the machine's matmul FLOP/s (:func:`matmul_flops`) for ``matmul_fraction``.
        train: also time the training step.
        train_batch_size: its batch size (default: ``batch_size``).
        teacher_model: teacher of distilled models' training step (timm name, ``torchvision:``
            name or DeiT name; random weights).
        num_classes: classes of the head(s).
        img_size: input side; defaults to the model's.
        name: label of the result (default: the registered name or the class name).

    Returns:
        :class:`BenchmarkResult`.

    Raises:
        ValueError: unknown model name, precision or device.
    """
    from .models import build_classifier

    dev = resolve_device(device)
    precision = default_precision(dev) if precision == "auto" else _check_precision(precision)
    if isinstance(model, str):
        label = name or model
        net = build_classifier(model, num_classes, img_size=img_size)
    else:
        label = name or type(_unwrap(model)).__name__
        net = model
    was_training = _unwrap(net).training
    net = net.to(dev).eval()
    try:
        return _measure(
            net, label, dev, precision, batch_size, compile, compile_mode, freeze, warmup,
            runs, latency, memory, flops, matmul_rate, train, train_batch_size, teacher_model,
            num_classes, img_size,
        )  # fmt: skip
    finally:
        _unwrap(net).train(was_training)


def _measure(  # the body of benchmark_model, same arguments in the same order
    net: nn.Module, label: str, dev: torch.device, precision: str, batch_size: int | None,
    compile: bool, compile_mode: str | None, freeze: bool, warmup: int, runs: int,
    latency: bool, memory: bool, flops: bool, matmul_rate: float | None, train: bool,
    train_batch_size: int | None, teacher_model: str, num_classes: int, img_size: int | None,
) -> BenchmarkResult:  # fmt: skip
    h, w = _input_hw(net, img_size)
    c = _input_channels(net)
    params = sum(p.numel() for p in _unwrap(net).parameters())
    gmacs = count_gmacs(net, (h, w), c) if flops else 0.0

    compile_time: list[float] = []
    forward: Callable[[torch.Tensor], Any] = net
    if compile:
        forward = compile_for_inference(net, compile_mode, freeze)

    def infer(x: torch.Tensor) -> Any:
        with torch.inference_mode(), precision_context(dev, precision):
            return forward(x)

    def first_call(x: torch.Tensor) -> None:
        t0 = time.perf_counter()
        infer(x)
        _sync(dev)
        compile_time.append(time.perf_counter() - t0)

    if batch_size is None:
        if dev.type == "cuda":
            batch_size = _largest_cuda_batch(
                lambda b: infer(torch.randn(b, c, h, w, device=dev)), dev
            )
        else:
            batch_size = _DEFAULT_CPU_BATCH
    x = torch.randn(batch_size, c, h, w, device=dev)
    first_call(x)
    times = time_runs(lambda: infer(x), warmup=max(warmup - 1, 0), runs=runs, device=dev)
    throughput = batch_size / statistics.median(times)

    lat = None
    if latency:
        x1 = x[:1].clone()
        if compile:
            first_call(x1)
        t1 = time_runs(lambda: infer(x1), warmup=max(warmup, 1), runs=max(runs, 3), device=dev)
        lat = 1e3 * statistics.median(t1)

    mem, method = None, ""
    if memory:
        base = _tensor_bytes(_unwrap(net)) + x.numel() * x.element_size()
        mem, method = peak_memory_mib(lambda: infer(x), dev, base)

    result = BenchmarkResult(
        model=label,
        device=str(dev),
        device_name=device_name(dev),
        precision=precision,
        compiled=compile,
        batch_size=batch_size,
        img_size=h,
        throughput=throughput,
        throughput_runs=[batch_size / t for t in times],
        latency_ms=lat,
        params=params,
        gmacs=gmacs,
        peak_memory_mib=mem,
        memory_method=method,
        compile_time_s=compile_time[0] if compile else None,
        top1=PAPER_TOP1.get(label),
        paper_throughput=PAPER_THROUGHPUT.get(label),
        threads=torch.get_num_threads(),
    )
    if matmul_rate and gmacs:
        result.matmul_fraction = 2e9 * gmacs * throughput / matmul_rate
    if train:
        tb = train_batch_size or batch_size
        result.train_batch_size = tb
        step, teacher = _train_step(
            _unwrap(net), dev, precision, tb, (c, h, w), num_classes, teacher_model, compile
        )
        result.teacher = teacher
        t = time_runs(step, warmup=max(warmup, 1), runs=runs, device=dev)
        result.train_throughput = tb / statistics.median(t)
        if memory:
            result.train_peak_memory_mib, _ = peak_memory_mib(
                step, dev, _tensor_bytes(_unwrap(net)) * 4
            )
    return result


def _train_step(
    model: nn.Module,
    dev: torch.device,
    precision: str,
    batch_size: int,
    chw: tuple[int, int, int],
    num_classes: int,
    teacher_model: str,
    compile: bool,
) -> tuple[Callable[[], None], str | None]:
    """One training step on a copy of ``model``: forward, loss, backward, AdamW step.

    Distilled students get the paper's hard-distillation loss, ½ CE(cls, y) + ½ CE(dist,
    argmax teacher), with a frozen teacher forward in eval mode under ``no_grad``.
    """
    from .models import DistilledVisionTransformer, build_classifier

    student = copy.deepcopy(model).to(dev).train()
    distilled = isinstance(student, DistilledVisionTransformer)
    teacher = None
    if distilled:
        student.set_distilled_training(True)
        teacher = build_classifier(teacher_model, num_classes).to(dev).eval()
        teacher.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    fwd = torch.compile(student) if compile else student
    x = torch.randn(batch_size, *chw, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)

    def step() -> None:
        with precision_context(dev, precision):
            out = fwd(x)
            if teacher is not None:
                with torch.no_grad():
                    t_labels = teacher(x).argmax(dim=1)
                cls_logits, dist_logits = out
                loss = 0.5 * F.cross_entropy(cls_logits, y) + 0.5 * F.cross_entropy(
                    dist_logits, t_labels
                )
            else:
                loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step, teacher_model if distilled else None


def run_benchmark(
    models: Sequence[str] | None = None,
    output_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    matmul: bool = True,
    plot: bool = True,
    verbose: bool = True,
    **kwargs: Any,
) -> list[BenchmarkResult]:
    """Benchmark several models (default: the eight official ones), print a table, write files.

    Args:
        models: registered names.
        output_dir: where to write ``benchmark.csv``, ``benchmark.json`` and ``benchmark.png``
            (nothing is written when ``None``).
        device, precision: as in :func:`benchmark_model`.
        matmul: measure the machine's matmul rate (:func:`matmul_flops`) before each model to
            report the model's fraction of it.
        plot: write the PNG (needs matplotlib).
        verbose: print one line per model as it finishes, then the table.
        **kwargs: passed to :func:`benchmark_model` (batch_size, compile, runs, train, ...).

    Returns:
        One :class:`BenchmarkResult` per model, in order.
    """
    from .models import list_models

    dev = resolve_device(device)
    precision = default_precision(dev) if precision == "auto" else _check_precision(precision)
    models = list(models or OFFICIAL_MODELS)
    known = set(list_models())
    for m in models:
        if m not in known:
            from .models import get_model_spec

            get_model_spec(m)  # raises with close matches
    if verbose and dev.type == "cpu":
        note = load_note()
        if note:
            print(note, flush=True)
    results = []
    for m in models:
        # measured next to each model, so both see the same load on a shared machine
        rate = matmul_flops(device=dev, precision=precision, min_time=0.5) if matmul else None
        r = benchmark_model(m, device=dev, precision=precision, matmul_rate=rate, **kwargs)
        r.matmul_gflops = rate / 1e9 if rate else None
        results.append(r)
        if verbose:
            lat = f", {r.latency_ms:.1f} ms at batch 1" if r.latency_ms is not None else ""
            print(f"{m}: {r.throughput:.1f} images/s at batch {r.batch_size}{lat}", flush=True)
    if verbose:
        print(format_table(results))
        rates = [r.matmul_gflops for r in results if r.matmul_gflops]
        if rates:
            print(
                f"matmul rate ({precision}, 2048x2048 torch.mm, measured before each model): "
                f"{min(rates):.1f}-{max(rates):.1f} GFLOP/s"
            )
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(results, out / "benchmark.csv")
        write_json(results, out / "benchmark.json")
        if plot:
            plot_throughput_accuracy(results, out / "benchmark.png")
        if verbose:
            print(
                f"wrote {out / 'benchmark.csv'}, benchmark.json"
                + (", benchmark.png" if plot else "")
            )
    return results


def load_note() -> str | None:
    """A warning when other processes load the CPU (load average above the core count), with
    the setting that limits the damage; ``None`` on a quiet machine.

    libgomp threads spin at every parallel region by default; when another job holds a core,
    the whole model waits for a descheduled thread at each small op. On this project's shared
    2-core machine DeiT-Ti at batch 1 ran 5-16x slower that way than with
    ``OMP_WAIT_POLICY=PASSIVE`` (set it before Python starts) or one thread (``--threads 1``).
    """
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return None
    return (
        f"note: load average {load:.1f} on {cores} cores: timings will be low and noisy; "
        "OMP_WAIT_POLICY=PASSIVE (set before starting) or --threads 1 limits the damage."
    )


# -- output -------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


_COLUMNS = (
    ("model", "model", "s"),
    ("batch", "batch_size", "d"),
    ("images/s", "throughput", ".1f"),
    ("latency ms", "latency_ms", ".1f"),
    ("params M", "params", ""),
    ("GMACs", "gmacs", ".2f"),
    ("peak MiB", "peak_memory_mib", ".0f"),
    ("% matmul", "matmul_fraction", ".0%"),
    ("train img/s", "train_throughput", ".1f"),
    ("top-1", "top1", ".1f"),
    ("V100 img/s", "paper_throughput", ".0f"),
)


def format_table(results: Sequence[BenchmarkResult]) -> str:
    """A fixed-width text table of ``results`` (units in the headers) with a caption line."""
    rows = [[h for h, _, _ in _COLUMNS]]
    for r in results:
        row = []
        for _, attr, spec in _COLUMNS:
            v = getattr(r, attr)
            if attr == "params":
                row.append(f"{v / 1e6:.2f}")
            elif spec == "s":
                row.append(str(v))
            else:
                row.append(_fmt(v, spec))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    if results:
        r = results[0]
        comp = ", compiled" if r.compiled else ""
        lines.append(f"{r.device_name}; {r.precision}{comp}; torch {r.torch_version}")
    return "\n".join(lines)


def write_csv(results: Sequence[BenchmarkResult], path: str | Path) -> None:
    """Write one row per result (every :class:`BenchmarkResult` field except per-run lists)."""
    rows = [{k: v for k, v in r.to_dict().items() if k != "throughput_runs"} for r in results]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        if not rows:
            return
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(results: Sequence[BenchmarkResult], path: str | Path, **meta: Any) -> None:
    """Write ``{"meta": {...}, "results": [...]}``; ``meta`` records time, host, torch and
    threads plus any keyword given."""
    info = {
        "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        **meta,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": info, "results": [r.to_dict() for r in results]}, indent=2))


def _short_label(name: str) -> str:
    size = {"tiny": "Ti", "small": "S", "base": "B", "pico": "Pico"}
    parts = name.split("_")
    label = size.get(parts[1], parts[1]) if len(parts) > 1 else name
    if "distilled" in name:
        label += "⚗"
    side = parts[-1]
    if side.isdigit() and side != "224":
        label += f"↑{side}"
    return label


def plot_throughput_accuracy(
    results: Sequence[BenchmarkResult], path: str | Path, show_paper: bool = True
) -> Path:
    """Redraw the paper's Figure 1 with this machine's numbers: top-1 (%) against measured
    throughput (images/s, log x), one labelled point per official model, DeiT and DeiT⚗ as two
    lines; with ``show_paper`` the paper's V100 throughputs are drawn as hollow grey markers.

    Models without a paper top-1 (not official weights) are listed under the plot instead.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.add_subplot()
    known = [r for r in results if r.top1 is not None and r.throughput > 0]
    other = [r.model for r in results if r.top1 is None]
    for distilled, style, label in ((False, "o-", "DeiT"), (True, "s-", "DeiT⚗ (distilled)")):
        pts = sorted(
            ((r.throughput, r.top1, r) for r in known if ("distilled" in r.model) == distilled),
            key=lambda p: p[0],
        )
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{label}, measured")
        for x, y, r in pts:
            ax.annotate(_short_label(r.model), (x, y), textcoords="offset points", xytext=(5, -10))
        if show_paper:
            paper = [(r.paper_throughput, r.top1) for _, _, r in pts if r.paper_throughput]
            ax.plot(
                [p[0] for p in paper],
                [p[1] for p in paper],
                style[0],
                mfc="none",
                color="0.6",
                label=f"{label}, paper (V100)",
            )
    ax.set_xscale("log")
    ax.set_xlabel("throughput (images/s, log scale)")
    ax.set_ylabel("ImageNet top-1 (%) of the official weights")
    if results:
        r = results[0]
        comp = ", compiled" if r.compiled else ""
        ax.set_title(
            f"DeiT on {r.device_name}\n{r.precision}{comp}, batch {r.batch_size}", fontsize=10
        )
    if known:
        ax.legend(loc="lower left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no model with a paper top-1", ha="center", transform=ax.transAxes)
    ax.grid(True, which="both", alpha=0.3)
    if other:
        fig.text(0.01, 0.01, "not plotted (no paper top-1): " + ", ".join(other), fontsize=7)
    fig.tight_layout(rect=(0, 0.03 if other else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# -- command line ---------------------------------------------------------------------------------
def _run_cli(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    run_benchmark(
        models=args.models,
        output_dir=args.output_dir,
        device=args.device,
        precision=args.precision,
        matmul=not args.no_matmul,
        plot=not args.no_plot,
        batch_size=args.batch_size,
        compile=args.compile,
        compile_mode=args.compile_mode,
        freeze=not args.no_freeze,
        warmup=args.warmup,
        runs=args.runs,
        latency=not args.no_latency,
        memory=not args.no_memory,
        train=args.train,
        train_batch_size=args.train_batch_size,
        teacher_model=args.teacher_model,
        num_classes=args.num_classes,
        img_size=args.img_size,
    )
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit benchmark`` on the CLI's subparsers."""
    p = sub.add_parser(
        "benchmark",
        help="inference throughput, latency, GMACs, memory (and training step) of models",
        description="Inference throughput (images/s, median of timed batches), batch-1 latency "
        "(ms), parameters, GMACs and peak memory (MiB) of DeiT models, optionally the training "
        "step; a table, and with --output-dir benchmark.csv/.json/.png (the paper's Fig. 1 with "
        "this machine's throughput).",
    )
    p.add_argument("--models", nargs="+", metavar="NAME", help="default: the 8 official models")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument(
        "--batch-size", type=int, help="default: largest power of two that fits (CUDA), 32 (CPU)"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("auto", *PRECISIONS),
        help="autocast precision (default fp32, as the paper's throughputs); auto: bf16 on CUDA "
        "and on CPUs with bf16 instructions, fp16 on older GPUs, else fp32",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile (frozen for inference)")
    p.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode (default; max-autotune-no-cudagraphs autotunes GEMMs: slower to "
        "compile, no faster on a 2-core CPU, and unreliable when other jobs load the machine)",
    )
    p.add_argument("--no-freeze", action="store_true", help="compile without weight freezing")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches (default 2)")
    p.add_argument("--runs", type=int, default=5, help="timed batches, median reported")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--no-matmul", action="store_true", help="skip the matmul-rate yardstick")
    p.add_argument("--train", action="store_true", help="also time the training step")
    p.add_argument("--train-batch-size", type=int, help="default: --batch-size")
    p.add_argument(
        "--teacher-model",
        default="regnety_160",
        help="teacher for distilled models' training step (e.g. resnet18 on CPU)",
    )
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--img-size", type=int, help="input side (default: the model's)")
    p.add_argument("--output-dir", help="write benchmark.csv, benchmark.json, benchmark.png")
    p.add_argument("--no-plot", action="store_true", help="no PNG")
    p.set_defaults(func=_run_cli)
