"""Adapting a DeiT/ViT state dict to a model: prefix tokens, the position grid (paper section 6)
and, when fine-tuning, heads of another class count; :class:`LoadReport` records each change."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed

from ..models.distilled import DistilledVisionTransformer
from ..models.vision_transformer import VisionTransformer
from .errors import CheckpointError

__all__ = ["LoadReport", "resample_pos_embed"]

_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


@dataclass
class LoadReport:
    """What :func:`~deit.checkpoints.load_checkpoint` changed to make a checkpoint fit, one sentence per item."""

    notes: list[str] = field(default_factory=list)

    def add(self, note: str) -> None:
        self.notes.append(note)
        warnings.warn(note, stacklevel=3)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int,
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize the patch rows of a position embedding to another patch grid.

    Bicubic interpolation with ``align_corners=False`` of the patch rows laid out as an image
    (timm's ``resample_abs_pos_embed`` without antialiasing); the prefix rows (class / distillation tokens) are kept untouched — the procedure of the
    official fine-tuning at 384 px (paper section 6, "Fine-tuning at different resolution").

    Args:
        pos_embed: ``(1, num_prefix_tokens + H0 * W0, D)``.
        new_grid: target ``(H1, W1)`` patch grid.
        num_prefix_tokens: leading rows that are not patches.
        old_grid: source grid; defaults to a square grid.

    Returns:
        ``(1, num_prefix_tokens + H1 * W1, D)``.

    Raises:
        CheckpointError: the patch rows do not form ``old_grid`` (or a square).
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(n**0.5))
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise CheckpointError(
            f"pos_embed has {n} patch rows, which is not a {old_grid[0]}x{old_grid[1]} grid; "
            "pass the checkpoint's grid size."
        )
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed,
        list(new_grid),
        list(old_grid),
        num_prefix_tokens=num_prefix_tokens,
        interpolation="bicubic",
        antialias=False,
    )


def _adapt_prefix(
    sd: dict[str, torch.Tensor], model: VisionTransformer, report: LoadReport
) -> dict[str, torch.Tensor]:
    """Add or drop the distillation token, its position row and ``head_dist`` (paper section
    4: the distillation token is a second class token) so the prefix matches ``model``'s."""
    distilled = isinstance(model, DistilledVisionTransformer)
    pe = sd["pos_embed"]
    if distilled and "dist_token" not in sd:
        sd["dist_token"] = sd["cls_token"].clone()
        sd["pos_embed"] = torch.cat([pe[:, :1], pe[:, :1], pe[:, 1:]], dim=1)
        if "head.weight" in sd:
            sd["head_dist.weight"] = sd["head.weight"].clone()
            sd["head_dist.bias"] = sd["head.bias"].clone()
        report.add(
            "The checkpoint is not distilled: dist_token, its position embedding and head_dist "
            "were initialised from the class token's."
        )
    elif not distilled and "dist_token" in sd:
        del sd["dist_token"]
        sd.pop("head_dist.weight", None)
        sd.pop("head_dist.bias", None)
        sd["pos_embed"] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
        report.add("The checkpoint is distilled: dist_token and head_dist were dropped.")
    return sd


def _source_grid(
    sd: dict[str, torch.Tensor], model: VisionTransformer, meta: dict[str, Any], source: str
) -> tuple[int, int]:
    """The checkpoint's patch grid ``(H, W)``: from its recorded image size (``meta
    ["image_size"]``) and patch size when known; else the model's grid when both are square
    with the same row count, or a square of the row count.

    Raises:
        CheckpointError: a recorded size that does not match the rows, or an unrecorded grid
            that the row count leaves ambiguous (a non-square model grid of the same count, or a
            count that is not a square); the message names ``source_img_size``.
    """
    n = sd["pos_embed"].shape[1] - model.num_pos_prefix_tokens
    size = meta.get("image_size")
    if size is not None:
        proj = sd.get("patch_embed.proj.weight")
        ph, pw = tuple(proj.shape[-2:]) if proj is not None else model.patch_embed.patch_size
        grid = (size[0] // ph, size[1] // pw)
        if grid[0] * grid[1] != n:
            raise CheckpointError(
                f"{source!r} records image size {size[0]}x{size[1]} (a {grid[0]}x{grid[1]} "
                f"patch grid) but its pos_embed has {n} patch rows; pass the size it was "
                "trained at (--finetune-img-size H W, or source_img_size=(H, W) in Python)."
            )
        return grid
    side = int(round(n**0.5))
    gh, gw = model.grid_size
    if n == gh * gw and gh == gw:
        return gh, gw
    if n == gh * gw or side * side != n:
        raise CheckpointError(
            f"{source!r} does not record its image size and its {n} position rows fit several "
            f"patch grids (the model's is {gh}x{gw}); pass the size it was trained at "
            "(--finetune-img-size H W, or source_img_size=(H, W) in Python), or re-save it with "
            "deit.save_weights from a model of that size, which records it."
        )
    return side, side


def _adapt(
    sd: dict[str, torch.Tensor],
    model: VisionTransformer,
    finetune: bool,
    report: LoadReport,
    meta: dict[str, Any],
    source: str,
) -> dict[str, torch.Tensor]:
    """Make ``sd`` fit ``model``: prefix tokens, position grid (resampled from the file's own
    grid, paper section 6) and, when fine-tuning, heads of another class count dropped."""
    sd = _adapt_prefix(dict(sd), model, report)
    if sd["pos_embed"].shape[-1] == model.pos_embed.shape[-1]:  # else a width mismatch
        grid = _source_grid(sd, model, meta, source)
        if grid != tuple(model.grid_size):
            prefix = model.num_pos_prefix_tokens  # 0 for DeiT III (no_embed_class)
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], model.grid_size, prefix, grid)
            new = tuple(model.grid_size)
            report.add(
                f"pos_embed interpolated bicubically from a {grid[0]}x{grid[1]} to a "
                f"{new[0]}x{new[1]} patch grid."
            )
    if finetune:
        own = model.state_dict()
        for k in _HEAD_KEYS:
            if k in sd and k in own and sd[k].shape != own[k].shape:
                shape = tuple(sd.pop(k).shape)
                report.add(f"Dropped {k} {shape}: the model's class count differs (finetune).")
    return sd
