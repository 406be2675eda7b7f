"""Shared test fixtures (kept small)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image_tree(
    root: Path, counts: dict[str, dict[str, int]], size: tuple[int, int] = (20, 16)
) -> Path:
    """Write an ImageNet-style tree ``root/<split>/<class>/<i>.{png,jpg}`` of real images.

    ``counts[split][class]`` images per class; even indices are PNG, odd JPEG; pixel values
    are deterministic (``(17 * i + class_index * 60) % 256``), RGB, ``size`` = (width, height).
    """
    for split, per_class in counts.items():
        for c_idx, (cls, n) in enumerate(sorted(per_class.items())):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.full((size[1], size[0], 3), (17 * i + c_idx * 60) % 256, np.uint8)
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(arr).save(d / f"{i}.{ext}")
    return root


def abcd_tree(tmp_path_factory: pytest.TempPathFactory, train: int, val: int) -> Path:
    """A fresh tree of 4 classes ``a``-``d`` with ``train`` training and ``val`` validation
    images each, 28x28 (:func:`write_image_tree`)."""
    counts = {"train": dict.fromkeys("abcd", train), "val": dict.fromkeys("abcd", val)}
    return write_image_tree(tmp_path_factory.mktemp("tree"), counts, size=(28, 28))


def tiny_train_argv(tree: Path, out: Path, *more: str) -> list[str]:
    """``deit train`` on ``tree`` for one epoch of batch 4 on the CPU, the pico DeiT at 28 px,
    without EMA, repeated augmentation, mixing, loader workers or progress bar; ``more``
    appended."""
    argv = ["train", "--model", "deit_pico_patch7_28", "--input-size", "28", "--data-set"]
    argv += ["folder", "--data-path", str(tree), "--batch-size", "4", "--epochs", "1"]
    argv += ["--device", "cpu", "--output_dir", str(out), "--no-progress", "--no-model-ema"]
    argv += ["--no-repeated-aug", "--num_workers", "0", "--no-pin-mem", "--mixup", "0"]
    return argv + ["--cutmix", "0", *more]


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """A tree with train: cat 3, dog 2, fish 4 images; val: cat 1, dog 1, fish 2 (20x16 RGB)."""
    return write_image_tree(
        tmp_path / "imgs",
        {"train": {"cat": 3, "dog": 2, "fish": 4}, "val": {"cat": 1, "dog": 1, "fish": 2}},
    )


def tiny_hf_kwargs(prefix: str = "class") -> dict:
    """Keyword arguments of a tiny transformers ViT/DeiT config (32 px, 8-px patches, D 64,
    2 blocks, 2 heads, 5 labels named ``<prefix><i>``) for parity tests."""
    return dict(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        num_labels=5,
        id2label={i: f"{prefix}{i}" for i in range(5)},
        label2id={f"{prefix}{i}": i for i in range(5)},
    )


@pytest.fixture
def one_thread():
    """One torch thread for tests of small models: on a busy 2-core machine two threads wait
    on each other at every operation (a 3-block DeiT-Ti forward: 0.4 s against 0.03 s)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
