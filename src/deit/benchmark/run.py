"""``deit benchmark``: several models measured, printed and written (:func:`run_benchmark`)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..precision import set_cuda_backends
from ..train.lock import folder_lock
from .measure import OFFICIAL_MODELS, BenchmarkResult, benchmark_model, checked_device_and_precision
from .report import format_table, plot_throughput_accuracy, write_csv, write_json

__all__ = ["run_benchmark"]


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

    dev, precision = checked_device_and_precision(kwargs.get("batch_size"), device, precision)
    models = list(models or OFFICIAL_MODELS)
    for m in set(models) - set(list_models()):
        get_model_spec(m)  # raises with close matches
    with contextlib.ExitStack() as stack:
        if output_dir is not None:  # a second benchmark would mix its files and its timings
            stack.enter_context(folder_lock(output_dir, "benchmark", "--output-dir"))
        return _measure_and_write(models, output_dir, dev, precision, plot, verbose, kwargs)


def _measure_and_write(
    models: list[str],
    output_dir: str | Path | None,
    dev: torch.device,
    precision: str,
    plot: bool,
    verbose: bool,
    kwargs: dict[str, Any],
) -> list[BenchmarkResult]:
    """:func:`run_benchmark` once its arguments are checked (and its folder locked)."""
    set_cuda_backends(dev)  # the cuDNN / TF32 settings of deit train
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
