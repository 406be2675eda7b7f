"""Data sets: folder trees, CIFAR batches (restricted unpickler), iNat JSON, mnist5k, digits."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deit.data.datasets import build_dataset
from deit.data.digits import _mean_std
from deit.data.files import CorruptImageError
from deit.data.info import (
    DIGITS_MEAN,
    DIGITS_STD,
    MNIST5K_MEAN,
    MNIST5K_STD,
    dataset_info,
    list_datasets,
)
from deit.data.splits import stratified_split
from deit.data.unpickle import UnsafePickleError, safe_unpickle

# ------------------------------------------------------------------ image folders


def test_folder_classes_counts_and_images(image_tree: Path) -> None:
    ds = build_dataset("folder", image_tree, split="train")
    assert ds.classes == ["cat", "dog", "fish"]
    assert len(ds) == 9
    assert Counter(ds.targets) == {0: 3, 1: 2, 2: 4}
    assert all(type(t) is int for t in ds.targets)
    assert ds.info.num_classes == 3
    # first dog image (index 3): PNG with value (17 * 0 + 1 * 60) = 60; a JPEG: cat 1 = 17
    img, label = ds[3]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (20, 16)
    assert label == 1 and np.asarray(img)[0, 0].tolist() == [60, 60, 60]
    jpg_img, jpg_label = ds[1]  # cat/1.jpg
    assert jpg_label == 0 and abs(int(np.asarray(jpg_img)[5, 5, 0]) - 17) <= 2  # JPEG is lossy

    val = build_dataset("imagenet", image_tree, split="val", transform=lambda im: im.size)
    assert Counter(val.targets) == {0: 1, 1: 1, 2: 2}
    assert val[0] == ((20, 16), 0)
    assert build_dataset("IMNET", image_tree, split="val").targets == val.targets  # aliases
    with pytest.raises(FileNotFoundError, match="has no test/ folder; pass --split val"):
        build_dataset("imagenet", image_tree, split="test")  # never val/ in its place


def test_folder_missing_names_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train/<class>"):
        build_dataset("folder", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"root="):
        build_dataset("imagenet")


def test_corrupt_image_error_names_file(image_tree: Path) -> None:
    bad = image_tree / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ds = build_dataset("folder", image_tree)
    assert len(ds) == 10
    idx = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        ds[idx]


def test_corrupt_image_skipped_with_warning(image_tree: Path) -> None:
    bad = image_tree / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = build_dataset("folder", image_tree, skip_corrupt=True)
    assert len(ds) == 9 and Counter(ds.targets) == {0: 3, 1: 2, 2: 4}
    assert str(bad) not in [p for p, _ in ds.samples]
    assert all(isinstance(ds[i][0], Image.Image) for i in range(len(ds)))


def test_unknown_name_and_keyword() -> None:
    with pytest.raises(ValueError, match="mnist5k") as e:
        build_dataset("svhn")
    assert "cifar10" in str(e.value) and "svhn" in str(e.value)
    with pytest.raises(TypeError, match="category"):
        build_dataset("mnist5k", category="genus")
    with pytest.raises(ValueError, match="split"):
        build_dataset("mnist5k", split="holdout")
    assert set(list_datasets()) == {
        "folder",
        "imagenet",
        "cifar10",
        "cifar100",
        "inat18",
        "inat19",
        "mnist5k",
        "digits",
    }


def test_dataset_info_values() -> None:
    info = dataset_info("cifar10")
    assert (info.num_classes, info.image_size, info.in_chans) == (10, 32, 3)
    assert dataset_info("CIFAR").num_classes == 100  # official alias = CIFAR-100
    assert dataset_info("imagenet").mean == (0.485, 0.456, 0.406)
    assert dataset_info("digits").image_size == 8


# ------------------------------------------------------------------ CIFAR


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, 3072)).astype(np.uint8)


def _write_cifar10(root: Path, per_batch: int = 4, protocol: int = 2) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    for i in range(1, 6):
        batch = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": [(i + j) % 10 for j in range(per_batch)],
            b"data": _cifar_images(per_batch, i),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        }
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    test = {b"labels": [9, 0, 3], b"data": _cifar_images(3, 99), b"batch_label": b"testing"}
    with open(d / "test_batch", "wb") as f:
        pickle.dump(test, f, protocol=protocol)
    meta = {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    with open(d / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return d


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches(tmp_path: Path, protocol: int) -> None:
    _write_cifar10(tmp_path, protocol=protocol)
    train = build_dataset("cifar10", tmp_path, split="train")
    assert len(train) == 20 and train.classes[0] == "airplane" and train.classes[9] == "truck"
    assert train.targets[:4] == [1, 2, 3, 4] and train.targets[4:8] == [2, 3, 4, 5]
    # pixel (row 2, col 5) of image 1 of batch 1: R at 2*32+5, G at 1024+..., B at 2048+...
    raw = _cifar_images(4, 1)[1]
    img, label = train[1]
    assert img.size == (32, 32) and img.mode == "RGB" and label == 2
    assert list(img.getpixel((5, 2))) == [raw[69], raw[1024 + 69], raw[2048 + 69]]
    test = build_dataset("cifar10", tmp_path / "cifar-10-batches-py", split="test")
    assert test.targets == [9, 0, 3] and len(test) == 3


def test_cifar100_batches(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = [f"class_{i}".encode() for i in range(100)]
    for split, labels in (("train", [0, 99, 42, 42]), ("test", [7, 8])):
        batch = {
            b"fine_labels": labels,
            b"coarse_labels": [x // 5 for x in labels],
            b"data": _cifar_images(len(labels), 3),
        }
        (d / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20}
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    train = build_dataset("cifar100", tmp_path)
    assert len(train.classes) == 100 and train.classes[42] == "class_42"
    assert train.targets == [0, 99, 42, 42] and train.info.num_classes == 100
    assert build_dataset("cifar100", tmp_path, split="val").targets == [7, 8]


def test_cifar_missing_file_names_layout(tmp_path: Path) -> None:
    d = _write_cifar10(tmp_path)
    os.remove(d / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3") as e:
        build_dataset("cifar10", tmp_path)
    assert "cifar-10-batches-py" in str(e.value)


class _Evil:
    """Pickles into a call of ``os.mkdir(target)``."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (self.target,))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({b"data": _Evil(str(target)), b"labels": [0]}, protocol=2))
    # the plain unpickler would run the call:
    pickle.loads(evil.read_bytes())
    assert target.is_dir()
    target.rmdir()
    with pytest.raises(UnsafePickleError, match="mkdir"):
        safe_unpickle(evil)
    assert not target.exists()
    # through the data set factory too, with the batch in place of real data
    d = _write_cifar10(tmp_path / "c")
    (d / "data_batch_2").write_bytes(evil.read_bytes())
    with pytest.raises(UnsafePickleError):
        build_dataset("cifar10", tmp_path / "c")
    assert not target.exists()


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "obj.pkl"
    p.write_bytes(pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="dtype"):
        safe_unpickle(p)
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({b"a": np.arange(6, dtype=np.int64).reshape(2, 3)}, protocol=5))
    assert safe_unpickle(ok)[b"a"].tolist() == [[0, 1, 2], [3, 4, 5]]


