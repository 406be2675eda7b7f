"""Transforms (timm create_transform), Mixup/CutMix and samplers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import RandAugment
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler
from torchvision import transforms as T

from deit.config import Config, get_preset
from deit.data.transforms import (
    PositionSampler,
    SeededMixup,
    SeededRepeatAugSampler,
    SeededViews,
    build_mixup,
    build_mixup_from_config,
    build_sampler,
    build_transform,
    build_transform_from_config,
    seeded_rng,
    uses_small_image_crop,
    view_seed,
)

BICUBIC = T.InterpolationMode.BICUBIC


def test_train_pipeline_224() -> None:
    t = build_transform(True, 224)
    kinds = [type(x) for x in t.transforms]
    assert kinds[0] is RandomResizedCropAndInterpolation
    assert kinds[1] is T.RandomHorizontalFlip and kinds[2] is RandAugment
    assert kinds[-2] is T.Normalize and kinds[-1] is RandomErasing
    assert T.ColorJitter not in kinds  # timm turns jitter off under RandAugment
    rrc = t.transforms[0]
    assert rrc.scale == (0.08, 1.0) and rrc.size == (224, 224)
    assert rrc.interpolation == BICUBIC
    ra = t.transforms[2]
    assert len(ra.ops) == 15 and ra.num_layers == 2 and ra.ops[0].magnitude == 9
    assert ra.ops[0].magnitude_std == 0.5
    re = t.transforms[-1]
    assert (re.probability, re.mode, re.max_count) == (0.25, "pixel", 1)
    torch.manual_seed(0)
    out = t(Image.new("RGB", (300, 200), (10, 200, 30)))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32


def test_small_input_uses_random_crop_with_padding() -> None:
    t = build_transform(True, 32, aa=None, reprob=0.0, hflip=0.0)
    assert isinstance(t.transforms[0], T.Resize) and t.transforms[0].size == 32
    crop = t.transforms[1]
    assert isinstance(crop, T.RandomCrop) and crop.size == (32, 32) and crop.padding == 4
    assert not any(isinstance(x, RandomResizedCropAndInterpolation) for x in t.transforms)
    assert not any(isinstance(x, T.RandomHorizontalFlip) for x in t.transforms)
    # 8x8 digits trained at 28 px: resized first, then padded crop
    t28 = build_transform(True, 28)
    assert t28(Image.new("RGB", (8, 8), 255)).shape == (3, 28, 28)


def test_eval_resize_and_center_crop_values() -> None:
    t = build_transform(False, 224)
    resize, crop = t.transforms[0], t.transforms[1]
    assert isinstance(resize, T.Resize) and resize.size == 256  # int(224 / 0.875)
    assert resize.interpolation == BICUBIC and crop.size == (224, 224)
    assert build_transform(False, 384, crop_pct=1.0).transforms[0].size == 384
    # constant colour (255, 0, 128) -> ((1 - .485) / .229, (0 - .456) / .224, (128/255 - .406) / .225)
    out = t(Image.new("RGB", (320, 240), (255, 0, 128)))
    assert out.shape == (3, 224, 224)
    assert out[:, 100, 50].tolist() == pytest.approx([2.248908, -2.035714, 0.426492], abs=1e-4)


def test_eval_small_input_keeps_native_pixels() -> None:
    arr = np.arange(28 * 28 * 3, dtype=np.uint8).reshape(28, 28, 3)
    t = build_transform(False, 28, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = t(Image.fromarray(arr))
    # no resize, no crop: pixel (r=3, c=7) channel 1 is (arr / 255 - 0.5) / 0.25
    assert out[1, 3, 7].item() == pytest.approx((arr[3, 7, 1] / 255 - 0.5) / 0.25, abs=1e-6)
    expected = (torch.from_numpy(arr).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert torch.allclose(out, expected, atol=1e-6)


def test_upscaled_small_images_keep_the_small_image_crop() -> None:
    """Digits fine-tuned at 42 px: Resize + RandomCrop as at 28 px, never RandomResizedCrop
    (which keeps as little as 8 % of the digit); ImageNet-size inputs keep RandomResizedCrop."""
    cfg = get_preset("small").replace(input_size=42, crop_padding=0)
    assert uses_small_image_crop(cfg)
    t = build_transform_from_config(cfg, True, mean=(0.13,) * 3, std=(0.31,) * 3)
    assert isinstance(t.transforms[0], T.Resize) and t.transforms[0].size == 42
    assert isinstance(t.transforms[1], T.RandomCrop) and t.transforms[1].padding == 0
    assert not any(isinstance(x, RandomResizedCropAndInterpolation) for x in t.transforms)
    assert t(Image.new("RGB", (28, 28), 255)).shape == (3, 42, 42)
    folder = get_preset("small").replace(input_size=42, data_set="folder")
    assert not uses_small_image_crop(folder)  # images of unknown size: the official rule
    imagenet = Config(input_size=224)
    assert not uses_small_image_crop(imagenet)
    assert isinstance(
        build_transform_from_config(imagenet, True).transforms[0], RandomResizedCropAndInterpolation
    )


def test_transform_from_config_small_preset() -> None:
    cfg = get_preset("small")
    t = build_transform_from_config(cfg, True, mean=(0.13,) * 3, std=(0.31,) * 3)
    assert isinstance(t.transforms[1], T.RandomCrop)
    assert not any(isinstance(x, T.RandomHorizontalFlip) for x in t.transforms)  # hflip 0
    assert t.transforms[2].ops[0].magnitude == 6
    assert t.transforms[-1].probability == pytest.approx(0.1)


def test_build_mixup() -> None:
    assert build_mixup(0.0, 0.0, None) is None
    assert build_mixup(0.8, 1.0, prob=0.0) is None
    assert isinstance(build_mixup(0.0, 0.0, [0.2, 0.8]), Mixup)
    m = build_mixup(0.8, 1.0, None, 1.0, 0.5, "batch", 0.1, 10)
    assert (m.mixup_alpha, m.cutmix_alpha, m.mix_prob, m.switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert (m.label_smoothing, m.num_classes, m.mode) == (0.1, 10, "batch")
    cfg = Config()
    m2 = build_mixup_from_config(cfg, num_classes=1000)
    assert m2.mixup_alpha == 0.8 and m2.cutmix_alpha == 1.0 and m2.label_smoothing == 0.1
    # Mixup only with alpha -> lam ~ Beta: soft targets, rows sum to 1, smoothing 0.1 / 10
    torch.manual_seed(0)
    np.random.seed(0)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    mx, my = build_mixup(0.8, 0.0, None, num_classes=10)(x.clone(), y)
    assert my.shape == (4, 10) and torch.allclose(my.sum(1), torch.ones(4))
    assert my.min().item() == pytest.approx(0.01)  # off-value 0.1 / 10
    assert not torch.equal(mx, x)


def test_repeat_aug_sampler_single_process() -> None:
    data = list(range(10))
    s = build_sampler(data, is_train=True, repeated_aug=True, num_repeats=3)
    assert isinstance(s, SeededRepeatAugSampler) and isinstance(s, RepeatAugSampler)
    assert (s.num_replicas, s.rank) == (1, 0)
    idx = list(s)
    # 10 images x 3 repeats = 30, one process keeps ceil(10 / 1) = 10 of them
    assert len(idx) == len(s) == 10
    assert idx[0] == idx[1] == idx[2] and idx[3] == idx[4] == idx[5] and idx[6] == idx[7]
    assert idx[2] != idx[3]
    # seed 0 is exactly timm's order
    ref = RepeatAugSampler(data, num_replicas=1, rank=0, num_repeats=3)
    assert idx == list(ref)
    s.set_epoch(1)
    ref.set_epoch(1)
    assert list(s) == list(ref)
    s7 = build_sampler(data, True, repeated_aug=True, seed=7)
    ref.set_epoch(7)  # seed 7, epoch 0 shuffles like timm's epoch 7
    assert s7.epoch == 7 and list(s7) == list(ref)
    s7.set_epoch(2)
    ref.set_epoch(9)
    assert list(s7) == list(ref)


def test_repeat_aug_two_ranks_split_the_repeats() -> None:
    data = list(range(8))
    r0 = list(build_sampler(data, True, True, distributed=True, num_replicas=2, rank=0))
    r1 = list(build_sampler(data, True, True, distributed=True, num_replicas=2, rank=1))
    assert len(r0) == len(r1) == 4  # ceil(8 / 2)
    # repeated order [a a a b b b c c c ...]: rank 0 takes positions 0,2,4,6 -> a a b c,
    # rank 1 takes 1,3,5,7 -> a b b c: each image's copies go to different processes
    assert r0[0] == r0[1] == r1[0] and r0[2] == r1[1] == r1[2] and r0[3] == r1[3]
    assert len({r0[0], r0[2], r0[3]}) == 3


def test_other_samplers() -> None:
    data = list(range(10))
    s = build_sampler(data, True, repeated_aug=False, seed=3)
    assert isinstance(s, RandomSampler)
    assert list(s) == list(build_sampler(data, True, repeated_aug=False, seed=3))
    assert sorted(list(s)) == data
    d0 = build_sampler(data, True, False, distributed=True, num_replicas=2, rank=0)
    d1 = build_sampler(data, True, False, distributed=True, num_replicas=2, rank=1)
    assert isinstance(d0, DistributedSampler) and sorted(list(d0) + list(d1)) == data
    assert isinstance(build_sampler(data, False), SequentialSampler)
    assert isinstance(build_sampler(data, False, distributed=True, num_replicas=2, rank=0),
                      SequentialSampler)  # fmt: skip
    ev = build_sampler(data, False, distributed=True, num_replicas=2, rank=1, dist_eval=True)
    assert isinstance(ev, DistributedSampler) and list(ev) == [1, 3, 5, 7, 9]
    with pytest.raises(ValueError, match="rank"):
        build_sampler(data, True, distributed=True, num_replicas=2, rank=2)


def test_randaugment_posterize_zero_bits_gives_black_not_error() -> None:
    # magnitude 10 -> PosterizeIncreasing keeps 4 - int(10 / 10 * 4) = 0 bits; Pillow >= 11
    # raises ValueError for 0 bits, old Pillow (the official runs) returned a black image.
    t = build_transform(True, 32)
    ra = next(x for x in t.transforms if isinstance(x, RandAugment))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    out = op(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert np.asarray(out).max() == 0
    op.magnitude = 5  # 4 - int(2.0) = 2 bits: 200 -> 192, 100 -> 64, 50 -> 0
    assert op(Image.new("RGB", (8, 8), (200, 100, 50))).getpixel((0, 0)) == (192, 64, 0)


# ----------------------------------------------------------------------------- seeded views
class _Digits(torch.utils.data.Dataset):
    """12 real 28 px images (a bright square at a different place each), with a transform."""

    def __init__(self, transform: T.Compose) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = np.zeros((28, 28, 3), np.uint8)
        arr[i : i + 10, 2 * i % 18 : 2 * i % 18 + 10] = 40 + 17 * i
        return self.transform(Image.fromarray(arr)), i % 3


def _views_loader(workers: int, repeated_aug: bool = False) -> torch.utils.data.DataLoader:
    tf = build_transform(True, 28, aa="rand-m9-mstd0.5-inc1", reprob=1.0, crop_padding=4)
    data = _Digits(tf)
    sampler = build_sampler(data, True, repeated_aug, distributed=True, seed=5)
    return torch.utils.data.DataLoader(
        SeededViews(data, seed=5), batch_size=4, sampler=PositionSampler(sampler),
        num_workers=workers, drop_last=True, generator=torch.Generator().manual_seed(5),
    )  # fmt: skip


def _epoch(loader: torch.utils.data.DataLoader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    mix = build_mixup(0.8, 1.0, None, num_classes=3, seed=5)
    out = []
    for i, (x, y) in enumerate(loader):  # the views, then the mixed images and targets
        out.append(torch.cat([t.flatten() for t in (x.clone(), *mix(x, y, key=(epoch, i)))]))
    return out


def test_views_are_a_function_of_seed_epoch_position_not_of_workers_or_model_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)  # the stream the model's dropout would draw from
    torch.manual_seed(123)
    a = _epoch(_views_loader(0), 1)
    after_0 = torch.rand(3)
    torch.manual_seed(123)
    b = _epoch(_views_loader(2), 1)  # another loader, two worker processes
    after_2 = torch.rand(3)
    assert len(a) == len(b) == 3
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(before, after_0) and torch.equal(before, after_2)
    # another epoch: other order and other views; the same epoch again: the same batches
    c = _epoch(_views_loader(0), 2)
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    assert all(torch.equal(x, y) for x, y in zip(a, _epoch(_views_loader(0), 1)))


def test_repeated_aug_copies_are_different_views() -> None:
    loader = _views_loader(0, repeated_aug=True)
    keys = list(loader.sampler)
    assert keys[0][2] == keys[1][2] == keys[2][2] and [k[1] for k in keys[:3]] == [0, 1, 2]
    x, _ = next(iter(loader))
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])


def test_seeded_mixup_draws_from_its_key_and_restores_numpy() -> None:
    mix = build_mixup(0.8, 1.0, None, num_classes=3, seed=1)
    assert isinstance(mix, SeededMixup)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    np.random.seed(9)
    state = np.random.get_state()[1].copy()
    out1 = mix(x.clone(), y, key=(0, 3))
    assert np.array_equal(np.random.get_state()[1], state)
    out2 = mix(x.clone(), y, key=(0, 3))
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])
    lams = {round(float(mix(x.clone(), y, key=(0, i))[1][0].max()), 6) for i in range(6)}
    assert len(lams) > 1  # batches differ
    other = build_mixup(0.8, 1.0, None, num_classes=3, seed=1, stream=1)(x.clone(), y, key=(0, 3))
    assert not torch.equal(other[1], out1[1])  # another rank mixes otherwise
    assert view_seed(0, 1, 2) == view_seed(0, 1, 2) != view_seed(0, 2, 1)


# ----------------------------------------------------------------------------- fast view path
def _slow_twin(t: T.Compose) -> T.Compose:
    """The same pipeline with torchvision/timm's own ToTensor and RandomCrop (the slow path)."""
    parts = []
    for x in t.transforms:
        if isinstance(x, MaybeToTensor):
            x = MaybeToTensor()
        elif isinstance(x, T.RandomCrop):
            x = T.RandomCrop(x.size, padding=x.padding)
        parts.append(x)
    return T.Compose(parts)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_fast_to_tensor_is_bit_identical(mode: str) -> None:
    t = build_transform(True, 28)
    fast = next(x for x in t.transforms if isinstance(x, MaybeToTensor))
    assert type(fast) is not MaybeToTensor  # the fast subclass is in the pipeline
    rng = np.random.default_rng(0)
    shape = (28, 30, 3) if mode == "RGB" else (28, 30)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    a, b = fast(img), MaybeToTensor()(img)
    assert a.dtype == b.dtype and a.shape == b.shape and a.is_contiguous() and b.is_contiguous()
    assert torch.equal(a, b)
    tensor = torch.rand(3, 4, 4)
    assert fast(tensor) is tensor  # tensors pass through as in timm


