"""``deit analyze``: attention figures, token and head similarity and head agreement of a DeiT
on some images, summed over batches into ``summary.json`` (:func:`analyze`)."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_batch_size
from .._json import printable
from .._notes import _print_notes
from .._write import atomic_write_text
from ..checkpoints import ModelInfo
from ..models import DistilledVisionTransformer, VisionTransformer
from ..precision import resolve_device
from ..predict import (
    ModelLike,
    eval_transform,
    find_images,
    load_image,
    resolve_model,
)
from ..train.lock import folder_lock
from .attention import _check_vit, attention_maps, collect_attention
from .figures import _save, attention_figure, similarity_figure
from .similarity import (
    PAPER_TOKEN_SIMILARITY,
    _cosine_per_layer,
    head_agreement,
    head_weight_similarity,
    learned_token_similarity,
)

__all__ = ["analyze", "format_summary"]


def _load_batch(files: Sequence[Path], info: ModelInfo) -> torch.Tensor:
    transform = eval_transform(info)
    return torch.stack([transform(load_image(f, info.in_chans)) for f in files])


def _unnormalise(x: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean, dtype=x.dtype)
    std = torch.tensor(info.std, dtype=x.dtype)
    if x.shape[0] == 1 and mean.numel() == 3:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    return x * std[:, None, None] + mean[:, None, None]


def _safe_stem(path: Path) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:40]


@torch.no_grad()
def analyze(
    checkpoint_or_model: ModelLike,
    image_paths: str | os.PathLike | Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    model_name: str | None = None,
    teacher: ModelLike | None = None,
    teacher_model: str | None = None,
    teacher_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    max_figures: int = 8,
    info: ModelInfo | None = None,
) -> dict[str, Any]:
    """Attention maps, token/head similarity and head agreement of a DeiT on some images.

    Writes to ``output_dir``: ``attention_<i>_<name>.png`` for the first ``max_figures``
    images (:func:`attention_figure`), ``token_similarity.png`` (:func:`similarity_figure`,
    distilled models only) and ``summary.json`` (the returned dict).

    Args:
        checkpoint_or_model: checkpoint path, module, or ``(model, info)`` pair.
        image_paths: image files and/or folders (searched recursively).
        output_dir: created when missing.
        model_name: architecture of a weights file without metadata.
        teacher: a teacher as a checkpoint path, module or ``(model, info)``; or give
            ``teacher_path`` (and ``teacher_model`` for a file without metadata), loaded with
            :func:`deit.load_model`. Each model sees the images through its own transform.
        device: where to run.
        batch_size: images per forward pass.
        max_figures: attention figures to write (the numbers use every image).
        info: metadata of a module passed directly.

    Returns:
        The summary: ``model_name``, ``distilled``, ``num_images``, ``images``, ``grid_size``,
        ``depth``, ``num_heads``, ``figures`` (paths), ``token_similarity`` (``per_layer``,
        ``first_layer``, ``last_layer``, ``after_final_norm``, ``paper``) or ``None``,
        ``head_weight_similarity`` (``flattened``, ``per_class_mean``, ``paper``) or ``None``,
        ``agreement`` (see :func:`head_agreement`) or ``None``, ``skipped`` (sentences saying
        what was not computed and why) and ``notes`` (from loading).

    Raises:
        ValueError: not a DeiT/ViT model, teacher options that do not fit, bad images or
            folders (see :func:`deit.predict.predict`).
        OSError: ``output_dir`` cannot be written; unreadable images or folders.
    """
    check_batch_size(batch_size, "pass a positive batch size (default 16)")
    device = resolve_device(device)
    if isinstance(image_paths, (str, os.PathLike)):
        image_paths = [image_paths]
    files = find_images(image_paths)
    if teacher_model is not None and teacher is None and teacher_path is None:
        raise ValueError(
            "--teacher-model needs --teacher-path: agreement with a teacher of random "
            "weights means nothing."
        )
    model, info = resolve_model(checkpoint_or_model, model_name, device, info)
    vit = _check_vit(model)
    t_model = t_info = None
    if teacher is not None or teacher_path is not None:
        t_model, t_info = resolve_model(
            teacher if teacher is not None else teacher_path, teacher_model, device
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"Output folder {str(out)!r} cannot be written.")
    with folder_lock(out, "analysis", "--output-dir"):  # a second one would mix their figures
        totals = _Totals()
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            _analyze_batch(
                totals, vit, info, chunk, start, out, max_figures, device, t_model, t_info
            )
        summary = _summary(vit, info, files, totals, out)
        summary["teacher"] = t_info.model_name if t_info is not None else None
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


@dataclass
class _Totals:
    """What :func:`analyze` sums over the batches."""

    figures: list[str] = field(default_factory=list)
    similarity: torch.Tensor | None = None  # (depth,) summed cosine class/distillation token
    final_similarity: float = 0.0  # the same after the final norm
    agreement: dict[str, float] = field(default_factory=dict)  # summed agreements
    n: int = 0


def _analyze_batch(
    totals: _Totals,
    vit: VisionTransformer,
    info: ModelInfo,
    chunk: list[Path],
    start: int,
    out: Path,
    max_figures: int,
    device: str | torch.device,
    t_model: nn.Module | None,
    t_info: ModelInfo | None,
) -> None:
    """Add one batch of images (files ``chunk``, the first at index ``start``) to ``totals``,
    writing its attention figures while fewer than ``max_figures`` exist."""
    x = _load_batch(chunk, info).to(device)
    attentions, tokens = collect_attention(vit, x)
    if start < max_figures:
        maps = attention_maps(vit, x, attentions)
        num_heads = vit.blocks[0].attn.num_heads if len(vit.blocks) else 0
        for j, f in enumerate(chunk[: max(0, max_figures - start)]):
            fig = attention_figure(
                _unnormalise(x[j].cpu(), info),
                {tok: {k: v[j] for k, v in m.items()} for tok, m in maps.items()},
                title=printable(f.name),
                num_heads=num_heads,
            )
            totals.figures.append(
                _save(fig, out / f"attention_{start + j:03d}_{_safe_stem(f)}.png")
            )
    distilled = isinstance(vit, DistilledVisionTransformer)
    if distilled:
        s = _cosine_per_layer(tokens).sum(dim=1)
        totals.similarity = s if totals.similarity is None else totals.similarity + s
        normed = vit.norm(tokens[-1])
        totals.final_similarity += float(
            F.cosine_similarity(normed[:, 0], normed[:, 1], dim=-1).sum()
        )
    if distilled or t_model is not None:
        tx = _load_batch(chunk, t_info).to(device) if t_model is not None else None
        part = head_agreement(vit, x, t_model, tx, batch_size=len(chunk))
        for k, v in part.items():
            totals.agreement[k] = totals.agreement.get(k, 0.0) + v * len(chunk)
    totals.n += len(chunk)


def _summary(
    vit: VisionTransformer, info: ModelInfo, files: list[Path], totals: _Totals, out: Path
) -> dict[str, Any]:
    """The summary dict of :func:`analyze` (without ``teacher``); writes the similarity figure."""
    distilled = isinstance(vit, DistilledVisionTransformer)
    n = totals.n
    skipped: list[str] = []
    summary: dict[str, Any] = {
        "model_name": info.model_name,
        "distilled": distilled,
        "num_images": n,
        "images": [printable(str(f)) for f in files],
        "img_size": list(info.img_size),
        "grid_size": list(vit.grid_size),
        "depth": len(vit.blocks),
        "num_heads": vit.blocks[0].attn.num_heads if len(vit.blocks) else 0,
        "figures": {"attention": totals.figures, "token_similarity": None},
        "token_similarity": None,
        "head_weight_similarity": None,
        "agreement": None,
        "teacher": None,
        "skipped": skipped,
        "notes": list(info.notes),
    }
    if distilled and totals.similarity is not None:
        per_layer = (totals.similarity / n).tolist()
        learned = learned_token_similarity(vit)
        summary["token_similarity"] = {
            "learned_tokens": learned,
            "per_layer": per_layer,
            "first_block": per_layer[0],
            "last_block": per_layer[-1],
            "after_final_norm": totals.final_similarity / n,
            "paper": dict(PAPER_TOKEN_SIMILARITY),
        }
        fig = similarity_figure([learned, *per_layer])
        summary["figures"]["token_similarity"] = _save(fig, out / "token_similarity.png")
        summary["head_weight_similarity"] = head_weight_similarity(vit)
    else:
        skipped.append(
            "Token and head similarity were skipped: the model is not distilled, so it has no "
            "distillation token or head to compare with the class token."
        )
    if totals.agreement:
        summary["agreement"] = {k: v / n for k, v in totals.agreement.items()}
    elif not distilled:
        skipped.append(
            "Head agreement was skipped: the model has a single head and no teacher was given."
        )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The numbers of an :func:`analyze` summary as printable lines."""
    lines = [
        f"model {summary['model_name']} ({'distilled' if summary['distilled'] else 'not distilled'}"
        f"), {summary['num_images']} image(s)"
    ]
    ts = summary.get("token_similarity")
    if ts:
        vals = " ".join(f"{v:.3f}" for v in ts["per_layer"])
        lines.append(f"cls/dist token cosine similarity per layer: {vals}")
        lines.append(
            f"  learned tokens {ts['learned_tokens']:.3f} (paper "
            f"{ts['paper']['learned_tokens']}), first block {ts['first_block']:.3f}, "
            f"last block {ts['last_block']:.3f} (paper {ts['paper']['last_block']}), "
            f"after the final norm {ts['after_final_norm']:.3f}"
        )
    hs = summary.get("head_weight_similarity")
    if hs:
        lines.append(
            f"head weight cosine similarity: flattened {hs['flattened']:.3f}, per-class mean "
            f"{hs['per_class_mean']:.3f}"
        )
    for k, v in (summary.get("agreement") or {}).items():
        lines.append(f"agreement {k.replace('_', ' ')}: {100 * v:.1f}%")
    lines += summary.get("skipped", [])
    figs = summary["figures"]
    n = len(figs["attention"]) + (1 if figs["token_similarity"] else 0)
    if figs["attention"]:
        where = Path(figs["attention"][0]).parent
        lines.append(f"wrote {n} figure(s) and summary.json to {where}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = analyze(
            args.checkpoint,
            args.images,
            args.output_dir,
            model_name=args.model,
            teacher_model=args.teacher_model,
            teacher_path=args.teacher_path,
            device=args.device,
            batch_size=args.batch_size,
            max_figures=args.max_figures,
        )
    _print_notes(caught)
    print(format_summary(summary))
    return 0
