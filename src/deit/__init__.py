"""deit: DeiT vision transformers and distillation through attention (Touvron et al., 2021)."""

from .models import (
    CheckpointError,
    DistilledVisionTransformer,
    VisionTransformer,
    build_classifier,
    create_model,
    list_models,
    load_checkpoint,
    load_model,
    save_weights,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DistilledVisionTransformer",
    "VisionTransformer",
    "build_classifier",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "save_weights",
]
