"""Fixed, seed-independent splits: stratified train/test parts and ``--train-subset`` cuts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["stratified_split", "subset_split"]


def stratified_split(
    labels: Sequence[int], test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of indices into (train, test).

    The number of test images per class is ``n_class * test_fraction`` rounded by the largest
    remainder method so that the total is exactly ``round(N * test_fraction)``; each class
    then keeps its share of both parts to within one image. Within a class, the test images
    are the first ones of a ``numpy.random.RandomState(seed)`` permutation of that class's
    indices (ascending order); ``RandomState`` streams are frozen by NumPy's policy (NEP 19),
    so the split is the same on every machine and NumPy version.

    Args:
        labels: ``N`` integer labels.
        test_fraction: share of the test part, in (0, 1).
        seed: seed of the permutation.

    Returns:
        ``(train_idx, test_idx)``: sorted int64 index arrays, disjoint, covering ``range(N)``.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    total = int(round(len(labels) * test_fraction))
    exact = counts * test_fraction
    k = np.floor(exact).astype(int)
    rest = total - int(k.sum())
    # largest remainder first, ties broken by class order (stable sort)
    order = np.argsort(-(exact - k), kind="stable")
    k[order[:rest]] += 1
    rs = np.random.RandomState(seed)
    test: list[np.ndarray] = []
    for c, kc in zip(classes, k):
        idx = np.flatnonzero(labels == c)
        test.append(idx[rs.permutation(len(idx))[:kc]])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask).astype(np.int64), test_idx


def subset_split(total: int, n: int, k: int = 0) -> tuple[list[int], list[int], list[int]]:
    """``--train-subset n --val-images k`` of a training split of ``total`` images.

    A fixed permutation (``torch.randperm`` seeded with 0, independent of the run's seed, so
    every seed of a study trains on the same images and a smaller ``n``'s images are part of
    every larger ``n``'s) is cut into the first ``n`` (training), the next ``k`` (validation)
    and the rest (unused).

    Returns:
        ``(train, val, rest)``: index lists; ``train`` in permutation order, ``val`` and
        ``rest`` sorted.

    Raises:
        ValueError: ``n + k`` exceeds ``total``.
    """
    import torch

    if n + k > total:
        raise ValueError(
            f"--train-subset {n} plus --val-images {k} needs more than the {total} training "
            "images; lower one of them."
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(0)).tolist()
    return order[:n], sorted(order[n : n + k]), sorted(order[n + k :])