# ------------------------------------------------------------------ iNaturalist


def _write_inat(root: Path) -> None:
    cats = [
        {"id": 0, "name": "Aa alba", "genus": "Aa", "family": "F1", "order": "O1",
         "class": "C1", "phylum": "P1", "kingdom": "Plantae", "supercategory": "Plants"},
        {"id": 1, "name": "Aa nigra", "genus": "Aa", "family": "F1", "order": "O1",
         "class": "C1", "phylum": "P1", "kingdom": "Plantae", "supercategory": "Plants"},
        {"id": 2, "name": "Bb rufa", "genus": "Bb", "family": "F2", "order": "O2",
         "class": "C2", "phylum": "P2", "kingdom": "Animalia", "supercategory": "Aves"},
    ]  # fmt: skip
    (root / "categories.json").write_text(json.dumps(cats))

    def split(name: str, cat_ids: list[int], first_id: int) -> None:
        images, anns = [], []
        for k, c in enumerate(cat_ids):
            sup = cats[c]["supercategory"]
            fname = f"train_val2018/{sup}/{c}/{name}_{k}.jpg"
            (root / fname).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), (c * 100, 0, 0)).save(root / fname)
            images.append({"id": first_id + k, "file_name": fname, "width": 12, "height": 10})
            anns.append({"id": first_id + k, "image_id": first_id + k, "category_id": c})
        (root / f"{name}2018.json").write_text(json.dumps({"images": images, "annotations": anns}))

    split("train", [2, 0, 2, 1, 0], 100)  # first appearance: 2, 0, 1
    split("val", [1, 2], 500)


