"""Named DeiT configurations, :func:`build_model` and :func:`list_models` (timm-style API).

The eight official configurations of the paper (Table 1) keep their official names; the
small-image configurations follow the same pattern (``deit_{size}[_distilled]_patch{p}_{img}``)
for 28–32 px data sets such as MNIST and CIFAR. The DeiT III models ("DeiT III: Revenge of the
ViT", Touvron et al. 2022) keep timm's names (``deit3_{size}_patch{p}_{img}``): plain ViT blocks
with LayerScale (``init_values`` 1e-6) and position embeddings for the patch tokens only
(``no_embed_class``), no distillation token; ``deit3_{nano,pico}_patch{4,7}_28`` are small-image
ones for digits.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

from torch import nn

from .distilled import DistilledVisionTransformer
from .vision_transformer import VisionTransformer

__all__ = [
    "ModelSpec",
    "build_model",
    "list_models",
    "get_model_spec",
    "is_deit_model",
    "build_classifier",
    "check_model_name",
    "distilled_twin",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_URL = "https://dl.fbaipublicfiles.com/deit/"


@dataclass(frozen=True)
class ModelSpec:
    """One registered configuration.

    Attributes:
        name: registered name.
        distilled: whether the model has a distillation token and head.
        kwargs: constructor arguments of :class:`VisionTransformer` (embed_dim, depth, ...).
        url: official weight file, or ``None`` when no pretrained weights exist.
        mean, std: normalisation the weights were trained with.
        crop_pct: evaluation centre-crop ratio.
    """

    name: str
    distilled: bool
    kwargs: dict[str, Any]
    url: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875

    @property
    def img_size(self) -> int:
        """Default input side in pixels."""
        return int(self.kwargs["img_size"])


# (embed_dim, num_heads) per size; all sizes: depth 12, head width 64, MLP ratio 4.
_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
# Official weight files (name -> file name with the hash prefix that torch.hub checks).
_OFFICIAL = {
    "deit_tiny_patch16_224": "deit_tiny_patch16_224-a1311bcf.pth",
    "deit_small_patch16_224": "deit_small_patch16_224-cd65a155.pth",
    "deit_base_patch16_224": "deit_base_patch16_224-b5f2ef4d.pth",
    "deit_base_patch16_384": "deit_base_patch16_384-8de9b5d1.pth",
    "deit_tiny_distilled_patch16_224": "deit_tiny_distilled_patch16_224-b40b3cf7.pth",
    "deit_small_distilled_patch16_224": "deit_small_distilled_patch16_224-649709d9.pth",
    "deit_base_distilled_patch16_224": "deit_base_distilled_patch16_224-df68dfff.pth",
    "deit_base_distilled_patch16_384": "deit_base_distilled_patch16_384-d0272ac0.pth",
}
# DeiT III (timm's deit3_* and the official deit_3_*_1k.pth files): name -> (embed_dim, depth,
# heads, patch, img_size, official file). Official files name LayerScale gamma_1/gamma_2 (read as
# ls1.gamma/ls2.gamma by deit.checkpoints).
_DEIT3 = {
    "deit3_small_patch16_224": (384, 12, 6, 16, 224, "deit_3_small_224_1k.pth"),
    "deit3_small_patch16_384": (384, 12, 6, 16, 384, "deit_3_small_384_1k.pth"),
    "deit3_medium_patch16_224": (512, 12, 8, 16, 224, "deit_3_medium_224_1k.pth"),
    "deit3_base_patch16_224": (768, 12, 12, 16, 224, "deit_3_base_224_1k.pth"),
    "deit3_base_patch16_384": (768, 12, 12, 16, 384, "deit_3_base_384_1k.pth"),
    "deit3_large_patch16_224": (1024, 24, 16, 16, 224, "deit_3_large_224_1k.pth"),
    "deit3_large_patch16_384": (1024, 24, 16, 16, 384, "deit_3_large_384_1k.pth"),
    "deit3_huge_patch14_224": (1280, 32, 16, 14, 224, "deit_3_huge_224_1k.pth"),
}
_DEIT3_KW = dict(init_values=1e-6, no_embed_class=True)
# Small-image configurations: (size, patch, img_size, depth override or None).
# "pico" (D 128, 2 heads, 6 blocks) and "nano" (D 64, 2 heads, 6 blocks) keep CPU-only
# training of 28 px digits within minutes.
_SMALL_SIZES = {**_SIZES, "pico": (128, 2), "nano": (64, 2)}
_SMALL = [
    ("nano", 4, 28, 6),
    ("nano", 7, 28, 6),
    ("pico", 4, 28, 6),
    ("pico", 7, 28, 6),
    ("tiny", 4, 28, None),
    ("tiny", 4, 32, None),
    ("small", 4, 28, None),
    ("small", 4, 32, None),
]


def _register() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for name, fname in _OFFICIAL.items():
        size = name.split("_")[1]
        dim, heads = _SIZES[size]
        img = int(name.rsplit("_", 1)[1])
        kwargs = dict(img_size=img, patch_size=16, embed_dim=dim, depth=12, num_heads=heads)
        specs[name] = ModelSpec(
            name,
            "distilled" in name,
            kwargs,
            url=_URL + fname,
            crop_pct=1.0 if img == 384 else 0.875,
        )
    for size, patch, img, depth in _SMALL:
        dim, heads = _SMALL_SIZES[size]
        kwargs = dict(
            img_size=img, patch_size=patch, embed_dim=dim, depth=depth or 12, num_heads=heads
        )
        for distilled in (False, True):
            name = f"deit_{size}{'_distilled' if distilled else ''}_patch{patch}_{img}"
            specs[name] = ModelSpec(name, distilled, kwargs, crop_pct=1.0)
        if size in ("nano", "pico"):
            name = f"deit3_{size}_patch{patch}_{img}"
            specs[name] = ModelSpec(name, False, {**kwargs, **_DEIT3_KW}, crop_pct=1.0)
    for name, (dim, depth, heads, patch, img, fname) in _DEIT3.items():
        kwargs = dict(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads)
        crop = 1.0 if img == 384 else 0.875
        specs[name] = ModelSpec(name, False, {**kwargs, **_DEIT3_KW}, _URL + fname, crop_pct=crop)
    return dict(sorted(specs.items()))


_REGISTRY = _register()


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"*distilled*"``).

    Args:
        pattern: fnmatch pattern.
        pretrained: only names with official weights.
    """
    return [
        n
        for n, s in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (s.url is not None or not pretrained)
    ]


