"""The teacher-label store: teacher labels computed once, reused by many students.

With deterministic training views (:mod:`deit.data.transforms`: each view a pure function of
``(seed, epoch, position)``, each batch's Mixup/CutMix of ``(seed, epoch, batch index)``), the
teacher's answer on every view of every epoch of a run is fixed before training starts. As in
Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition" (ECCV 2022), which
stores per-crop teacher outputs, :func:`deit.label_pass.compute_teacher_labels` (``deit
teacher-labels``) runs the teacher once over all of them (large batches, no gradients) and
stores:

- ``top1.npy``: ``(epochs, views_per_epoch)`` top-1 classes (uint8 up to 256 classes, else
  int16 / int32) — what hard distillation (paper eq. 3) needs;
- with ``top_k`` < class count: ``topk_probs.npy`` (fp16) and ``topk_classes.npy``
  ``(epochs, views_per_epoch, k)``, the teacher's k most likely classes (softmax at τ 1);
- with ``top_k`` >= class count: ``logits.npy`` ``(epochs, views_per_epoch, C)`` fp16;
- ``manifest.json``: what produced them (teacher, checkpoint SHA-256, data set, subset, the
  recipe fields that shape the views, world size, format version), written last.

Plain ``.npy`` files (read memory-mapped with ``allow_pickle=False``); no pickle anywhere.
``deit train --teacher-labels DIR`` (:class:`TeacherLabelStore`) then trains without building
the teacher and refuses, in one sentence, a store whose manifest does not match the run. The
student-side fields (model, α, τ, hard/soft, learning rate, ...) are not in the manifest, so one
store serves every student of the same views. Single-process runs only (DDP is refused).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._write import DISK_ERRNOS, atomic_write_text, reserve, write_error
from ..checkpoints.fetch import local_file
from ..checkpoints.hub import hub_weights_file, is_hub_id
from ..config import Config

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "VIEW_FIELDS",
    "StoreWriter",
    "TeacherLabelStore",
    "file_sha256",
    "label_dtype",
    "run_manifest",
    "store_size_bytes",
]

#: Version of the store's layout; a store of another version is refused.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Config fields that decide which views the teacher sees (and so its labels).
VIEW_FIELDS = (
    "data_set",
    "inat_category",
    "train_subset",
    "input_size",
    "aa",
    "color_jitter",
    "reprob",
    "remode",
    "recount",
    "train_interpolation",
    "hflip",
    "crop_padding",
    "mixup",
    "cutmix",
    "cutmix_minmax",
    "mixup_prob",
    "mixup_switch_prob",
    "mixup_mode",
    "repeated_aug",
    "num_repeats",
    "batch_size",
    "epochs",
    "seed",
    "skip_corrupt",
    "mean",
    "std",
)
#: View fields recorded only when switched on, so that stores written before they existed still
#: match runs without them (DeiT III's 3-Augment and simple random crop).
OPTIONAL_VIEW_FIELDS = ("ThreeAugment", "src")
_NPY_HEADER = 128  # bytes of a .npy header for these shapes (format 1.0, padded to 64)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks; a URL: of its cached copy)."""
    h = hashlib.sha256()
    with open(local_file(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest integer type holding class indices below ``num_classes``: uint8 up to 256
    classes, int16 up to 32,768, else int32."""
    if num_classes <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.int16 if num_classes <= 32768 else np.int32)


def store_size_bytes(views_per_epoch: int, epochs: int, num_classes: int, top_k: int = 0) -> int:
    """Bytes on disk of a store's arrays (without the small manifest): top-1 classes, plus
    ``top_k`` fp16 probabilities and classes per view, or fp16 logits when ``top_k`` reaches
    ``num_classes``. E.g. hard labels of 4,000 views x 100 epochs, 10 classes: 400,128 bytes."""
    views = views_per_epoch * epochs
    width = label_dtype(num_classes).itemsize
    size = _NPY_HEADER + views * width
    if top_k >= num_classes:
        size += _NPY_HEADER + views * num_classes * 2
    elif top_k > 0:
        size += 2 * _NPY_HEADER + views * top_k * (2 + width)
    return size


def run_manifest(cfg: Config, num_classes: int, train_images: int, world_size: int = 1) -> dict:
    """The fields of a run that a store must match: :data:`VIEW_FIELDS`, the class and image
    counts, the world size, the format version, the teacher's name when the run names one and
    the SHA-256 of its checkpoint when the run names one (``cfg.teacher_path``)."""
    fields: dict[str, Any] = {"format_version": FORMAT_VERSION}
    fields.update({k: getattr(cfg, k) for k in VIEW_FIELDS})
    fields.update({k: True for k in OPTIONAL_VIEW_FIELDS if getattr(cfg, k)})
    fields.update(num_classes=num_classes, train_images=train_images, world_size=world_size)
    if cfg.teacher_model:
        fields["teacher_model"] = cfg.teacher_model
    if cfg.teacher_path:
        path = cfg.teacher_path  # a Hub name: its cached weights file
        fields["teacher_sha256"] = file_sha256(hub_weights_file(path) if is_hub_id(path) else path)
    return fields


def _first_difference(stored: dict[str, Any], run: dict[str, Any]) -> str | None:
    for key in dict.fromkeys([*run, *OPTIONAL_VIEW_FIELDS]):
        off = False if key in OPTIONAL_VIEW_FIELDS else None  # unrecorded: switched off
        if stored.get(key, off) != run.get(key, off):
            return key
    return None


_MANIFEST_KEYS = ("kind", "batch_size", "arrays", "epochs", "views_per_epoch")


def _read_manifest(path: Path, fix: str) -> dict[str, Any]:
    """The store's manifest, or one sentence naming the file, what is wrong and ``fix``.

    Raises:
        ValueError: not UTF-8 JSON (e.g. cut short), not an object, or an entry missing.
    """
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        what = f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; cut short?)"
        raise ValueError(f"The teacher-label manifest {path} {what}; {fix}.") from None
    except UnicodeDecodeError:
        raise ValueError(f"The teacher-label manifest {path} is not text; {fix}.") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"The teacher-label manifest {path} is not a JSON object; {fix}.")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing and manifest.get("format_version") == FORMAT_VERSION:
        raise ValueError(
            f"The teacher-label manifest {path} lacks the entry {missing[0]!r}; {fix}."
        )
    return manifest


def _open_array(path: Path, rows: tuple[int, int], fix: str) -> np.ndarray:
    """``path`` memory-mapped (never unpickled), checked against the manifest's ``(epochs,
    views_per_epoch)`` leading shape before it is mapped.

    Raises:
        ValueError: one sentence naming the file, what is wrong with it (missing, empty, an
            unreadable header, cut short, another shape) and ``fix``.
    """
    fmt = np.lib.format

    def damaged(what: str) -> ValueError:
        return ValueError(f"The teacher-label file {path} {what}; {fix}.")

    if not path.is_file():
        raise damaged("is missing")
    size = path.stat().st_size
    if size == 0:
        raise damaged("is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
    except (ValueError, EOFError, OSError) as e:
        cut = isinstance(e, EOFError) or str(e).startswith("EOF")
        what = "is cut short inside its .npy header" if cut else "is not a .npy array file"
        raise damaged(f"{what} ({size} bytes)") from None
    if dtype.hasobject:
        raise damaged("holds Python objects, which are never unpickled")
    expected = offset + math.prod(shape) * dtype.itemsize
    if size < expected:
        raise damaged(f"is cut short ({size} of {expected} bytes)")
    if tuple(shape[:2]) != rows:
        raise damaged(
            f"holds an array of shape {tuple(shape)}, not the {rows} (epochs, views per epoch) "
            "its manifest gives"
        )
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _to(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` (made on the CPU) on ``device``; to a GPU through pinned memory without waiting (a
    copy from pageable memory synchronises the stream: once per training step here)."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class TeacherLabelStore:
    """A store written by :func:`deit.label_pass.compute_teacher_labels`, read memory-mapped.

    :meth:`batch` gives the teacher's answer for batch ``index`` of ``epoch`` in the form
    :meth:`deit.distillation.DistillationLoss.compute` takes as ``teacher_outputs``;
    :meth:`answer` is the same for a distillation task (:class:`deit.distillation.TeacherSource`).

    Raises:
        ValueError: no manifest (not a store, or an interrupted pass), another format version,
            a damaged manifest or array file (missing, empty, cut short, another shape): one
            sentence naming the file and the ``deit teacher-labels`` command that rewrites it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise ValueError(
                f"{str(self.path)!r} holds no teacher-label store ({MANIFEST} is missing); "
                "write one with `deit teacher-labels --config RUN.yaml --output DIR`."
            )
        self.manifest: dict[str, Any] = _read_manifest(manifest, self._recompute)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"The teacher-label store {str(self.path)!r} has format version "
                f"{self.manifest.get('format_version')}, this deit reads {FORMAT_VERSION}; "
                "recompute it with `deit teacher-labels`."
            )
        self.kind = self.manifest["kind"]
        self.batch_size = int(self.manifest["batch_size"])
        rows = (int(self.manifest["epochs"]), int(self.manifest["views_per_epoch"]))
        self.arrays = {
            name: _open_array(self.path / f"{name}.npy", rows, self._recompute)
            for name in self.manifest["arrays"]
        }

    @property
    def _recompute(self) -> str:
        """The fix of a damaged store: the command that writes it again."""
        return (
            "recompute the store with `deit teacher-labels --config <the run's config.yaml> "
            f"--output {self.path}`"
        )

    def check_run(self, cfg: Config, num_classes: int, train_images: int, world_size: int) -> None:
        """Refuse a run whose views, data or teacher differ from those the store was made for,
        or a soft-distillation run on a top-1 store.

        Raises:
            ValueError: one sentence naming the first differing field and the fix.
        """
        where = f"The teacher-label store {str(self.path)!r}"
        if world_size > 1:
            raise ValueError(
                f"Stored teacher labels serve single-process runs only (this run has "
                f"{world_size} processes); train in one process or drop --teacher-labels."
            )
        run = run_manifest(cfg, num_classes, train_images, world_size)
        key = _first_difference(self.manifest, run)
        if key is not None:
            raise ValueError(
                f"{where} was made for {key} {self.manifest.get(key)!r} but this run has "
                f"{run.get(key, False)!r}; recompute it with `deit teacher-labels --config <this run's "
                f"config.yaml> --output DIR` or set {key} back."
            )
        if cfg.distillation_type == "soft" and self.kind == "top1":
            raise ValueError(
                f"{where} holds top-1 classes only, which drive hard distillation; recompute "
                "it with --top-k K (the class count for full logits) for soft distillation."
            )

    @property
    def num_classes(self) -> int:
        """The class count of the teacher whose answers are stored."""
        return int(self.manifest["num_classes"])

    def answer(self, images: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        """The stored answer for batch ``index`` of ``epoch`` (:meth:`batch`), on the images'
        device; the images themselves are not looked at."""
        return self.batch(epoch, index, images.device)

    def batch(self, epoch: int, index: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The teacher's answer for batch ``index`` of ``epoch``: ``(B,)`` int64 top-1 classes
        for a top-1 store, else ``(B, num_classes)`` float32 logits — the stored fp16 logits, or
        from top-k probabilities ``log p`` on the k classes and the remaining mass spread evenly
        over the others (softmax of these logits at τ 1 gives those probabilities back)."""
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self.kind == "logits":
            return _to(torch.tensor(self.arrays["logits"][epoch, rows]).float(), device)
        if self.kind == "top1":
            return _to(torch.tensor(self.arrays["top1"][epoch, rows]).long(), device)
        probs = torch.tensor(self.arrays["topk_probs"][epoch, rows]).float()
        classes = torch.tensor(self.arrays["topk_classes"][epoch, rows]).long()
        c = self.num_classes
        rest = (1.0 - probs.sum(1, keepdim=True)).clamp_min(1e-8) / max(c - probs.shape[1], 1)
        logits = rest.log().expand(-1, c).clone()
        logits.scatter_(1, classes, probs.clamp_min(1e-8).log())
        return _to(logits, device)


class StoreWriter:
    """The arrays of a store being written (by :func:`deit.label_pass.compute_teacher_labels`),
    in place (``numpy.lib.format.open_memmap``): ``top1.npy`` always, plus ``logits.npy``
    (``top_k`` >= ``num_classes``) or ``topk_probs.npy`` and ``topk_classes.npy``
    (0 < ``top_k`` < ``num_classes``), each ``shape = (epochs, views_per_epoch)`` first.

    The arrays are written as hidden ``.<name>.npy.partial`` files next to the store's, whose
    disk blocks are allocated up front (a full disk under a memory map would be a SIGBUS, not
    an error); :meth:`install` renames them over an older store's once every row is on disk,
    so a full disk, a read-only folder or an interrupted pass leaves an older store as it was.

    A pass split over ranks writes no file two processes share (a network file system writes
    a memory map's pages back whole, so rows written by another node would be lost): rank
    ``r`` writes its rows to its own part, ``.<name>.rank<r>.npy.partial`` (``part=r``), and
    rank 0 copies each part into the store's arrays (:meth:`merge`).
    """

    def __init__(
        self,
        out: Path,
        shape: tuple[int, int],
        num_classes: int,
        top_k: int,
        part: int | None = None,
    ) -> None:
        """``shape`` is ``(epochs, rows)``: the store's views per epoch, or for a rank's
        ``part`` the rows of its views.

        Raises:
            deit._write.WriteError: the disk cannot hold the store or the folder cannot be
                written (one sentence with the bytes needed and free); nothing is left behind.
        """
        self.out = Path(out)
        self.part = part
        dt = label_dtype(num_classes)
        self.kind, _ = self.layout(num_classes, top_k)
        names = {"top1": (dt, shape)}
        if self.kind == "logits":
            names["logits"] = (np.dtype(np.float16), (*shape, num_classes))
        elif self.kind == "topk":
            names["topk_probs"] = (np.dtype(np.float16), (*shape, top_k))
            names["topk_classes"] = (dt, (*shape, top_k))
        self.top_k = top_k
        self.arrays: dict[str, np.ndarray] = {}
        needed = store_size_bytes(shape[1], shape[0], num_classes, top_k)
        try:
            for name, (dtype, dims) in names.items():
                self.arrays[name] = self._array(name, dtype, dims, needed)
        except BaseException:
            self.discard()
            raise

    @staticmethod
    def layout(num_classes: int, top_k: int) -> tuple[str, list[str]]:
        """The store's ``kind`` (``top1``, ``topk`` or ``logits``) and its arrays' names."""
        if top_k >= num_classes:
            return "logits", ["top1", "logits"]
        if top_k > 0:
            return "topk", ["top1", "topk_probs", "topk_classes"]
        return "top1", ["top1"]

    def _partial(self, name: str, part: int | None = None) -> Path:
        part = self.part if part is None else part
        return self.out / f".{name}{'' if part is None else f'.rank{part}'}.npy.partial"

    def _array(self, name: str, dtype: np.dtype, dims: tuple[int, ...], needed: int) -> np.ndarray:
        path = self._partial(name)
        final = self.out / f"{name}.npy"
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            array = np.lib.format.open_memmap(path, "w+", dtype, dims)
        except OSError as e:
            if e.errno in DISK_ERRNOS:
                raise write_error(final, e, needed) from None
            raise
        reserve(path, final, needed)
        return array

    @staticmethod
    def leftovers(out: str | Path) -> list[Path]:
        """The partial files in ``out``: this pass's, or those a pass that was killed left."""
        return sorted(Path(out).glob(".*.npy.partial"))

    def discard(self) -> None:
        """Remove the partial files (a failed or interrupted pass): a part writer its own, the
        store's writer every one; an older store stays."""
        self.arrays.clear()
        pattern = ".*.npy.partial" if self.part is None else f".*.rank{self.part}.npy.partial"
        for path in self.out.glob(pattern):
            path.unlink(missing_ok=True)

    def merge(self, parts: Sequence[tuple[int, np.ndarray]]) -> None:
        """Copy the ranks' parts (written, closed) into this store's arrays, an epoch at a time,
        then remove them: ``parts`` pairs each rank with the store rows (views of an epoch) its
        part holds, in its order."""
        for rank, rows in parts:
            for name, array in self.arrays.items():
                path = self._partial(name, rank)
                part = np.load(path, mmap_mode="r", allow_pickle=False)
                for epoch in range(array.shape[0]):
                    array[epoch, rows] = part[epoch]
                del part
                path.unlink()

    def install(self, manifest: dict[str, Any]) -> None:
        """Replace an older store by this one: its manifest removed first (a store without
        one is refused, never half-read), each array renamed into place, then ``manifest``
        written (atomically) last. Call after every writer's :meth:`close`."""
        (self.out / MANIFEST).unlink(missing_ok=True)
        for name in list(self.arrays):
            os.replace(self._partial(name), self.out / f"{name}.npy")
        atomic_write_text(self.out / MANIFEST, json.dumps(manifest, indent=1) + "\n")

    def write(self, epoch: int, start: int, logits: torch.Tensor) -> None:
        """Store ``(n, C)`` logits for views ``start .. start + n`` of ``epoch``."""
        logits = logits.float().cpu()
        rows = slice(start, start + logits.shape[0])
        self.arrays["top1"][epoch, rows] = logits.argmax(1).numpy()
        if self.kind == "logits":
            self.arrays["logits"][epoch, rows] = logits.half().numpy()
        elif self.kind == "topk":
            p, c = logits.softmax(1).topk(self.top_k, dim=1)
            self.arrays["topk_probs"][epoch, rows] = p.half().numpy()
            self.arrays["topk_classes"][epoch, rows] = c.numpy()

    def close(self) -> None:
        """Flush every array to disk (then :meth:`install`, on one process); a part is closed
        (unmapped) for rank 0 to read."""
        for a in self.arrays.values():
            a.flush()
        if self.part is not None:
            self.arrays.clear()
