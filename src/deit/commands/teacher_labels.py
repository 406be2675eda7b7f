"""``deit teacher-labels``: its flags; the command is
:func:`deit.label_pass.compute_teacher_labels`."""

from __future__ import annotations

import argparse

from ..config import add_config_args
from . import command

__all__ = ["add_subcommand"]


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit teacher-labels`` (every training flag, plus ``--output``, ``--top-k``,
    ``--teacher-batch-size``)."""
    p = sub.add_parser(
        "teacher-labels",
        help="run the teacher once over every training view of a run and store its labels",
        description="Compute a teacher-label store for `deit train --teacher-labels DIR`.",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="folder of the store")
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="0: top-1 classes only; K: also the top-K probabilities (fp16); K >= classes: full "
        "fp16 logits (default: what the run's --distillation-type reads: full logits for soft, "
        "top-1 for hard)",
    )
    p.add_argument("--teacher-batch-size", type=int, default=256, help="images per teacher forward")
    add_config_args(p)
    p.set_defaults(func=command("deit.label_pass", "_labels_cmd"))
