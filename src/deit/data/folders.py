"""ImageNet-style folder trees: ``root/train/<class>/*.jpg|png`` and ``root/val/<class>/...``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder

from .files import _SkipMixin
from .images import load_rgb
from .info import _INFO, DatasetInfo, _split_dir

__all__ = ["ImageFolderDataset"]


class ImageFolderDataset(_SkipMixin, ImageFolder):
    """ImageNet-style folder ``root/<class>/*.{jpg,png,...}`` (:class:`ImageFolder`).

    Classes are the sorted sub-folder names, labels their index. Images are returned as 8-bit
    PIL RGB with the pixels a viewer shows, whatever the file's mode and bit depth
    (:func:`deit.data.images.load_rgb`).

    Args:
        root: the split folder (``.../train`` or ``.../val``).
        info: :class:`.DatasetInfo` whose ``num_classes`` is replaced by the actual count.
        transform, target_transform: as in torchvision.
        skip_corrupt: ``False`` (default): reading an unreadable file raises
            :class:`.CorruptImageError` naming it (also from data-loader workers). ``True``: every
            file is checked once here (``PIL.Image.verify``; JPEGs without an end marker are
            decoded) and unreadable files are dropped with one warning giving their count and
            names (kept in ``.skipped``), so ``len()`` is the number of images used; a file that
            still fails to decode later is replaced by the next sample, with a warning.

    Raises:
        FileNotFoundError: no class folder or no image file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        info: DatasetInfo,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__(
            str(root), transform=transform, target_transform=target_transform, loader=load_rgb
        )
        self.skip_corrupt = skip_corrupt
        self.skipped = []
        if skip_corrupt:
            self._drop_corrupt()
            self.imgs = self.samples
            self.targets = [t for _, t in self.samples]
        self.info = DatasetInfo(
            info.name, len(self.classes), info.mean, info.std, info.image_size, info.in_chans
        )


def _folder(name: str, root: str | os.PathLike | None, split: str, **kw: Any) -> ImageFolderDataset:
    layout = (
        "<root>/train/<class>/*.jpg|png and <root>/val/<class>/*.jpg|png "
        "(ImageNet-style; one sub-folder per class)"
    )
    if root is None:
        raise FileNotFoundError(
            f"The {name} data set needs its folder: pass --data-path (root= in Python) "
            f"laid out as {layout}."
        )
    sub = _split_dir(split)
    candidates = [Path(root) / sub] + ([Path(root) / "test"] if sub == "val" else [])
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        raise FileNotFoundError(f"{name}: folder {candidates[0]} not found; expected {layout}.")
    try:
        return ImageFolderDataset(path, _INFO[name], **kw)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name}: {e}; expected layout {layout}.") from e
