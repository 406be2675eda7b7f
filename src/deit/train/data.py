"""The run's data step: data sets, transforms (timm), samplers, loaders and Mixup/CutMix of the
recipe, each training view a pure function of ``(seed, epoch, position)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .._notes import print_note
from .._rng import seed_worker
from .._workers import LoaderWorkerInit
from ..config import Config
from ..data import (
    build_dataset,
    build_mixup_from_config,
    build_sampler,
    build_transform_from_config,
    dataset_info,
    subset_split,
)
from ..data.align import align_classes
from ..data.inputs import resolve_inputs
from ..data.transforms import (
    SMALL_INPUT_MAX,
    PositionSampler,
    SeededViews,
    uses_small_image_crop,
)
from ..precision import resolve_device
from .distributed import DistEnv
from .state import RunData

__all__ = [
    "auto_num_workers",
    "batches_loader",
    "build_data",
    "label_pass_state",
    "resolve_config",
]


def _dataset_kwargs(cfg: Config) -> dict[str, Any]:
    """``skip_corrupt`` and the iNaturalist ``category``, for the data sets that take them
    (:meth:`deit.config.Config.validate` refuses them elsewhere)."""
    kw: dict[str, Any] = {}
    if cfg.skip_corrupt:
        kw["skip_corrupt"] = True
    if cfg.inat_category != "name":
        kw["category"] = cfg.inat_category
    return kw


def _eval_share(val_set: Dataset, env: DistEnv, split: bool) -> Dataset:
    """With ``--dist-eval`` each process evaluates every ``world_size``-th image from its rank
    on: the shares cover the set once (no padding duplicates, unlike DistributedSampler), and
    :func:`deit.engine.evaluate` sums the counts."""
    if not (split and env.distributed):
        return val_set
    return torch.utils.data.Subset(val_set, range(env.rank, len(val_set), env.world_size))


def _subset(
    cfg: Config, train_set: Dataset, val_set: Dataset, val_tf: Callable
) -> tuple[Dataset, Dataset]:
    """``--train-subset N``: the first N images of a fixed permutation of the training split
    (:func:`deit.data.subset_split`: the same for every seed). ``--val-images K`` holds out the
    next K images of that permutation as validation: the run evaluates on them alone, or with
    ``--eval-unused`` on the validation split plus the images after them (seen through the
    evaluation transform), so settings chosen on the K images are never scored on them.

    Raises:
        ValueError: N + K exceeds the training split.
    """
    n, k = cfg.train_subset, cfg.val_images
    if not n or (n >= len(train_set) and not k):
        return train_set, val_set
    train, val, rest = subset_split(len(train_set), n, k)
    subset = torch.utils.data.Subset(train_set, train)
    if cfg.eval_unused or k:
        root = cfg.data_path or None
        unused = build_dataset(
            cfg.data_set, root, "train", transform=val_tf, **_dataset_kwargs(cfg)
        )
        if not cfg.eval_unused:
            return subset, torch.utils.data.Subset(unused, val)
        val_set = torch.utils.data.ConcatDataset([val_set, torch.utils.data.Subset(unused, rest)])
    return subset, val_set


def _collate_to_numpy(batch: list[Any]) -> Any:
    """``default_collate`` in a loader worker, its tensors handed back as numpy arrays: those
    are pickled by value through the worker's pipe, where a tensor is shared through one file
    descriptor per storage and a socket round trip to the (busy) worker: for small batches the
    round trip costs more than the copy (``benchmarks/README.md``, loader workers)."""
    return [b.numpy() if isinstance(b, torch.Tensor) else b for b in default_collate(batch)]


class _ByValueLoader(DataLoader):
    """A CPU run's loader with workers: batches come back from the workers by value
    (:func:`_collate_to_numpy`) and are tensors again here, with the same values (no copy)."""

    def __iter__(self) -> Iterator[list[Any]]:
        for batch in super().__iter__():
            yield [torch.from_numpy(b) if isinstance(b, np.ndarray) else b for b in batch]


def _loader(
    dataset: Dataset, sampler: Sampler, cfg: Config, device: torch.device, train: bool
) -> DataLoader:
    """Training loader (``batch_size``, last partial batch dropped) or evaluation loader
    (1.5 x ``batch_size``, as the official code). Its own generator (seeded by ``cfg.seed``)
    seeds the workers, so iterating it draws nothing from torch's global RNG (the model's).
    Workers persist across epochs (as timm's loaders): each view is keyed by the sampler, which
    runs in this process, so the views do not depend on the workers' lifetime. On the CPU,
    workers hand batches back by value (:class:`_ByValueLoader`). Workers leave stop signals
    to this process and die with it (:class:`deit._workers.LoaderWorkerInit`)."""
    workers = cfg.num_workers
    by_value = workers > 0 and device.type == "cpu"  # a GPU run pins shared tensors instead
    return (_ByValueLoader if by_value else DataLoader)(
        dataset,
        batch_size=cfg.batch_size if train else int(1.5 * cfg.batch_size),
        sampler=sampler,
        num_workers=workers,
        pin_memory=cfg.pin_mem and device.type == "cuda",
        drop_last=train,
        worker_init_fn=LoaderWorkerInit(seed_worker) if workers else None,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=_collate_to_numpy if by_value else None,
    )


MAX_AUTO_WORKERS = 10  # the official code's default


def auto_num_workers(device: torch.device) -> int:
    """The loader workers ``num_workers=-1`` gives one process: the CPU cores its share of the
    node leaves free of compute threads, in ``[0, 10]``.

    A process's share is the cores it may run on (``os.sched_getaffinity``) over the processes
    on its node (``LOCAL_WORLD_SIZE``, set by torchrun; 1 otherwise). Compute takes
    ``torch.get_num_threads()`` of them on the CPU and one (the thread feeding the accelerator)
    elsewhere. A worker only pays where it has a core of its own (``benchmarks/README.md``,
    loader workers).

    Args:
        device: where the model computes.

    Returns:
        The worker count, 0 when no core is free (the batches are then made in this process).
    """
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    cores = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    )
    compute = torch.get_num_threads() if device.type == "cpu" else 1
    share = len(cores) // max(1, local_processes)
    return max(0, min(MAX_AUTO_WORKERS, share - compute))


def resolve_config(cfg: Config, device: torch.device, say: bool = True) -> Config:
    """The configuration a run (or a label pass) builds from: ``cfg`` validated, with the
    input size and normalisation the model and data set give (``None`` in ``cfg``: see
    :func:`deit.data.inputs.resolve_inputs`) and the worker count ``-1`` resolved
    (:func:`auto_num_workers`); a new object, never changed afterwards. This is what
    ``config.yaml`` and the checkpoints record (a resume may use another worker count: the
    views are the same). ``say``: print the notes on the choices (rank 0).

    Raises:
        ConfigError: an invalid ``cfg``.
    """
    cfg.validate()
    inputs = resolve_inputs(cfg, dataset_info(cfg.data_set))  # None: the model's own
    workers = auto_num_workers(device) if cfg.num_workers < 0 else cfg.num_workers
    resolved = cfg.model_copy(  # who set what is kept, for the notes
        update=dict(
            input_size=inputs.input_size,
            mean=list(inputs.mean),
            std=list(inputs.std),
            num_workers=workers,
        )
    )
    notes = list(inputs.notes)
    if resolved.input_size > SMALL_INPUT_MAX and uses_small_image_crop(resolved):
        notes.append(
            f"training crop: Resize({resolved.input_size}) + RandomCrop(padding "
            f"{cfg.crop_padding}), the small-image recipe: {cfg.data_set}'s images are at most "
            f"{SMALL_INPUT_MAX} px, so RandomResizedCrop would keep as little as 8 % of a digit."
        )
    for note in notes if say else ():
        print_note(note)
    return resolved


def build_data(cfg: Config, env: DistEnv, device: torch.device) -> RunData:
    """Data sets, transforms (timm), samplers, loaders and Mixup/CutMix of the recipe, for a
    configuration :func:`resolve_config` gave."""
    mean, std = tuple(cfg.mean), tuple(cfg.std)
    train_tf = build_transform_from_config(cfg, True, mean=mean, std=std)
    val_tf = build_transform_from_config(cfg, False, mean=mean, std=std)
    root, kw = cfg.data_path or None, _dataset_kwargs(cfg)
    train_set = build_dataset(cfg.data_set, root, "train", transform=train_tf, **kw)
    val_set = build_dataset(cfg.data_set, root, "val", transform=val_tf, **kw)
    align_classes(train_set, val_set)  # before anything trains: val indexed by train's names
    class_names = list(train_set.classes)
    train_set, val_set = _subset(cfg, train_set, val_set, val_tf)
    if env.is_main and cfg.train_subset > len(train_set):
        print_note(
            f"--train-subset {cfg.train_subset:,} is more than the {len(train_set):,} "
            f"training images; all {len(train_set):,} are used."
        )
    sampler = build_sampler(
        train_set,
        True,
        repeated_aug=cfg.repeated_aug,
        num_repeats=cfg.num_repeats,
        distributed=True,  # a seeded DistributedSampler also in one process: set_epoch is exact
        num_replicas=env.world_size,
        rank=env.rank,
        seed=cfg.seed,
    )
    # every view a pure function of (seed, epoch, position): see deit.data.transforms
    sampler_train = PositionSampler(sampler)
    train_set = SeededViews(train_set, cfg.seed)
    val_set = _eval_share(val_set, env, cfg.dist_eval)
    return RunData(
        cfg,
        device,
        mean,
        std,
        class_names,
        sampler_train,
        _loader(train_set, sampler_train, cfg, device, train=True),
        _loader(val_set, build_sampler(val_set, False), cfg, device, train=False),
        build_mixup_from_config(cfg, len(class_names), cfg.seed, env.rank),
    )


class _Batches(Sampler):
    """The keys of some of the training sampler's batches, in order: what a rank of a split
    label pass makes views of (each view is keyed by its place in the epoch, so it is the view
    training makes there)."""

    def __init__(self, sampler: PositionSampler, batch_size: int, batches: Sequence[int]):
        self.sampler, self.batch_size, self.batches = sampler, batch_size, sorted(batches)

    def __len__(self) -> int:
        return len(self.batches) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        wanted = set(self.batches)
        for position, key in enumerate(self.sampler):
            if position // self.batch_size in wanted:
                yield key


def batches_loader(data: RunData, batches: Sequence[int]) -> DataLoader:
    """A training loader like ``data.loader_train`` that yields only the epoch's batches
    ``batches`` (indices in the epoch; ``data.sampler_train.set_epoch`` still picks the
    epoch): no other view is read or transformed."""
    sampler = _Batches(data.sampler_train, data.cfg.batch_size, batches)
    return _loader(data.loader_train.dataset, sampler, data.cfg, data.device, train=True)


def label_pass_state(cfg: Config, device: torch.device | None = None) -> RunData:
    """A single process's :class:`RunData` of the run ``cfg`` describes, nothing written: what
    :func:`deit.label_pass.compute_teacher_labels` iterates (on ``device``, default
    ``cfg.device`` resolved; each rank of a split pass gives its own)."""
    device = device if device is not None else resolve_device(cfg.device)
    return build_data(resolve_config(cfg, device), DistEnv(), device)
