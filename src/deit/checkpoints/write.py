"""Writing weights and checkpoints: :func:`atomic_save` (crash-safe) and :func:`save_weights`
(official-style ``.pth`` or safetensors, with the input size recorded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._write import atomic_write
from ..models.vision_transformer import VisionTransformer

__all__ = ["atomic_save", "save_weights"]


def atomic_save(obj: Any, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``obj`` with ``torch.save`` (or safetensors for a ``.safetensors`` path) atomically.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed
    over ``path`` (:func:`deit._write.atomic_write`), so a crash, a full disk or a read-only
    folder never leaves a half-written checkpoint and the previous one stays intact.
    ``metadata`` (text key/values) goes into a safetensors file's header.

    Raises:
        WriteError: (an ``OSError``) the disk is full or the folder cannot be written: one
            sentence naming the folder, the bytes needed and free, and the previous file kept.
        OSError: the folder cannot be written otherwise.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in obj.items()}, metadata=metadata)
        atomic_write(path, lambda f: f.write(data))
    else:
        atomic_write(path, lambda f: torch.save(obj, f))


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: str | Path) -> None:
    """Save a model's weights as safetensors (``.safetensors``) or official-style ``.pth``
    (``{"model": state_dict}``), atomically.

    A DeiT/ViT's input size is recorded too (``img_size``: ``[H, W]`` pixels, a key beside
    ``model``, or the safetensors metadata), so a later load resamples its position grid from
    the right shape (a non-square grid is ambiguous without it).

    Raises:
        OSError: the destination cannot be written.
    """
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    sd = {k: v.detach().cpu() for k, v in sd.items()}
    size = list(model.img_size) if isinstance(model, VisionTransformer) else None
    if Path(path).suffix == ".safetensors":
        atomic_save(sd, path, metadata={"img_size": json.dumps(size)} if size else None)
    else:
        atomic_save({"model": sd, **({"img_size": size} if size else {})}, path)
