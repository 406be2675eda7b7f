"""``deit benchmark``: several models measured, printed and written (:func:`run_benchmark`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .measure import (
    OFFICIAL_MODELS,
    PRECISIONS,
    BenchmarkResult,
    _check_batch_size,
    _check_precision,
    benchmark_model,
    default_precision,
    resolve_device,
)
from .report import format_table, plot_throughput_accuracy, write_csv, write_json

__all__ = ["add_subcommand", "run_benchmark"]


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
    from ..models import get_model_spec, list_models

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
