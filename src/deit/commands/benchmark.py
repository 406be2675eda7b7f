"""``deit benchmark``: its flags; the command is :func:`deit.benchmark.run_benchmark`."""

from __future__ import annotations

import argparse

from .._choices import PRECISIONS
from . import command

__all__ = ["add_subcommand"]


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
    p.set_defaults(func=command("deit.benchmark.run", "_run_cli"))
