"""Vision transformer backbone (Dosovitskiy et al. 2021) as used by DeiT.

Pre-norm blocks, fused qkv attention through
:func:`torch.nn.functional.scaled_dot_product_attention`, GELU MLP and stochastic depth.
Parameter names match the official DeiT code and timm (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.{i}.attn.qkv`` ...), so their state dicts load unchanged.

Shapes: images ``(B, C, H, W)``, tokens ``(B, N, D)``, logits ``(B, num_classes)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchEmbed", "Attention", "Mlp", "DropPath", "Block", "VisionTransformer"]


#: Inference tiles of :class:`Mlp` hold about this many bytes of hidden activations.
_MLP_TILE_BYTES = 4 * 2**20


def _graph_capture() -> bool:
    """Whether the forward is being traced, scripted, compiled or exported (plain path only)."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


#: Inference tiles of :class:`Block` hold about this many bytes of MLP hidden activations.
_BLOCK_TILE_BYTES = 8 * 2**20


def _tileable(x: torch.Tensor) -> bool:
    """Whether an inference input may be processed in tiles: a CPU tensor (the gains are CPU
    caches and glibc's allocator; GPUs want big kernels), no autograd, no autocast, no graph
    capture, and a contiguous layout (tiles are written with ``out=``)."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and not _graph_capture()
        and not torch.is_autocast_enabled("cpu")
        and x.is_contiguous()
    )


def _has_hooks(module: nn.Module) -> bool:
    """Whether ``module``'s submodules (or all modules, globally) have forward hooks."""
    from torch.nn.modules import module as module_mod

    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks for m in module.modules() if m is not module
    )


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and embed each one linearly.

    A ``patch_size`` x ``patch_size`` convolution with the same stride (paper section 3, "Vision
    transformer overview").

    Args:
        img_size: input height and width in pixels (an int for square inputs).
        patch_size: patch side in pixels; must divide both image sides.
        in_chans: number of input channels.
        embed_dim: token width D.

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, N, D)`` with ``N = (H / p) * (W / p)``.

    Raises:
        ValueError: at construction when the patch size does not divide the image size; in
            ``forward`` when the input is not ``(B, in_chans, H, W)`` at the configured size.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        if self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]:
            raise ValueError(
                f"Image size {self.img_size} is not a multiple of the patch size "
                f"{self.patch_size}; choose an img_size divisible by the patch size."
            )
        self.grid_size = (
            self.img_size[0] // self.patch_size[0],
            self.img_size[1] // self.patch_size[1],
        )
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
        if x.ndim != 4 or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"Expected images of shape (B, {self.in_chans}, {self.img_size[0]}, "
                f"{self.img_size[1]}) but got {tuple(x.shape)}; resize the input or build the "
                f"model with img_size={tuple(x.shape[2:]) if x.ndim == 4 else '...'} (position "
                "embeddings are interpolated when a checkpoint is loaded)."
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    softmax(Q K^T / sqrt(d)) V per head (Vaswani et al. 2017), computed by PyTorch's fused
    ``scaled_dot_product_attention`` kernel (flash / memory-efficient on CUDA, flash on CPU).

    Args:
        dim: token width D; must be divisible by ``num_heads``.
        num_heads: number of heads H (head width D / H).
        qkv_bias: whether the qkv projection has a bias (DeiT: yes).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.

    Shapes: ``(B, N, D)`` -> ``(B, N, D)``.
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

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """Attend over the tokens ``x`` ``(B, N, D)``; returns ``(B, N, D)``.

        With ``num_queries = n`` (``1 <= n <= N``) only the first ``n`` tokens attend (keys and
        values still come from all ``N``) and the result is ``(B, n, D)``, equal to
        ``forward(x)[:, :n]`` up to float round-off: what a classifier's last block needs (see
        :meth:`Block.forward_prefix`). The attention/projection dropouts apply as usual.

        Raises:
            ValueError: ``num_queries`` outside ``1..N``.
        """
        B, N, D = x.shape
        n = N if num_queries is None else num_queries
        if not 1 <= n <= N:
            raise ValueError(f"num_queries must be between 1 and the {N} tokens, got {n}.")
        # (B, N, 3, H, hd) -> 3 x (B, H, N, hd): views, no copy before the kernel. The qkv
        # module is called on all tokens even for fewer queries (quantised or adapted layers
        # keep working); the saving is in the attention rows, proj and the MLP after it.
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if n < N:
            q = q[:, :, :n]
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        # Given q, k, v strided as above, SDPA returns (B, H, n, hd) as a view of a (B, n, H, hd)
        # buffer, so this transpose + reshape is a view, not a copy.
        x = self.proj(x.transpose(1, 2).reshape(B, n, D))
        return self.proj_drop(x) if self.training else x

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Explicit attention probabilities for analysis, shape ``(B, H, N, N)``.

        Same maths as :meth:`forward` but materialises softmax(Q K^T / sqrt(d)); used by
        ``deit analyze`` only, never on the training path.
        """
        B, N, D = x.shape
        q, k, _ = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


class Mlp(nn.Module):
    """Two-layer perceptron with GELU: ``fc2(drop(gelu(fc1(x))))``.

    Shapes: ``(B, N, D)`` -> ``(B, N, D)``; hidden width ``mlp_ratio * D``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise to ``x`` ``(B, N, D)``.

        In eval mode without autograd (inference) a large input is processed in row tiles, so the
        ``mlp_ratio``-times wider hidden activation never exists in full: each tile's hidden part
        stays in cache between ``fc1``, the activation and ``fc2``, and no huge temporary is
        allocated (glibc hands out blocks over 32 MiB with fresh ``mmap`` pages, which then
        page-fault on first touch). Every row is computed by the same operations as without
        tiles. Tracing, scripting, ``torch.compile``, export and autocast take the plain path.
        """
        if self.training:
            return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
        if _tileable(x) and x.numel() > self.tile_rows() * x.shape[-1]:
            return self._forward_tiled(x, self.tile_rows())
        return self.fc2(self.act(self.fc1(x)))  # dropout is the identity in eval mode

    def tile_rows(self) -> int:
        """Rows per inference tile: about 4 MiB of fp32 hidden activations, at least 128."""
        return max(128, _MLP_TILE_BYTES // (4 * self.fc1.out_features))

    def _forward_tiled(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = flat.new_empty(flat.shape[0], self.fc2.out_features)
        w1, b1, w2, b2 = self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias
        for start in range(0, flat.shape[0], rows):
            hidden = self.act(F.linear(flat[start : start + rows], w1, b1))
            tile = out[start : start + rows]
            if b2 is None:
                torch.mm(hidden, w2.t(), out=tile)
            else:
                torch.addmm(b2, hidden, w2.t(), out=tile)
        return out.view(*x.shape[:-1], self.fc2.out_features)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a whole residual branch per sample.

    In training, each sample's branch output is zeroed with probability ``drop_prob`` and scaled
    by ``1 / (1 - drop_prob)`` otherwise; identity in eval mode.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_prob}.")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop residual branches of ``x`` ``(B, ...)`` sample-wise."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Shapes: ``(B, N, D)`` -> ``(B, N, D)``.
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
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    #: Process large inference batches in tiles of samples (see :meth:`forward`); set to
    #: ``False`` on the class or an instance to always run the whole batch at once.
    inference_tiles: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform tokens ``x`` ``(B, N, D)``.

        In inference (eval mode, no autograd, no autocast, not traced/compiled/exported) a large
        batch goes through the block a few samples at a time: every intermediate (normed tokens,
        qkv, attention output, MLP hidden) is then tile-sized and reused from cache instead of a
        fresh batch-sized allocation (glibc serves blocks over 32 MiB with new pages that
        page-fault on first touch). Each sample meets exactly the same operations. Skipped while
        a submodule has hooks, so they still see the whole batch.
        """
        if not self.training:  # drop paths are the identity: skip their calls
            # _tileable first: no shape is read under tracing/export (no symbolic-shape guards)
            if self.inference_tiles and _tileable(x) and x.ndim == 3:
                per_tile = max(1, _BLOCK_TILE_BYTES // (4 * x.shape[1] * self.mlp.fc1.out_features))
                if x.shape[0] > per_tile and not _has_hooks(self):
                    return self._forward_tiled(x, per_tile)
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def forward_prefix(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Inference output of the block for the first ``n`` tokens only: ``(B, N, D)`` ->
        ``(B, n, D)``, equal to ``self(x)[:, :n]`` up to float round-off.

        The prefix tokens attend to all ``N`` tokens, but the other tokens' attention rows,
        projections and MLPs are skipped: in the last block a classifier reads only the class
        (and distillation) token, so this saves about 78 % of that block's FLOPs (6.3 % of DeiT-Ti/S/B's, counted with
        ``FlopCounterMode``).
        Drop paths and dropouts apply as in :meth:`forward`. The whole batch goes at once (no
        inference tiles: the skipped MLP is what tiles are for).

        Raises:
            ValueError: ``n`` outside ``1..N``.
        """
        x_prefix = x[:, :n] + self.drop_path1(self.attn(self.norm1(x), num_queries=n))
        return x_prefix + self.drop_path2(self.mlp(self.norm2(x_prefix)))

    def _forward_tiled(self, x: torch.Tensor, per_tile: int) -> torch.Tensor:
        out = torch.empty_like(x)
        for start in range(0, x.shape[0], per_tile):
            tile = x[start : start + per_tile]
            tile = tile + self.attn(self.norm1(tile))
            torch.add(tile, self.mlp(self.norm2(tile)), out=out[start : start + per_tile])
        return out


class VisionTransformer(nn.Module):
    """ViT / DeiT classifier: patch tokens plus a class token through pre-norm blocks.

    The sequence is ``[cls, patch_1 ... patch_N]`` with learned position embeddings; the head is
    a linear layer on the final class token (paper section 3; no pre-logits layer).

    Args:
        img_size: input size in pixels (int or (H, W)).
        patch_size: patch side in pixels.
        in_chans: input channels.
        num_classes: classes of the head; 0 gives an identity head (features only).
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: bias on the qkv projection.
        drop_rate: dropout on the position-embedded tokens, in the blocks and before the head.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic-depth rate of the last block; block ``i`` gets
            ``drop_path_rate * i / (depth - 1)`` (linear rule of the official code).

    Shapes: ``forward``: ``(B, in_chans, H, W)`` -> ``(B, num_classes)``;
    ``forward_features``: -> ``(B, num_prefix_tokens + N, D)`` (all tokens, final norm applied).

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
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}.")
        for name, rate in (
            ("drop_rate", drop_rate),
            ("attn_drop_rate", attn_drop_rate),
            ("drop_path_rate", drop_path_rate),
        ):
            _check_rate(name, rate)
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self._init_extra_tokens()
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, embed_dim)
        )
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i])
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        self.init_weights()

    # -- initialisation ---------------------------------------------------------------------
    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) tokens, position embeddings and linear weights; zero
        biases; LayerNorm weight 1 and bias 0 (the official DeiT initialisation)."""
        for p in self._prefix_params():
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _init_extra_tokens(self) -> None:
        """Hook for subclasses that add prefix tokens after the class token."""

    def _prefix_params(self) -> list[nn.Parameter]:
        return [self.cls_token]

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides biases and norms (timm's hook)."""
        return {"pos_embed", "cls_token"}

    @property
    def img_size(self) -> tuple[int, int]:
        """Input (H, W) in pixels."""
        return self.patch_embed.img_size

    # -- forward ----------------------------------------------------------------------------
    def _prefix_tokens(self, batch: int) -> torch.Tensor:
        return self.cls_token.expand(batch, -1, -1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> prefix and patch tokens with position embeddings."""
        x = self.patch_embed(x)
        x = torch.cat((self._prefix_tokens(x.shape[0]), x), dim=1) + self.pos_embed
        return self.pos_drop(x) if self.training else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the final norm: ``(B, C, H, W)`` -> ``(B, num_prefix_tokens + N, D)``."""
        x = self._embed(x)
        for block in self.blocks:  # each block is still called as a module (hooks fire)
            x = block(x)
        return self.norm(x)

    def forward_prefix_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normed prefix tokens (class, distillation): ``(B, C, H, W)`` ->
        ``(B, num_prefix_tokens, D)``, equal to ``forward_features(x)[:, :num_prefix_tokens]``
        up to float round-off (in eval mode; in training the random drops differ); the last block
        skips the patch tokens' outputs (:meth:`Block.forward_prefix`), which heads never read.

        Raises:
            ValueError: a model without blocks (``depth=0``).
        """
        if len(self.blocks) == 0:
            raise ValueError("forward_prefix_features needs at least one block (depth >= 1).")
        x = self._embed(x)
        for block in self.blocks[:-1]:
            x = block(x)
        return self.norm(self.blocks[-1].forward_prefix(x, self.num_prefix_tokens))

    def _head_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the normed tokens the heads read: only the prefix tokens when
        :meth:`_prefix_path` allows it, else all of them (``(B, N', D)`` either way)."""
        if self._prefix_path():
            return self.forward_prefix_features(x)
        return self.forward_features(x)

    def _prefix_path(self) -> bool:
        """Whether inference may take :meth:`forward_prefix_features`: the model and its last
        block are in eval mode (MC-dropout keeps the full path) and no forward hooks are
        registered anywhere (they expect every block and norm to see all tokens, as in
        ``deit analyze``), also under tracing and ``torch.compile``."""
        if self.training or len(self.blocks) == 0:
            return False
        if any(m.training for m in self.blocks[-1].modules()):
            return False
        return not _has_hooks(self)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class-token logits from tokens ``(B, N', D)`` -> ``(B, num_classes)`` (or ``(B, D)``
        with ``pre_logits``)."""
        x = x[:, 0]
        if self.training:
            x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images ``(B, C, H, W)`` -> logits ``(B, num_classes)``.

        In eval mode the last block computes only the prefix tokens the head reads
        (:meth:`forward_prefix_features`); training and hooked models take every token through.
        """
        return self.forward_head(self._head_tokens(x))

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

    def extra_repr(self) -> str:
        return f"num_prefix_tokens={self.num_prefix_tokens}"


def _check_rate(name: str, value: float) -> None:
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be in [0, 1), got {value}.")