@pytest.mark.parametrize("padding", [0, 4])
@pytest.mark.parametrize("size", [28, 32])
def test_views_of_the_fast_pipeline_are_the_slow_pipelines(padding: int, size: int) -> None:
    """Every view (and the RNG streams after it) of the pipeline build_transform returns is
    the one timm/torchvision's own ToTensor and RandomCrop give, bit for bit."""
    fast = build_transform(True, size, aa="rand-m9-mstd0.5-inc1", reprob=0.5, crop_padding=padding)
    slow = _slow_twin(fast)
    assert type(slow.transforms[1]) is T.RandomCrop
    for i in range(24):
        arr = np.zeros((28, 28, 3), np.uint8)
        arr[i % 18 : i % 18 + 10, 5:15] = 30 + 9 * i
        img = Image.fromarray(arr)
        views = []
        for t in (fast, slow):
            with seeded_rng(view_seed(3, 0, i)):
                views.append((t(img), torch.rand(1), np.random.rand(), random.random()))
        (a, *rest_a), (b, *rest_b) = views
        assert a.stride() == b.stride() and torch.equal(a, b) and rest_a == rest_b
    evals = build_transform(False, size), _slow_twin(build_transform(False, size))
    assert torch.equal(evals[0](img), evals[1](img))


def test_getitems_is_getitem_per_key_and_restores_the_rng() -> None:
    """The DataLoader's batched call gives each key the view __getitem__ gives it and leaves
    the caller's random, numpy and torch streams where they were."""
    tf = build_transform(True, 28, aa="rand-m9-mstd0.5-inc1", reprob=1.0, crop_padding=4)
    views = SeededViews(_Digits(tf), seed=5)
    keys = [(1, p, (7 * p) % 12) for p in range(10)]
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    one_by_one = [views[k] for k in keys]
    expected = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    batched = views.__getitems__(keys)
    after = torch.rand(2), np.random.rand(2), random.random()
    assert len(batched) == len(keys)
    for (x, y), (u, v) in zip(batched, one_by_one):
        assert torch.equal(x, u) and y == v
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1])
    assert after[2] == expected[2]
