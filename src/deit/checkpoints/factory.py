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
from .hub import hub_architecture, hub_config, is_hub_id
from .load import load_checkpoint, load_pretrained

__all__ = ["create_model"]


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> VisionTransformer:
    """Build a registered DeiT model, optionally with weights (timm's ``create_model`` contract).

    Args:
        name: a name from :func:`deit.models.list_models`, or a Hub name
            ``hf-hub:ORG/NAME`` (timm's spelling): a timm DeiT repository or a transformers
            DeiT/ViT one (e.g. ``facebook/deit-base-distilled-patch16-224``, or a folder
            ``deit export --format hf`` wrote), built as the registered configuration its
            ``config.json`` describes, at its class count and image size unless given.
        pretrained: load the official weights through torch.hub's cache (hash-checked); for a
            Hub name, the repository's weights through ``huggingface_hub``'s cache (offline:
            from the cache; a name not cached is one sentence saying what to run).
        checkpoint_path: a local weights file or Hugging Face folder to load instead (official
            ``.pth`` with ``model``, plain/timm state dict, ``.safetensors``, or a
            transformers ``save_pretrained`` folder). Position embeddings are interpolated to
            ``img_size``; heads of another class count are an error (use
            :func:`deit.checkpoints.load_checkpoint` with ``finetune=True`` to drop them).
        num_classes: classes of the head(s) (default 1000, or a Hub repository's).
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
        deit.checkpoints.CheckpointError: weights that cannot be read or do not fit; a Hub name
            neither cached nor reachable, or of a model no registered configuration builds.
    """
    hub_id = None
    if is_hub_id(name):
        hub_id, (name, classes, size) = name, hub_architecture(name, hub_config(name))
        num_classes = classes if num_classes is None else num_classes
        img_size = size if img_size is None else img_size
    model = build_model(
        name,
        num_classes=1000 if num_classes is None else num_classes,
        img_size=img_size,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    elif pretrained and hub_id is not None:
        load_checkpoint(model, hub_id)
    elif pretrained:
        load_pretrained(model, get_model_spec(name))
    return model
