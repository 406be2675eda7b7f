"""Image transforms, Mixup/CutMix and samplers of the DeiT recipe, built from timm/torchvision.

- :func:`build_transform`: ``timm.data.create_transform`` with the official DeiT arguments
  (``datasets.py::build_transform`` of facebookresearch/deit).
- :func:`build_mixup`: ``timm.data.Mixup``; :func:`build_sampler`: timm's ``RepeatAugSampler``
  (repeated augmentation) or torch's samplers.
- Deterministic training views: :class:`SeededViews` + :class:`PositionSampler` make each
  training view a pure function of ``(seed, epoch, position in the epoch's order)``, and
  :class:`SeededMixup` each batch's Mixup/CutMix of ``(seed, epoch, batch index)``, whatever the
  loader's worker count and without touching the global RNG streams the model draws from (so a
  teacher's outputs can be computed once per view and stored, :mod:`deit.teacher.store`).

The ``*_from_config`` helpers read the same fields from a :class:`deit.config.Config` (or any
object with those attribute names, e.g. the official argparse namespace).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import Mixup, create_transform
from timm.data import auto_augment as _timm_aa
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.transforms import MaybeToTensor
from torch.utils.data import (
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from torchvision import transforms

from ..models.registry import IMAGENET_MEAN, IMAGENET_STD
from .info import dataset_info

__all__ = [
    "SMALL_INPUT_MAX",
    "uses_small_image_crop",
    "build_transform",
    "build_transform_from_config",
    "build_mixup",
    "build_mixup_from_config",
    "build_sampler",
    "SeededRepeatAugSampler",
    "PositionSampler",
    "SeededMixup",
    "SeededViews",
    "mix_batch",
    "seeded_rng",
    "view_seed",
]

#: Inputs of at most this side (px) use the small-image pipeline (official: ``input_size > 32``
#: decides whether images are resized).
SMALL_INPUT_MAX = 32


def _posterize_compat(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's ``posterize`` with Pillow < 11 semantics for 0 bits (an all-black image).

    timm's RandAugment 'PosterizeIncreasing' keeps ``4 - int(m / 10 * 4)`` bits, i.e. 0 bits
    when the noisy magnitude (m 9, std 0.5) reaches 10 (about 2 % of draws); newer Pillow
    rejects ``bits=0`` with ValueError, which would stop a training run at a random step.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return ImageOps.posterize(img, 1).point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


class _FastToTensor(MaybeToTensor):
    """timm's ``MaybeToTensor`` with a shorter path for 8-bit RGB/grey PIL images: the same
    ``float32(uint8) / 255`` (identical values, contiguous ``(C, H, W)``) without torchvision's
    intermediate copies (26 -> 15 us for a 28 px view on this project's CPU)."""

    def __call__(self, pic: Any) -> torch.Tensor:
        if not isinstance(pic, Image.Image) or pic.mode not in ("RGB", "L"):
            return super().__call__(pic)
        arr = torch.from_numpy(np.array(pic))
        arr = arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)
        return arr.to(torch.get_default_dtype()).div_(255).contiguous()


class _SkipIdentityCrop(transforms.RandomCrop):
    """``RandomCrop`` that returns an image of exactly its size without padding unchanged
    instead of copying it: torchvision draws nothing for that crop either (``get_params``
    returns the whole image), so the views and RNG streams are the same."""

    def forward(self, img: Any) -> Any:
        """The crop of ``img`` (PIL image or ``(C, H, W)`` tensor), as ``RandomCrop``."""
        if not self.padding and isinstance(img, Image.Image):
            if (img.height, img.width) == tuple(self.size):
                return img
        return super().forward(img)


