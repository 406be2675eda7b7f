"""``deit analyze``: its flags; the command is :func:`deit.analysis.analyze`."""

from __future__ import annotations

import argparse

from . import command

__all__ = ["add_subcommand"]


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit analyze`` on the ``deit`` parser's subparsers."""
    p = sub.add_parser(
        "analyze",
        help="attention maps, class/distillation token similarity, head agreement",
        description="Write attention-map figures (last layer and rollout, per token), the "
        "class/distillation token similarity curve and summary.json for some images.",
    )
    p.add_argument("checkpoint", help="checkpoint written by deit train, or any weights file")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--output-dir", required=True, help="folder for the PNG figures and JSON")
    p.add_argument("--model", help="architecture of a weights file without metadata")
    p.add_argument("--teacher-model", help="teacher architecture (for a file without metadata)")
    p.add_argument("--teacher-path", help="teacher checkpoint, for agreement with the teacher")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument(
        "--max-figures", type=int, default=8, help="attention figures to write (default 8)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=command("deit.analysis.run", "_run"))
