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

from .flops import count_flops, count_gmacs
from .measure import (
    OFFICIAL_MODELS,
    PAPER_THROUGHPUT,
    PAPER_TOP1,
    PRECISIONS,
    BenchmarkResult,
    benchmark_model,
    default_precision,
    device_name,
    precision_context,
    resolve_device,
    time_call,
)
from .report import format_table, plot_throughput_accuracy, write_csv, write_json
from .run import run_benchmark

__all__ = [
    "OFFICIAL_MODELS",
    "PAPER_TOP1",
    "PAPER_THROUGHPUT",
    "PRECISIONS",
    "BenchmarkResult",
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
