"""The flags of the ``deit`` commands, in modules that import neither torch nor timm.

``deit --help``, ``deit <command> --help``, ``deit --version`` and argument errors are answered
from these modules alone, in a fraction of the time torch and timm take to import (figures in
docs/reliability.md); each command's own module, named by a string, is imported only when the
command runs (:func:`command`). ``deit train`` keeps its flags in :mod:`deit.train.cli` and ``deit demo`` in
:mod:`deit.demo.run`, both equally light.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

__all__ = ["command"]


def command(module: str, name: str) -> Callable[[argparse.Namespace], int | None]:
    """The handler ``name`` of ``module`` (e.g. ``"deit.evaluate"``, ``"_eval_cmd"``), imported
    when it is first called, so that building the parser imports nothing of the command."""

    def run(args: argparse.Namespace) -> int | None:
        return getattr(importlib.import_module(module), name)(args)

    run.__qualname__ = f"{module}.{name}"
    return run
