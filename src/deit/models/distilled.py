"""DeiT with a distillation token (paper section 4, "Distillation token").

A learned ``dist_token`` is placed right after the class token, so the sequence is
``[cls, dist, patch_1 ... patch_N]`` and ``pos_embed`` has ``N + 2`` rows. A second linear head
``head_dist`` reads token 1. The class head learns the true label, the distillation head the
teacher; at test time the two heads' logits are averaged ("late fusion", Table 3 of the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from .._choices import HEAD_CHOICES
from .vision_transformer import VisionTransformer

__all__ = ["DistilledVisionTransformer", "HEAD_CHOICES", "late_fusion"]


def late_fusion(cls_out: torch.Tensor, dist_out: torch.Tensor) -> torch.Tensor:
    """The average of the class and distillation heads' outputs, the paper's test-time "late
    fusion" (section 5.2, Table 3): ``(cls_out + dist_out) / 2``, any matching shapes."""
    return (cls_out + dist_out) / 2


class DistilledVisionTransformer(VisionTransformer):
    """Vision transformer with a class token and a distillation token, each with its own head.

    Takes the same arguments as :class:`VisionTransformer`.

    Output convention of :meth:`forward`, images ``(B, C, H, W)``:

    - training mode with ``set_distilled_training(True)`` (the trainer does this): the pair
      ``(cls_logits, dist_logits)``, each ``(B, num_classes)``;
    - otherwise: ``(cls_logits + dist_logits) / 2`` for ``head="both"`` (the default), or the
      class-token head alone (``"cls"``) or the distillation head alone (``"dist"``), chosen with
      :meth:`set_head`.

    ``forward_features`` returns all tokens ``(B, N + 2, D)``.
    """

    num_prefix_tokens: int = 2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.distilled_training = False
        self.head_choice = "both"

    def _init_extra_tokens(self) -> None:
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides biases and norms."""
        return {"pos_embed", "cls_token", "dist_token"}

    def set_distilled_training(self, enable: bool = True) -> None:
        """Make training-mode ``forward`` return ``(cls_logits, dist_logits)`` (timm's API)."""
        self.distilled_training = bool(enable)

    def set_head(self, head: str) -> None:
        """Choose the inference output: ``"both"`` (average), ``"cls"`` or ``"dist"``.

        Raises:
            ValueError: for any other value.
        """
        if head not in HEAD_CHOICES:
            raise ValueError(f"head must be one of {HEAD_CHOICES}, got {head!r}.")
        self.head_choice = head

    def _prefix_tokens(self, batch: int) -> torch.Tensor:
        # each token expanded on its own (as timm does): concatenating the two parameters first
        # makes their gradients views of one (1, 2, D) tensor, whose strides DDP's buckets reject
        tokens = (self.cls_token.expand(batch, -1, -1), self.dist_token.expand(batch, -1, -1))
        return torch.cat(tokens, dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits from tokens ``(B, N', D)`` (tokens 0 and 1 are read: class and distillation)
        following the output convention of the class (paper section 4, "Classification with our
        approach": the two heads' logits averaged at test time).

        With ``pre_logits`` returns the mean of the two token features ``(B, D)``.
        """
        if pre_logits:
            return late_fusion(x[:, 0], x[:, 1])
        x_cls = self.head(self.head_drop(x[:, 0]))
        x_dist = self.head_dist(self.head_drop(x[:, 1]))
        if self.distilled_training and self.training:
            return x_cls, x_dist
        if self.head_choice == "cls":
            return x_cls
        if self.head_choice == "dist":
            return x_dist
        return late_fusion(x_cls, x_dist)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads' logits ``((B, C), (B, C))`` for images ``(B, C, H, W)``, in any mode."""
        tokens = self.forward_features(x)
        return self.head(self.head_drop(tokens[:, 0])), self.head_dist(self.head_drop(tokens[:, 1]))

    def get_classifier(self) -> tuple[nn.Module, nn.Module]:
        """The class head and the distillation head."""
        return self.head, self.head_dist

    def reset_classifier(self, num_classes: int) -> None:
        """Replace both heads with freshly initialised ones for ``num_classes`` classes."""
        super().reset_classifier(num_classes)
        self.head_dist = self._new_head(num_classes)