def is_deit_model(name: str) -> bool:
    """Whether ``name`` is one of this package's registered configurations."""
    return name in _REGISTRY


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered under ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the closest registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=4, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model name {name!r}.{hint} See deit.list_models() for all names."
        ) from None


def distilled_twin(name: str) -> str | None:
    """The distilled configuration of a plain DeiT name (``deit_nano_patch7_28`` ->
    ``deit_nano_distilled_patch7_28``): the same model with a distillation token and head;
    ``None`` where none is registered."""
    size, _, rest = name.removeprefix("deit_").partition("_")
    twin = f"deit_{size}_distilled_{rest}"
    return twin if name.startswith("deit_") and twin in _REGISTRY else None


def build_model(
    name: str,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> VisionTransformer:
    """Build a registered DeiT model with fresh weights (no file is read).

    :func:`deit.checkpoints.create_model` calls it, then loads official or local weights; the
    registry stays below the checkpoint layer and never imports it.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classes of the head(s).
        img_size: input size; defaults to the configuration's.
        in_chans: input channels.
        drop_rate: dropout rate.
        drop_path_rate: stochastic-depth rate (the paper uses 0.1).
        **kwargs: any other :class:`VisionTransformer` argument (e.g. ``depth``).

    Returns:
        :class:`VisionTransformer` or :class:`DistilledVisionTransformer`, with ``default_cfg``
        recording the architecture name, normalisation, crop ratio and input size.

    Raises:
        ValueError: unknown name or impossible argument.
    """
    spec = get_model_spec(name)
    args = {**spec.kwargs, **kwargs}
    if img_size is not None:
        args["img_size"] = img_size
    cls = DistilledVisionTransformer if spec.distilled else VisionTransformer
    model = cls(
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        **args,
    )
    model.default_cfg = {
        "architecture": name,
        "mean": spec.mean,
        "std": spec.std,
        "crop_pct": spec.crop_pct,
        "input_size": (in_chans, *model.img_size),
        "num_classes": num_classes,
    }
    return model


def check_model_name(name: str) -> None:
    """Refuse a name that is neither a DeiT configuration, a timm model nor
    ``torchvision:<name>`` (checked by :func:`build_classifier`).

    Raises:
        ValueError: one sentence with the closest names and where to list them.
    """
    if is_deit_model(name) or name.startswith(("torchvision:", "tv:")):
        return
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, [*_REGISTRY, *timm.list_models()], n=4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model name {name!r}: neither a DeiT configuration nor a timm model "
            f"(prefix torchvision models with 'torchvision:'; deit list-models PATTERN lists "
            f"them).{hint}"
        )


def build_classifier(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    drop_rate: float = 0.0,
) -> nn.Module:
    """Build any classifier by name: a DeiT configuration, a timm model or a torchvision model.

    DeiT names go to :func:`build_model`; ``torchvision:<name>`` (or ``tv:<name>``) to
    ``torchvision.models.get_model``; anything else to ``timm.create_model``. Used for teachers and
    for ``deit train`` of a CNN. No weights are downloaded.

    Raises:
        ValueError: when no library knows ``name``.
    """
    if is_deit_model(name):
        return build_model(
            name,
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
    if name.startswith(("torchvision:", "tv:")):
        import torchvision

        tv_name = name.split(":", 1)[1]
        if tv_name not in torchvision.models.list_models():
            raise ValueError(
                f"Unknown torchvision model {tv_name!r}; see torchvision.models.list_models()."
            )
        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)
    import timm

    check_model_name(name)
    kw: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if drop_path_rate:
        kw["drop_path_rate"] = drop_path_rate
    return timm.create_model(name, pretrained=False, **kw)
