"""What pydantic's constraints cannot state about a :class:`~deit.config.Config`, and the one
sentence each problem gets.

Types, ranges and choices are the fields' own (``Field(ge=...)``, ``Literal``, in
:mod:`deit.config.schema`); here are the names checked against a registry (data set, optimiser),
the values that are only wrong together, and :func:`sentences`, which turns pydantic's
``ValidationError`` into one sentence per problem naming the key, its value and the fix.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

import annotated_types as at
from pydantic import ValidationError

from .._checks import seed_problem

__all__ = ["VALUE_PROBLEMS", "combination_problems", "kind", "sentences"]

# ``Config`` (deit.config.schema) imports these checks, so its type is not imported back here:
# each ``c`` below is a ``Config``.
Config = Any


class Kind(typing.NamedTuple):
    """What a field holds: the type of a value (of each item for a list), whether it is a
    list, whether it may be ``None``, and its choices (a ``Literal`` field's values)."""

    type: type
    several: bool
    optional: bool
    choices: tuple[Any, ...] = ()


def kind(annotation: Any) -> Kind:
    """The :class:`Kind` of a field's annotation (``Annotated`` metadata looked through)."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if optional:
        annotation = next(a for a in args if a is not type(None))
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        return Kind(str, False, optional, typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return Kind(kind(typing.get_args(annotation)[0]).type, True, optional)
    return Kind(annotation, False, optional)


#: How the sentence of a value below its field's lower bound ends.
FIXES = {
    "input_size": " pixel; give the image side in pixels",
    "weight_decay": "; use 0 to turn weight decay off",
    "warmup_lr": "; use 0 or a positive learning rate",
    "min_lr": "; use 0 or a positive learning rate",
    "epochs": "; train for at least one epoch",
    "mixup": "; use 0 to turn Mixup off",
    "cutmix": "; use 0 to turn CutMix off",
    "train_subset": "; use 0 to train on every image",
    "val_images": "; use 0 to hold out no validation images",
    "batch_size": "; use a positive batch size per process",
    "num_workers": "; use -1 for the automatic count or 0 to load in this process",
    "eval_interval": "; use 0 to evaluate after the last epoch only",
}

_NAMES = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}


def _type_name(k: Kind) -> str:
    plural = {str: "strings", int: "integers", float: "numbers"}
    name = f"a list of {plural[k.type]}" if k.several else _NAMES[k.type]
    return name + (" or null" if k.optional else "")


def _range_sentence(key: str, value: Any, field: Any) -> str:
    """The sentence of a value outside its field's bounds (``ge``/``gt``/``le``/``lt``): the
    whole range when it has two ends, "at least" (ended by the field's ``fix``) or "greater
    than 0" when it has one."""
    lo = hi = None
    lo_open = hi_open = False
    for m in field.metadata:
        if isinstance(m, at.Ge | at.Gt):
            lo, lo_open = (m.gt, True) if isinstance(m, at.Gt) else (m.ge, False)
        if isinstance(m, at.Le | at.Lt):
            hi, hi_open = (m.lt, True) if isinstance(m, at.Lt) else (m.le, False)
    if hi is not None:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        return f"'{key}' is {value} but must lie in {lb}{lo}, {hi}{rb}; set it inside that range."
    if lo_open:
        return f"'{key}' is {value} but must be greater than {lo}; set a positive value."
    return f"'{key}' is {value} but must be at least {lo}{FIXES.get(key, '')}."


def sentences(
    error: ValidationError, data: dict[str, Any], fields: dict[str, Any], every: bool = False
) -> list[str]:
    """One sentence per problem of ``error`` (pydantic's, validating ``data`` into a model whose
    fields are ``fields``): the unknown keys first (one sentence, with the closest field), then
    each wrongly typed key in ``data``'s order, then -- only when there are none, unless
    ``every`` -- each impossible value and combination."""
    unknown, typed, values, seen = [], {}, [], set()
    for e in error.errors():
        key = e["loc"][0] if e["loc"] else None
        if key in seen:
            continue  # one sentence per key (a list's items)
        seen.add(key)
        if e["type"] == "extra_forbidden":
            unknown.append(key)
        elif key is None or e["type"] == "value_error":  # a check of ours: its own sentences
            problem = e["ctx"]["error"]
            values += getattr(problem, "problems", [str(problem)])
        elif e["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            k = kind(fields[key].annotation)
            value = float(e["input"]) if k.type is float else e["input"]
            values.append(_range_sentence(key, value, fields[key]))
        elif e["type"] == "literal_error" and isinstance(data[key], str):
            options = ", ".join(repr(o) for o in kind(fields[key].annotation).choices)
            values.append(f"'{key}' is {data[key]!r}; use one of {options}.")
        else:
            want, value = _type_name(kind(fields[key].annotation)), data[key]
            typed[key] = f"Config key '{key}' must be {want}, not {type(value).__name__} {value!r}."
    problems = [_unknown_keys(unknown, list(fields))] if unknown else []
    problems += [typed[k] for k in data if k in typed]
    return problems + values if every or not problems else problems


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


def combination_problems(c: Config) -> list[str]:
    """The sentences of values that are only wrong together (or of list fields); empty when
    all are fine."""
    mixing = c.mixup_prob != 0 and (c.mixup > 0 or c.cutmix > 0 or c.cutmix_minmax)
    teacher = c.teacher_model or c.teacher_path or c.teacher_labels
    wrong = [
        (
            c.opt_betas is not None
            and not (len(c.opt_betas) == 2 and all(0 <= b < 1 for b in c.opt_betas)),
            f"'opt_betas' is {c.opt_betas} but must be two values in [0, 1), e.g. 0.9 0.999.",
        ),
        (
            c.eval_unused and not c.train_subset,
            "'eval_unused' is on but 'train_subset' is 0, so no training image is left out; "
            "give --train-subset N or drop --eval-unused.",
        ),
        (
            c.val_images and not c.train_subset,
            "'val_images' is set but 'train_subset' is 0, so no training image is left out "
            "to validate on; give --train-subset N or drop --val-images.",
        ),
        (
            c.overwrite and (c.resume or c.auto_resume),
            "'overwrite' replaces the run in output_dir but 'resume'/'auto_resume' continues "
            "it; keep one of them.",
        ),
        (
            c.finetune_img_size is not None
            and not (len(c.finetune_img_size) in (1, 2) and min(c.finetune_img_size) > 0),
            f"'finetune_img_size' is {c.finetune_img_size} but must be one or two positive "
            "sizes in pixels (H W).",
        ),
        (
            any(v is not None and (len(v) != 3 or min(v) < 0) for v in (c.mean, c.std))
            or (c.std is not None and min(c.std) <= 0),
            f"'mean'/'std' are {c.mean}/{c.std} but need 3 values each (std above 0).",
        ),
        (
            c.bce_loss and c.smoothing > 0 and mixing,
            f"'bce_loss' makes every Mixup/CutMix target above 0 a 1 (official DeiT III), so "
            f"'smoothing' {c.smoothing} would make all targets 1; set --smoothing 0 (the DeiT III "
            "recipe) or drop --bce-loss.",
        ),
        (
            c.batch_size % 2 != 0 and mixing,
            f"'batch_size' is {c.batch_size} but Mixup/CutMix needs an even batch (timm mixes "
            "each image with the batch reversed); use an even batch size or --mixup 0 --cutmix 0.",
        ),
        (
            c.distillation_type != "none" and not teacher,
            "'teacher_model' is empty but distillation is on; name a teacher (or a store of "
            "its labels, teacher_labels) or set distillation_type 'none'.",
        ),
        (
            c.teacher_labels and c.distillation_type == "none",
            "'teacher_labels' is set but distillation_type is 'none'; choose 'hard' or "
            "'soft', or drop teacher_labels.",
        ),
        (
            not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", c.device),
            f"'device' is {c.device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.",
        ),
    ]
    return [sentence for bad, sentence in wrong if bad] + _data_set_options(c)


def _model_problem(name: str) -> str | None:
    return None if name else "'model' is empty; name a model, e.g. deit_tiny_patch16_224."


def _pair_problem(v: list[float] | None) -> str | None:
    if v is None or (len(v) == 2 and all(0 <= x <= 1 for x in v) and v[0] <= v[1]):
        return None
    return f"'cutmix_minmax' is {v} but must be two increasing values in [0, 1]."


def data_set_problem(name: str) -> str | None:
    """The sentence of an unknown data set name (``None``: known)."""
    from ..data.info import _canonical

    try:
        _canonical(name)
    except ValueError as e:
        return f"'data_set': {e}"
    return None


def _data_set_options(c: Config) -> list[str]:
    """The options only some data sets take (an unknown name: :func:`data_set_problem`)."""
    from ..data.info import _canonical

    try:
        key = _canonical(c.data_set)
    except ValueError:
        return []
    errors: list[str] = []
    if c.skip_corrupt and key not in ("folder", "imagenet", "inat18", "inat19"):
        errors.append(
            f"'skip_corrupt' applies to image files (folder, imagenet, inat18, inat19), not to "
            f"{key}; leave it off."
        )
    if c.inat_category != "name" and key not in ("inat18", "inat19"):
        errors.append(f"'inat_category' applies to inat18/inat19 only, not {key}; leave it 'name'.")
    return errors


def opt_problem(name: str) -> str | None:
    """The sentence of a name that is not a timm optimiser (``None``: it is one)."""
    from timm.optim import list_optimizers

    known = set(list_optimizers())
    if name.lower().split("_")[-1] in known:
        return None
    close = difflib.get_close_matches(name.lower(), sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"'opt' is {name!r}, not a timm optimiser{hint}; use e.g. 'adamw' or 'sgd'."


#: The checks of one value each that a range or a choice cannot state: the sentence of a bad
#: value, ``None`` for a good one.
VALUE_PROBLEMS = {
    "model": _model_problem,
    "seed": seed_problem,
    "cutmix_minmax": _pair_problem,
    "data_set": data_set_problem,
    "opt": opt_problem,
}
