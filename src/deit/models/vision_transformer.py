"""The vision transformer (Dosovitskiy et al. 2021) as DeiT uses it (paper section 3).

Parameter names match the official DeiT code and timm (``cls_token``, ``pos_embed``,
``blocks.{i}.attn.qkv`` ...), so their state dicts load unchanged. Shapes: images
``(B, C, H, W)``, tokens ``(B, N, D)``, logits ``(B, num_classes)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath as _TimmDropPath
from timm.layers import LayerScale, resample_abs_pos_embed
from timm.models._features import feature_take_indices
from torch import nn

__all__ = [
    "PatchEmbed",
    "Attention",
    "Mlp",
    "DropPath",
    "Block",
    "VisionTransformer",
    "resample_pos_embed_to_grid",
]


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and embed each one linearly: a ``patch_size``
    x ``patch_size`` convolution of the same stride (paper section 3, "Transformer block for
    images": fixed-size 16 x 16 patches, linearly projected).

    Args:
        img_size, patch_size: input (H, W) and patch side in pixels (ints for squares); the patch
            side must divide both image sides.
        in_chans, embed_dim: input channels; token width D.
        strict_img_size: accept only ``img_size`` inputs (timm's name); ``False`` takes any
            size the patch divides (a model built with ``dynamic_img_size``).

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, N, D)`` with ``N = (H / p) * (W / p)``.

    Raises:
        ValueError: at construction when the patch size does not divide the image size; in
            ``forward`` when the input is not ``(B, in_chans, H, W)`` at the configured size
            (with ``strict_img_size=False``: at a size the patch divides).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        strict_img_size: bool = True,
    ) -> None:
        super().__init__()
        self.strict_img_size = strict_img_size
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        if self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]:
            raise ValueError(
                f"Image size {self.img_size} is not a multiple of the patch size "
                f"{self.patch_size}; choose an img_size divisible by the patch size."
            )
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x`` of shape ``(B, C, H, W)`` into tokens ``(B, N, D)``."""
        if x.ndim == 4 and x.shape[1] != self.in_chans:
            raise ValueError(
                f"Expected images with {self.in_chans} channels but got {tuple(x.shape)}; convert "
                f"the images or build the model with in_chans={x.shape[1]}."
            )
        if not self.strict_img_size and x.ndim == 4:
            if x.shape[2] % self.patch_size[0] or x.shape[3] % self.patch_size[1]:
                raise ValueError(
                    f"Image size {tuple(x.shape[2:])} is not a multiple of the patch size "
                    f"{self.patch_size}; resize or pad the input to a multiple of the patch."
                )
        elif x.ndim != 4 or tuple(x.shape[2:]) != self.img_size:
            expected = (self.in_chans, *self.img_size)
            raise ValueError(
                f"Expected images of shape (B, {', '.join(map(str, expected))}) but got "
                f"{tuple(x.shape)}; resize the input or build the model with that img_size "
                "(position embeddings are interpolated when a checkpoint is loaded), or with "
                "dynamic_img_size=True."
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (paper section 3, "Multi-head
    Self Attention layers"): softmax(Q K^T / sqrt(d)) V per head, computed by PyTorch's fused
    ``scaled_dot_product_attention``, then a linear projection of the concatenated heads.

    Args:
        dim: token width D; must be divisible by ``num_heads`` (head width d = D / H).
        num_heads, qkv_bias: number of heads H; whether the qkv projection has a bias.
        attn_drop, proj_drop: dropout on the attention weights; after the output projection.

    Shapes: ``(B, N, D)`` -> ``(B, N, D)``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens ``x`` ``(B, N, D)``; returns ``(B, N, D)``."""
        B, N, D = x.shape
        # (B, N, 3, H, hd) -> q, k, v each (B, H, N, hd)
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        x = x.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(x))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities softmax(Q K^T / sqrt(d)) of tokens ``(B, N, D)``, shape
        ``(B, H, N, N)`` (the maths of :meth:`forward`, materialised for ``deit analyze``)."""
        B, N, D = x.shape
        q, k, _ = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


class Mlp(nn.Module):
    """Feed-forward network of a block (paper section 3, "Transformer block for images"):
    ``fc2(drop(gelu(fc1(x))))``, hidden width 4 D in DeiT. Shapes: ``(B, N, D)`` -> ``(B, N, D)``.
    """

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise to ``x`` ``(B, N, D)``."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(_TimmDropPath):
    """Stochastic depth (Huang et al. 2016; paper section 6 and Table 9): in training, each
    sample's residual branch is zeroed with probability ``drop_prob``, else scaled by
    ``1 / (1 - drop_prob)``; identity in eval mode. Shapes: ``(B, ...)`` -> ``(B, ...)``.

    Raises:
        ValueError: ``drop_prob`` outside ``[0, 1)``.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_prob}.")
        super().__init__(drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Block(nn.Module):
    """Pre-norm transformer block (paper section 3, "Transformer block for images"):
    ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``. Shapes: ``(B, N, D)`` -> ``(B, N, D)``.

    With ``init_values`` each branch is scaled per channel by a learned LayerScale ``gamma``
    (timm's ``LayerScale``, ``ls1``/``ls2``) initialised to that value: the blocks of DeiT III
    ("DeiT III: Revenge of the ViT", Touvron et al. 2022, after CaiT), ``init_values`` 1e-6.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        init_values: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform tokens ``x`` ``(B, N, D)``."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class VisionTransformer(nn.Module):
    """ViT / DeiT classifier: patch tokens plus a class token through pre-norm blocks.

    The sequence is ``[cls, patch_1 ... patch_N]`` with learned position embeddings; the head is
    a linear layer on the final class token (paper section 3, "The class token"; no pre-logits
    layer).

    Args:
        img_size, patch_size, in_chans: as :class:`PatchEmbed` (paper section 3).
        num_classes: classes of the head; 0 gives an identity head (features only).
        embed_dim, depth, num_heads: token width D, number of blocks, attention heads per block.
        mlp_ratio, qkv_bias: MLP hidden width / D; bias on the qkv projection.
        drop_rate, attn_drop_rate: dropout on the tokens, in the blocks and before the head; on
            attention weights (DeiT: both 0, paper Table 9).
        drop_path_rate: stochastic-depth rate of the last block; block ``i`` gets
            ``drop_path_rate * i / (depth - 1)`` (linear rule of the official code).
        init_values: LayerScale initial value of every block (DeiT III: 1e-6); ``None`` for
            none (DeiT).
        no_embed_class: position embeddings for the patch tokens only, added before the prefix
            tokens are prepended (DeiT III; timm's name): ``pos_embed`` has ``N`` rows, not
            ``num_prefix_tokens + N``.
        dynamic_img_size: accept any input size the patch divides; the position embeddings are
            resampled to the input's patch grid at forward time (timm's ``dynamic_img_size``:
            bicubic with antialiasing, prefix rows kept; :func:`resample_pos_embed_to_grid`).

    Shapes: ``forward``: ``(B, in_chans, H, W)`` -> ``(B, num_classes)``;
    ``forward_features``: -> ``(B, num_prefix_tokens + N, D)`` (all tokens, final norm applied);
    ``forward_intermediates``: see the method.

    Raises:
        ValueError: for impossible sizes or rates (see :class:`PatchEmbed`, :class:`DropPath`).
    """

    num_prefix_tokens: int = 1

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        no_embed_class: bool = False,
        dynamic_img_size: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}.")
        rates = (drop_rate, attn_drop_rate, drop_path_rate)
        for name, value in zip(("drop_rate", "attn_drop_rate", "drop_path_rate"), rates):
            if not 0.0 <= value < 1.0:  # NaN too
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.no_embed_class = no_embed_class
        self.dynamic_img_size = dynamic_img_size
        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, strict_img_size=not dynamic_img_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self._init_extra_tokens()
        rows = self.patch_embed.num_patches + self.num_pos_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, rows, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        args = (embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate)
        self.blocks = nn.Sequential(
            *[Block(*args, drop_path=rate, init_values=init_values) for rate in dpr]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) tokens, position embeddings and linear weights; zero
        biases; LayerNorm weight 1 and bias 0 (the official DeiT initialisation)."""
        for p in self.parameters(recurse=False):  # the prefix tokens, then pos_embed
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _init_extra_tokens(self) -> None:
        """Subclasses add their prefix tokens after the class token here."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides biases and norms (read by timm's ``create_optimizer``)."""
        return {"pos_embed", "cls_token"}

    @property
    def img_size(self) -> tuple[int, int]:
        """Input (H, W) in pixels."""
        return self.patch_embed.img_size

    def _prefix_tokens(self, batch: int) -> torch.Tensor:
        return self.cls_token.expand(batch, -1, -1)

    @property
    def num_pos_prefix_tokens(self) -> int:
        """Rows of ``pos_embed`` before the patch rows: the prefix tokens, or 0 with
        ``no_embed_class``."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    def _input_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The patch grid ``(H / p, W / p)`` of images ``x`` ``(B, C, H, W)``."""
        p = self.patch_embed.patch_size
        return x.shape[-2] // p[0], x.shape[-1] // p[1]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> prefix and patch tokens with position embeddings."""
        tokens = self.patch_embed(x)
        pos = self.pos_embed
        if self.dynamic_img_size:
            grid = self._input_grid(x)
            pos = resample_pos_embed_to_grid(pos, grid, self.grid_size, self.num_pos_prefix_tokens)
        prefix = self._prefix_tokens(tokens.shape[0])
        if self.no_embed_class:
            x = torch.cat((prefix, tokens + pos), dim=1)
        else:
            x = torch.cat((prefix, tokens), dim=1) + pos
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the final norm: ``(B, C, H, W)`` -> ``(B, num_prefix_tokens + N, D)``."""
        return self.norm(self.blocks(self._embed(x)))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """The outputs of chosen blocks, for a backbone (timm's ``forward_intermediates``).

        Args:
            x: images ``(B, C, H, W)``.
            indices: ``None`` all blocks; an int ``n`` the last ``n``; a list the blocks of those
                indices (negative ones count from the end).
            return_prefix_tokens: pair each output with its prefix tokens
                ``(B, num_prefix_tokens, D)``.
            norm: apply the final norm to each output.
            stop_early: run the blocks only up to the last one asked for.
            output_fmt: ``"NCHW"`` maps ``(B, D, H / p, W / p)``; ``"NLC"`` patch tokens
                ``(B, N, D)``.
            intermediates_only: return the list alone.

        Returns:
            ``(tokens, outputs)``: the final-normed tokens ``(B, num_prefix_tokens + N, D)`` (of
            the last block run) and the list of outputs; or the list alone.

        Raises:
            ValueError: an ``output_fmt`` other than the two, or indices outside the blocks.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        depth = len(self.blocks)
        try:  # timm's, with a one-sentence error
            take, last = feature_take_indices(depth, indices)
        except AssertionError as e:
            raise ValueError(
                f"indices={indices!r} do not fit a model of {depth} blocks ({e}); pass a count "
                f"from 1 to {depth} or block indices from {-depth} to {depth - 1}."
            ) from None
        B, (h, w) = x.shape[0], self._input_grid(x)
        x = self._embed(x)
        outputs = []
        for i, block in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = block(x)
            if i in take:
                outputs.append(self.norm(x) if norm else x)
        n = self.num_prefix_tokens
        prefix, outputs = [y[:, :n] for y in outputs], [y[:, n:] for y in outputs]
        if output_fmt == "NCHW":
            outputs = [y.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous() for y in outputs]
        if return_prefix_tokens:
            outputs = list(zip(outputs, prefix))
        return outputs if intermediates_only else (self.norm(x), outputs)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class-token logits from tokens ``(B, N', D)`` -> ``(B, num_classes)`` (or ``(B, D)``
        with ``pre_logits``)."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images ``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The classification head."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head(s) with freshly initialised ones for ``num_classes`` classes."""
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.embed_dim, num_classes).to(self.cls_token.device)
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, cols)."""
        return self.patch_embed.grid_size


def resample_pos_embed_to_grid(
    pos_embed: torch.Tensor,
    grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int,
) -> torch.Tensor:
    """Position embeddings for another patch grid at forward time, as timm's
    ``dynamic_img_size`` computes them (its ``resample_abs_pos_embed``: bicubic, antialiased
    when shrinking; the ``num_prefix_tokens`` leading rows kept). The one place a model resizes
    its position embeddings; checkpoints are resampled when loaded (:mod:`deit.checkpoints`).

    Shapes: ``(1, num_prefix_tokens + H0 * W0, D)`` -> ``(1, num_prefix_tokens + H1 * W1, D)``
    for ``old_grid`` ``(H0, W0)`` and ``grid`` ``(H1, W1)``; unchanged when they are equal.
    """
    if tuple(grid) == tuple(old_grid):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, list(grid), list(old_grid), num_prefix_tokens=num_prefix_tokens
    )