def _timm_transform(
    input_size: int,
    is_train: bool,
    timm_kw: dict[str, Any],
    small: bool = False,
    crop_padding: int = 4,
    src: bool = False,
) -> transforms.Compose:
    """timm's training or evaluation transform with RandAugment's posterize made
    :func:`_posterize_compat` and ``MaybeToTensor`` swapped for :class:`_FastToTensor` (same
    output, fewer copies); for small inputs (or ``src``) its RandomResizedCrop becomes Resize +
    RandomCrop(padding) (see :func:`build_transform`)."""
    t = create_transform(input_size=input_size, is_training=is_train, **timm_kw)
    for x in t.transforms:
        for op in getattr(x, "ops", ()):
            if getattr(op, "aug_fn", None) is _timm_aa.posterize:
                op.aug_fn = _posterize_compat
    t.transforms = [_FastToTensor() if type(x) is MaybeToTensor else x for x in t.transforms]
    if small or src:  # src: the official DeiT III simple random crop, reflect-padded by 4 px
        pad = dict(padding=4, padding_mode="reflect") if src else dict(padding=crop_padding)
        bicubic = transforms.InterpolationMode.BICUBIC
        t.transforms[0:1] = [
            transforms.Resize(input_size, interpolation=bicubic),
            _SkipIdentityCrop(input_size, **pad),
        ]
    return t


def build_transform(
    is_train: bool,
    input_size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    aa: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float | None = 0.3,
    reprob: float = 0.25,
    remode: str = "pixel",
    recount: int = 1,
    train_interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    eval_interpolation: str = "bicubic",
    crop_padding: int = 4,
    small_images: bool | None = None,
    three_augment: bool = False,
    src: bool = False,
) -> transforms.Compose:
    """Training or evaluation transform: PIL RGB image → normalised ``(3, input_size, input_size)``.

    Training (``timm.data.create_transform(is_training=True)``):
    RandomResizedCrop(``input_size``, scale 0.08–1, ``train_interpolation``) → horizontal flip
    (p ``hflip``) → RandAugment ``aa`` (timm turns colour jitter off when an auto-augment policy
    is given, as in the official runs) → ToTensor → Normalize(``mean``, ``std``) →
    RandomErasing(``reprob``, ``remode``, ``recount``) on the normalised tensor.
    RandAugment's posterize is made to return a black image for 0 bits, as with Pillow < 11,
    instead of raising ValueError under newer Pillow (see ``_posterize_compat``).
    Small images (``small_images``, default ``input_size <= 32``) replace the crop, as the
    official code does, by ``RandomCrop(input_size, padding=crop_padding)`` (official: 4; 0 keeps
    digits in place), after a bicubic ``Resize(input_size)`` (8 px digits trained at 28 px,
    28 px digits fine-tuned at 42 px, never cut to 8 % of their area).

    Evaluation (``create_transform(is_training=False)``): Resize the short side to
    ``int(input_size / crop_pct)`` (``eval_interpolation``) → CenterCrop ``input_size`` →
    ToTensor → Normalize; small images take ``crop_pct`` 1 (the whole image, as the official).

    DeiT III (Touvron et al. 2022, official ``augment.py``): ``three_augment``: timm's ``'3a'``
    policy (one of grayscale, solarisation, Gaussian blur) for ``aa``, then ``color_jitter``;
    ``src``: the crop becomes Resize + ``RandomCrop(padding=4, padding_mode="reflect")``.

    Args:
        is_train: training (random) or evaluation (deterministic) pipeline.
        input_size: output side in pixels.
        mean, std: per-channel normalisation, [0, 1] units.
        aa: timm auto-augment policy string; ``None`` or ``""``/``"none"`` for none.
        color_jitter: brightness/contrast/saturation factor (only used without ``aa``).
        reprob, remode, recount: random erasing probability, fill mode
            (``'pixel'``/``'rand'``/``'const'``) and count.
        train_interpolation: ``'bicubic'``, ``'bilinear'`` or ``'random'``.
        crop_pct: evaluation centre-crop ratio (official ``--eval-crop-ratio``).
        hflip: horizontal-flip probability (0 for digits).
        scale: RandomResizedCrop area range.
        eval_interpolation: interpolation of the evaluation resize.
        crop_padding, small_images: the small-image crop's padding (px); whether to use it.
        three_augment, src: DeiT III's 3-Augment and simple random crop (above).

    Returns:
        A :class:`torchvision.transforms.Compose`.

    Raises:
        ValueError: ``input_size < 1`` or ``crop_pct`` outside (0, 1].
    """
    if input_size < 1:
        raise ValueError(f"input_size must be a positive number of pixels (got {input_size}).")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1] (got {crop_pct}).")
    if aa is not None and aa.lower() in ("", "none"):
        aa = None
    small = input_size <= SMALL_INPUT_MAX if small_images is None else small_images
    if is_train:
        aa = "3a" if three_augment else aa  # timm keeps the colour jitter with its 3a policy
        timm_kw = dict(scale=scale, hflip=hflip, color_jitter=color_jitter, auto_augment=aa)
        timm_kw.update(interpolation=train_interpolation, mean=tuple(mean), std=tuple(std))
        timm_kw.update(re_prob=reprob, re_mode=remode, re_count=recount)
        return _timm_transform(input_size, True, timm_kw, small, crop_padding, src)
    eval_kw = dict(interpolation=eval_interpolation, crop_pct=1.0 if small else crop_pct)
    return _timm_transform(input_size, False, {**eval_kw, "mean": tuple(mean), "std": tuple(std)})


