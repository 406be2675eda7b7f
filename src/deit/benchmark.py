"""Throughput, latency, FLOPs and memory of DeiT models: ``deit benchmark`` (paper Table 1, Fig. 1).

What is measured, per model:

- **throughput** (images/s): inference at a given batch size (default: the largest power of two
  that fits on CUDA, 32 on CPU) under ``torch.inference_mode``, timed by
  :class:`torch.utils.benchmark.Timer` (``blocked_autorange``: blocks of calls for at least
  ``min_time`` seconds after warm-up, CUDA synchronised); the median block gives images/s. The
  paper measured the same way on one V100 (largest batch that fits), in fp32.
- **latency** (ms): the median time of one image (batch 1).
- **parameters** and **GMACs** (multiply-accumulates, FLOPs / 2) of one image, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on a ``meta``-device copy (convolutions,
  linear layers and the two attention matmuls; elementwise work is not counted, as in the
  paper's 1.3 / 4.6 / 17.6 GFLOPs).
- **peak memory** (MiB) of one inference batch on CUDA (``torch.cuda.max_memory_allocated``);
  not measured on CPU, where PyTorch keeps no allocator statistics.

DeiT models run through :func:`deit.inference.optimize_for_inference` (what ``deit predict`` and
``deit eval`` run; ``optimize=False`` times the plain model), with ``compile=True`` also through
``torch.compile`` with weight freezing. Precision is chosen with autocast (``fp32``, ``bf16``,
``fp16``); the paper's throughputs are fp32, the default here.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._optional import require
from .inference import InferenceModel, optimize_for_inference
from .precision import fast_bf16_available

__all__ = [
    "OFFICIAL_MODELS",
    "PAPER_TOP1",
    "PAPER_THROUGHPUT",
    "PRECISIONS",
    "BenchmarkResult",
    "add_subcommand",
    "benchmark_model",
    "count_flops",
    "count_gmacs",
    "default_precision",
    "device_name",
    "format_table",
    "plot_throughput_accuracy",
    "precision_context",
    "resolve_device",
    "run_benchmark",
    "time_call",
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
#: ImageNet-1k top-1 (%) of the official weights (paper Tables 1 and 5; distilled: both heads).
PAPER_TOP1 = dict(zip(OFFICIAL_MODELS, (72.2, 79.8, 81.8, 83.1, 74.5, 81.2, 83.4, 84.5)))
#: Throughput (images/s) the paper measured on one V100 in fp32 (Table 1 and 5).
PAPER_THROUGHPUT = dict(
    zip(OFFICIAL_MODELS, (2536.0, 940.0, 292.0, 85.9, 2529.0, 936.0, 290.0, 85.8))
)
#: Accepted ``precision`` values.
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEFAULT_CPU_BATCH = 32
_THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


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
    counted nominally, every token through every block, as in the paper and timm.
    """
    counter = _flop_counter()
    ctx = contextlib.nullcontext() if backward else torch.no_grad()
    with ctx, counter:
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
    module (deep-copied to ``meta``). DeiT-Ti / S / B at 224 count 1.25 / 4.61 / 17.56; the
    paper's Table 1 gives 1.3 / 4.6 / 17.6 GFLOPs (its "FLOPs" are multiply-accumulates).
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
    """The plain model inside an :class:`~deit.inference.InferenceModel` or ``torch.compile``."""
    model = getattr(model, "_orig_mod", model)
    return model.model if isinstance(model, InferenceModel) else model


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


def time_call(fn: Callable[[], Any], warmup: int = 1, min_time: float = 1.0) -> list[float]:
    """Seconds per call of ``fn``, one value per timed block, by
    :class:`torch.utils.benchmark.Timer` (``blocked_autorange(min_run_time=min_time)``, torch's
    current thread count, CUDA synchronised) after ``warmup`` untimed calls."""
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return list(timer.blocked_autorange(min_run_time=min_time).times)


def _cuda_peak_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak CUDA memory of one call of ``fn`` (MiB, weights included)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


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


