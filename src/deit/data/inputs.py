"""What a run feeds its model: input size and normalisation, defaulting to the model's own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..models.registry import IMAGENET_MEAN, IMAGENET_STD
from .info import DatasetInfo

__all__ = ["InputDefaults", "ResolvedInputs", "model_input_defaults", "resolve_inputs"]


@dataclass(frozen=True)
class InputDefaults:
    """A model's own input: side in pixels, channels, normalisation ([0, 1] units), and where
    these come from (e.g. ``"the deit_tiny_patch4_28 registry entry"``)."""

    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


@dataclass
class ResolvedInputs:
    """The settled ``input_size`` (px), ``mean``/``std`` and one note per override."""

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    notes: list[str] = field(default_factory=list)


def model_input_defaults(name: str) -> InputDefaults:
    """The input size, channel count and normalisation a model name says.

    DeiT names: their registry entry (``deit_tiny_patch4_28`` → 28 px); ``torchvision:<name>``:
    224 px, ImageNet statistics; other timm names: their ``pretrained_cfg`` (224 px and
    ImageNet statistics when timm has none).

    Raises:
        ValueError: a name no library knows (:func:`deit.models.check_model_name`).
    """
    from ..models.registry import check_model_name, get_model_spec, is_deit_model

    check_model_name(name)
    if is_deit_model(name):
        spec = get_model_spec(name)
        source = f"the {name} registry entry"
        return InputDefaults(spec.img_size, 3, spec.mean, spec.std, source)
    if name.startswith(("torchvision:", "tv:")):
        return InputDefaults(224, 3, IMAGENET_MEAN, IMAGENET_STD, f"torchvision's {name}")
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return InputDefaults(224, 3, IMAGENET_MEAN, IMAGENET_STD, f"timm's default for {name}")
    chans, _, side = cfg.input_size
    source = f"timm's pretrained_cfg of {name}"
    return InputDefaults(int(side), int(chans), tuple(cfg.mean), tuple(cfg.std), source)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _who(cfg: Any, keys: list[str]) -> str:
    """Who set ``keys`` of ``cfg``: ``by --preset small`` (the command line records it in
    ``cfg.set_by``), else ``in the configuration (input_size)``."""
    set_by = cfg.set_by
    if all(k in set_by for k in keys):
        return "by " + " and ".join(dict.fromkeys(set_by[k] for k in keys))
    return f"in the configuration ({'/'.join(keys)})"


def resolve_inputs(cfg: Any, data: DatasetInfo) -> ResolvedInputs:
    """Settle the input size and normalisation of a run from ``cfg`` (a :class:`deit.config.
    Config`: ``model``, ``input_size``, ``mean``, ``std``, ``finetune``) and its data set.

    - ``input_size`` ``None``: the model's own (:func:`model_input_defaults`).
    - ``mean``/``std`` ``None``: with ``finetune``, the weights' own normalisation (what the
      checkpoint records, else the model's own); without, the data set's statistics (a model
      trained from scratch has none of its own).
    - A value given that differs from that default adds a note naming both.

    Raises:
        deit.checkpoints.CheckpointError: ``finetune`` names an unreadable file (read for its
            recorded normalisation).
    """
    own = model_input_defaults(cfg.model)
    notes: list[str] = []
    size = own.input_size if cfg.input_size is None else int(cfg.input_size)
    if size != own.input_size:
        notes.append(
            f"input size {size} px as set {_who(cfg, ['input_size'])} instead of the "
            f"{own.input_size} px of {own.source}."
        )
    if cfg.finetune:
        from ..checkpoints import read_weights

        run = read_weights(cfg.finetune).run  # a deit train checkpoint records its mean/std
        recorded = run is not None and bool(run.mean) and bool(run.std)
        mean, std = (tuple(run.mean), tuple(run.std)) if recorded else (own.mean, own.std)
        source = f"the normalisation recorded in {cfg.finetune}" if recorded else own.source
    else:
        mean, std, source = data.mean, data.std, f"the {data.name} statistics"
    given_mean = tuple(cfg.mean) if cfg.mean is not None else mean
    given_std = tuple(cfg.std) if cfg.std is not None else std
    if (given_mean, given_std) != (tuple(mean), tuple(std)):
        given = [k for k in ("mean", "std") if getattr(cfg, k) is not None]
        notes.append(
            f"normalising with mean {_fmt(given_mean)}, std {_fmt(given_std)} as set "
            f"{_who(cfg, given)} instead of {source}: mean {_fmt(mean)}, std {_fmt(std)}."
        )
    return ResolvedInputs(size, tuple(given_mean), tuple(given_std), notes)
