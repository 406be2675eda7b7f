"""The DeiT III recipe ("DeiT III: Revenge of the ViT", Touvron et al. 2022): 3-Augment, the
simple random crop, binary cross-entropy and the ``deit3`` preset, against the official
``augment.py`` / ``main.py`` definitions and hand-computed values."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps
from timm.data.auto_augment import AutoAugment
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms

from deit.cli import main
from deit.config import Config, ConfigError, get_preset
from deit.data.transforms import build_transform, seeded_rng
from deit.train.model import _base_criterion


def _photo(w: int = 300, h: int = 260) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_three_augment_is_one_of_three_then_colour_jitter():
    """The official ``new_data_aug_generator``: RandomResizedCrop, flip, one of grayscale /
    solarisation / Gaussian blur (radius 0.1-2) chosen uniformly, ColorJitter(0.3, 0.3, 0.3),
    ToTensor, Normalize; each of the three ops gives the official op's pixels."""
    t = build_transform(True, 224, three_augment=True, color_jitter=0.3, reprob=0.0)
    kinds = [type(x) for x in t.transforms]
    assert kinds[:3] == [
        RandomResizedCropAndInterpolation,
        transforms.RandomHorizontalFlip,
        AutoAugment,
    ]
    assert kinds[3] is transforms.ColorJitter and t.transforms[3].brightness == (0.7, 1.3)
    assert t.transforms[3].contrast == t.transforms[3].saturation == (0.7, 1.3)
    assert t.transforms[3].hue is None and len(t.transforms) == 6  # no RandAugment, no erasing
    ops = [sub[0] for sub in t.transforms[2].policy]
    assert [op.prob for op in ops] == [1.0, 1.0, 1.0]
    img = _photo(64, 48)
    solarize, grey, blur = ops
    assert np.array_equal(np.array(solarize(img)), np.array(ImageOps.solarize(img)))
    grey_ref = transforms.Grayscale(3)(img)
    assert np.abs(np.array(grey(img), int) - np.array(grey_ref, int)).max() == 0
    random.seed(3)
    ours = np.array(blur(img))
    random.seed(3)
    radius = random.uniform(0.1, 2.0)
    assert np.array_equal(ours, np.array(img.filter(ImageFilter.GaussianBlur(radius=radius))))
    # the choice among the three is uniform: 300 draws under a fixed seed
    random.seed(0)
    counts = {id(op): 0 for op in ops}
    for _ in range(300):
        counts[id(random.choice(t.transforms[2].policy)[0])] += 1
    assert all(80 <= c <= 120 for c in counts.values())


def test_simple_random_crop_is_resize_then_reflect_padded_crop():
    """``src``: the official ``Resize(img_size, bicubic)``, ``RandomCrop(img_size, padding=4,
    padding_mode='reflect')``, flip, pixel for pixel under the same seed."""
    t = build_transform(True, 224, src=True, three_augment=True, reprob=0.0, color_jitter=0.3)
    ref = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomCrop(224, padding=4, padding_mode="reflect"),
            transforms.RandomHorizontalFlip(0.5),
        ]
    )
    img = _photo()
    for seed in range(3):
        with seeded_rng(seed):
            ours = transforms.Compose(t.transforms[:3])(img)
        with seeded_rng(seed):
            theirs = ref(img)
        assert ours.size == (258, 224) or ours.size == (224, 224)
        assert np.array_equal(np.array(ours), np.array(theirs))


def test_bce_loss_by_hand_and_with_smoothing_refused():
    """``--bce-loss``: the official ``BCEWithLogitsLoss`` on Mixup targets made 0/1 at > 0; on
    class labels, one-hot targets (label-smoothed as timm's ``BinaryCrossEntropy``)."""
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    mixed = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])
    cfg = Config(bce_loss=True, smoothing=0.0)
    loss = _base_criterion(cfg, mixup=object())(z, mixed)
    binary = [[1, 1, 0], [0, 0, 1]]
    by_hand = sum(
        math.log1p(math.exp(-z[i, j].item())) if binary[i][j] else math.log1p(math.exp(z[i, j]))
        for i in range(2)
        for j in range(3)
    )
    assert loss.item() == pytest.approx(by_hand / 6, rel=1e-6)
    labels = torch.tensor([0, 2])
    smoothed = _base_criterion(Config(bce_loss=True, smoothing=0.3), mixup=None)(z, labels)
    target = torch.full((2, 3), 0.1).scatter_(1, labels[:, None], 0.8)
    assert smoothed.item() == pytest.approx(F.binary_cross_entropy_with_logits(z, target).item())
    with pytest.raises(
        ConfigError, match=r"'bce_loss' makes every Mixup/CutMix target.*--smoothing 0"
    ):
        Config(bce_loss=True, smoothing=0.1).validate()


def test_deit3_preset_is_the_papers_vit_b_recipe():
    c = get_preset("deit3")
    assert (c.model, c.input_size, c.epochs, c.batch_size) == (
        "deit3_base_patch16_224",
        192,
        800,
        256,
    )
    assert (c.opt, c.lr, c.unscale_lr, c.weight_decay, c.drop_path) == (
        "lamb",
        3e-3,
        True,
        0.05,
        0.2,
    )
    assert c.ThreeAugment and c.bce_loss and not c.src and c.color_jitter == 0.3
    assert (c.smoothing, c.reprob, c.mixup, c.cutmix, c.repeated_aug) == (0.0, 0.0, 0.8, 1.0, True)


@pytest.mark.usefixtures("one_thread")
def test_deit3_preset_trains_a_few_steps_on_digits(tmp_path):
    """``deit train --preset deit3`` with a small LayerScale model on the bundled digits: the
    first loss is binary cross-entropy at near-zero logits (about ln 2 per class, not the
    ln 10 of cross-entropy), and the run records the DeiT III flags."""
    argv = ["train", "--preset", "deit3", "--model", "deit3_nano_patch7_28", "--input-size", "28"]
    argv += ["--data-set", "digits", "--train-subset", "64", "--batch-size", "16", "--epochs", "1"]
    argv += ["--warmup-epochs", "0", "--num-workers", "0", "--no-pin-mem", "--device", "cpu"]
    argv += ["--src", "--output_dir", str(tmp_path)]
    assert main(argv) == 0
    (line,) = [json.loads(x) for x in (tmp_path / "log.txt").read_text().splitlines()]
    assert line["train_steps"] == 4  # repeated augmentation: 64 views a process, batches of 16
    assert abs(line["train_loss"] - math.log(2)) < 0.05
    assert math.isfinite(line["test_acc1"])
    saved = Config.from_yaml(tmp_path / "config.yaml")
    assert saved.ThreeAugment and saved.src and saved.bce_loss and saved.opt == "lamb"
    ck = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    gamma = ck["model"]["blocks.0.ls1.gamma"].abs()  # LayerScale: from 1e-6, 4 LAMB steps on
    assert 1e-6 < gamma.max() < 0.05


def test_teacher_label_store_tells_three_augment_views_apart():
    """A store of the teacher's labels holds one run's views: 3-Augment and the simple random
    crop make other views, so a store is refused across them; stores written before the flags
    existed (no such keys) still match runs without them."""
    from deit.teacher.store import _first_difference, run_manifest

    plain = run_manifest(Config(), 10, 100)
    three = run_manifest(Config(ThreeAugment=True, src=True), 10, 100)
    assert "ThreeAugment" not in plain and "src" not in plain
    assert _first_difference(plain, three) == "ThreeAugment"
    assert _first_difference(three, plain) == "ThreeAugment"
    assert _first_difference(plain, run_manifest(Config(), 10, 100)) is None