def test_inat_species_and_genus(tmp_path: Path) -> None:
    _write_inat(tmp_path)
    train = build_dataset("inat18", tmp_path, split="train")
    assert train.classes == ["Bb rufa", "Aa alba", "Aa nigra"]  # official: first appearance
    assert train.targets == [0, 1, 0, 2, 1] and train.info.num_classes == 3
    img, label = train[0]
    assert img.size == (12, 10) and label == 0 and img.getpixel((3, 3))[0] > 150
    val = build_dataset("INAT", tmp_path, split="val")
    assert val.targets == [2, 0]
    genus = build_dataset("inat18", tmp_path, split="val", category="genus")
    assert genus.classes == ["Bb", "Aa"] and genus.targets == [1, 0]
    kingdom = build_dataset("inat18", tmp_path, category="kingdom")
    assert kingdom.classes == ["Animalia", "Plantae"] and kingdom.targets == [0, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="category"):
        build_dataset("inat18", tmp_path, category="species")
    with pytest.raises(FileNotFoundError, match="train2019.json"):
        build_dataset("inat19", tmp_path)


# ------------------------------------------------------------------ mnist5k / digits


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_mnist5k_split_is_fixed_and_stratified() -> None:
    train = build_dataset("mnist5k", split="train")
    test = build_dataset("mnist5k", split="test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.classes == [str(i) for i in range(10)]
    # The split, identical on every machine: which of the 5,000 digits are held out.
    assert _sha(test.indices.astype(np.int64)) == (
        "45579736574882ccc3c9998d89a1d7a300aa202d0afb586352782fae7350669f"
    )
    assert test.indices[:10].tolist() == [1, 10, 12, 15, 21, 37, 45, 46, 54, 56]
    assert _sha(test.data) == "c972a295a6b070d09b77be5da44b3a6e2db44152540a0f03bd062776a9a732c1"
    assert not set(train.indices.tolist()) & set(test.indices.tolist())
    # 500 of each digit in the source: exactly 400 / 100 per class
    assert Counter(train.targets) == dict.fromkeys(range(10), 400)
    assert Counter(test.targets) == dict.fromkeys(range(10), 100)
    img, label = test[0]
    arr = np.asarray(img)
    assert img.mode == "RGB" and img.size == (28, 28) and label == 0
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
    mean, std = _mean_std(train.data)
    assert mean == pytest.approx(MNIST5K_MEAN[0], abs=1e-5)
    assert std == pytest.approx(MNIST5K_STD[0], abs=1e-5)


def test_digits_split_and_scaling() -> None:
    train = build_dataset("digits")
    test = build_dataset("digits", split="val")
    assert (len(train), len(test)) == (1438, 359)  # 359 = round(0.2 * 1797)
    assert _sha(test.indices.astype(np.int64)) == (
        "3530be80b9605f4c4adc46d0ee3006a356c16968a8efcc58f24463bc820d5ef9"
    )
    from sklearn.datasets import load_digits

    source = Counter(load_digits().target.tolist())
    for c, n in source.items():  # each class keeps its share in both parts (within 1 image)
        assert abs(Counter(test.targets)[c] - n * 359 / 1797) <= 1
        assert abs(Counter(train.targets)[c] - n * 1438 / 1797) <= 1
    assert train.data.max() == 255 and train.data.dtype == np.uint8  # 16 -> 255
    assert train[0][0].size == (8, 8)
    mean, std = _mean_std(train.data)
    assert mean == pytest.approx(DIGITS_MEAN[0], abs=1e-5)
    assert std == pytest.approx(DIGITS_STD[0], abs=1e-5)


def test_stratified_split_hand_example() -> None:
    # classes of sizes 3 and 7, 30 %: exact shares 0.9 and 2.1 -> floors 0 and 2 (sum 2), total
    # round(3.0) = 3, the extra one goes to the largest remainder (class 0: 0.9).
    labels = [0, 0, 0] + [1] * 7
    tr, te = stratified_split(labels, 0.3, seed=0)
    assert len(te) == 3 and Counter(labels[i] for i in te) == {0: 1, 1: 2}
    assert sorted(tr.tolist() + te.tolist()) == list(range(10))
