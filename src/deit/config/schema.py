"""The fields of :class:`Config` and their validation by pydantic.

:class:`Config` is a plain dataclass (constructing one checks nothing, as with the official
``args``); :meth:`Config.from_dict`, :meth:`Config.from_yaml` and :meth:`Config.validate` check
it. Types are pydantic's job: each field is annotated with one of the types below (a strict
pydantic type), and :func:`_read` turns pydantic's ``ValidationError`` into one sentence per
bad key. Ranges, choices and combinations are :mod:`deit.config.checks`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import (
    BeforeValidator,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from .._choices import (
    AMP,
    DISTILLATION_TYPES,
    EVAL_HEADS,
    INAT_CATEGORIES,
    KL_REDUCTIONS,
    TEACHER_PRECISIONS,
)
from .._write import atomic_write_text
from .checks import all_checks, value_checks
from .errors import ConfigError
from .yamlfile import load_yaml_dict

__all__ = [
    "ALIASES",
    "Config",
    "RETIRED",
    "check_config_file",
    "field_kind",
    "save_run_config",
]


def _number_text(value: Any) -> Any:
    """YAML 1.1 reads ``5e-4`` (no dot) as text: give pydantic the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _tuple_as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# The value types of the fields, as pydantic checks them: no conversion but a number written as
# text (or an integer) for a float, and a tuple for a list. Names in messages: _KINDS.
Text = StrictStr
Integer = StrictInt
Flag = StrictBool
Number = Annotated[float, Strict(), BeforeValidator(_number_text)]
Numbers = Annotated[list[Number], Strict(), BeforeValidator(_tuple_as_list)]
Integers = Annotated[list[Integer], Strict(), BeforeValidator(_tuple_as_list)]

