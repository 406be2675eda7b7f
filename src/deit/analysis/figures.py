"""The analysis figures: an image with each token's attention overlaid, and the token similarity
curve. Built as :class:`matplotlib.figure.Figure` objects on the Agg canvas (no pyplot, no global
backend change)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._optional import require
from .._write import atomic_write
from .similarity import PAPER_TOKEN_SIMILARITY

__all__ = ["attention_figure", "similarity_figure"]


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
    """Curve of the class/distillation token cosine similarity through depth.

    Args:
        values: the learned tokens' cosine (depth 0, :func:`learned_token_similarity`), then
            one per block (:func:`token_similarity`), first block first.
        paper: mark the paper's two points (section 4, DeiT-B: 0.06 between the learned class
            and distillation tokens, at depth 0; 0.93 after the last block, at depth 1).

    Returns:
        A :class:`matplotlib.figure.Figure` (Agg canvas) with labelled axes and a legend.
    """
    blocks = len(values) - 1
    rel = [i / max(blocks, 1) for i in range(len(values))]
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    ax.plot(rel, list(values), marker="o", label=f"this model ({blocks} blocks, mean over images)")
    if paper and blocks:
        ax.scatter(
            [0.0, 1.0],
            [PAPER_TOKEN_SIMILARITY["learned_tokens"], PAPER_TOKEN_SIMILARITY["last_block"]],
            marker="*",
            s=160,
            color="tab:red",
            zorder=3,
            label="paper, DeiT-B: 0.06 learned tokens, 0.93 last block",
        )
    ax.set_xlabel("relative depth (0: the learned tokens; 1: after the last block)")
    ax.set_ylabel("cosine similarity (class vs distillation token)")
    ax.set_title("Class vs distillation token similarity per layer")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlim(-0.05, 1.05)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _save(fig: Any, path: Path) -> str:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return str(path)
