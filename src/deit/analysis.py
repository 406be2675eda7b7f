"""What a trained DeiT attends to, and how its two tokens relate: ``deit analyze``.

- Attention maps of the class token and, for a distilled model, of the distillation token: the
  last layer's attention (mean over heads) and the attention rollout over all layers (Abnar &
  Zuidema 2020, "Quantifying Attention Flow in Transformers": per layer, average the heads, add
  the identity for the residual connection, renormalise the rows, multiply through the layers).
- Cosine similarity between the class and distillation tokens at every layer's output, and
  between the weights of their two heads (paper section 4, "Distillation token": 0.06 between
  the learned tokens before the first block, 0.93 after the last, 0.1 between the heads).
- How often the two heads agree on the images, and with a teacher when one is given.

Figures are built as :class:`matplotlib.figure.Figure` objects on the Agg canvas (no pyplot, no
global backend change) and saved as PNG; the numbers go to ``summary.json``.

Shapes: images ``(B, C, H, W)``, tokens ``(B, N, D)`` with ``N = prefix + patches``, attention
``(B, heads, N, N)`` (row = query token, column = key token).
"""

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

from ._optional import require
from .checkpoints import ModelInfo
from .models import DistilledVisionTransformer, VisionTransformer
from .predict import (
    ModelLike,
    _print_notes,
    eval_transform,
    find_images,
    load_image,
    resolve_model,
)

__all__ = [
    "PAPER_TOKEN_SIMILARITY",
    "PAPER_HEAD_SIMILARITY",
    "TOKEN_NAMES",
    "collect_attention",
    "attention_rollout",
    "attention_maps",
    "token_similarity",
    "head_weight_similarity",
    "head_agreement",
    "attention_figure",
    "similarity_figure",
    "analyze",
    "format_summary",
    "add_subcommand",
]

#: Paper section 4: cosine similarity of the class and distillation tokens (first, last layer).
PAPER_TOKEN_SIMILARITY = {"first_layer": 0.06, "last_layer": 0.93}
#: Paper section 4: cosine similarity between the weights of the two heads.
PAPER_HEAD_SIMILARITY = 0.1
#: Display names of the prefix tokens, by position.
TOKEN_NAMES = ("class token", "distillation token")


def _check_vit(model: nn.Module) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"Attention analysis needs a DeiT/ViT model of this package, not a "
            f"{type(model).__name__}; pass a DeiT checkpoint."
        )
    return model


def _is_distilled(model: nn.Module) -> bool:
    return isinstance(model, DistilledVisionTransformer)


# -- tensors --------------------------------------------------------------------------------
@torch.no_grad()
def collect_attention(
    model: VisionTransformer, images: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run ``model.forward_features`` and record every block's attention and output.

    The attention of block ``l`` is ``block.attn.attention_weights(block.norm1(x))`` on the
    block's input (the softmax the fused kernel computes, materialised).

    Args:
        model: a DeiT/ViT of this package (eval mode advised).
        images: ``(B, C, H, W)`` normalised images.

    Returns:
        ``(attentions, tokens)``: per block, attention ``(B, heads, N, N)`` and the block's
        output tokens ``(B, N, D)`` (the residual stream, before the final norm).

    Raises:
        ValueError: not a DeiT/ViT model of this package.
    """
    _check_vit(model)
    attentions: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []

    def pre(block: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        attentions.append(block.attn.attention_weights(block.norm1(args[0])))

    def post(block: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        tokens.append(out)

    handles = []
    for block in model.blocks:
        handles.append(block.register_forward_pre_hook(pre))
        handles.append(block.register_forward_hook(post))
    try:
        model.forward_features(images)
    finally:
        for h in handles:
            h.remove()
    return attentions, tokens


def attention_rollout(
    attentions: Sequence[torch.Tensor], add_identity: bool = True
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, section 3) through a stack of layers.

    Per layer the heads are averaged (``(B, heads, N, N)`` -> ``(B, N, N)``; a 3-d input is
    taken as already averaged), the identity is added for the residual connection and the rows
    are renormalised to sum to 1, giving ``Â_l = (A_l + I) / 2`` for row-stochastic ``A_l``.
    The rollout is the product ``Â_L ... Â_2 Â_1`` (the last layer on the left), so row ``i``
    says how much each input token contributes to output token ``i``.

    Args:
        attentions: per layer, ``(B, heads, N, N)`` or ``(B, N, N)``, first layer first.
        add_identity: add ``I`` before renormalising (the paper's residual correction).

    Returns:
        ``(B, N, N)`` with rows summing to 1.

    Raises:
        ValueError: an empty list or layers of different shapes.
    """
    if not attentions:
        raise ValueError("attention_rollout needs the attention of at least one layer.")
    result: torch.Tensor | None = None
    for a in attentions:
        a = a.float()
        if a.ndim == 4:
            a = a.mean(dim=1)
        if a.ndim != 3 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"Expected attention (B, heads, N, N) or (B, N, N), got {a.shape}.")
        if add_identity:
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        if result is not None and result.shape != a.shape:
            raise ValueError(f"Layers differ in shape: {tuple(result.shape)} vs {tuple(a.shape)}.")
        result = a if result is None else a @ result
    return result


