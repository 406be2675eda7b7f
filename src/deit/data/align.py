"""Class alignment between a training and a validation split, by class name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

__all__ = ["align_classes"]


def _named(classes: Sequence[str]) -> str:
    shown = ", ".join(repr(c) for c in classes[:5])
    more = f" and {len(classes) - 5} more" if len(classes) > 5 else ""
    return f"class{'es' if len(classes) > 1 else ''} {shown}{more}"


def align_classes(train_set: Any, val_set: Any, trained_on: str | None = None) -> None:
    """Check that the validation split's classes are among the training split's and give its
    labels the training split's indices, by class name (in place). Folder data sets number
    each split's sub-folders on their own, so a ``val/`` holding fewer classes than ``train/``
    (legitimate) would otherwise take other indices; the other data sets share one class list.

    Args:
        train_set, val_set: data sets with ``.classes`` (e.g. :func:`.build_dataset`'s); a
            remapped ``val_set`` (folder data sets, with ``.samples``) gets the training set's
            ``classes`` and ``class_to_idx`` and its ``samples``/``targets`` relabelled.
        trained_on: how the errors name the training classes (default: "the training data"
            and ``train_set.root``); ``deit eval`` passes the checkpoint's.

    Raises:
        ValueError: the training split has fewer than two classes (nothing to tell apart), or
            the validation split holds classes the training split lacks (names them, with the
            training classes missing from validation).
    """
    train, val = list(train_set.classes), list(val_set.classes)
    here = trained_on or f"the training data {getattr(train_set, 'root', 'split')}"
    if len(train) < 2:
        raise ValueError(
            f"{here[0].upper()}{here[1:]} has {len(train)} class ({', '.join(map(repr, train))}), "
            "so there is nothing to tell apart; give it a sub-folder per class, at least two."
        )
    extra = [c for c in val if c not in train]
    if extra:
        missing = [c for c in train if c not in val]
        instead = f" (it has {_named(missing)} instead)" if missing else ""
        raise ValueError(
            f"The validation data {getattr(val_set, 'root', 'split')} has {_named(extra)} that "
            f"{here} lacks{instead}; a model trained there cannot predict "
            f"{'it' if len(extra) == 1 else 'them'}, so give validation only classes the "
            "training data has."
        )
    if val == train:
        return
    index = {c: train.index(c) for c in val}
    val_set.samples = [(path, index[val[t]]) for path, t in val_set.samples]
    val_set.imgs = val_set.samples
    val_set.targets = [t for _, t in val_set.samples]
    val_set.classes, val_set.class_to_idx = train, {c: i for i, c in enumerate(train)}
    if hasattr(val_set, "info"):
        val_set.info = replace(val_set.info, num_classes=len(train))
