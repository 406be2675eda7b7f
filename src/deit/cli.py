"""`deit` command line: turns flags into calls of the library, nothing more.

Subcommands: list-models, list-datasets, train, teacher-labels, eval, demo, predict, analyze,
benchmark, export. Heavy modules
are imported inside each handler so `deit --help` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ._notes import notes_as_lines
from ._optional import MissingExtraError
from ._write import too_long_message

__all__ = ["main", "build_parser", "package_version"]


def _list_models(args: argparse.Namespace) -> int:
    from ._notes import print_note
    from .models.catalog import model_rows

    # without a pattern, this package's models; a pattern searches timm and torchvision too
    rows = model_rows(args.pattern or "*", args.pretrained, teachers=args.pattern is not None)
    if args.names:
        print("\n".join(r.name for r in rows))
    else:
        table = [("name", "kind", "input px", "weights")]
        table += [
            (r.name, r.kind, str(r.input_size), "official" * r.official_weights) for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        for row in table:
            print(("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3]).rstrip())
    if args.pattern is None and not args.pretrained:
        print_note(
            "timm's and torchvision's models serve as teachers (and as CNNs to train) too; "
            "give a pattern to list them with these, e.g. deit list-models '*resnet*'."
        )
    return 0


def _add_list_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list-models",
        help="list the models a run can name: DeiT, and with a pattern timm's and torchvision's",
        description="The DeiT configurations (official and small-image ones) with their kind and "
        "input size; given a pattern, also the timm and torchvision models that match it, which "
        "serve as teachers (--teacher-model) or CNNs to train.",
    )
    p.add_argument("pattern", nargs="?", help="shell-style pattern, e.g. '*tiny*' or '*resnet*'")
    p.add_argument("--pretrained", action="store_true", help="only names with official weights")
    p.add_argument("--names", action="store_true", help="names only, one a line")
    p.set_defaults(func=_list_models)


def _list_datasets(args: argparse.Namespace) -> int:
    from .data.info import dataset_info, list_datasets

    table = [("name", "classes", "image px", "where the images come from")]
    for name in list_datasets():
        info = dataset_info(name)
        classes = "per folder" if info.num_classes is None else f"{info.num_classes:,}"
        size = "varies" if info.image_size is None else str(info.image_size)
        table.append((name, classes, size, info.source))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    return 0


def _add_list_datasets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list-datasets",
        help="list the data sets --data-set takes, and where each one's images come from",
        description="The names --data-set takes, their class count, image size and where the "
        "images come from (bundled, or the folder to pass with --data-path).",
    )
    p.set_defaults(func=_list_datasets)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to find the flags, without the
    usage block (a wrong value among 90 flags is lost under it); an unknown flag gets the
    closest known one, or its usual spelling here (``--learning-rate`` -> ``--lr``)."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` plus the closest flag, then exit with status 2."""
        hint = ""
        if message.startswith("unrecognized arguments:"):
            hint = self._suggest(message.split(":", 1)[1].split())
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")

    def _suggest(self, words: list[str]) -> str:
        from .config import ALIASES

        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        for word in (w for w in words if w.startswith("--")):
            key = word[2:].split("=")[0].replace("-", "_")
            alias = ALIASES.get(key)
            close = [f"--{alias.replace('_', '-')}"] if alias else []
            close = close or difflib.get_close_matches(word.split("=")[0], known, n=1)
            if close:
                return f"; did you mean {close[0]}?"
        return ""


# Each job module registers its own subcommand through `add_subcommand(sub)` so this file does
# not grow with their flags.
# The modules import neither torch nor timm (each command's own module is imported when it
# runs), so help screens, --version and argument errors start in a fraction of a second.
_JOB_MODULES = ("train.cli", "commands.teacher_labels", "commands.eval", "demo.run")
_JOB_MODULES += ("commands.predict", "commands.analyze", "commands.benchmark", "commands.export")


def package_version() -> str:
    """The installed distribution's version (package metadata), else ``deit.__version__`` for
    a source tree that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deit")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the `deit` command with every available subcommand."""
    import importlib

    parser = _Parser(
        prog="deit",
        description="DeiT: data-efficient image transformers and distillation through attention.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_list_models(sub)
    _add_list_datasets(sub)
    for mod in _JOB_MODULES:
        importlib.import_module(f"deit.{mod}").add_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `deit` console script; returns the process exit code.

    Errors users can fix (bad paths, configs, checkpoints: ``ValueError`` and ``OSError``
    subclasses such as :class:`deit.checkpoints.CheckpointError`; a missing optional extra) are
    printed as one line on stderr
    with exit code 2 instead of a traceback; set ``DEIT_DEBUG=1`` to see the traceback.
    """
    # libgomp (torch's OpenMP runtime) spin-waits at every parallel region by default; on a CPU
    # shared with anything else (a data-loader worker, another job) that slows training several
    # times over (benchmarks/README.md), while passive waiting costs little on an idle machine. libgomp reads the
    # variable when torch loads it, so it is set here, before the subcommands import torch (the
    # deit package imports nothing at start-up), and only for the command: a library import
    # changes nothing global. Set OMP_WAIT_POLICY yourself to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand, whose flags the suggestion is drawn from
        subparsers = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        chosen = subparsers.get(getattr(args, "command", None), parser)
        chosen.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with notes_as_lines():
            return int(args.func(args) or 0)
    except BrokenPipeError:  # `deit list-models | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError, MissingExtraError) as e:
        if os.environ.get("DEIT_DEBUG"):
            raise
        message = too_long_message(e) if isinstance(e, OSError) else None
        print(f"deit {args.command}: error: {message or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m deit.cli (torchrun)
    sys.exit(main())
