"""FLOPs and GMACs of a model, and the input shape and plain module behind a wrapped one."""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn

from ..inference import InferenceModel

__all__ = ["count_flops", "count_gmacs"]


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU flash attention: Q K^T and P V (torch's formula for the CUDA kernels)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kw):
    """Its backward: recomputed scores, dV, dP, dQ, dK (torch's formula for the CUDA kernels)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _flop_counter(display: bool = False):
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    aten = torch.ops.aten
    # CPU's fused attention kernels have no formula in torch's table; without these the two
    # attention matmuls (~15% of DeiT-Ti's FLOPs) would silently be missing on real CPU tensors.
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    # FlopCounterMode wraps these so they receive shapes, not tensors.
    return FlopCounterMode(display=display, custom_mapping=custom)


def count_flops(model: nn.Module, images: torch.Tensor, backward: bool = False) -> int:
    """FLOPs of ``model(images)`` (and its backward with ``backward=True``), counted by
    :class:`torch.utils.flop_counter.FlopCounterMode`.

    Counts matmuls, linear layers, convolutions and fused attention (CPU flash attention
    included); one multiply-accumulate is 2 FLOPs. Works on the ``meta`` device (nothing is
    computed). For a distilled model in eval mode both heads are counted. DeiT models are
    counted nominally, every token through every block, as in the paper and timm.
    """
    counter = _flop_counter()
    ctx = contextlib.nullcontext() if backward else torch.no_grad()
    with ctx, counter:
        out = model(images)
        if backward:
            out = out if isinstance(out, torch.Tensor) else sum(o.sum() for o in out)
            out.sum().backward()
    return int(counter.get_total_flops())


def count_gmacs(
    model: str | nn.Module,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    num_classes: int = 1000,
) -> float:
    """GMACs (10^9 multiply-accumulates = FLOPs / 2) of one image through ``model``.

    ``model`` is a registered name (built on the ``meta`` device: no memory, no compute) or a
    module (deep-copied to ``meta``). DeiT-Ti / S / B at 224 count 1.25 / 4.61 / 17.56; the
    paper's Table 1 gives 1.3 / 4.6 / 17.6 GFLOPs (its "FLOPs" are multiply-accumulates).
    """
    if isinstance(model, str):
        from ..models import build_classifier

        with torch.device("meta"):
            net = build_classifier(
                model, num_classes, in_chans=in_chans or 3, img_size=_side(img_size)
            )
    else:
        net = _unwrap(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = copy.deepcopy(net).to("meta")
    net.eval()
    h, w = _input_hw(net, img_size)
    c = in_chans or _input_channels(net)
    x = torch.empty(1, c, h, w, device="meta")
    return count_flops(net, x) / 2e9


def _side(img_size: int | tuple[int, int] | None) -> int | None:
    if img_size is None or isinstance(img_size, int):
        return img_size
    return int(img_size[0]) if img_size[0] == img_size[1] else None


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside an :class:`~deit.inference.InferenceModel` or ``torch.compile``."""
    model = getattr(model, "_orig_mod", model)
    return model.model if isinstance(model, InferenceModel) else model


def _input_hw(model: nn.Module, img_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    if img_size is not None:
        return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    model = _unwrap(model)
    if hasattr(model, "img_size"):
        size = model.img_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if "input_size" in cfg:
        return int(cfg["input_size"][1]), int(cfg["input_size"][2])
    return 224, 224


def _input_channels(model: nn.Module) -> int:
    model = _unwrap(model)
    pe = getattr(model, "patch_embed", None)
    if pe is not None and hasattr(pe, "in_chans"):
        return int(pe.in_chans)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3
