"""What architecture a state dict holds, judged by its key names and shapes
(:func:`guess_architecture`), for the fix named in a misfit message."""

from __future__ import annotations

import torch

from ..models.registry import get_model_spec, list_models

__all__ = ["guess_architecture"]

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
