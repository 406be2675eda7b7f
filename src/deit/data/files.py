"""Reading image files of a data set: an error naming an unreadable file, or skipping it."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

from PIL import Image

from .images import too_large

__all__ = ["CorruptImageError"]


class CorruptImageError(OSError):
    """An image file could not be decoded; the message is one sentence naming the file.

    A data-loader worker's error reaches the main process re-raised by
    :class:`torch.utils.data.DataLoader` as ``CorruptImageError("Caught CorruptImageError in
    DataLoader worker process N. Original Traceback ...")``; the constructor keeps only the
    original sentence, so the error reads the same whatever ``num_workers`` is.
    """

    def __init__(self, *args: object) -> None:
        msg = args[0] if len(args) == 1 else None
        if isinstance(msg, str) and msg.startswith("Caught ") and "Traceback" in msg:
            tag = f"{CorruptImageError.__name__}: "
            lines = [ln for ln in msg.splitlines() if tag in ln]
            if lines:
                args = (lines[-1].split(tag, 1)[1],)
        super().__init__(*args)


def _reason(e: BaseException) -> str:
    """``Type: first line of the message`` (PIL messages can span lines)."""
    if isinstance(e, Image.DecompressionBombError):
        return too_large(e)
    text = str(e).splitlines()[0][:160] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _check_image(path: str) -> str | None:
    """Cheap check of an image file; returns the reason when it is unreadable, else ``None``.

    ``PIL.Image.verify`` (header, and PNG checksums) without a full decode; a JPEG whose last
    bytes hold no end-of-image marker (a truncated download, which ``verify`` misses) is then
    decoded fully to confirm.
    """
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(os.path.getsize(path) - 64, 0))
                tail = f.read()
            if b"\xff\xd9" not in tail:  # no end-of-image marker
                with Image.open(path) as im:
                    im.draft("RGB", (1, 1))  # DCT-scaled decode: reads every byte, quickly
                    im.load()
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        return _reason(e)
    return None


#: Files skipped lazily in this process, so each is warned about once.
_WARNED: set[str] = set()


class _SkipMixin:
    """Loading of samples shared by the folder and iNaturalist data sets: an error naming the
    file, or skip with a warning."""

    samples: list[tuple[str, int]]
    skip_corrupt: bool
    skipped: list[tuple[str, str]]
    loader: Callable[[str], Any]
    transform: Callable | None
    target_transform: Callable | None

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, target = self._load(index)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def _load(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for step in range(n):
            path, target = self.samples[(index + step) % n]
            try:
                return self.loader(path), target
            except Exception as e:  # noqa: BLE001
                if not self.skip_corrupt:
                    raise CorruptImageError(
                        f"cannot read image file {path} ({_reason(e)}); replace or remove it, "
                        "or skip unreadable files with --skip-corrupt (skip_corrupt=True)"
                    ) from None
                if path not in _WARNED:
                    _WARNED.add(path)
                    warnings.warn(
                        f"skipping unreadable image file {path} ({_reason(e)}), which the "
                        "check at start-up did not catch; the next image is used in its place",
                        stacklevel=3,
                    )
        raise CorruptImageError("no readable image file in the data set")

    def _drop_corrupt(self, skip_corrupt: bool) -> None:
        """With ``skip_corrupt``, check every file once (:func:`_check_image`), drop the
        unreadable ones and warn once with their count and names; ``self.skipped`` keeps
        ``(path, reason)`` pairs."""
        self.skip_corrupt = skip_corrupt
        checked = self.samples if skip_corrupt else []
        self.skipped = bad = [(p, why) for p, _ in checked if (why := _check_image(p)) is not None]
        if not bad:
            return
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        kept = len(self.samples) - len(bad)
        warnings.warn(
            f"skipping {len(bad)} unreadable image file(s), using the other {kept}: {shown}{more}",
            stacklevel=3,
        )
        drop = {p for p, _ in bad}
        # in place: an ImageFolder's ``.imgs`` is the same list
        self.samples[:] = [s for s in self.samples if s[0] not in drop]
        self.targets = [t for _, t in self.samples]