def attention_maps(
    model: VisionTransformer,
    images: torch.Tensor,
    attentions: Sequence[torch.Tensor] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Attention of each prefix token over the image patches, on the patch grid.

    Args:
        model: a DeiT/ViT of this package.
        images: ``(B, C, H, W)`` normalised images.
        attentions: the output of :func:`collect_attention` when already computed.

    Returns:
        ``{token name: {"last": (B, gh, gw), "rollout": (B, gh, gw)}}`` for the class token
        and, for a distilled model, the distillation token (see :data:`TOKEN_NAMES`). ``last``
        is the last layer's attention averaged over heads; ``rollout`` the token's row of
        :func:`attention_rollout`. Only the patch columns are kept, so a row of a map sums to
        less than 1 (the rest goes to the prefix tokens).
    """
    _check_vit(model)
    if attentions is None:
        attentions, _ = collect_attention(model, images)
    prefix = model.num_prefix_tokens
    gh, gw = model.grid_size
    last = attentions[-1].float().mean(dim=1)
    rollout = attention_rollout(attentions)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for t in range(prefix):
        out[TOKEN_NAMES[t]] = {
            "last": last[:, t, prefix:].reshape(-1, gh, gw),
            "rollout": rollout[:, t, prefix:].reshape(-1, gh, gw),
        }
    return out


def _cosine_per_layer(tokens: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(layers, B)`` cosine similarity of tokens 0 and 1 of each layer's output."""
    return torch.stack([F.cosine_similarity(x[:, 0], x[:, 1], dim=-1) for x in tokens])


@torch.no_grad()
def token_similarity(
    model: DistilledVisionTransformer, images: torch.Tensor, batch_size: int = 32
) -> list[float]:
    """Cosine similarity between the class and distillation tokens after every block.

    For each block the cosine between token 0 (class) and token 1 (distillation) of the block's
    output (the residual stream, before the final norm) is computed per image and averaged over
    the images (paper section 4: 0.06 between the learned tokens before the first block, rising
    to 0.93 after the last).

    Args:
        model: a distilled DeiT.
        images: ``(B, C, H, W)`` normalised images.
        batch_size: images per forward pass.

    Returns:
        One float in [-1, 1] per block, first block first.

    Raises:
        ValueError: the model has no distillation token.
    """
    _check_vit(model)
    if not _is_distilled(model):
        raise ValueError(
            "Token similarity needs a distilled model: this one has no distillation token."
        )
    total: torch.Tensor | None = None
    for i in range(0, images.shape[0], batch_size):
        _, tokens = collect_attention(model, images[i : i + batch_size])
        s = _cosine_per_layer(tokens).sum(dim=1)
        total = s if total is None else total + s
    return (total / images.shape[0]).tolist()


def head_weight_similarity(model: DistilledVisionTransformer) -> dict[str, float]:
    """Cosine similarity between the weights of the class head and the distillation head.

    Returns:
        ``{"flattened": cos(vec(head.weight), vec(head_dist.weight)),
        "per_class_mean": mean over classes c of cos(head.weight[c], head_dist.weight[c])}``
        (paper section 4 reports 0.1 between the two heads; biases are left out).

    Raises:
        ValueError: the model has no distillation head.
    """
    if not _is_distilled(model) or not isinstance(model.head, nn.Linear):
        raise ValueError("Head similarity needs a distilled model with two linear heads.")
    w_cls, w_dist = model.head.weight.detach().float(), model.head_dist.weight.detach().float()
    flat = F.cosine_similarity(w_cls.flatten(), w_dist.flatten(), dim=0)
    per_class = F.cosine_similarity(w_cls, w_dist, dim=1).mean()
    return {"flattened": float(flat), "per_class_mean": float(per_class)}


@torch.no_grad()
def head_agreement(
    model: nn.Module,
    images: torch.Tensor,
    teacher: nn.Module | None = None,
    teacher_images: torch.Tensor | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """How often predictions agree (fraction of images with the same argmax, in [0, 1]).

    Args:
        model: the student; a distilled DeiT gives ``cls_vs_dist`` (its two heads).
        images: ``(B, C, H, W)`` normalised for the student.
        teacher: optional classifier with the same classes.
        teacher_images: the same images normalised for the teacher (default ``images``).
        batch_size: images per forward pass.

    Returns:
        ``cls_vs_dist`` (distilled models), and with a teacher ``teacher_vs_cls``,
        ``teacher_vs_dist`` and ``teacher_vs_both`` (distilled), or ``teacher_vs_model``.

    Raises:
        ValueError: teacher and student disagree on the number of classes, or nothing to
            compare (not distilled and no teacher).
    """
    distilled = _is_distilled(model)
    if not distilled and teacher is None:
        raise ValueError("Head agreement needs a distilled model or a teacher.")
    preds: dict[str, list[torch.Tensor]] = {}
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size]
        if distilled:
            cls_logits, dist_logits = model.forward_heads(x)
            preds.setdefault("cls", []).append(cls_logits.argmax(-1))
            preds.setdefault("dist", []).append(dist_logits.argmax(-1))
            preds.setdefault("both", []).append((cls_logits + dist_logits).argmax(-1))
            n_cls = cls_logits.shape[-1]
        else:
            logits = model(x)
            preds.setdefault("model", []).append(logits.argmax(-1))
            n_cls = logits.shape[-1]
        if teacher is not None:
            tx = (teacher_images if teacher_images is not None else images)[i : i + batch_size]
            t_logits = teacher(tx)
            if isinstance(t_logits, tuple):
                t_logits = (t_logits[0] + t_logits[1]) / 2
            if t_logits.shape[-1] != n_cls:
                raise ValueError(
                    f"The teacher has {t_logits.shape[-1]} classes and the model {n_cls}; "
                    "agreement needs the same classes."
                )
            preds.setdefault("teacher", []).append(t_logits.argmax(-1))
    p = {k: torch.cat(v) for k, v in preds.items()}
    out: dict[str, float] = {}
    if distilled:
        out["cls_vs_dist"] = float((p["cls"] == p["dist"]).float().mean())
    if teacher is not None:
        for k in ("cls", "dist", "both") if distilled else ("model",):
            out[f"teacher_vs_{k}"] = float((p["teacher"] == p[k]).float().mean())
    return out


# -- figures --------------------------------------------------------------------------------
def _figure(width: float, height: float):
    require("matplotlib", "analysis", "deit analyze")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_display(image: Any) -> Any:
    """``(C, H, W)`` tensor in [0, 1] / PIL / array -> ``(H, W[, 3])`` numpy in [0, 1]."""
    import numpy as np

    if isinstance(image, torch.Tensor):
        arr = image.detach().float().cpu()
        arr = arr.permute(1, 2, 0).numpy() if arr.ndim == 3 else arr.numpy()
    else:
        arr = np.asarray(image, dtype=np.float32)
        if arr.max() > 1.0:
            arr = arr / 255.0
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return np.clip(arr, 0.0, 1.0)


def attention_figure(
    image: Any,
    maps: dict[str, dict[str, torch.Tensor]],
    title: str | None = None,
    num_heads: int | None = None,
):
    """One image with each token's attention overlaid, side by side.

    Panels: the image, then per token (class token, then distillation token) its last-layer
    attention (mean over heads) and its attention rollout (Abnar & Zuidema 2020), each on the
    patch grid stretched over the image with a colour bar in attention-weight units.

    Args:
        image: ``(C, H, W)`` tensor with values in [0, 1] (un-normalised), a PIL image or an
            ``(H, W[, 3])`` array.
        maps: ``{token name: {"last": (gh, gw), "rollout": (gh, gw)}}`` for this image (one
            image's slice of :func:`attention_maps`).
        title: figure title (e.g. the file name).
        num_heads: heads averaged in the last layer, for the panel titles.

    Returns:
        A :class:`matplotlib.figure.Figure` (Agg canvas). ``fig.axes`` holds the image panel,
        the map panels in order, then one colour-bar axis per map.
    """
    img = _to_display(image)
    h, w = img.shape[:2]
    panels = [(tok, kind) for tok in maps for kind in ("last", "rollout")]
    fig = _figure(3.2 * (1 + len(panels)), 3.4)
    axes = fig.subplots(1, 1 + len(panels), squeeze=False)[0]
    cmap = "gray" if img.ndim == 2 else None
    extent = (0, w, h, 0)  # image and patch grid share pixel edges: no half-pixel shift
    axes[0].imshow(img, cmap=cmap, vmin=0, vmax=1, extent=extent)
    axes[0].set_title("input\n(model's crop)", fontsize=9)
    heads = f"mean of {num_heads} heads" if num_heads else "mean over heads"
    for ax, (tok, kind) in zip(axes[1:], panels, strict=True):
        m = maps[tok][kind].detach().float().cpu().numpy()
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, extent=extent)
        # one flat cell per patch: the model attends to patches, not to smoothed pixels
        im = ax.imshow(m, cmap="jet", alpha=0.5, extent=extent, interpolation="nearest")
        # three short lines: one line of all this overlapped the next panel's title
        what = f"last layer, {heads}" if kind == "last" else "attention rollout"
        ax.set_title(f"{tok}\n{what}\n{m.shape[0]}x{m.shape[1]} patches", fontsize=9)
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cbar.set_label("attention weight", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def similarity_figure(values: Sequence[float], paper: bool = True):
    """Curve of the class/distillation token cosine similarity over the layers.

    Args:
        values: one similarity per block (:func:`token_similarity`), first block first.
        paper: mark the paper's two points (section 4, DeiT-B: 0.06 between the learned class
            and distillation tokens, at depth 0; 0.93 after the last block, at depth 1).

    Returns:
        A :class:`matplotlib.figure.Figure` (Agg canvas) with labelled axes and a legend.
    """
    depth = len(values)
    rel = [i / depth for i in range(1, depth + 1)]
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    ax.plot(rel, list(values), marker="o", label=f"this model ({depth} blocks, mean over images)")
    if paper and depth:
        # paper section 4: 0.06 between the learned tokens (before the first block, depth 0),
        # 0.93 after the last of DeiT-B's 12 blocks (depth 1)
        ax.scatter(
            [0.0, 1.0],
            [PAPER_TOKEN_SIMILARITY["first_layer"], PAPER_TOKEN_SIMILARITY["last_layer"]],
            marker="*",
            s=160,
            color="tab:red",
            zorder=3,
            label="paper, DeiT-B: 0.06 learned tokens, 0.93 last block",
        )
    ax.set_xlabel("relative depth (block / number of blocks)")
    ax.set_ylabel("cosine similarity (class vs distillation token)")
    ax.set_title("Class vs distillation token similarity per layer")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlim(-0.05, 1.05)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=100)
    return str(path)


