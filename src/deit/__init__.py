"""deit: DeiT vision transformers and distillation through attention (Touvron et al., 2021)."""

import os

# libgomp spin-waits at every parallel region by default; on a CPU shared with anything else
# (a data-loader worker, another job) that made training here 5-20x slower. Passive waiting
# costs little on an idle machine. It only takes effect if torch is not imported yet; set
# OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import Config, get_preset
from .data import build_dataset, build_mixup, build_sampler, build_transform
from .distillation import DistillationLoss, Teacher, build_teacher, check_student
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
    "Config",
    "DistillationLoss",
    "Teacher",
    "build_dataset",
    "build_mixup",
    "build_sampler",
    "build_teacher",
    "build_transform",
    "check_student",
    "get_preset",
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
