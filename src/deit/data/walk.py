"""Walking a folder of images: the one walk behind folder data sets and ``deit predict``.

Every walk here follows links to folders and files, as torchvision's ``ImageFolder`` does,
but reads each file once (by its resolved path) and never enters a link that leads back to a
folder it is inside (``train/a/up -> ..``: a loop, which ``os.walk(followlinks=True)`` follows
until the path grows too long, reading every image dozens of times). Hidden entries (names
starting with ``.``: ``.ipynb_checkpoints``, macOS ``._x.jpg`` files, ``.git``) are skipped,
as torchvision and timm skip them. Imports no torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["is_hidden", "subfolders", "walk_files"]


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (starts with ``.``)."""
    return name.startswith(".")


def subfolders(folder: str | os.PathLike) -> list[str]:
    """The names of the folders (links to folders included) directly in ``folder``, hidden
    ones left out, sorted."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not is_hidden(e.name) and e.is_dir())


def walk_files(
    top: str | os.PathLike,
    keep: Callable[[str], bool],
    key: Callable[[str], Any] = str,
    seen: dict[str, Path] | None = None,
) -> list[Path]:
    """The files under ``top`` whose path ``keep`` accepts, searched recursively.

    A folder's files come first (ordered by ``key`` of their names), then its sub-folders in
    the same order, each searched whole before the next. Links are followed; a file already
    found (its resolved path a key of ``seen``, which this call extends with the files it
    finds, each mapped to its path as found) is left out, and a link to
    a folder that holds the link itself is skipped with a warning naming it. Hidden entries are
    skipped.

    Raises:
        PermissionError: a folder that cannot be read (one sentence naming it).
    """
    seen = {} if seen is None else seen
    out: list[Path] = []
    top = Path(top)
    stack = [(top, os.path.realpath(top))]
    entered = {stack[0][1]}
    while stack:
        folder, real = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(
                    (e for e in it if not is_hidden(e.name)), key=lambda e: key(e.name)
                )
        except PermissionError as e:
            raise PermissionError(
                f"Folder {str(folder)!r} cannot be read ({e.strerror}); check its permissions."
            ) from None
        below = []
        for e in entries:
            target = os.path.realpath(e.path)
            if e.is_dir():
                # a link to this folder or to one it is inside
                loop = real == target or real.startswith(target.rstrip(os.sep) + os.sep)
                if e.is_symlink() and loop:
                    warnings.warn(
                        f"skipped the link {e.path!r}: it leads back to {target!r}, a folder "
                        "it is inside (a loop); each image is read once.",
                        stacklevel=2,
                    )
                elif target not in entered:
                    entered.add(target)
                    below.append((Path(e.path), target))
            elif e.is_file() and keep(e.path) and target not in seen:
                seen[target] = Path(e.path)
                out.append(seen[target])
        stack += reversed(below)
    return out