def build_transform_from_config(
    cfg: Any,
    is_train: bool,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> transforms.Compose:
    """:func:`build_transform` with the fields of a config (``input_size``, ``aa``,
    ``color_jitter``, ``reprob``, ``remode``, ``recount``, ``train_interpolation``,
    ``eval_crop_ratio``, ``hflip``, ``ThreeAugment``, ``src``); ``mean``/``std`` usually come
    from the data set's :class:`~deit.data.datasets.DatasetInfo` (or the model's pretrained
    configuration). Images
    of a data set whose native side is at most 32 px keep the small-image pipeline at any
    input size (:func:`uses_small_image_crop`)."""
    return build_transform(
        is_train,
        cfg.input_size,
        mean=mean,
        std=std,
        aa=cfg.aa,
        color_jitter=cfg.color_jitter,
        reprob=cfg.reprob,
        remode=cfg.remode,
        recount=cfg.recount,
        train_interpolation=cfg.train_interpolation,
        crop_pct=getattr(cfg, "eval_crop_ratio", 0.875),
        hflip=getattr(cfg, "hflip", 0.5),
        crop_padding=getattr(cfg, "crop_padding", 4),
        small_images=uses_small_image_crop(cfg),
        three_augment=getattr(cfg, "ThreeAugment", False),
        src=getattr(cfg, "src", False),
    )


def uses_small_image_crop(cfg: Any) -> bool:
    """Whether a run trains with the small-image crop (Resize + RandomCrop) rather than
    RandomResizedCrop: its input is at most 32 px, or its data set's images are (the official
    code decides by the input size alone, which would crop upscaled digits to 8 % of their
    area)."""
    try:
        native = dataset_info(cfg.data_set).image_size
    except (ValueError, KeyError):
        native = None
    return cfg.input_size <= SMALL_INPUT_MAX or (native is not None and native <= SMALL_INPUT_MAX)


def build_mixup(
    mixup: float = 0.8,
    cutmix: float = 1.0,
    cutmix_minmax: Sequence[float] | None = None,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
    smoothing: float = 0.1,
    num_classes: int = 1000,
    seed: int | None = None,
    stream: int = 0,
) -> Mixup | None:
    """timm :class:`~timm.data.Mixup` for a batch, or ``None`` when nothing mixes.

    Called as ``images, targets = mixup_fn(images, targets)``: images ``(B, C, H, W)``,
    int targets ``(B,)`` → mixed images and soft targets ``(B, num_classes)`` that already
    include label smoothing (use ``timm.loss.SoftTargetCrossEntropy``). ``mode`` 'pair'/'elem'
    need an even batch size (use ``drop_last=True``).

    Args:
        mixup: Mixup Beta α (0 = off). cutmix: CutMix Beta α (0 = off).
        cutmix_minmax: CutMix box ratio range ``[min, max]``; replaces the α when given.
        prob: probability of mixing a batch. switch_prob: probability of CutMix when both on.
        mode: 'batch', 'pair' or 'elem'. smoothing: label smoothing of the targets.
        num_classes: width of the targets.
        seed, stream: when ``seed`` is given, a :class:`SeededMixup` whose draws are a pure
            function of ``(seed, stream, epoch, batch index)`` (``stream``: the process rank).

    Returns:
        ``Mixup`` (:class:`SeededMixup` with ``seed``) or ``None`` when ``mixup <= 0``,
        ``cutmix <= 0`` and no ``cutmix_minmax``,
        or ``prob == 0``.
    """
    active = mixup > 0 or cutmix > 0 or cutmix_minmax is not None
    if not active or prob <= 0:
        return None
    kw: dict[str, Any] = {} if seed is None else {"seed": seed, "stream": stream}
    return (Mixup if seed is None else SeededMixup)(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        cutmix_minmax=list(cutmix_minmax) if cutmix_minmax is not None else None,
        prob=prob,
        switch_prob=switch_prob,
        mode=mode,
        label_smoothing=smoothing,
        num_classes=num_classes,
        **kw,
    )


def build_mixup_from_config(
    cfg: Any, num_classes: int, seed: int | None = None, stream: int = 0
) -> Mixup | None:
    """:func:`build_mixup` with ``cfg.mixup, cutmix, cutmix_minmax, mixup_prob,
    mixup_switch_prob, mixup_mode, smoothing`` (and ``seed``, ``stream`` as given)."""
    return build_mixup(
        cfg.mixup,
        cfg.cutmix,
        cfg.cutmix_minmax,
        cfg.mixup_prob,
        cfg.mixup_switch_prob,
        cfg.mixup_mode,
        cfg.smoothing,
        num_classes,
        seed,
        stream,
    )


class SeededRepeatAugSampler(RepeatAugSampler):
    """timm's ``RepeatAugSampler`` whose shuffle is seeded with ``seed + epoch``.

    timm (like the official ``RASampler``) seeds the permutation with the epoch only; adding
    ``seed`` mirrors :class:`~torch.utils.data.DistributedSampler`. ``seed=0`` gives exactly
    timm's order. Each epoch yields ``len(self)`` indices: every image repeated
    ``num_repeats`` times, spread over ranks, then cut to about ``N / num_replicas`` (a
    multiple of 256 when ``N >= 256``) — so one process sees about ``N / num_repeats``
    distinct images per epoch, each ``num_repeats`` times with different augmentations.
    """

    def __init__(self, dataset: Dataset, *args: Any, seed: int = 0, **kw: Any) -> None:
        super().__init__(dataset, *args, **kw)
        self.seed = int(seed)
        self.epoch = self.seed

    def set_epoch(self, epoch: int) -> None:
        """Reseed for ``epoch`` (call at the start of every epoch)."""
        self.epoch = self.seed + int(epoch)


def build_sampler(
    dataset: Dataset,
    is_train: bool,
    repeated_aug: bool = False,
    num_repeats: int = 3,
    distributed: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
    seed: int = 0,
    dist_eval: bool = False,
) -> Sampler:
    """Sampler for a train or eval loader.

    - train, ``repeated_aug``: :class:`SeededRepeatAugSampler` (timm ``RepeatAugSampler``)
      with ``num_repeats`` — also in a single process (``num_replicas=1, rank=0``; the
      official code silently turns it off there).
    - train, ``distributed``: ``DistributedSampler(shuffle=True, seed=seed)``.
    - train, one process: ``RandomSampler`` with a generator seeded by ``seed``.
    - eval: ``DistributedSampler(shuffle=False)`` when ``distributed and dist_eval`` (it pads
      with repeated samples to a multiple of the world size), else ``SequentialSampler``.

    Call ``sampler.set_epoch(epoch)`` each epoch when it has that method.

    Args:
        num_replicas, rank: world size and rank; default: from ``torch.distributed`` when
            ``distributed`` and it is initialised, else 1 and 0.

    Raises:
        ValueError: ``num_repeats < 1`` with ``repeated_aug``, or ``rank`` outside the world.
    """
    dist = torch.distributed
    initialised = distributed and dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is outside a world of {num_replicas} process(es).")
    if is_train:
        if repeated_aug:
            if num_repeats < 1:
                raise ValueError(f"num_repeats must be >= 1 (got {num_repeats}).")
            return SeededRepeatAugSampler(
                dataset,
                num_replicas=num_replicas,
                rank=rank,
                shuffle=True,
                num_repeats=num_repeats,
                seed=seed,
            )
        if distributed:
            return DistributedSampler(
                dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
            )
        return RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    if distributed and dist_eval:
        return DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
    return SequentialSampler(dataset)


# ----------------------------------------------------------------------------- seeded views
_VIEW, _MIX = 0, 1  # separate seed streams for per-image views and per-batch mixing


def view_seed(seed: int, epoch: int, position: int, stream: int = _VIEW, rank: int = 0) -> int:
    """A 64-bit seed that is a pure function of its arguments (numpy ``SeedSequence``), for the
    view at ``position`` of ``epoch`` (``stream`` 0) or the mixing of batch ``position`` on
    process ``rank`` (``stream`` 1). Negative ``seed`` values are taken modulo 2**64."""
    key = [seed % 2**64, epoch, position, stream, rank]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])


