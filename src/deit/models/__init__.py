"""DeiT models: the backbone, the distilled variant and the registry of named configurations.

Weights files (reading, adapting, ``create_model`` with weights) live one layer up, in
:mod:`deit.checkpoints`; nothing here imports it.
"""

from .distilled import HEAD_CHOICES, DistilledVisionTransformer
from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    build_classifier,
    build_model,
    check_model_name,
    get_model_spec,
    is_deit_model,
    list_models,
)
from .vision_transformer import Attention, Block, DropPath, Mlp, PatchEmbed, VisionTransformer

__all__ = [
    "Attention",
    "Block",
    "DistilledVisionTransformer",
    "DropPath",
    "HEAD_CHOICES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Mlp",
    "ModelSpec",
    "PatchEmbed",
    "VisionTransformer",
    "build_classifier",
    "check_model_name",
    "build_model",
    "get_model_spec",
    "is_deit_model",
    "list_models",
]
