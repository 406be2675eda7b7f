"""Images held in memory as one uint8 array (CIFAR, mnist5k, digits)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .info import DatasetInfo

__all__ = ["ArrayImageDataset"]


class ArrayImageDataset(Dataset):
    """Images held in one uint8 array; yields ``(PIL RGB image, int label)``.

    Args:
        images: uint8 array ``(N, H, W)`` (grey, copied to 3 channels on access) or
            ``(N, H, W, 3)`` (RGB).
        targets: ``N`` integer labels in ``[0, len(classes))``.
        classes: class names.
        info: the data set's :class:`~deit.data.info.DatasetInfo`.
        transform: applied to the PIL image; ``None`` returns the PIL image.
        target_transform: applied to the int label.
        indices: optional positions of these images in the source data (kept as ``.indices``,
            e.g. which of the 5,000 mnist5k digits form this split).

    Raises:
        ValueError: wrong array shape/dtype, or labels and images of different lengths.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        classes: Sequence[str],
        info: DatasetInfo,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        indices: np.ndarray | None = None,
    ) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} "
                f"{images.shape}."
            )
        if images.ndim == 4 and images.shape[-1] != 3:
            raise ValueError(f"colour images must be (N, H, W, 3), got {images.shape}.")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels.")
        self.data = images
        self.targets = [int(t) for t in targets]
        self.classes = [str(c) for c in classes]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.info = info
        self.transform = transform
        self.target_transform = target_transform
        self.indices = indices

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        arr = self.data[index]
        img = Image.fromarray(arr, "L").convert("RGB") if arr.ndim == 2 else Image.fromarray(arr)
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.info.name!r}, n={len(self)}, "
            f"classes={len(self.classes)}, size={self.data.shape[1:3]})"
        )
