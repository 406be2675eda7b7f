"""Notes to the user on stderr, one line each: what the commands print besides their results.

Below the jobs and the command line, so that a job prints a note without importing
:mod:`deit.cli`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["notes_as_lines", "print_note"]

#: The notes printed during this command (each is printed once); ``None`` outside a command
#: (a Python caller): every note is printed.
_shown_notes: set[str] | None = None


def print_note(message: str) -> None:
    """Print ``note: <message>`` on stderr (the one form of every note of every command),
    unless this command has printed it already."""
    if _shown_notes is not None:
        if message in _shown_notes:
            return
        _shown_notes.add(message)
    print(f"note: {message}", file=sys.stderr)


@contextlib.contextmanager
def notes_as_lines() -> Iterator[None]:
    """Print deit's own user warnings (a loader's adaptations, e.g. a head dropped when
    fine-tuning to another class count) with :func:`print_note`, like the commands' other
    notes, instead of Python's warning with its source line. Other warnings keep Python's
    format."""
    global _shown_notes
    package = str(Path(__file__).parent) + os.sep
    outer, _shown_notes = _shown_notes, set()
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UserWarning) and str(filename).startswith(package):
                print_note(str(message))
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield
        finally:
            _shown_notes = outer


def _print_notes(caught: list[warnings.WarningMessage]) -> None:
    """Print each distinct user warning of ``caught`` as ``note: <message>`` (the one form of
    every note of every command)."""
    seen = set()
    for w in caught:
        msg = str(w.message)
        if msg not in seen and issubclass(w.category, UserWarning):
            seen.add(msg)
            print_note(msg)
