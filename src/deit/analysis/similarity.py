"""How the class and distillation tokens relate: their cosine similarity per layer, that of
their heads' weights (paper section 4), and how often the heads (and a teacher) agree."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import DistilledVisionTransformer
from .attention import _check_vit, _is_distilled, collect_attention

__all__ = [
    "PAPER_HEAD_SIMILARITY",
    "PAPER_TOKEN_SIMILARITY",
    "head_agreement",
    "head_weight_similarity",
    "token_similarity",
]

#: Paper section 4: cosine similarity of the class and distillation tokens (first, last layer).
PAPER_TOKEN_SIMILARITY = {"first_layer": 0.06, "last_layer": 0.93}
#: Paper section 4: cosine similarity between the weights of the two heads.
PAPER_HEAD_SIMILARITY = 0.1


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
