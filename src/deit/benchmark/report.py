"""The benchmark's outputs: a text table, CSV, JSON and the paper's Figure 1 redrawn."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._optional import require
from .._write import atomic_write, atomic_write_text
from .measure import BenchmarkResult

__all__ = ["format_table", "plot_throughput_accuracy", "write_csv", "write_json"]

_THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


_COLUMNS = (
    ("model", "model", "s"),
    ("batch", "batch_size", "d"),
    ("images/s", "throughput", ".1f"),
    ("latency ms", "latency_ms", ".1f"),
    ("params M", "params_millions", ".2f"),
    ("GMACs", "gmacs", ".2f"),
    ("peak MiB", "peak_memory_mib", ".0f"),
    ("top-1", "top1", ".1f"),
    ("V100 img/s", "paper_throughput", ".0f"),
)


def format_table(results: Sequence[BenchmarkResult]) -> str:
    """A fixed-width text table of ``results`` (units in the headers) with a caption line."""
    rows = [[h for h, _, _ in _COLUMNS]]
    rows += [[_fmt(getattr(r, attr), spec) for _, attr, spec in _COLUMNS] for r in results]
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
    text = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


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
    atomic_write_text(
        path, json.dumps({"meta": info, "results": [r.to_dict() for r in results]}, indent=2)
    )


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
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path
