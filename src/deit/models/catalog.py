"""What ``deit list-models`` shows: every model a run can name, with its kind and input size.

A run's ``--model`` and ``--teacher-model`` take a DeiT configuration (:func:`list_models`), any
timm model or ``torchvision:<name>``; :func:`model_rows` lists the three side by side, so that a
teacher such as timm's ``test_resnet`` can be found from the command line as well.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .registry import get_model_spec, list_models

_DEIT = set(list_models())

__all__ = ["ModelRow", "model_rows"]


@dataclass(frozen=True)
class ModelRow:
    """One model a run can name.

    Attributes:
        name: what ``--model`` / ``--teacher-model`` takes.
        kind: ``DeiT``, ``DeiT distilled`` (a distillation token and head), ``timm`` or
            ``torchvision`` (the latter two: teachers, or a CNN trained by ``deit train``).
        input_size: the side in pixels a run builds it at without ``--input-size`` (timm: its
            ``pretrained_cfg``; torchvision: 224); a CNN takes other sizes too.
        official_weights: whether ``pretrained=True`` fetches the paper's weights.
    """

    name: str
    kind: str
    input_size: int
    official_weights: bool = False


def _timm_rows(pattern: str) -> list[ModelRow]:
    import timm
    import timm.models

    rows = []
    for name in timm.list_models(pattern):
        cfg = timm.models.get_pretrained_cfg(name)
        side = int(cfg.input_size[-1]) if cfg is not None else 224
        rows.append(ModelRow(name, "timm", side))
    return rows


def _torchvision_rows(pattern: str) -> list[ModelRow]:
    import torchvision

    names = [f"torchvision:{n}" for n in torchvision.models.list_models()]
    return [ModelRow(n, "torchvision", 224) for n in names if fnmatch.fnmatch(n, pattern)]


def model_rows(
    pattern: str = "*", pretrained: bool = False, teachers: bool = True
) -> list[ModelRow]:
    """The models whose name matches the shell-style ``pattern``: the DeiT configurations first,
    then (with ``teachers``) timm's and torchvision's (``torchvision:resnet18``).

    Args:
        pattern: fnmatch pattern, e.g. ``"*resnet*"``.
        pretrained: only the DeiT configurations with official weights.
        teachers: add the timm and torchvision models.
    """
    rows = []
    for name in list_models(pattern, pretrained=pretrained):
        spec = get_model_spec(name)
        kind = "DeiT distilled" if spec.distilled else "DeiT"
        rows.append(ModelRow(name, kind, spec.img_size, spec.url is not None))
    if teachers and not pretrained:
        # a name both define (deit_tiny_patch16_224) is this package's in a run
        rows += [r for r in _timm_rows(pattern) if r.name not in _DEIT] + _torchvision_rows(pattern)
    return rows
