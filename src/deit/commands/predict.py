"""``deit predict``: its flags; the command is :func:`deit.predict.predict`."""

from __future__ import annotations

import argparse

from .._choices import HEAD_CHOICES
from . import command

__all__ = ["add_subcommand"]


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit predict`` on the ``deit`` parser's subparsers."""
    p = sub.add_parser(
        "predict",
        help="classify image files or folders with a checkpoint",
        description="Top-k classes of images (files or folders, searched recursively) through "
        "the checkpoint's own evaluation transform.",
    )
    p.add_argument("checkpoint", help="checkpoint written by deit train, or any weights file")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument(
        "--head",
        choices=HEAD_CHOICES,
        default="both",
        help="distilled models: average of both heads (default), class head or distillation head",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--model", help="architecture of a weights file without metadata")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (shown on a terminal)"
    )
    p.set_defaults(func=command("deit.predict", "_run"))
