"""iNaturalist 2018 / 2019 from its JSON annotations."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from .._choices import INAT_CATEGORIES
from .files import _SkipMixin
from .images import load_rgb
from .info import _INFO, DatasetInfo, _split_dir

__all__ = ["INAT_CATEGORIES", "INatDataset"]


class INatDataset(_SkipMixin, Dataset):
    """iNaturalist 2018 / 2019 from its JSON annotations (official DeiT ``INatDataset`` rule).

    Layout: ``root/train{year}.json``, ``root/val{year}.json`` (COCO-style ``images``
    with ``id`` and ``file_name`` relative to ``root``, and ``annotations`` with ``image_id``
    and ``category_id``) and ``root/categories.json`` (a list of ``{"id", "name", "genus",
    "family", "order", "class", "phylum", "kingdom", "supercategory"}``; when absent, the train
    JSON's ``categories``). Classes are the distinct values of the chosen level, numbered in
    order of first appearance in the *train* annotations, as in the official code, so train and
    val share one numbering; images are read by :func:`~deit.data.images.load_rgb`.

    Args:
        root: folder holding the JSON files (image paths are relative to it).
        year: 2018 or 2019.
        split: 'train' or 'val' ('test' is refused: its labels are not public).
        category: taxonomy level, one of :data:`INAT_CATEGORIES` (default 'name': species).
        transform, target_transform: as in torchvision.
        skip_corrupt: as in :class:`~deit.data.folders.ImageFolderDataset`.

    Raises:
        FileNotFoundError: a JSON file is missing (the message gives the layout).
        ValueError: unknown category level, or a val category unseen in train.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        year: int = 2018,
        split: str = "train",
        category: str = "name",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if category not in INAT_CATEGORIES:
            raise ValueError(
                f"category must be one of {', '.join(INAT_CATEGORIES)} (got {category!r})."
            )
        root = Path(root)
        layout = (
            f"<root>/train{year}.json, <root>/val{year}.json, <root>/categories.json and the "
            "images at the paths the JSON files give (relative to <root>)"
        )
        sub = _split_dir(split)
        if sub == "test":
            raise ValueError(
                f"inat{year % 100}: the iNaturalist test set has no public labels, so it cannot "
                f"be scored; pass --split val (val{year}.json)."
            )
        need = [root / f"train{year}.json", root / f"{sub}{year}.json"]
        for p in need:
            if not p.is_file():
                raise FileNotFoundError(f"inat{year % 100}: {p} not found; expected {layout}.")
        train = json.loads(need[0].read_text())
        data = train if sub == "train" else json.loads(need[1].read_text())
        cat_file = root / "categories.json"
        cats = json.loads(cat_file.read_text()) if cat_file.is_file() else train.get("categories")
        if not cats:
            raise FileNotFoundError(f"inat{year % 100}: {cat_file} not found; expected {layout}.")
        level = {int(c["id"]): str(c[category]) for c in cats}

        class_to_idx: dict[str, int] = {}
        for a in train["annotations"]:
            class_to_idx.setdefault(level[int(a["category_id"])], len(class_to_idx))
        img_cat = {int(a["image_id"]): int(a["category_id"]) for a in data["annotations"]}
        self.samples = []
        for im in data["images"]:
            key = level[img_cat[int(im["id"])]]
            if key not in class_to_idx:
                raise ValueError(f"inat{year % 100}: {category} {key!r} of {sub} is not in train.")
            self.samples.append((str(root / im["file_name"]), class_to_idx[key]))
        self.classes = list(class_to_idx)
        self.class_to_idx = class_to_idx
        self.targets = [t for _, t in self.samples]
        self.category = category
        self.year = year
        self.transform = transform
        self.target_transform = target_transform
        self.loader = load_rgb
        self._drop_corrupt(skip_corrupt)
        base = _INFO[f"inat{year % 100}"]
        self.info = DatasetInfo(base.name, len(self.classes), base.mean, base.std, None)
        self.nb_classes = len(self.classes)  # official attribute name

    def __len__(self) -> int:
        return len(self.samples)
