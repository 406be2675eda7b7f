"""Attention maps: every block's attention recorded, the attention rollout (Abnar & Zuidema
2020) and each prefix token's attention over the patch grid.

Shapes: images ``(B, C, H, W)``, tokens ``(B, N, D)`` with ``N = prefix + patches``, attention
``(B, heads, N, N)`` (row = query token, column = key token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models import VisionTransformer

__all__ = ["TOKEN_NAMES", "attention_maps", "attention_rollout", "collect_attention"]

#: Display names of the prefix tokens, by position.
TOKEN_NAMES = ("class token", "distillation token")


def _check_vit(model: nn.Module) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"Attention analysis needs a DeiT/ViT model of this package, not a "
            f"{type(model).__name__}; pass a DeiT checkpoint."
        )
    return model


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
