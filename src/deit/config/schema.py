"""The fields of :class:`Config`, each with its type, range or choices, validated by pydantic.

:class:`Config` is a frozen pydantic model (``extra="forbid"``, strict types): constructing one
validates it once -- types, ranges (``Field(ge=...)``), choices (``Literal``), then the names
and combinations of :mod:`deit.config.checks` -- and it never changes afterwards (a run works
on a new, resolved copy). Every problem is one sentence naming the key
(:func:`deit.config.checks.sentences`), raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .._choices import (
    AMP,
    DISTILLATION_TYPES,
    HEAD_CHOICES,
    INAT_CATEGORIES,
    KL_REDUCTIONS,
    TEACHER_PRECISIONS,
)
from .._write import atomic_write_text
from .checks import ALIASES, VALUE_PROBLEMS, combination_problems, sentences
from .errors import ConfigError
from .yamlfile import load_yaml_dict

__all__ = [
    "ALIASES",
    "Config",
    "RETIRED",
    "check_config_file",
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


# Besides the strict types: a number written as text (or an integer) for a float, a tuple for
# a list.
Number = Annotated[float, BeforeValidator(_number_text)]
Numbers = Annotated[list[Number], BeforeValidator(_tuple_as_list)]
Integers = Annotated[list[int], BeforeValidator(_tuple_as_list)]


def _f(
    group: str,
    default: Any,
    help: str,
    *,
    flags: list[str] | None = None,
    metavar: str | None = None,
    **bounds: float,
) -> Any:
    """A field with its help text, its range (``ge``/``gt``/``le``/``lt``) and what the command
    line needs: its argument ``group``, extra option strings (``flags``), ``metavar``."""
    extra = {"group": group, "flags": flags or [], "metavar": metavar}
    return Field(default, description=help, json_schema_extra=extra, **bounds)


_model, _optimizer, _schedule = (partial(_f, g) for g in ("model", "optimizer", "schedule"))
_augment, _mixup, _distil = (partial(_f, g) for g in ("augmentation", "mixup", "distillation"))
_data, _run = partial(_f, "data"), partial(_f, "run")


_MIXUP_MODES = ("batch", "pair", "elem")
_REMODES = ("pixel", "rand", "const")
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "random")
_SCHEDS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "wsd", "rsqrt", "constant")
_SCHEDS = _SCHEDS + ("none",)


class Config(BaseModel):
    """All settings of a run (flat; names = official DeiT argparse ``dest`` names).

    Units: learning rates are per-parameter step sizes at a global batch of 512 (scaled by
    ``batch_size * world_size / 512`` unless ``unscale_lr``; see :func:`deit.optim.effective_lr`);
    epochs are passes over the training set; ``batch_size`` is per process; ``input_size`` is
    the side in pixels.

    Construct with keywords (validated; :class:`ConfigError` lists every problem),
    :meth:`from_dict`, :meth:`from_yaml`, :func:`get_preset` or :func:`config_from_args`;
    :meth:`replace` gives a validated copy.

    ``set_by`` (not a field) maps a key to who set its value on the command line
    (``'--preset small'``, ``'--input-size'``, the YAML file's path), so that a run's notes name
    it; empty for a configuration built in Python.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    _set_by: dict[str, str] = PrivateAttr(default_factory=dict)
    _validated: bool = PrivateAttr(default=False)

    # --- model
    model: str = _model("deit_base_patch16_224", "Model name (DeiT registry or timm).")
    input_size: int | None = _model(
        None,
        "Input image side in pixels (none = the model's own, e.g. 28 for deit_tiny_patch4_28).",
        ge=1,
    )
    drop: Number = _model(0.0, "Dropout rate.", metavar="PCT", ge=0, lt=1)
    drop_path: Number = _model(0.1, "Stochastic depth rate.", metavar="PCT", ge=0, lt=1)
    finetune: str = _model("", "Checkpoint to fine-tune from ('' = none).")
    finetune_img_size: Integers | None = _model(
        None,
        "Image size (H W, pixels) the --finetune weights were trained at, for files that do "
        "not record it and whose position grid is ambiguous (None = recorded or square).",
        metavar="PX",
    )
    # --- optimiser
    opt: str = _optimizer("adamw", "Optimiser (timm name).")
    opt_eps: Number | None = _optimizer(
        1e-8, "Optimiser epsilon ('none' = optimiser default).", gt=0
    )
    opt_betas: Numbers | None = _optimizer(None, "Optimiser betas (default: optimiser's).")
    momentum: Number = _optimizer(0.9, "SGD momentum.", ge=0, le=1)
    weight_decay: Number = _optimizer(
        0.05,
        "Weight decay (not on biases, norms, tokens, pos_embed).",
        ge=0,
    )
    grad_accum_steps: int = _optimizer(
        1,
        "Batches whose gradients make one optimiser step (timm's name); the global batch is "
        "batch_size x N x processes and lr scales with it.",
        ge=1,
    )
    clip_grad: Number | None = _optimizer(None, "Gradient-norm clipping ('none' = off).", gt=0)
    # --- schedule
    sched: Literal[_SCHEDS] = _schedule("cosine", "LR schedule (timm name).")
    lr: Number = _schedule(5e-4, "Peak learning rate at global batch 512.", gt=0)
    unscale_lr: bool = _schedule(False, "Use lr as given, without scaling by global batch / 512.")
    lr_noise: Numbers | None = _schedule(None, "LR noise on/off epochs as fractions.")
    lr_noise_pct: Number = _schedule(0.67, "LR noise limit percent.")
    lr_noise_std: Number = _schedule(1.0, "LR noise std-dev.")
    warmup_lr: Number = _schedule(
        1e-6,
        "Learning rate at the start of the warm-up.",
        ge=0,
    )
    min_lr: Number = _schedule(
        1e-5,
        "Floor of the cosine schedule.",
        ge=0,
    )
    decay_epochs: Number = _schedule(30.0, "Epoch interval of step decay ('step' schedule).", gt=0)
    warmup_epochs: int = _schedule(5, "Epochs of linear warm-up.", ge=0)
    cooldown_epochs: int = _schedule(
        10, "Epochs at min_lr after the cycle (timm; not trained).", ge=0
    )
    patience_epochs: int = _schedule(10, "Patience of the 'plateau' schedule.", ge=0)
    decay_rate: Number = _schedule(
        0.1, "LR decay rate ('step'/'plateau').", flags=["--dr"], gt=0, le=1
    )
    epochs: int = _schedule(300, "Training epochs.", ge=1)
    sched_per_step: bool = _schedule(
        True, "Update the LR every optimiser step (else per epoch, as official)."
    )
    # --- augmentation
    color_jitter: Number | None = _augment(0.3, "Colour jitter factor (unused with --aa).", ge=0)
    aa: str | None = _augment("rand-m9-mstd0.5-inc1", "timm auto-augment policy ('none' = off).")
    smoothing: Number = _augment(0.1, "Label smoothing.", ge=0, lt=1)
    train_interpolation: Literal[_INTERPOLATIONS] = _augment(
        "bicubic", "Training resize interpolation."
    )
    hflip: Number = _augment(0.5, "Horizontal flip probability (0 for digits).", ge=0, le=1)
    repeated_aug: bool = _augment(True, "Repeated augmentation (timm RepeatAugSampler).")
    num_repeats: int = _augment(3, "Repeats per image with --repeated-aug.", ge=1)
    reprob: Number = _augment(0.25, "Random erasing probability.", metavar="PCT", ge=0, le=1)
    remode: Literal[_REMODES] = _augment("pixel", "Random erasing mode.")
    recount: int = _augment(1, "Random erasing count.", ge=1)
    eval_crop_ratio: Number = _augment(0.875, "Evaluation centre-crop ratio.", gt=0, le=1)
    crop_padding: int = _augment(4, "Padding of the random crop used for inputs <= 32 px.", ge=0)
    ThreeAugment: bool = _augment(  # the official flag's spelling (DeiT III)
        False,
        "3-Augment (DeiT III): per image one of grayscale, solarisation or Gaussian blur (timm's "
        "'3a' policy), then --color-jitter; takes the place of --aa.",
    )
    src: bool = _augment(
        False,
        "Simple random crop (DeiT III): resize, random crop with 4 px reflect padding, flip, "
        "instead of RandomResizedCrop.",
    )
    bce_loss: bool = _augment(
        False,
        "Binary cross-entropy (DeiT III) on the targets, Mixup/CutMix ones made 0/1 at > 0 as "
        "the official code does (use with --smoothing 0).",
    )
    # --- mixup / cutmix
    mixup: Number = _mixup(0.8, "Mixup alpha (0 = off).", ge=0)
    cutmix: Number = _mixup(1.0, "CutMix alpha (0 = off).", ge=0)
    cutmix_minmax: Numbers | None = _mixup(None, "CutMix min/max box ratio (overrides alpha).")
    mixup_prob: Number = _mixup(1.0, "Probability of mixing a batch.", ge=0, le=1)
    mixup_switch_prob: Number = _mixup(0.5, "Probability of CutMix when both are on.", ge=0, le=1)
    mixup_mode: Literal[_MIXUP_MODES] = _mixup("batch", "Mixing granularity.")
    # --- distillation
    teacher_model: str = _distil("regnety_160", "Teacher model name.")
    teacher_path: str = _distil("", "Teacher checkpoint file.")
    distillation_type: Literal[DISTILLATION_TYPES] = _distil("none", "Distillation loss.")
    distillation_alpha: Number = _distil(0.5, "Weight of the teacher term, in [0, 1].", ge=0, le=1)
    distillation_tau: Number = _distil(1.0, "Soft-distillation temperature (> 0).", gt=0)
    kl_reduction: Literal[KL_REDUCTIONS] = _distil(
        "mean",
        "Soft KL reduction: 'mean' = official (sum / (B*C)), 'batchmean' = sum / B.",
    )
    channels_last_teacher: bool = _distil(
        False,
        "Run the fp32 teacher in channels-last memory format (the fast paths of "
        "--teacher-precision always are).",
    )
    teacher_labels: str = _distil(
        "",
        "Stored teacher labels of this run's views (`deit teacher-labels`); the teacher is not "
        "run ('' = run it).",
    )
    teacher_precision: Literal[TEACHER_PRECISIONS] = _distil(
        "auto",
        "Frozen teacher's fast path: auto = fastest native format whose targets match fp32's "
        "on 256 training views (else fp32); fp32, bf16, fp16 (CUDA) or int8 (x86 CPU) force one.",
    )
    # --- data
    data_set: str = _data("imagenet", "Data set name (see deit.data.list_datasets).")
    data_path: str = _data("", "Data set root folder (official default was a cluster path).")
    inat_category: Literal[INAT_CATEGORIES] = _data("name", "iNaturalist class level.")
    mean: Numbers | None = _data(
        None,
        "Normalisation mean per channel, [0, 1] units (none = the fine-tuned weights' own, "
        "else the data set's).",
    )
    std: Numbers | None = _data(None, "Normalisation std per channel (none = chosen like --mean).")
    skip_corrupt: bool = _data(
        False, "Skip unreadable image files with a warning (folder, imagenet, inat)."
    )
    train_subset: int = _data(
        0,
        "Train on a fixed random subset of N images (0 = all; quick runs).",
        ge=0,
    )
    eval_unused: bool = _data(
        False,
        "With --train-subset, also evaluate on the training images the subset leaves out.",
    )
    val_images: int = _data(
        0,
        "With --train-subset, hold out the first K training images the subset leaves out as "
        "validation: the run evaluates on them alone (for choosing settings), or with "
        "--eval-unused they are kept out of the evaluated images (0 = none).",
        ge=0,
    )
    batch_size: int = _data(
        64,
        "Batch size per process.",
        ge=1,
    )
    num_workers: int = _data(
        -1,
        "Data-loading workers per process (-1 = auto: the cores this process's share leaves "
        "free of compute threads, at most 10).",
        flags=["--num-workers"],
        ge=-1,
    )
    pin_mem: bool = _data(True, "Pin CPU memory in the data loader.")
    # --- run
    output_dir: str = _run(
        "", "Folder for checkpoints and logs ('' = none).", flags=["--output-dir"]
    )
    device: str = _run("auto", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    seed: int = _run(0, "Random seed.")
    resume: str = _run("", "Checkpoint to resume from.")
    auto_resume: bool = _run(False, "Resume from <output_dir>/checkpoint.pth when present.")
    overwrite: bool = _run(
        False,
        "Replace a run already in output_dir (its checkpoints, log and config) instead of "
        "refusing.",
    )
    new_schedule: bool = _run(
        False,
        "On resume, accept schedule settings (lr, warm-up, epochs, batch size, processes, "
        "seed) that differ from the checkpoint's: the schedule restarts from the same epoch.",
    )
    eval: bool = _run(False, "Evaluate only.")
    dist_eval: bool = _run(
        False,
        "Split evaluation over processes (each image once); else every process evaluates all.",
    )
    eval_interval: int = _run(
        1,
        "Evaluate every N epochs and after the last (0 = after the last only).",
        ge=0,
    )
    model_ema: bool = _run(True, "Keep an EMA of the weights.")
    model_ema_decay: Number = _run(0.99996, "EMA decay.", gt=0, lt=1)
    model_ema_force_cpu: bool = _run(False, "Keep the EMA on the CPU.")
    amp: Literal[AMP] = _run("auto", "Mixed precision: auto = bf16/fp16 on GPU, fp32 on CPU.")
    compile: bool = _run(False, "torch.compile the model.")
    log_interval: int = _run(
        10, "Refresh the progress bar's loss, lr and speed every N steps.", ge=1
    )
    eval_head: Literal[HEAD_CHOICES] = _run(
        "both",
        "Head reported as acc1 for a distilled model: averaged, class or distillation head.",
    )

    # ---------------------------------------------------------------- validation
    def __init__(self, **values: Any) -> None:
        """Validate ``values`` (missing keys take the defaults).

        Raises:
            ConfigError: one sentence per problem (:func:`deit.config.checks.sentences`).
        """
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(*sentences(e, values, type(self).model_fields)) from None
        self._validated = True

    # pydantic's own validation (model_validate, with its context) does not go through it
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @field_validator(*VALUE_PROBLEMS)
    @classmethod
    def _value(cls, value: Any, info: ValidationInfo) -> Any:
        problem = VALUE_PROBLEMS[info.field_name](value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _combinations(self, info: ValidationInfo) -> Config:
        if not (info.context or {}).get("alone"):  # a file's values are checked alone
            problems = combination_problems(self)
            if problems:
                raise ConfigError(*problems)
        return self

    def validate(self) -> Config:
        """``self``, validated when it was made; one built without checks
        (``from_dict(..., validate=False)``) is validated now.

        Raises:
            ConfigError: wrong type or impossible value (one sentence each).
        """
        if not self._validated:
            Config(**self.to_dict())
        return self

    def __eq__(self, other: object) -> bool:
        """Equal values (who set them is not compared)."""
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @property
    def set_by(self) -> dict[str, str]:
        """Who set each key on the command line (see the class docstring)."""
        return self._set_by

    # ---------------------------------------------------------------- dict / YAML
    @classmethod
    def field_names(cls) -> list[str]:
        """All field names, in declaration order."""
        return list(cls.model_fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{field: value}`` (lists copied); ``Config.from_dict(c.to_dict()) == c``."""
        return self.model_dump()

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], *, validate: bool = True, set_by: dict[str, str] | None = None
    ) -> Config:
        """Config from a (possibly partial) mapping; missing keys take the defaults.

        Ints and numbers written as text (``"5e-4"``) are accepted for float fields and tuples
        for list fields; nothing else is converted. The keys of official flags that deit does
        not use (:data:`RETIRED`: ``start_epoch``, ``world_size``, ``dist_url``, ``resplit``;
        found in ``config.yaml`` files of older runs) are dropped. ``validate=False`` builds it
        unchecked (pydantic's ``model_construct``; :meth:`validate` checks it later).
        ``set_by``: who set each key (the command line's notes).

        Raises:
            ConfigError: unknown keys (with the closest known key), wrongly typed values (each
                naming the key and the expected type), or an impossible value.
        """
        if not isinstance(d, dict):
            raise ConfigError(
                f"A configuration must be a mapping of keys to values, not {type(d).__name__}."
            )
        known = {k: v for k, v in d.items() if k not in RETIRED}
        cfg = cls(**known) if validate else cls.model_construct(**known)
        cfg._set_by = dict(set_by or {})
        return cfg

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
        """A validated copy with ``changes`` applied (who set what is kept)."""
        return Config.from_dict({**self.to_dict(), **changes}, set_by=self.set_by)


#: Official DeiT flags that parse for compatibility but are not configuration: why each is unused.
RETIRED = {
    "start_epoch": "the first epoch comes from the --resume checkpoint",
    "world_size": "torchrun or SLURM sets the number of processes",
    "dist_url": "torchrun or SLURM sets the rendezvous (env://)",
    "resplit": "it only acts on AugMix splits, which the DeiT recipe does not use",
}


def check_config_file(data: dict[str, Any], path: str | Path) -> None:
    """Check every key and value of a configuration file on its own: unknown keys, types,
    ranges, choices and names, even for keys a flag will override (a wrong value in a file must
    not pass because a flag hid it). Checks that involve several keys are left to the merged
    configuration.

    Args:
        data: the file's mapping (:func:`load_yaml_dict`).
        path: the file, named in the message.

    Raises:
        ConfigError: one sentence per problem, each naming the file and the key.
    """
    known = {k: v for k, v in data.items() if k not in RETIRED}
    try:
        Config.model_validate(known, context={"alone": True})
    except ValidationError as e:
        problems = sentences(e, known, Config.model_fields, every=True)
        raise ConfigError(*(f"In {path}, {p[0].lower()}{p[1:]}" for p in problems)) from None


def save_run_config(cfg: Config, output_dir: str | Path) -> Path:
    """Write ``<output_dir>/config.yaml`` (every field) next to a run; returns its path."""
    return cfg.to_yaml(Path(output_dir) / "config.yaml")