# -- the whole analysis ---------------------------------------------------------------------
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
    totals = _Totals()
    for start in range(0, len(files), max(1, batch_size)):
        chunk = files[start : start + batch_size]
        _analyze_batch(totals, vit, info, chunk, start, out, max_figures, device, t_model, t_info)
    summary = _summary(vit, info, files, totals, out)
    summary["teacher"] = t_info.model_name if t_info is not None else None
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
                title=f.name,
                num_heads=num_heads,
            )
            totals.figures.append(
                _save(fig, out / f"attention_{start + j:03d}_{_safe_stem(f)}.png")
            )
    distilled = _is_distilled(vit)
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
    distilled = _is_distilled(vit)
    n = totals.n
    skipped: list[str] = []
    summary: dict[str, Any] = {
        "model_name": info.model_name,
        "distilled": distilled,
        "num_images": n,
        "images": [str(f) for f in files],
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
        summary["token_similarity"] = {
            "per_layer": per_layer,
            "first_layer": per_layer[0],
            "last_layer": per_layer[-1],
            "after_final_norm": totals.final_similarity / n,
            "paper": dict(PAPER_TOKEN_SIMILARITY),
        }
        fig = similarity_figure(per_layer)
        summary["figures"]["token_similarity"] = _save(fig, out / "token_similarity.png")
        summary["head_weight_similarity"] = {
            **head_weight_similarity(vit),
            "paper": PAPER_HEAD_SIMILARITY,
        }
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
            f"  first block {ts['first_layer']:.3f} (paper, learned tokens: "
            f"{ts['paper']['first_layer']}), "
            f"last block {ts['last_layer']:.3f} (paper {ts['paper']['last_layer']}), "
            f"after the final norm {ts['after_final_norm']:.3f}"
        )
    hs = summary.get("head_weight_similarity")
    if hs:
        lines.append(
            f"head weight cosine similarity: flattened {hs['flattened']:.3f}, per-class mean "
            f"{hs['per_class_mean']:.3f} (paper {hs['paper']})"
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
    _print_notes(caught, "analyze")
    print(format_summary(summary))
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit analyze`` on the ``deit`` parser's subparsers."""
    p = sub.add_parser(
        "analyze",
        help="attention maps, class/distillation token similarity, head agreement",
        description="Write attention-map figures (last layer and rollout, per token), the "
        "class/distillation token similarity curve and summary.json for some images.",
    )
    p.add_argument("checkpoint", help="checkpoint written by deit train, or any weights file")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--output-dir", required=True, help="folder for the PNG figures and JSON")
    p.add_argument("--model", help="architecture of a weights file without metadata")
    p.add_argument("--teacher-model", help="teacher architecture (for a file without metadata)")
    p.add_argument("--teacher-path", help="teacher checkpoint, for agreement with the teacher")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument(
        "--max-figures", type=int, default=8, help="attention figures to write (default 8)"
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_run)