@contextmanager
def _rng_restored() -> Iterator[None]:
    """Python's ``random``, numpy's global RNG and torch's CPU generator as they were on entry,
    after the block (saving and restoring them costs more than seeding all three:
    ``benchmarks/README.md``)."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Inside: Python's ``random``, numpy's global RNG and torch's CPU generator seeded from
    ``seed`` (the RNGs timm and torchvision transforms and timm ``Mixup`` draw from); after: all
    three restored, so that the caller's streams (the model's dropout and drop-path) continue as
    if nothing had been drawn. CUDA generators are not touched."""
    with _rng_restored():
        _seed_all(seed)
        yield


class SeededViews(Dataset):
    """A training set whose items are keyed ``(epoch, position, index)``: item ``index`` of
    ``dataset`` (its transform applied) under :func:`seeded_rng` seeded with
    ``view_seed(seed, epoch, position)``.

    Keyed by position in the epoch's order, not by index: repeated augmentation shows an image
    several times per epoch, and each copy is another view. Pair it with :class:`PositionSampler`.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[tuple[int, int, int]]) -> list[Any]:
        """The items of a batch of keys, as ``[self[key] for key in keys]`` gives them (what a
        ``DataLoader`` calls): each view is drawn from RNGs seeded for it alone, but the
        caller's RNG states are saved and restored once per batch instead of once per view."""
        out = []
        with _rng_restored():
            for epoch, position, index in keys:
                _seed_all(view_seed(self.seed, epoch, position))
                out.append(self.dataset[index])
        return out


