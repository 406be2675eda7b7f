""":func:`create_model`: a registered DeiT built by the registry, then filled with weights.

As timm's ``_factory`` sits above its ``_builder``: :func:`deit.models.build_model` makes the
bare model and knows nothing of files; this layer adds the official or a local checkpoint, so
the model package never imports the checkpoint package back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.registry import build_model, get_model_spec
from ..models.vision_transformer import VisionTransformer
from .load import load_checkpoint, load_pretrained

__all__ = ["create_model"]


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> VisionTransformer:
    """Build a registered DeiT model, optionally with weights (timm's ``create_model`` contract).

    Args:
        name: a name from :func:`deit.models.list_models`.
        pretrained: load the official weights through torch.hub's cache (hash-checked).
        checkpoint_path: a local weights file or Hugging Face folder to load instead (official
            ``.pth`` with ``model``, plain/timm state dict, ``.safetensors``, or a
            transformers ``save_pretrained`` folder). Position embeddings are interpolated to
            ``img_size``; heads of another class count are an error (use
            :func:`deit.checkpoints.load_checkpoint` with ``finetune=True`` to drop them).
        num_classes: classes of the head(s).
        img_size: input size; defaults to the configuration's.
        in_chans: input channels.
        drop_rate: dropout rate.
        drop_path_rate: stochastic-depth rate (the paper uses 0.1).
        **kwargs: any other :class:`~deit.models.VisionTransformer` argument (e.g. ``depth``).

    Returns:
        :class:`~deit.models.VisionTransformer` or
        :class:`~deit.models.DistilledVisionTransformer`.

    Raises:
        ValueError: unknown name or impossible argument.
        deit.checkpoints.CheckpointError: weights that cannot be read or do not fit.
    """
    model = build_model(
        name,
        num_classes=num_classes,
        img_size=img_size,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    elif pretrained:
        load_pretrained(model, get_model_spec(name))
    return model
