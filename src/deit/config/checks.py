"""The value checks of a :class:`~deit.config.Config`: ranges, choices and combinations.

Each check returns one sentence naming the key, its value and the fix, or ``None`` when the
value is fine; :meth:`Config.validate` joins them into one :class:`ConfigError`. Types are not
checked here (pydantic does that, :mod:`deit.config.schema`), so every value is of its field's
type.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import fields
from typing import Any

from .._checks import batch_size_problem, seed_problem

# ``Config`` (deit.config.schema) imports these checks, so its type is not imported back here:
# each ``c`` below is a ``Config``.
Config = Any

__all__ = ["all_checks", "value_checks"]


class _Checker:
    """One-sentence range checks of a :class:`Config`'s values (``None``: fine)."""

    def __init__(self, c: Config) -> None:
        self.c = c

    def rng(
        self, key: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False
    ) -> str | None:
        """A sentence if the value lies outside ``lo``..``hi`` (bounds open or closed)."""
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
        """A sentence if the value is below ``lo``; ``fix`` ends it."""
        v = getattr(self.c, key)
        if v is None or v >= lo:
            return None
        return f"'{key}' is {v} but must be at least {lo}{fix}."

    def positive(self, key: str) -> str | None:
        """A sentence if the value is 0 or below."""
        v = getattr(self.c, key)
        if v is None or v > 0:
            return None
        return f"'{key}' is {v} but must be greater than 0; set a positive value."

    def oneof(self, key: str, options: tuple[str, ...]) -> str | None:
        """A sentence if the value is not one of ``options``."""
        v = getattr(self.c, key)
        if v in options:
            return None
        return f"'{key}' is {v!r}; use one of {', '.join(repr(o) for o in options)}."

    def pair(self, key: str, lo: float, hi: float) -> str | None:
        """A sentence unless the value is two increasing values in ``[lo, hi]``."""
        v = getattr(self.c, key)
        if v is None:
            return None
        if len(v) != 2 or not all(lo <= x <= hi for x in v) or v[0] > v[1]:
            return f"'{key}' is {v} but must be two increasing values in [{lo}, {hi}]."
        return None


def all_checks(c: Config) -> list[str]:
    """Every check of :meth:`Config.validate`: each value alone, then the combinations; one
    sentence per problem (empty: all fine)."""
    return [e for e in (*value_checks(c), *_combinations(c), *_check_data_set(c)) if e]


def value_checks(c: Config) -> list[str | None]:
    """Checks of one value each (so a value is judged alone, whatever the others are); ``None``
    for each value that is fine."""
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
        batch_size_problem(c.batch_size, "use a positive batch size per process"),
        seed_problem(c.seed),
        atleast("num_workers", -1, "; use -1 for the automatic count or 0 to load in this process"),
        rng("model_ema_decay", 0, 1, lo_open=True, hi_open=True),
        atleast("log_interval", 1),
        None if c.model else "'model' is empty; name a model, e.g. deit_tiny_patch16_224.",
    ]
    errors += [oneof(f.name, f.metadata["choices"]) for f in fields(c) if "choices" in f.metadata]
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
        if not (c.bce_loss and c.smoothing > 0 and c.mixup_prob > 0)
        or not (c.mixup > 0 or c.cutmix > 0 or c.cutmix_minmax)
        else f"'bce_loss' makes every Mixup/CutMix target above 0 a 1 (official DeiT III), so "
        f"'smoothing' {c.smoothing} would make all targets 1; set --smoothing 0 (the DeiT III "
        "recipe) or drop --bce-loss.",
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


def _check_data_set_name(name: str) -> str | None:
    from ..data.info import _canonical

    try:
        _canonical(name)
    except ValueError as e:
        return f"'data_set': {e}"
    return None


def _check_data_set(c: Config) -> list[str | None]:
    """The options only some data sets take (an unknown name: :func:`_check_data_set_name`)."""
    from ..data.info import _canonical

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
