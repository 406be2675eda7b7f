"""The simplest classifiers on the demo's digits: what a DeiT must beat to mean anything.

Logistic regression, k-nearest neighbours and an RBF support-vector machine (scikit-learn) are
fitted on the raw pixels (scaled to [0, 1]) of the same training digits a ``deit train
--train-subset N`` run trains on, and scored on the same held-out digits it evaluates on
(``--val-images`` / ``--eval-unused``), so their top-1 sits in the demo's table beside the
transformers'. Their settings are scikit-learn's usual ones (C 0.1 for logistic regression,
3 neighbours, C 10 with ``gamma='scale'`` for the SVM), not tuned on the held-out digits.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ._optional import require
from .data import build_dataset, subset_split

__all__ = ["BASELINES", "digit_arrays", "fit_baselines"]

#: Baseline name -> (scikit-learn module, class, keyword arguments).
BASELINES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "logistic_regression": (
        "sklearn.linear_model",
        "LogisticRegression",
        {"C": 0.1, "max_iter": 2000},
    ),
    "knn": ("sklearn.neighbors", "KNeighborsClassifier", {"n_neighbors": 3}),
    "svm": ("sklearn.svm", "SVC", {"C": 10.0, "gamma": "scale"}),
}


def digit_arrays(
    data_set: str, n: int, val_images: int = 0, eval_unused: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and held-out pixels of ``deit train --data-set D --train-subset n``.

    Args:
        data_set: an in-memory data set (``mnist5k``, ``digits``, ``cifar*``).
        n: training images (``--train-subset``).
        val_images: ``--val-images``.
        eval_unused: ``--eval-unused``: held-out = the test split plus the unused training
            images after the validation ones; without it the validation images alone, or
            the test split when ``val_images`` is 0 (as ``deit train`` evaluates).

    Returns:
        ``(x_train (n, P), y_train (n,), x_test (M, P), y_test (M,))``: float32 pixels in
        [0, 1] (``P`` = pixels per image) and int64 labels.

    Raises:
        ValueError: a data set whose images are not held in memory, or ``n`` + ``val_images``
            beyond the training split.
    """
    train = build_dataset(data_set, None, "train")
    if not hasattr(train, "data"):
        raise ValueError(f"baselines need an in-memory data set (mnist5k, digits), not {data_set}.")
    tr, val, rest = subset_split(len(train), n, val_images)
    x, y = np.asarray(train.data), np.asarray(train.targets)
    if eval_unused or not val_images:
        test = build_dataset(data_set, None, "val")
        xt, yt = np.asarray(test.data), np.asarray(test.targets)
        if eval_unused:
            xt, yt = np.concatenate([xt, x[rest]]), np.concatenate([yt, y[rest]])
    else:
        xt, yt = x[val], y[val]

    def flat(a: np.ndarray) -> np.ndarray:
        return a.reshape(len(a), -1).astype(np.float32) / 255.0

    return flat(x[tr]), y[tr], flat(xt), yt


def fit_baselines(
    data_set: str, n: int, val_images: int = 0, eval_unused: bool = True
) -> list[dict[str, Any]]:
    """Fit every :data:`BASELINES` classifier on the digits of :func:`digit_arrays`.

    Returns:
        One record per baseline: ``variant`` (its name), ``train_images``, ``test_images``,
        ``top1`` (% of held-out images classified right, 2 decimals) and ``seconds`` (fit and
        score). The fits are deterministic: every seed of a study trains on the same digits.

    Raises:
        ModuleNotFoundError: scikit-learn is missing (names the ``demo`` extra).
    """
    require("sklearn", "demo", "The demo's baselines")
    import importlib

    xtr, ytr, xte, yte = digit_arrays(data_set, n, val_images, eval_unused)
    records = []
    for name, (module, cls, kwargs) in BASELINES.items():
        start = time.time()
        clf = getattr(importlib.import_module(module), cls)(**kwargs)
        top1 = 100.0 * float((clf.fit(xtr, ytr).predict(xte) == yte).mean())
        records.append(
            {
                "variant": name,
                "train_images": n,
                "test_images": len(yte),
                "top1": round(top1, 2),
                "seconds": round(time.time() - start, 2),
            }
        )
    return records
