"""Classify image files with a trained model: ``deit predict`` and :func:`predict`.

Images go through the checkpoint's own evaluation transform (resize to ``input / crop_pct``,
bicubic, centre crop, normalise with the checkpoint's mean/std: paper section 3 / the official
``build_transform``) and are classified in batches. A distilled model answers with the average of
its two heads by default (the paper's "late fusion", section 4 and Table 3), or with the class
head or the distillation head alone.

The helpers :func:`resolve_model`, :func:`find_images`, :func:`load_image` and
:func:`eval_transform` are shared with ``deit analyze`` and ``deit export``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import check_batch_size
from ._json import dumps, printable
from ._notes import _print_notes
from .checkpoints import ModelInfo, load_model
from .inference import optimize_for_inference
from .models import HEAD_CHOICES, DistilledVisionTransformer
from .models.distilled import late_fusion
from .precision import resolve_device

__all__ = [
    "IMAGE_EXTENSIONS",
    "NotAnImageError",
    "Prediction",
    "ModelLike",
    "predict",
    "classify",
    "resolve_model",
    "info_from_model",
    "find_images",
    "natural_key",
    "load_image",
    "eval_transform",
    "format_table",
]

#: File name endings taken as images when a folder is searched (lower case).
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)

#: What the Python API accepts as a model: a checkpoint path, a loaded module, or the
#: ``(model, info)`` pair returned by :func:`deit.load_model`.
ModelLike = str | os.PathLike | nn.Module | tuple[nn.Module, ModelInfo]


class NotAnImageError(OSError):
    """A file that cannot be decoded as an image; the message names the file."""


@dataclass
class Prediction:
    """Top-k answer for one image.

    Attributes:
        path: the image file (``<image i>`` for a PIL image passed directly).
        indices: class indices, most probable first (``topk`` of them).
        labels: the class names of ``indices`` (from the checkpoint, or indices as strings).
        probs: softmax probabilities of ``indices``, in [0, 1].
    """

    path: str
    indices: list[int]
    labels: list[str]
    probs: list[float]

    @property
    def index(self) -> int:
        """Top-1 class index."""
        return self.indices[0]

    @property
    def label(self) -> str:
        """Top-1 class name."""
        return self.labels[0]

    @property
    def prob(self) -> float:
        """Top-1 probability."""
        return self.probs[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"path", "topk": [{"index", "label", "prob"}, ...]}``."""
        return {
            "path": self.path,
            "topk": [
                {"index": i, "label": lab, "prob": p}
                for i, lab, p in zip(self.indices, self.labels, self.probs, strict=True)
            ],
        }


# -- models ---------------------------------------------------------------------------------
def info_from_model(model: nn.Module) -> ModelInfo:
    """A :class:`ModelInfo` for a module built in Python (no checkpoint).

    Reads ``model.default_cfg`` (set by :func:`deit.create_model`: architecture, mean, std,
    crop_pct, input size) and ``model.class_names`` when present; class names fall back to the
    indices, and ``notes`` says so.

    Raises:
        ValueError: the input size cannot be told (no ``img_size`` attribute and no
            ``default_cfg``/``pretrained_cfg`` input size).
    """
    cfg = dict(getattr(model, "default_cfg", None) or getattr(model, "pretrained_cfg", None) or {})
    size = getattr(model, "img_size", None)
    if size is None and cfg.get("input_size"):
        size = tuple(cfg["input_size"][-2:])
    if size is None:
        raise ValueError(
            f"The input size of this {type(model).__name__} is unknown; pass it explicitly "
            "(input_size=..., CLI --input-size)."
        )
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    num_classes = int(getattr(model, "num_classes", 0) or cfg.get("num_classes") or 0)
    in_chans = int(cfg.get("input_size", (3,))[0]) if cfg.get("input_size") else 3
    patch = getattr(model, "patch_embed", None)
    in_chans = getattr(patch, "in_chans", in_chans)
    notes: list[str] = []
    names = getattr(model, "class_names", None)
    if not names:
        names = [str(i) for i in range(num_classes)]
        notes.append("The model has no class names: class indices are used instead.")
    info = ModelInfo(
        model_name=str(cfg.get("architecture", type(model).__name__)),
        num_classes=num_classes,
        img_size=size,
        in_chans=int(in_chans),
        class_names=list(names),
        notes=notes,
    )
    if cfg.get("mean"):
        info.mean, info.std = tuple(cfg["mean"]), tuple(cfg["std"])
    if cfg.get("crop_pct"):
        info.crop_pct = float(cfg["crop_pct"])
    return info


