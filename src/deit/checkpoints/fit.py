"""Loading a state dict into a model, or saying in one sentence why it does not fit:
:func:`load_state_dict_into` (DeiT/ViT, adapted first), :func:`fit_weights` (any model),
:func:`mismatch` (the counts and examples of a misfit) and :func:`guess_architecture` (what a
state dict holds, judged by its key names and shapes, for the fix the sentence names)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.registry import get_model_spec, list_models
from ..models.vision_transformer import VisionTransformer
from .adapt import _HEAD_KEYS, LoadReport, _adapt
from .errors import CheckpointError
from .read import Weights

__all__ = ["fit_weights", "guess_architecture", "load_state_dict_into", "mismatch"]

# ResNet signature (blocks per stage, bottleneck blocks, stem output channels) -> the
# torchvision / timm name that builds it (timm's *d / *t / test_ models have a deep stem).
_RESNETS = {
    (2, 2, 2, 2, False, 64): "resnet18",
    (3, 4, 6, 3, False, 64): "resnet34",
    (3, 4, 6, 3, True, 64): "resnet50",
    (3, 4, 23, 3, True, 64): "resnet101",
    (3, 8, 36, 3, True, 64): "resnet152",
    (1, 1, 1, 1, False, 24): "resnet10t",
    (1, 1, 1, 1, True, 24): "resnet14t",
    (2, 2, 2, 2, True, 24): "resnet26t",
    (2, 2, 2, 2, False, 32): "resnet18d",
    (2, 2, 2, 2, True, 32): "resnet26d",
    (3, 4, 6, 3, False, 32): "resnet34d",
    (3, 4, 6, 3, True, 32): "resnet50d",
    (1, 1, 1, 1, False, 16): "test_resnet",
}


def _count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """Distinct indices right after ``prefix`` in the keys (blocks of a stage, layers, ...)."""
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def _guess_vit(sd: dict[str, torch.Tensor]) -> tuple[str | None, str]:
    dim, patch = sd["cls_token"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
    depth, distilled = _count(sd, "blocks."), "dist_token" in sd
    layer_scale = "blocks.0.ls1.gamma" in sd  # DeiT III: no position rows for the class token
    prefix = 0 if layer_scale else (2 if distilled else 1)
    rows = sd["pos_embed"].shape[1] - prefix if "pos_embed" in sd else -1
    same = [
        s
        for s in map(get_model_spec, list_models())
        if s.distilled == distilled
        and ("init_values" in s.kwargs) == layer_scale
        and (s.kwargs["embed_dim"], s.kwargs["depth"], s.kwargs["patch_size"])
        == (dim, depth, patch)
    ]
    same.sort(key=lambda s: (s.img_size // patch) ** 2 != rows)  # the recorded grid first
    kind = "DeiT III" if layer_scale else "distilled DeiT" if distilled else "ViT/DeiT"
    return (same[0].name if same else None), f"a {kind} (D {dim}, depth {depth}, patch {patch})"


def guess_architecture(sd: dict[str, torch.Tensor]) -> tuple[str | None, str | None]:
    """What architecture a state dict seems to hold, judging by its key names and shapes.

    Returns:
        ``(name, description)``: a model name that builds it (a registered DeiT name or a
        torchvision/timm ResNet) or ``None``, and a short description of the family (e.g.
        ``"a ResNet (basic blocks 1-1-1-1)"``) or ``None`` when the keys are not recognised.
    """
    if "cls_token" in sd and "patch_embed.proj.weight" in sd:
        return _guess_vit(sd)
    if "layer1.0.conv1.weight" in sd:
        blocks = tuple(_count(sd, f"layer{i}.") for i in range(1, 5))
        bottleneck = "layer1.0.conv3.weight" in sd
        stem = sd.get("conv1.weight", sd.get("conv1.0.weight"))
        width = int(stem.shape[0]) if stem is not None else 0
        kind = "bottleneck" if bottleneck else "basic"
        family = f"a ResNet with {kind} blocks {'-'.join(map(str, blocks))}"
        return _RESNETS.get((*blocks, bottleneck, width)), family
    if any(k.startswith("s1.b1.") for k in sd):
        return None, "a RegNet (timm regnet*)"
    if "conv_stem.weight" in sd:
        return None, "an EfficientNet/MobileNet (timm)"
    return None, None


def _examples(groups: list[list[str]], limit: int = 3) -> list[list[str]]:
    """Up to ``limit`` examples in all, taken in turn from each group (so every kind shows)."""
    shown: list[list[str]] = [[] for _ in groups]
    for i in range(limit):
        for group, out in zip(groups, shown):
            if i < len(group) and sum(map(len, shown)) < limit:
                out.append(group[i])
    return shown


def mismatch(
    own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], ignore_missing: tuple = ()
) -> tuple[list[str], bool]:
    """Describe how ``sd`` fails to fit a model's state dict ``own``.

    Each kind of problem is counted; three examples are given in all (shapes as
    ``key: checkpoint (..) vs model (..)``).

    Returns:
        ``(parts, only_heads)``: phrases for wrong shapes, missing and unexpected keys (empty
        when ``sd`` fits), and whether the only problem is the classifier heads (another shape,
        or absent from ``sd``).
    """
    wrong = [k for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing = sorted(k for k in set(own) - set(sd) if k not in ignore_missing)
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong]
    shown = _examples([shapes, missing, unexpected])
    kinds = [
        (wrong, "shape mismatch in {n} tensors", shown[0]),
        (missing, "{n} missing keys", shown[1]),
        (unexpected, "{n} unexpected keys", shown[2]),
    ]
    parts = [
        text.format(n=len(keys)) + (f" (e.g. {'; '.join(ex)})" if ex else "")
        for keys, text, ex in kinds
        if keys
    ]
    only_heads = all(k in _HEAD_KEYS for k in [*wrong, *missing]) and not unexpected
    return parts, bool(parts) and only_heads


def _refuse_misfit(
    source: str,
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    ignore: tuple,
    meta: dict[str, Any],
    flag: str,
    original: dict[str, torch.Tensor] | None = None,
) -> None:
    """Raise one sentence on why ``sd`` does not fit ``model`` (nothing when it fits): counts and
    examples (:func:`mismatch`), the architecture the file holds (recorded ``model_name``, else
    :func:`guess_architecture` of ``original``, the file's keys before any adaptation) and the
    fix, naming ``flag`` (``--model``, ``--teacher-model``)."""
    parts, only_heads = mismatch(model.state_dict(), sd, ignore)
    if not parts:
        return
    # the name the model was built from (DeiT registry / timm architecture), else its class
    cfg = getattr(model, "default_cfg", None) or getattr(model, "pretrained_cfg", None) or {}
    target = str(cfg.get("architecture") or type(model).__name__)
    recorded = meta.get("model_name")
    name, family = (recorded, None) if recorded else guess_architecture(original or sd)
    how = " (recorded in the file)," if recorded else ", judging by its keys,"
    verb = "holds" if recorded else "looks like"
    who = "Teacher checkpoint " if "teacher" in flag else ""
    if only_heads:
        fix = (
            "only the classifier heads differ (another class count, or none in the file): pass "
            "finetune=True (--finetune) to start them fresh"
        )
    elif name and name != target:
        fix = f"it {verb} a {name}{how} not the {target} asked for: pass {flag} {name}"
    elif name:
        fix = (
            f"it {verb} a {name} built with other arguments (input channels, class count or "
            "image size): build the model as the file was trained"
        )
    elif family:
        fix = f"it looks like {family}{how} not a {target}: pass the {flag} it was trained as"
    else:
        fix = f"pass the {flag} the file was trained as (not {target})"
    raise CheckpointError(f"{who}{source!r} does not fit this model: {', '.join(parts)}; {fix}.")


def load_state_dict_into(
    model: VisionTransformer,
    sd: dict[str, torch.Tensor],
    finetune: bool = False,
    meta: dict[str, Any] | None = None,
    source: str = "state dict",
    flag: str = "--model",
) -> LoadReport:
    """Adapt a DeiT/timm-named state dict to ``model`` and load it (see :func:`~deit.checkpoints.load_checkpoint`).

    Args:
        meta: :attr:`Weights.meta` (recorded ``model_name``, ``image_size``, ``class_names``,
            ``layer_norm_eps``).
        source: the file, for messages.
        flag: the option that names the architecture, for messages (``--model``,
            ``--teacher-model``).

    Raises:
        CheckpointError: an ambiguous position grid, or tensors that do not fit; one sentence
            naming ``source``, the counts, the architecture the file holds and the fix.
    """
    meta = meta or {}
    report = LoadReport()
    adapted = sd
    if "pos_embed" in sd and "cls_token" in sd:  # else not a ViT: _refuse_misfit says what it holds
        adapted = _adapt(sd, model, finetune, report, meta, source)
    _refuse_misfit(source, model, adapted, _HEAD_KEYS if finetune else (), meta, flag, sd)
    model.load_state_dict(adapted, strict=not finetune)
    eps = meta.get("layer_norm_eps")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    if eps is not None and any(m.eps != eps for m in norms):  # a note only when it changes
        for m in norms:
            m.eps = eps
        report.add(f"LayerNorm eps set to {eps} as in the Hugging Face config.")
    if meta.get("class_names"):
        model.class_names = list(meta["class_names"])
    return report


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    """State-dict keys of a CNN's classifier: timm's ``pretrained_cfg['classifier']`` (e.g.
    ``fc`` or LeViT's two heads), else the last ``Linear`` (torchvision's ``fc``/``classifier.N``)."""
    heads = getattr(model, "pretrained_cfg", {}).get("classifier")
    if not heads:
        heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    heads = [heads] if isinstance(heads, str) else list(heads)
    return tuple(f"{n}.{p}" for n in heads for p in ("weight", "bias"))


def fit_weights(
    model: nn.Module, weights: Weights, finetune: bool = False, flag: str = "--model"
) -> list[str]:
    """Load ``weights`` into ``model``; the one fitting step behind every load in deit.

    A DeiT/ViT goes through :func:`load_state_dict_into` (prefix tokens and position grid
    adapted, paper section 6 for the resolution change; heads of another class count dropped
    with ``finetune``). Any other model (a CNN teacher or baseline) loads strictly; with
    ``finetune`` its classifier layers alone are left fresh when their class count differs.

    Args:
        flag: the option naming the architecture, for the message of a misfit (``--model``,
            ``--teacher-model``).

    Returns:
        Sentences describing every adaptation made.

    Raises:
        CheckpointError: tensors that do not fit; one sentence with the file, the counts of
            mismatched/missing/unexpected keys and three examples, the architecture the file
            holds (recorded, or judged by its keys) and ``flag`` with the name to pass.
    """
    if isinstance(model, VisionTransformer):
        report = load_state_dict_into(
            model, weights.state_dict, finetune, weights.meta, weights.source, flag
        )
        return report.notes
    sd, own = weights.state_dict, model.state_dict()
    heads = _classifier_names(model) if finetune else ()
    kept = {
        k: v for k, v in sd.items() if not (k in heads and k in own and v.shape != own[k].shape)
    }
    _refuse_misfit(weights.source, model, kept, heads, weights.meta, flag, sd)
    model.load_state_dict(kept, strict=not finetune)
    return []