#: Per type name above: the Python type of a value (of each item for lists), whether the field is
#: a list, and how messages name it.
_KINDS: dict[str, tuple[type, bool, str]] = {
    "Text": (str, False, "a string"),
    "Integer": (int, False, "an integer"),
    "Flag": (bool, False, "true or false"),
    "Number": (float, False, "a number"),
    "Numbers": (float, True, "a list of numbers"),
    "Integers": (int, True, "a list of integers"),
}


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field carrying its help text and command-line metadata.

    ``meta`` keys: ``flags`` (extra option strings), ``choices``, ``group``, ``metavar``.
    """
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

    ``set_by`` (not a field) maps a key to who set its value on the command line
    (``'--preset small'``, ``'--input-size'``, the YAML file's path), so that a run's notes name
    it; empty for a configuration built in Python.
    """

    set_by: ClassVar[dict[str, str]] = {}

    # --- model
    model: Text = _f("deit_base_patch16_224", "Model name (DeiT registry or timm).", group="model")
    input_size: Integer | None = _f(
        None,
        "Input image side in pixels (none = the model's own, e.g. 28 for deit_tiny_patch4_28).",
        group="model",
    )
    drop: Number = _f(0.0, "Dropout rate.", group="model", metavar="PCT")
    drop_path: Number = _f(0.1, "Stochastic depth rate.", group="model", metavar="PCT")
    finetune: Text = _f("", "Checkpoint to fine-tune from ('' = none).", group="model")
    finetune_img_size: Integers | None = _f(
        None,
        "Image size (H W, pixels) the --finetune weights were trained at, for files that do "
        "not record it and whose position grid is ambiguous (None = recorded or square).",
        group="model",
        metavar="PX",
    )
    # --- optimiser
    opt: Text = _f("adamw", "Optimiser (timm name).", group="optimizer")
    opt_eps: Number | None = _f(
        1e-8, "Optimiser epsilon ('none' = optimiser default).", group="optimizer"
    )
    opt_betas: Numbers | None = _f(
        None, "Optimiser betas (default: optimiser's).", group="optimizer"
    )
    momentum: Number = _f(0.9, "SGD momentum.", group="optimizer")
    weight_decay: Number = _f(
        0.05, "Weight decay (not on biases, norms, tokens, pos_embed).", group="optimizer"
    )
    clip_grad: Number | None = _f(None, "Gradient-norm clipping ('none' = off).", group="optimizer")
    # --- schedule
    sched: Text = _f("cosine", "LR schedule (timm name).", group="schedule", choices=_SCHEDS)
    lr: Number = _f(5e-4, "Peak learning rate at global batch 512.", group="schedule")
    unscale_lr: Flag = _f(
        False, "Use lr as given, without scaling by global batch / 512.", group="schedule"
    )
    lr_noise: Numbers | None = _f(None, "LR noise on/off epochs as fractions.", group="schedule")
    lr_noise_pct: Number = _f(0.67, "LR noise limit percent.", group="schedule")
    lr_noise_std: Number = _f(1.0, "LR noise std-dev.", group="schedule")
    warmup_lr: Number = _f(1e-6, "Learning rate at the start of the warm-up.", group="schedule")
    min_lr: Number = _f(1e-5, "Floor of the cosine schedule.", group="schedule")
    decay_epochs: Number = _f(
        30.0, "Epoch interval of step decay ('step' schedule).", group="schedule"
    )
    warmup_epochs: Integer = _f(5, "Epochs of linear warm-up.", group="schedule")
    cooldown_epochs: Integer = _f(
        10, "Epochs at min_lr after the cycle (timm; not trained).", group="schedule"
    )
    patience_epochs: Integer = _f(10, "Patience of the 'plateau' schedule.", group="schedule")
    decay_rate: Number = _f(
        0.1, "LR decay rate ('step'/'plateau').", group="schedule", flags=["--dr"]
    )
    epochs: Integer = _f(300, "Training epochs.", group="schedule")
    sched_per_step: Flag = _f(
        True, "Update the LR every optimiser step (else per epoch, as official).", group="schedule"
    )
    # --- augmentation
    color_jitter: Number | None = _f(
        0.3, "Colour jitter factor (unused with --aa).", group="augmentation"
    )
    aa: Text | None = _f(
        "rand-m9-mstd0.5-inc1", "timm auto-augment policy ('none' = off).", group="augmentation"
    )
    smoothing: Number = _f(0.1, "Label smoothing.", group="augmentation")
    train_interpolation: Text = _f(
        "bicubic", "Training resize interpolation.", group="augmentation", choices=_INTERPOLATIONS
    )
    hflip: Number = _f(0.5, "Horizontal flip probability (0 for digits).", group="augmentation")
    repeated_aug: Flag = _f(
        True, "Repeated augmentation (timm RepeatAugSampler).", group="augmentation"
    )
    num_repeats: Integer = _f(3, "Repeats per image with --repeated-aug.", group="augmentation")
    reprob: Number = _f(0.25, "Random erasing probability.", group="augmentation", metavar="PCT")
    remode: Text = _f("pixel", "Random erasing mode.", group="augmentation", choices=_REMODES)
    recount: Integer = _f(1, "Random erasing count.", group="augmentation")
    eval_crop_ratio: Number = _f(0.875, "Evaluation centre-crop ratio.", group="augmentation")
    crop_padding: Integer = _f(
        4, "Padding of the random crop used for inputs <= 32 px.", group="augmentation"
    )
    ThreeAugment: Flag = _f(  # the official flag's spelling (DeiT III)
        False,
        "3-Augment (DeiT III): per image one of grayscale, solarisation or Gaussian blur (timm's "
        "'3a' policy), then --color-jitter; takes the place of --aa.",
        group="augmentation",
    )
    src: Flag = _f(
        False,
        "Simple random crop (DeiT III): resize, random crop with 4 px reflect padding, flip, "
        "instead of RandomResizedCrop.",
        group="augmentation",
    )
    bce_loss: Flag = _f(
        False,
        "Binary cross-entropy (DeiT III) on the targets, Mixup/CutMix ones made 0/1 at > 0 as "
        "the official code does (use with --smoothing 0).",
        group="augmentation",
    )
    # --- mixup / cutmix
    mixup: Number = _f(0.8, "Mixup alpha (0 = off).", group="mixup")
    cutmix: Number = _f(1.0, "CutMix alpha (0 = off).", group="mixup")
    cutmix_minmax: Numbers | None = _f(
        None, "CutMix min/max box ratio (overrides alpha).", group="mixup"
    )
    mixup_prob: Number = _f(1.0, "Probability of mixing a batch.", group="mixup")
    mixup_switch_prob: Number = _f(0.5, "Probability of CutMix when both are on.", group="mixup")
    mixup_mode: Text = _f("batch", "Mixing granularity.", group="mixup", choices=_MIXUP_MODES)
    # --- distillation
    teacher_model: Text = _f("regnety_160", "Teacher model name.", group="distillation")
    teacher_path: Text = _f("", "Teacher checkpoint file.", group="distillation")
    distillation_type: Text = _f(
        "none", "Distillation loss.", group="distillation", choices=DISTILLATION_TYPES
    )
    distillation_alpha: Number = _f(
        0.5, "Weight of the teacher term, in [0, 1].", group="distillation"
    )
    distillation_tau: Number = _f(1.0, "Soft-distillation temperature (> 0).", group="distillation")
    kl_reduction: Text = _f(
        "mean",
        "Soft KL reduction: 'mean' = official (sum / (B*C)), 'batchmean' = sum / B.",
        group="distillation",
        choices=KL_REDUCTIONS,
    )
    channels_last_teacher: Flag = _f(
        False,
        "Run the fp32 teacher in channels-last memory format (the fast paths of "
        "--teacher-precision always are).",
        group="distillation",
    )
    teacher_labels: Text = _f(
        "",
        "Stored teacher labels of this run's views (`deit teacher-labels`); the teacher is not "
        "run ('' = run it).",
        group="distillation",
    )
    teacher_precision: Text = _f(
        "auto",
        "Frozen teacher's fast path: auto = fastest native format whose targets match fp32's "
        "on 64 training views (else fp32); fp32, bf16, fp16 (CUDA) or int8 (x86 CPU) force one.",
        group="distillation",
        choices=TEACHER_PRECISIONS,
    )
    # --- data
    data_set: Text = _f("imagenet", "Data set name (see deit.data.list_datasets).", group="data")
    data_path: Text = _f(
        "", "Data set root folder (official default was a cluster path).", group="data"
    )
    inat_category: Text = _f(
        "name", "iNaturalist class level.", group="data", choices=INAT_CATEGORIES
    )
    mean: Numbers | None = _f(
        None,
        "Normalisation mean per channel, [0, 1] units (none = the fine-tuned weights' own, "
        "else the data set's).",
        group="data",
    )
    std: Numbers | None = _f(
        None, "Normalisation std per channel (none = chosen like --mean).", group="data"
    )
    skip_corrupt: Flag = _f(
        False, "Skip unreadable image files with a warning (folder, imagenet, inat).", group="data"
    )
    train_subset: Integer = _f(
        0, "Train on a fixed random subset of N images (0 = all; quick runs).", group="data"
    )
    eval_unused: Flag = _f(
        False,
        "With --train-subset, also evaluate on the training images the subset leaves out.",
        group="data",
    )
    val_images: Integer = _f(
        0,
        "With --train-subset, hold out the first K training images the subset leaves out as "
        "validation: the run evaluates on them alone (for choosing settings), or with "
        "--eval-unused they are kept out of the evaluated images (0 = none).",
        group="data",
    )
    batch_size: Integer = _f(64, "Batch size per process.", group="data")
    num_workers: Integer = _f(
        -1,
        "Data-loading workers per process (-1 = auto: the cores this process's share leaves "
        "free of compute threads, at most 10).",
        group="data",
        flags=["--num-workers"],
    )
    pin_mem: Flag = _f(True, "Pin CPU memory in the data loader.", group="data")
    # --- run
    output_dir: Text = _f(
        "", "Folder for checkpoints and logs ('' = none).", group="run", flags=["--output-dir"]
    )
    device: Text = _f("auto", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.", group="run")
    seed: Integer = _f(0, "Random seed.", group="run")
    resume: Text = _f("", "Checkpoint to resume from.", group="run")
    auto_resume: Flag = _f(
        False, "Resume from <output_dir>/checkpoint.pth when present.", group="run"
    )
    overwrite: Flag = _f(
        False,
        "Replace a run already in output_dir (its checkpoints, log and config) instead of "
        "refusing.",
        group="run",
    )
    new_schedule: Flag = _f(
        False,
        "On resume, accept schedule settings (lr, warm-up, epochs, batch size, processes, "
        "seed) that differ from the checkpoint's: the schedule restarts from the same epoch.",
        group="run",
    )
    eval: Flag = _f(False, "Evaluate only.", group="run")
    dist_eval: Flag = _f(
        False,
        "Split evaluation over processes (each image once); else every process evaluates all.",
        group="run",
    )
    eval_interval: Integer = _f(
        1, "Evaluate every N epochs and after the last (0 = after the last only).", group="run"
    )
    model_ema: Flag = _f(True, "Keep an EMA of the weights.", group="run")
    model_ema_decay: Number = _f(0.99996, "EMA decay.", group="run")
    model_ema_force_cpu: Flag = _f(False, "Keep the EMA on the CPU.", group="run")
    amp: Text = _f(
        "auto", "Mixed precision: auto = bf16/fp16 on GPU, fp32 on CPU.", group="run", choices=AMP
    )
    compile: Flag = _f(False, "torch.compile the model.", group="run")
    log_interval: Integer = _f(
        10, "Refresh the progress bar's loss, lr and speed every N steps.", group="run"
    )
    eval_head: Text = _f(
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
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, validate: bool = True) -> Config:
        """Config from a (possibly partial) mapping; missing keys take the defaults.

        Ints and numbers written as text (``"5e-4"``) are accepted for float fields and tuples
        for list fields; nothing else is converted. The keys of official flags that deit does
        not use (:data:`RETIRED`: ``start_epoch``, ``world_size``, ``dist_url``, ``resplit``;
        found in ``config.yaml`` files of older runs) are dropped.

        Raises:
            ConfigError: unknown keys (with the closest known key) and wrongly typed values
                (each naming the key and the expected type), or, with ``validate``, an
                impossible value (see :meth:`validate`).
        """
        if not isinstance(d, dict):
            raise ConfigError(
                f"A configuration must be a mapping of keys to values, not {type(d).__name__}."
            )
        cfg, problems = _read({k: v for k, v in d.items() if k not in RETIRED})
        if problems:
            raise ConfigError(*problems)
        return cfg.validate() if validate else cfg

    def to_yaml(self, path: str | Path) -> Path:
        """Write every field to a YAML file (parents created); returns the path."""
        path = Path(path)
        atomic_write_text(  # whole or not at all (a full disk: one sentence, the old file kept)
            path, yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        )
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
        problems = _read(self.to_dict())[1] or all_checks(self)
        if problems:
            raise ConfigError(*problems)
        return self


#: Official DeiT flags that parse for compatibility but are not configuration: why each is unused.
RETIRED = {
    "start_epoch": "the first epoch comes from the --resume checkpoint",
    "world_size": "torchrun or SLURM sets the number of processes",
    "dist_url": "torchrun or SLURM sets the rendezvous (env://)",
    "resplit": "it only acts on AugMix splits, which the DeiT recipe does not use",
}

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


def field_kind(f: dataclasses.Field) -> tuple[type, bool, bool]:
    """What a :class:`Config` field holds: the type of a value (of each item for a list),
    whether it is a list, and whether it may be ``None``."""
    (tp, several, _), optional = _kind(f)
    return tp, several, optional


def _kind(f: dataclasses.Field) -> tuple[tuple[type, bool, str], bool]:
    """The :data:`_KINDS` entry of a field's annotation (text: annotations are postponed), and
    whether it allows ``None``."""
    name, _, rest = str(f.type).partition(" | ")
    return _KINDS[name], rest == "None"


@functools.cache
def _validator() -> TypeAdapter[Config]:
    return TypeAdapter(Config)


def _read(d: dict[Any, Any]) -> tuple[Config, list[str]]:
    """Validate ``d``'s keys and types with pydantic.

    Returns:
        The :class:`Config` of the good keys (the others take the defaults), and one sentence
        per problem: the unknown keys first, then each wrongly typed key in ``d``'s order.
    """
    names = Config.field_names()
    unknown = [k for k in d if k not in names]
    known = {k: v for k, v in d.items() if k in names}
    problems = [_unknown_keys(unknown, names)] if unknown else []
    try:
        return _validator().validate_python(known), problems
    except ValidationError as e:
        bad = {error["loc"][0] for error in e.errors()}
    problems += [_wrong_type(k, known[k]) for k in known if k in bad]
    return _validator().validate_python({k: known[k] for k in known if k not in bad}), problems


def _wrong_type(key: str, value: Any) -> str:
    """One sentence for a value pydantic refused: the key, the type it needs, what it got."""
    (_, _, want), optional = _kind(Config.__dataclass_fields__[key])
    want += " or null" if optional else ""
    return f"Config key '{key}' must be {want}, not {type(value).__name__} {value!r}."


def _unknown_keys(keys: list[Any], names: list[str]) -> str:
    """One sentence naming each unknown key once, with the closest field or usual alias."""
    parts = []
    for k in dict.fromkeys(str(k) for k in keys):
        close = ALIASES.get(k) or next(iter(difflib.get_close_matches(k, names, n=1)), None)
        parts.append(f"'{k}'" + (f" (did you mean '{close}'?)" if close else ""))
    return (
        f"Unknown config key(s) {', '.join(parts)}; remove it or use one of the fields of "
        "deit.config.Config."
    )


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
    cfg, problems = _read({k: v for k, v in data.items() if k not in RETIRED})
    # the defaults pass every check, so each remaining problem is one of the file's values
    problems += [e for e in value_checks(cfg) if e]
    if problems:
        raise ConfigError(*(f"In {path}, {p[0].lower()}{p[1:]}" for p in problems))


def save_run_config(cfg: Config, output_dir: str | Path) -> Path:
    """Write ``<output_dir>/config.yaml`` (every field) next to a run; returns its path."""
    return cfg.to_yaml(Path(output_dir) / "config.yaml")
