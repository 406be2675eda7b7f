"""Writing weights and checkpoints: :func:`atomic_save` (crash-safe) and :func:`save_weights`
(official-style ``.pth`` or safetensors, with the input size recorded)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.vision_transformer import VisionTransformer

__all__ = ["atomic_save", "save_weights"]


def atomic_save(obj: Any, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``obj`` with ``torch.save`` (or safetensors for a ``.safetensors`` path) atomically.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed
    over ``path``, so a crash never leaves a half-written checkpoint. ``metadata`` (text
    key/values) goes into a safetensors file's header.

    Raises:
        OSError: the folder cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".safetensors":
                from safetensors.torch import save

                f.write(save({k: v.contiguous() for k, v in obj.items()}, metadata=metadata))
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


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
    path = Path(path)
    if path.suffix == ".safetensors":
        atomic_save(sd, path, metadata={"img_size": json.dumps(size)} if size else None)
    else:
        atomic_save({"model": sd, **({"img_size": size} if size else {})}, path)
