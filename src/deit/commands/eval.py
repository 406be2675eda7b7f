"""``deit eval``: its flags; the command is :func:`deit.evaluate.evaluate_checkpoint`."""

from __future__ import annotations

import argparse

from . import command

__all__ = ["add_subcommand"]


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit eval``."""
    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint, per head, with a teacher")
    p.add_argument("checkpoint", help="checkpoint file (deit train, official, timm, safetensors)")
    p.add_argument(
        "--data-set",
        default=None,
        help="data set name (default: the one the checkpoint records, else deit train's "
        "default, imagenet)",
    )
    p.add_argument("--data-path", default=None, help="data set root folder")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--model", default=None, help="architecture, for files that do not record it")
    p.add_argument("--teacher-model", default=None, help="teacher architecture")
    p.add_argument("--teacher-path", default=None, help="teacher weights")
    p.add_argument("--ema", action="store_true", help="use the EMA weights when present")
    p.add_argument(
        "--mean", type=float, nargs="+", default=None, help="normalisation mean per channel"
    )
    p.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--num_workers",
        "--num-workers",
        type=int,
        default=0,
        help="data-loading workers (default 0)",
    )
    p.add_argument("--device", default=None)  # CUDA when available, chosen when it runs
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=command("deit.evaluate", "_eval_cmd"))
