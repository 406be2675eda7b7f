"""DeiT models: backbone, distilled variant, registry and checkpoint formats."""

from .checkpoint import (
    CheckpointError,
    LoadReport,
    ModelInfo,
    atomic_save,
    convert_hf_deit,
    load_checkpoint,
    load_model,
    load_state_dict_into,
    read_state_dict,
    resample_pos_embed,
    safe_torch_load,
    save_weights,
)
from .distilled import HEAD_CHOICES, DistilledVisionTransformer
from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    build_classifier,
    create_model,
    get_model_spec,
    is_deit_model,
    list_models,
)
from .vision_transformer import Attention, Block, DropPath, Mlp, PatchEmbed, VisionTransformer

__all__ = [
    "Attention",
    "Block",
    "CheckpointError",
    "DistilledVisionTransformer",
    "DropPath",
    "HEAD_CHOICES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadReport",
    "ModelInfo",
    "Mlp",
    "ModelSpec",
    "PatchEmbed",
    "VisionTransformer",
    "atomic_save",
    "build_classifier",
    "convert_hf_deit",
    "create_model",
    "get_model_spec",
    "is_deit_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "load_state_dict_into",
    "read_state_dict",
    "resample_pos_embed",
    "safe_torch_load",
    "save_weights",
]
