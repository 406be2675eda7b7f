"""Data sets, transforms, Mixup/CutMix and samplers (see :mod:`.datasets`, :mod:`.transforms`)."""

from .datasets import build_dataset
from .info import DatasetInfo, dataset_info, list_datasets
from .splits import subset_split
from .transforms import (
    build_mixup,
    build_mixup_from_config,
    build_sampler,
    build_transform,
    build_transform_from_config,
)
from .unpickle import safe_unpickle

__all__ = [
    "DatasetInfo",
    "build_dataset",
    "dataset_info",
    "list_datasets",
    "safe_unpickle",
    "subset_split",
    "build_transform",
    "build_transform_from_config",
    "build_mixup",
    "build_mixup_from_config",
    "build_sampler",
]