def _check_batch_size(batch_size: int | None) -> None:
    """Refuse a batch size below 1 in one sentence (``None`` picks the default)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(
            f"'batch_size' is {batch_size} but must be at least 1; pass a positive batch size, "
            "or leave it out for the default (the largest power of two that fits on CUDA, 32 "
            "on CPU)."
        )


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
    from .models import build_classifier

    _check_batch_size(batch_size)
    dev = resolve_device(device)
    precision = default_precision(dev) if precision == "auto" else _check_precision(precision)
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
        batch_size = _DEFAULT_CPU_BATCH
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
    if memory and dev.type == "cuda":
        result.peak_memory_mib = _cuda_peak_mib(lambda: infer(x), dev)


def run_benchmark(
    models: Sequence[str] | None = None,
    output_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
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
        plot: write the PNG (needs matplotlib: the ``analysis`` extra).
        verbose: print one line per model as it finishes, then the table.
        **kwargs: passed to :func:`benchmark_model` (batch_size, compile, min_time, ...).

    Returns:
        One :class:`BenchmarkResult` per model, in order.

    Raises:
        ValueError: an unknown model name, device or precision, or a batch size below 1 (before
            anything is measured).
    """
    from .models import get_model_spec, list_models

    _check_batch_size(kwargs.get("batch_size"))
    dev = resolve_device(device)
    precision = default_precision(dev) if precision == "auto" else _check_precision(precision)
    models = list(models or OFFICIAL_MODELS)
    for m in set(models) - set(list_models()):
        get_model_spec(m)  # raises with close matches
    results = []
    for m in models:
        r = benchmark_model(m, device=dev, precision=precision, **kwargs)
        results.append(r)
        if verbose:
            lat = f", {r.latency_ms:.1f} ms at batch 1" if r.latency_ms is not None else ""
            print(f"{m}: {r.throughput:.1f} images/s at batch {r.batch_size}{lat}", flush=True)
    if verbose:
        print(format_table(results))
    if output_dir is not None:
        out = Path(output_dir)
        write_csv(results, out / "benchmark.csv")
        write_json(results, out / "benchmark.json")
        if plot:
            plot_throughput_accuracy(results, out / "benchmark.png")
        if verbose:
            print(f"wrote {out / 'benchmark.csv'}, .json" + (", .png" if plot else ""))
    return results


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
        lines.append(f"{r.device_name}; {_setting(r)}; torch {r.torch_version}")
    return "\n".join(lines)


def _setting(r: BenchmarkResult) -> str:
    how = "compiled" if r.compiled else "optimized" if r.optimized else "plain model"
    return f"{r.precision}, {how}"


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
    require("matplotlib", "analysis", "deit benchmark's figure (--no-plot skips it)")
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
        ax.set_title(f"DeiT on {r.device_name}\n{_setting(r)}, batch {r.batch_size}", fontsize=10)
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
        plot=not args.no_plot,
        batch_size=args.batch_size,
        optimize=not args.plain,
        compile=args.compile,
        warmup=args.warmup,
        min_time=args.min_time,
        latency=not args.no_latency,
        memory=not args.no_memory,
        num_classes=args.num_classes,
        img_size=args.img_size,
    )
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit benchmark`` on the CLI's subparsers."""
    p = sub.add_parser(
        "benchmark",
        help="inference throughput, latency, GMACs and memory of models",
        description="Inference throughput (images/s, median of timed blocks), batch-1 latency "
        "(ms), parameters, GMACs and peak CUDA memory (MiB) of DeiT models; a table, and with "
        "--output-dir benchmark.csv/.json/.png (the paper's Fig. 1 with this machine's "
        "throughput).",
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
    p.add_argument("--plain", action="store_true", help="time the plain model, not optimized")
    p.add_argument("--compile", action="store_true", help="torch.compile (frozen weights)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls (default 2)")
    p.add_argument("--min-time", type=float, default=2.0, help="timed seconds per measurement")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency")
    p.add_argument("--no-memory", action="store_true", help="skip the peak CUDA memory")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--img-size", type=int, help="input side (default: the model's)")
    p.add_argument("--output-dir", help="write benchmark.csv, benchmark.json, benchmark.png")
    p.add_argument("--no-plot", action="store_true", help="no PNG")
    p.set_defaults(func=_run_cli)
