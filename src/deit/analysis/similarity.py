"""How the class and distillation tokens relate (paper section 4): the cosine of the learned
tokens and of the two tokens after every block, that of the two heads' weights and outputs,
and how often the heads (and a teacher) agree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import DistilledVisionTransformer
from ..models.distilled import late_fusion
from .attention import _check_vit, collect_attention

__all__ = [
    "PAPER_TOKEN_SIMILARITY",
    "head_agreement",
    "head_weight_similarity",
    "learned_token_similarity",
    "token_report",
    "token_similarity",
]

#: Paper section 4 (DeiT-B): cosine of the learned class and distillation tokens (the input
#: embeddings, before any block) and of the two tokens after the last block.
PAPER_TOKEN_SIMILARITY = {"learned_tokens": 0.06, "last_block": 0.93}


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
    if not isinstance(model, DistilledVisionTransformer):
        raise ValueError(
            "Token similarity needs a distilled model: this one has no distillation token."
        )
    total: torch.Tensor | None = None
    for i in range(0, images.shape[0], batch_size):
        _, tokens = collect_attention(model, images[i : i + batch_size])
        s = _cosine_per_layer(tokens).sum(dim=1)
        total = s if total is None else total + s
    return (total / images.shape[0]).tolist()


def learned_token_similarity(model: DistilledVisionTransformer) -> float:
    """Cosine of the learned class and distillation tokens (``cls_token``, ``dist_token``: the
    input embeddings before any block, without position embedding), in [-1, 1]; the paper
    (section 4) reports 0.06 for DeiT-B.

    Raises:
        ValueError: the model has no distillation token.
    """
    if not isinstance(model, DistilledVisionTransformer):
        raise ValueError("Token similarity needs a distilled model: it has no distillation token.")
    a, b = model.cls_token.detach().flatten(), model.dist_token.detach().flatten()
    return float(F.cosine_similarity(a.float(), b.float(), dim=0))


@torch.no_grad()
def token_report(
    model: DistilledVisionTransformer, images: torch.Tensor, batch_size: int = 256
) -> dict[str, Any]:
    """The token cosines through depth and the two heads' outputs of a distilled DeiT.

    Args:
        model: a distilled DeiT in eval mode.
        images: ``(B, C, H, W)`` normalised images.
        batch_size: images per forward pass.

    Returns:
        ``token_cosine``: ``depth + 1`` floats — the learned tokens
        (:func:`learned_token_similarity`), then after each block (:func:`token_similarity`);
        ``head_output_cosine``: the mean over images of the cosine between the class head's and
        the distillation head's logits; ``head_agreement``: the fraction of images whose two
        heads give the same class.

    Raises:
        ValueError: the model has no distillation token.
    """
    per_block = token_similarity(model, images, batch_size)
    cosine, agree = 0.0, 0.0
    for i in range(0, images.shape[0], batch_size):
        cls_logits, dist_logits = model.forward_heads(images[i : i + batch_size])
        cosine += float(F.cosine_similarity(cls_logits, dist_logits, dim=-1).sum())
        agree += float((cls_logits.argmax(-1) == dist_logits.argmax(-1)).sum())
    n = images.shape[0]
    return {
        "token_cosine": [learned_token_similarity(model), *per_block],
        "head_output_cosine": cosine / n,
        "head_agreement": agree / n,
    }


def head_weight_similarity(model: DistilledVisionTransformer) -> dict[str, float]:
    """Cosine similarity between the weights of the class head and the distillation head.

    Returns:
        ``{"flattened": cos(vec(head.weight), vec(head_dist.weight)),
        "per_class_mean": mean over classes c of cos(head.weight[c], head_dist.weight[c])}``
        (biases left out; the paper gives no figure for it).

    Raises:
        ValueError: the model has no distillation head.
    """
    if not isinstance(model, DistilledVisionTransformer) or not isinstance(model.head, nn.Linear):
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
    distilled = isinstance(model, DistilledVisionTransformer)
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
                t_logits = late_fusion(*t_logits)
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
