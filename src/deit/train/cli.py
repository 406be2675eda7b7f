"""``deit train``: flags to a :class:`deit.config.Config`, then :func:`deit.train.run`.

Imports no torch until the command runs (see :mod:`deit.commands`)."""

from __future__ import annotations

import argparse
import os
import sys

from ..config import add_config_args, config_from_args

__all__ = ["add_subcommand"]


def _train_cmd(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.print_config:  # what the run would use, without importing torch
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    # torch is imported here, not above: the parser (help, argument errors) is built without it
    import torch.distributed as dist

    from .._workers import LoaderWorkerError
    from ..engine import NonFiniteLossError
    from .memory import StepOutOfMemoryError
    from .runner import run

    try:
        result = run(cfg, progress=not args.no_progress)
    except (NonFiniteLossError, StepOutOfMemoryError, LoaderWorkerError) as e:
        # a non-finite loss stops every rank at the same step (agreed across ranks): one line
        if int(os.environ.get("RANK", "0")) == 0 or isinstance(e, LoaderWorkerError):
            print(f"deit train: error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # the shell's convention for a process ended by a signal (129 SIGHUP, 130 SIGINT, 143
    # SIGTERM): a script can tell a stopped run from a finished one
    return 128 + result["stop_signal"] if result["status"] == "stopped" else 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit train`` (every :class:`~deit.config.Config` field as a flag)."""
    p = sub.add_parser(
        "train",
        help="train a DeiT student (optionally distilled) or a CNN teacher",
        description="Train with the data-efficient recipe; flags follow the official DeiT code. "
        "The defaults shown are the built-in ones (the paper's ImageNet recipe); a --preset given "
        "before --help shows its own, and --print-config prints every value a run would use.",
    )
    add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print every value the run would use (YAML: defaults < --preset < --config < "
        "flags) and exit without training",
    )
    p.set_defaults(func=_train_cmd)
