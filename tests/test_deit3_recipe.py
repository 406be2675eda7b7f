"""The DeiT III recipe ("DeiT III: Revenge of the ViT", Touvron et al. 2022): 3-Augment, the
simple random crop, binary cross-entropy and the ``deit3`` preset, against the official
``augment.py`` / ``main.py`` definitions and hand-computed values."""

from __future__ import annotations

import json
import math
import random
import shlex
from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[1]


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
    unmixed = Config(bce_loss=True, smoothing=0.3, mixup=0.0, cutmix=0.0)  # smoothing applies
    smoothed = _base_criterion(unmixed, mixup=None)(z, labels)
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


def _recipe_commands(section: str) -> list[list[str]]:
    """The ``deit`` commands of the bash block of ``## section`` in docs/recipe.md, as argv
    after ``deit`` (``torchrun ... -m deit.cli`` counts as ``deit``)."""
    text = (ROOT / "docs" / "recipe.md").read_text().split(f"\n## {section}\n", 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        argv = shlex.split(line)
        start = argv.index("deit.cli") if "deit.cli" in argv else argv.index("deit")
        commands.append(argv[start + 1 :])
    return commands


def test_help_lists_the_deit3_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    said = capsys.readouterr().out
    assert all(flag in said for flag in ("--ThreeAugment", "--src", "--bce-loss", "deit3"))


@pytest.mark.usefixtures("one_thread")
def test_recipe_deit3_commands_run_on_digits(tmp_path):
    """docs/recipe.md's DeiT III commands: the ``--preset deit3`` run (its ImageNet flags kept,
    made small and fast by flags after them: a LayerScale model on 64 bundled digits, one
    epoch) trains, with binary cross-entropy (the first loss about ln 2 per class at near-zero
    logits, not cross-entropy's ln 10) and the DeiT III flags recorded; the fine-tuning command
    then starts from its checkpoint (its LayerScale, not a fresh 1e-6, after steps at lr 1e-5)."""
    pretrain, finetune = _recipe_commands("DeiT III")
    small = ["--model", "deit3_nano_patch7_28", "--input-size", "28", "--data-set", "digits"]
    small += ["--train-subset", "64", "--batch-size", "16", "--epochs", "1", "--warmup-epochs", "0"]
    small += ["--num-workers", "0", "--no-pin-mem", "--device", "cpu", "--src"]
    first = tmp_path / "deit3_base"
    assert main([*pretrain, *small, "--output_dir", str(first)]) == 0
    (line,) = [json.loads(x) for x in (first / "log.txt").read_text().splitlines()]
    assert line["train_steps"] == 4  # repeated augmentation: 64 views a process, batches of 16
    assert abs(line["train_loss"] - math.log(2)) < 0.05
    assert math.isfinite(line["test_acc1"])
    saved = Config.from_yaml(first / "config.yaml")
    assert saved.ThreeAugment and saved.src and saved.bce_loss and saved.opt == "lamb"
    assert saved.lr == 3e-3 and saved.unscale_lr and saved.drop_path == 0.2
    ck = torch.load(first / "checkpoint.pth", weights_only=True)
    gamma = ck["model"]["blocks.0.ls1.gamma"].abs()  # LayerScale: from 1e-6, 4 LAMB steps on
    assert 1e-6 < gamma.max() < 0.05
    argv = [a.replace("runs/deit3_base/", f"{first}/") for a in finetune]
    assert main([*argv, *small[:-1], "--output_dir", str(tmp_path / "ft")]) == 0
    tuned = Config.from_yaml(tmp_path / "ft" / "config.yaml")
    assert (tuned.lr, tuned.weight_decay, tuned.smoothing, tuned.opt) == (1e-5, 0.1, 0.1, "adamw")
    after = torch.load(tmp_path / "ft" / "checkpoint.pth", weights_only=True)["model"]
    start = ck["model"]["blocks.0.ls1.gamma"]  # 4 AdamW steps at 1e-5 move it by about 4e-5
    assert (after["blocks.0.ls1.gamma"] - start).abs().max() < 1e-4 < start.abs().max()


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
