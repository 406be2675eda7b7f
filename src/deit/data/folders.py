"""ImageNet-style folder trees: ``root/train/<class>/*.jpg|png`` and ``root/val/<class>/...``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .files import _SkipMixin
from .images import load_rgb
from .info import _INFO, DatasetInfo, _split_dir
from .walk import subfolders, walk_files

__all__ = ["ImageFolderDataset"]


class ImageFolderDataset(_SkipMixin, ImageFolder):
    """ImageNet-style folder ``root/<class>/*.{jpg,png,...}`` (:class:`ImageFolder`).

    Classes are the sorted sub-folder names, labels their index. The folders are read by
    :func:`deit.data.walk.walk_files`: hidden entries (``.ipynb_checkpoints``) are not classes
    or images, links are followed but each file is read once and a link looping back is
    skipped with a warning; a file reached in two classes is refused. Images are returned as 8-bit
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
        ValueError: one file in two classes (through a link).
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
        self._drop_corrupt(skip_corrupt)
        self.info = DatasetInfo(
            info.name, len(self.classes), info.mean, info.std, info.image_size, info.in_chans
        )

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """The class names (visible sub-folders, sorted) and their indices."""
        classes = subfolders(directory)
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(
        directory: str | os.PathLike,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = IMG_EXTENSIONS,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        """``(path, class index)`` of every image, each file once (see the class docstring)."""
        keep = is_valid_file or (lambda path: path.lower().endswith(extensions or ()))
        samples: list[tuple[str, int]] = []
        owner: dict[str, str] = {}
        for cls in sorted(class_to_idx):
            found: dict[str, Path] = {}
            files = walk_files(Path(directory) / cls, keep, seen=found)
            if not files and not allow_empty:
                raise FileNotFoundError(
                    f"Found no valid file for the class {cls}; supported extensions are: "
                    f"{', '.join(extensions or ())}"
                )
            for real, path in found.items():
                if real in owner:
                    raise ValueError(
                        f"The image {str(path)!r} is also {owner[real]!r} (the same file, "
                        "reached through a link) in another class; an image belongs to one "
                        "class: remove the link or the copy."
                    )
                owner[real] = str(path)
            samples += [(str(p), class_to_idx[cls]) for p in files]
        return samples


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
        if sub == "test":  # never val/ in its place: a score must be of the images asked for
            val = "pass --split val to evaluate val/, or " if (Path(root) / "val").is_dir() else ""
            raise FileNotFoundError(
                f"{name}: {str(root)!r} has no test/ folder; {val}add <root>/test/<class>/ "
                "folders of images."
            )
        raise FileNotFoundError(f"{name}: folder {candidates[0]} not found; expected {layout}.")
    if path != candidates[0]:
        warnings.warn(
            f"{str(root)!r} has no val/ folder: its test/ folder is the val split.", stacklevel=2
        )
    try:
        return ImageFolderDataset(path, _INFO[name], **kw)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name}: {e}; expected layout {layout}.") from e
