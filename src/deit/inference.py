"""Faster inference behind one opt-in seam: :func:`optimize_for_inference`.

The model classes in :mod:`deit.models` are the paper made readable and stay that way; this
module wraps a trained model for inference only (figures, dates and the command that measures
them against timm and the plain model: ``benchmarks/README.md``):

- **prefix-only last block**: a classifier reads only the class token (and the distillation
  token, paper section 4), so the last block computes the attention rows, projection and MLP of
  those tokens only; keys and values still come from every token, so the logits equal the full
  forward's up to float round-off. This skips 6.3 % of DeiT-Ti/S/B's FLOPs (counted with
  ``FlopCounterMode``); always on.
- opt-in **torch.compile with Inductor weight freezing** (``compile=True``): the weights become
  graph constants, pre-packed for oneDNN on CPU. Compilation takes tens of seconds on the first
  call and again for every new batch size, and the gain depends on the machine's load, so it is
  off by default.

The teacher of a distillation run (paper section 4) has its own seam,
:func:`deit.teacher.optimize_teacher` (:mod:`deit.teacher.fast`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .models import DistilledVisionTransformer, VisionTransformer
from .models.vision_transformer import Block

__all__ = ["DistilledInferenceModel", "InferenceModel", "optimize_for_inference", "prefix_tokens"]


def _last_block_prefix(block: Block, x: torch.Tensor, n: int) -> torch.Tensor:
    """Eval-mode ``block(x)[:, :n]`` computed for the first ``n`` tokens only:
    ``(B, N, D)`` -> ``(B, n, D)``. Queries are the first ``n`` tokens; keys and values all N."""
    attn = block.attn
    B, N, D = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(B, N, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q[:, :, :n], k, v)  # (B, H, n, d)
    x = x[:, :n] + block.ls1(attn.proj(out.transpose(1, 2).reshape(B, n, D)))
    return x + block.ls2(block.mlp(block.norm2(x)))


def prefix_tokens(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """The normed prefix tokens (class, and distillation for a distilled model) of an eval-mode
    model: images ``(B, C, H, W)`` -> ``(B, num_prefix_tokens, D)``, equal to
    ``model.forward_features(images)[:, :num_prefix_tokens]`` up to float round-off.

    Raises:
        ValueError: a model without blocks, or one in training mode (dropout and stochastic
            depth are not applied here).
    """
    if len(model.blocks) == 0:
        raise ValueError("prefix_tokens needs a model with at least one block (depth >= 1).")
    if model.training:
        raise ValueError("prefix_tokens is for inference: call model.eval() first.")
    x = model.blocks[:-1](model._embed(images))
    return model.norm(_last_block_prefix(model.blocks[-1], x, model.num_prefix_tokens))


class InferenceModel(nn.Module):
    """An eval-mode model for inference: ``forward`` runs without autograd and, for DeiT models,
    through :func:`prefix_tokens`. Build it with :func:`optimize_for_inference`.

    Shares its parameters with ``model`` (no copy). With ``compile=True`` the weights are frozen
    into the compiled graph: build a new one after changing them.

    Shapes: ``forward``: ``(B, C, H, W)`` -> ``(B, num_classes)``, the model's output convention
    (a distilled model's ``set_head`` choice); ``forward_heads`` (distilled models): both heads'
    logits ``((B, num_classes), (B, num_classes))``.
    """

    def __init__(self, model: nn.Module, compile: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.prefix = isinstance(model, VisionTransformer) and len(model.blocks) > 0
        run = self._prefix_tokens if self.prefix else model.forward
        if compile:
            # freezing: weights become graph constants (pre-packed for oneDNN on CPU)
            run = torch.compile(run, dynamic=False, options={"freezing": True})
        self._run = run  # images -> prefix tokens (DeiT models) or outputs (others)

    def _prefix_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return prefix_tokens(self.model, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` ``(B, C, H, W)``, computed without autograd."""
        with torch.no_grad():
            out = self._run(images)
            return self.model.forward_head(out) if self.prefix else out

    def train(self, mode: bool = True) -> InferenceModel:
        """Stays in eval mode.

        Raises:
            ValueError: ``mode=True`` (train the model itself, then wrap it again).
        """
        if mode:
            raise ValueError("An InferenceModel cannot be trained; train the model it wraps.")
        return super().train(False)


class DistilledInferenceModel(InferenceModel):
    """An :class:`InferenceModel` of a distilled DeiT, which also gives both heads' logits."""

    def forward_heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads' logits ``((B, C), (B, C))`` of ``images`` ``(B, C, H, W)``."""
        with torch.no_grad():
            x = self._run(images)
            return self.model.head(x[:, 0]), self.model.head_dist(x[:, 1])


def optimize_for_inference(model: nn.Module, compile: bool = False) -> InferenceModel:
    """Wrap a trained classifier for faster inference (the model itself is left as it is, except
    that it is put in eval mode).

    DeiT models take the prefix-only last block (:func:`prefix_tokens`); other classifiers (timm
    or torchvision teachers) run as they are. Logits equal the model's within 1e-5 (tested on
    the official architectures).

    Args:
        model: a :class:`~deit.models.VisionTransformer` (or distilled one) or any classifier
            ``(B, C, H, W) -> (B, num_classes)``.
        compile: also ``torch.compile`` the forward (``dynamic=False``) with Inductor weight
            freezing; needs a C++ compiler on CPU; compiles on the first call of each shape.

    Returns:
        :class:`InferenceModel` sharing ``model``'s parameters (a
        :class:`DistilledInferenceModel` for a distilled DeiT).
    """
    if isinstance(model, DistilledVisionTransformer):
        return DistilledInferenceModel(model, compile=compile)
    return InferenceModel(model, compile=compile)