def resolve_model(
    checkpoint_or_model: ModelLike,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    info: ModelInfo | None = None,
    warn_notes: bool = True,
) -> tuple[nn.Module, ModelInfo]:
    """Turn what the user gave into ``(model in eval mode on device, ModelInfo)``.

    Args:
        checkpoint_or_model: a checkpoint path (read by :func:`deit.load_model`), a module, or
            a ``(model, info)`` pair.
        model_name: architecture of a weights file that does not record it.
        device: where the model runs.
        info: the :class:`ModelInfo` of a module passed directly; default
            :func:`info_from_model`.
        warn_notes: issue every sentence of ``info.notes`` (e.g. "class indices are used
            instead") once as a :class:`UserWarning`.

    Raises:
        deit.checkpoints.CheckpointError: unreadable or unfitting checkpoint, unknown architecture.
        ValueError: a module whose input size cannot be told.
    """
    if isinstance(checkpoint_or_model, tuple):
        model, info = checkpoint_or_model
    elif isinstance(checkpoint_or_model, nn.Module):
        model = checkpoint_or_model
        info = info or info_from_model(model)
    else:
        # load_model warns about each adaptation already; collect and re-issue every note once.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = load_model(checkpoint_or_model, model_name=model_name, device=device)
    if warn_notes:
        for note in info.notes:
            warnings.warn(note, UserWarning, stacklevel=2)
    return model.to(device).eval(), info


def _set_head(model: nn.Module, head: str) -> str | None:
    """Select the inference head; returns the previous choice (``None``: not distilled)."""
    if head not in HEAD_CHOICES:
        raise ValueError(f"head must be one of {', '.join(HEAD_CHOICES)}, got {head!r}.")
    if isinstance(model, DistilledVisionTransformer):
        previous = model.head_choice
        model.set_head(head)
        return previous
    if head == "dist":
        raise ValueError(
            "head 'dist' needs a distilled model (one with a distillation token); this model has "
            "only the class head, use head 'both' or 'cls'."
        )
    return None