class PositionSampler(Sampler):
    """Wraps a training sampler and yields ``(epoch, position, index)`` keys for
    :class:`SeededViews`; ``position`` is the place in the epoch's global order
    (``local position * num_replicas + rank`` for the distributed samplers, which deal the order
    out round-robin). ``set_epoch`` is passed on to the wrapped sampler; ``set_epoch(epoch,
    start)`` makes the next pass begin at local position ``start`` (resuming mid-epoch: the
    skipped images are neither loaded nor transformed, the rest keep their keys)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Key the next pass with ``epoch`` (and reshuffle the wrapped sampler); begin it at
        local position ``start``."""
        self.epoch = int(epoch)
        self.start = int(start)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        """Keys the next pass yields (those from ``start`` on)."""
        return max(len(self.sampler) - self.start, 0)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        world = getattr(self.sampler, "num_replicas", 1)
        rank = getattr(self.sampler, "rank", 0)
        for pos, index in enumerate(self.sampler):
            if pos >= self.start:
                yield self.epoch, pos * world + rank, int(index)


class SeededMixup(Mixup):
    """timm :class:`~timm.data.Mixup` whose draws (Mixup or CutMix, λ, the box; the pairing is
    the batch reversed, as in timm) are a pure function of ``(seed, stream, epoch, batch
    index)`` when called with ``key=(epoch, batch_index)``; without a key it draws from numpy's
    global RNG exactly as timm does. ``stream`` separates processes (the rank)."""

    def __init__(self, *args: Any, seed: int = 0, stream: int = 0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.seed = int(seed)
        self.stream = int(stream)

    def __call__(
        self, x: torch.Tensor, target: torch.Tensor, key: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``x (B, C, H, W)`` and ``target (B,)`` → mixed images, ``(B, num_classes)``
        soft targets."""
        if key is None:
            return super().__call__(x, target)
        with seeded_rng(view_seed(self.seed, key[0], key[1], _MIX, self.stream)):
            return super().__call__(x, target)


def mix_batch(
    mixup_fn: Mixup | None, x: torch.Tensor, target: torch.Tensor, key: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``key = (epoch, batch index)`` as training mixes it: a :class:`SeededMixup` keyed
    by it, any other timm ``Mixup`` as timm draws, ``None`` unchanged. One place, so that the
    training step and the teacher-label pass see the same views."""
    if mixup_fn is None:
        return x, target
    if isinstance(mixup_fn, SeededMixup):
        return mixup_fn(x, target, key=key)
    return mixup_fn(x, target)
