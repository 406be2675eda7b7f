"""CIFAR-10 / CIFAR-100 from the python batches of the official archives (no download)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import ArrayImageDataset
from .info import _INFO, _split_dir
from .unpickle import _str, safe_unpickle

__all__ = ["load_cifar_batch"]


def load_cifar_batch(path: str | os.PathLike, label_key: bytes) -> tuple[np.ndarray, list[int]]:
    """Read one CIFAR python batch.

    Args:
        path: a batch file (``data_batch_1``, ``test_batch``, ``train``, ``test``).
        label_key: ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100).

    Returns:
        ``(images, labels)``: uint8 ``(N, 32, 32, 3)`` and ``N`` ints.

    Raises:
        UnsafePickleError: see :func:`safe_unpickle`.
        ValueError: keys missing, or ``b'data'`` not uint8 ``(N, 3072)`` matching the labels.
    """
    d = safe_unpickle(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise ValueError(f"{path}: expected a dict with keys b'data' and {label_key!r}.")
    data = np.asarray(d[b"data"])
    labels = [int(v) for v in d[label_key]]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}.")
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels.")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


_CIFAR = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        val=["test_batch"],
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        train=["train"],
        val=["test"],
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}


def _cifar(name: str, root: str | os.PathLike | None, split: str, **kw: Any) -> ArrayImageDataset:
    spec = _CIFAR[name]
    layout = (
        f"<root>/{spec['folder']}/{{{','.join(spec['train'] + spec['val'])},{spec['meta']}}} "
        "(the python version of the official archive, extracted)"
    )
    if root is None:
        raise FileNotFoundError(
            f"The {name} data set needs its folder: pass --data-path (root= in Python) "
            f"laid out as {layout}."
        )
    base = Path(root)
    if (base / spec["folder"]).is_dir():
        base = base / spec["folder"]
    files = spec["train" if _split_dir(split) == "train" else "val"]  # val, test: the test batch
    missing = [f for f in files + [spec["meta"]] if not (base / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name}: missing {', '.join(missing)} in {base}; expected layout {layout}."
        )
    parts = [load_cifar_batch(base / f, spec["label_key"]) for f in files]
    meta = safe_unpickle(base / spec["meta"])
    if not isinstance(meta, dict) or spec["names_key"] not in meta:
        raise ValueError(f"{base / spec['meta']}: expected a dict with key {spec['names_key']!r}.")
    classes = [_str(c) for c in meta[spec["names_key"]]]
    images = np.concatenate([p[0] for p in parts])
    labels = [t for p in parts for t in p[1]]
    bad = [t for t in labels if not 0 <= t < len(classes)]
    if bad:
        raise ValueError(f"{name}: label {bad[0]} outside [0, {len(classes)}).")
    return ArrayImageDataset(images, labels, classes, _INFO[name], **kw)