# -- images ---------------------------------------------------------------------------------
def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named by ``paths``: files as given, folders searched recursively.

    In folders, files whose name ends with one of :data:`IMAGE_EXTENSIONS` are taken, in
    natural order (:func:`natural_key`: ``2.png`` before ``10.png``), by the walk of the folder
    data sets (:func:`deit.data.walk.walk_files`: links followed, a loop skipped, hidden
    entries left out); a file named directly is always taken (it is checked when loaded).

    Returns:
        The files in the order given, folder contents in natural order; each file once (by its
        resolved path: a link and its target are one file).

    Raises:
        FileNotFoundError: a path that does not exist.
        PermissionError: a folder that cannot be read.
        ValueError: no path given, or no image found at all.
    """
    from .data.walk import walk_files

    out: list[Path] = []
    seen: dict[str, Path] = {}  # resolved path -> the path found first
    given = [Path(p) for p in paths]
    if not given:
        raise ValueError("No image or folder given; pass image files or folders of images.")
    for p in given:
        if p.is_dir():
            if not os.access(p, os.R_OK | os.X_OK):
                raise PermissionError(f"Folder {str(p)!r} cannot be read; check its permissions.")
            out += walk_files(p, lambda f: f.lower().endswith(IMAGE_EXTENSIONS), natural_key, seen)
        elif p.is_file():
            if os.path.realpath(p) not in seen:
                seen[os.path.realpath(p)] = p
                out.append(p)
        else:
            raise FileNotFoundError(f"{str(p)!r} does not exist; pass image files or folders.")
    if not out:
        shown = ", ".join(repr(str(p)) for p in given[:3])
        raise ValueError(
            f"No image files ({', '.join(IMAGE_EXTENSIONS)}) found in {shown}; pass image "
            "files or folders that contain some."
        )
    return out


def natural_key(name: str) -> list[Any]:
    """Sort key of a file name in natural order: digit runs compare as numbers (``2.png``
    before ``10.png``), the rest as text (case-sensitive, as ``sorted``)."""
    return [(0, int(part), part) if part.isdigit() else (1, part) for part in _DIGITS.split(name)]


_DIGITS = re.compile(r"(\d+)")


def load_image(path: str | os.PathLike, in_chans: int = 3):
    """Open an image file with PIL as RGB (``in_chans == 3``) or greyscale (``in_chans == 1``).

    Any PIL mode and bit depth gives the 8-bit pixels a viewer shows
    (:func:`deit.data.images.to_display_mode`: 16-bit grey scaled, not clipped; transparency
    composited over white), in the model's channel count.

    Returns:
        A fully decoded ``PIL.Image.Image``.

    Raises:
        NotAnImageError: the file cannot be decoded as an image (the message names it).
        ValueError: ``in_chans`` other than 1 or 3.
    """
    from PIL import Image

    from .data.images import to_display_mode, too_large

    if in_chans not in (1, 3):
        raise ValueError(f"Only 1- or 3-channel models can read image files (got {in_chans}).")
    try:
        with Image.open(path) as im:
            im.load()
            return to_display_mode(im, "RGB" if in_chans == 3 else "L")
    except Image.DecompressionBombError as e:
        raise NotAnImageError(
            f"{str(path)!r} is {too_large(e)}; pass a smaller image, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS in Python if you trust the file."
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise NotAnImageError(
            f"{str(path)!r} is not a readable image ({reason}); pass image files only."
        ) from None


def eval_transform(info: ModelInfo) -> Callable[[Any], torch.Tensor]:
    """The evaluation transform of a checkpoint: PIL image -> ``(in_chans, H, W)`` tensor.

    Square inputs use :func:`deit.data.transforms.build_transform` (``is_train=False``: resize
    to ``size / crop_pct`` bicubic, centre crop, normalise with ``info.mean``/``info.std``;
    inputs of 32 px or less are only resized, as in the official code). Non-square inputs use
    ``timm.data.create_transform`` with the same arguments. A 1-channel model with RGB
    statistics is normalised with their channel averages.
    """
    h, w = info.img_size
    mean, std = tuple(info.mean), tuple(info.std)
    if info.in_chans == 1 and len(mean) == 3:  # RGB statistics for a greyscale model
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if h == w:
        from .data.transforms import build_transform

        return build_transform(False, h, mean=mean, std=std, crop_pct=info.crop_pct)
    from timm.data import create_transform

    return create_transform(
        (info.in_chans, h, w),
        is_training=False,
        interpolation="bicubic",
        mean=mean,
        std=std,
        crop_pct=info.crop_pct,
    )


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- prediction -----------------------------------------------------------------------------
@torch.no_grad()
def classify(model: nn.Module, images: torch.Tensor, topk: int = 5) -> tuple[torch.Tensor, ...]:
    """Softmax top-k of ``model(images)``.

    Args:
        model: a classifier in eval mode; a distilled model answers with its selected head
            (:meth:`~deit.models.DistilledVisionTransformer.set_head`).
        images: ``(B, C, H, W)`` normalised images.
        topk: how many classes to return (capped at the class count).

    Returns:
        ``(probs, indices)``, each ``(B, k)``, most probable first.
    """
    logits = model(images)
    if isinstance(logits, tuple):  # a distilled model left in distilled-training mode
        logits = late_fusion(*logits)
    probs = logits.float().softmax(dim=-1)
    return probs.topk(min(topk, probs.shape[-1]), dim=-1)


def predict(
    checkpoint_or_model: ModelLike,
    paths: str | os.PathLike | Any | Iterable[str | os.PathLike | Any],
    topk: int = 5,
    head: str = "both",
    batch_size: int = 64,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    info: ModelInfo | None = None,
    progress: bool = False,
) -> list[Prediction]:
    """Top-k classes of image files (or folders of them, searched recursively) or PIL images.

    Each image is read with PIL, converted to the model's channels, passed through the
    checkpoint's evaluation transform (:func:`eval_transform`) and classified in batches of
    ``batch_size``.

    Args:
        checkpoint_or_model: checkpoint path, module, or ``(model, info)`` from
            :func:`deit.load_model`.
        paths: image files and/or folders; ``PIL.Image.Image`` objects are accepted too (e.g.
            the images of a data set built with ``transform=None``), named ``<image i>``
            and answered before the files.
        topk: classes per image (capped at the class count).
        head: distilled models: ``"both"`` (average of the two heads, the paper's default),
            ``"cls"`` (class token) or ``"dist"`` (distillation token).
        batch_size: images per forward pass.
        model_name: architecture of a weights file without metadata (``--model``).
        device: where to run.
        info: metadata of a module passed directly (default: :func:`info_from_model`).
        progress: show a tqdm progress bar of the images on stderr.

    Returns:
        One :class:`Prediction` per image: PIL images in the order given, then files in
        :func:`find_images` order. Comparing with ``deit eval`` on a data set ``ds`` built
        with ``transform=None``: ``imgs, ys = zip(*ds)``, then
        ``100 * mean([p.index == y for p, y in zip(predict(ckpt, imgs), ys)])`` is its acc1.

    Raises:
        FileNotFoundError / PermissionError / ValueError: see :func:`find_images`.
        NotAnImageError: a file that is not an image (named in the message).
        deit.checkpoints.CheckpointError: the checkpoint cannot be read.
        ValueError: ``topk < 1``, a bad ``head``, or ``"dist"`` for a model without that head.
    """
    if topk < 1:
        raise ValueError(f"topk must be at least 1 (got {topk}).")
    check_batch_size(batch_size, "pass a positive batch size (default 64)")
    device = resolve_device(device)
    from PIL import Image

    from .data.images import to_display_mode

    entries = _entries(paths)
    model, info = resolve_model(checkpoint_or_model, model_name, device, info)
    transform = eval_transform(info)
    names = info.class_names
    previous = _set_head(model, head)
    fast = optimize_for_inference(model)  # same logits (within 1e-5), fewer FLOPs
    results: list[Prediction] = []
    bar = _progress_bar(len(entries), progress)
    try:
        mode = "RGB" if info.in_chans == 3 else "L"
        for chunk in _batches(entries, batch_size):
            pil = [
                to_display_mode(src, mode)
                if isinstance(src, Image.Image)
                else load_image(src, info.in_chans)
                for _, src in chunk
            ]
            x = torch.stack([transform(im) for im in pil]).to(device)
            probs, idx = classify(fast, x, topk)
            for (name, _), p, i in zip(chunk, probs.tolist(), idx.tolist(), strict=True):
                labels = [names[j] if j < len(names) else str(j) for j in i]
                results.append(Prediction(name, i, labels, p))
            bar.update(len(chunk))
    finally:
        bar.close()
        if previous is not None:
            model.set_head(previous)
    return results


def _entries(paths: Any) -> list[tuple[str, Any]]:
    """``(name, PIL image or file)`` of :func:`predict`'s ``paths``: PIL images first (named
    ``<image i>``), then the files of :func:`find_images`."""
    from PIL import Image

    if isinstance(paths, (str, os.PathLike, Image.Image)):
        paths = [paths]
    paths = list(paths)
    given = [p for p in paths if isinstance(p, Image.Image)]
    named = [p for p in paths if not isinstance(p, Image.Image)]
    entries: list[tuple[str, Any]] = [(f"<image {i}>", im) for i, im in enumerate(given)]
    if named or not given:
        entries += [(str(f), f) for f in find_images(named)]
    return entries


def _progress_bar(total: int, show: bool) -> Any:
    """A tqdm bar of ``total`` images on stderr, gone when done (as ``deit train``'s); a
    silent one unless ``show``."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc="predict", unit="image", leave=False, file=sys.stderr, disable=not show
    )


# -- command line ---------------------------------------------------------------------------
def format_table(predictions: Sequence[Prediction]) -> str:
    """A plain-text table: one row per image, ``label (probability %)`` per rank."""
    if not predictions:
        return ""
    k = max(len(p.indices) for p in predictions)
    header = ["image"] + [f"top-{r + 1}" for r in range(k)]
    rows = [
        [printable(p.path)]
        + [f"{lab} ({100 * pr:.1f}%)" for lab, pr in zip(p.labels, p.probs, strict=True)]
        for p in predictions
    ]
    widths = [max(len(r[c]) for r in [header, *rows] if c < len(r)) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip()
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preds = predict(
            args.checkpoint,
            args.images,
            topk=args.topk,
            head=args.head,
            batch_size=args.batch_size,
            model_name=args.model,
            device=args.device,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    _print_notes(caught)
    if args.json:
        for p in preds:
            print(dumps(p.to_dict()))
    else:
        print(format_table(preds))
    return 0
