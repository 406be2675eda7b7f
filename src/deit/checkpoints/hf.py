"""Hugging Face transformers DeiT/ViT state dicts renamed to DeiT keys: :func:`convert_hf_deit`.

Only the key mapping lives here; reading a ``save_pretrained`` folder (its ``config.json`` and
weights file) is :func:`deit.checkpoints.read_weights`'s.
"""

from __future__ import annotations

import torch

from .errors import CheckpointError

__all__ = ["convert_hf_deit"]


def _hf_prefix(hf: dict[str, torch.Tensor]) -> str:
    """The key prefix of a transformers DeiT/ViT state dict: ``deit.``, ``vit.`` or none (a
    bare ``DeiTModel``/``ViTModel``)."""
    for prefix in ("deit.", "vit.", ""):
        if f"{prefix}embeddings.cls_token" in hf:
            return prefix
    raise CheckpointError(
        "Not a Hugging Face DeiT/ViT checkpoint (no 'embeddings.cls_token' under 'deit.', "
        "'vit.' or at the top); save the model with DeiTForImageClassificationWithTeacher, "
        "ViTForImageClassification or their base models' save_pretrained()."
    )


def convert_hf_deit(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers DeiT or ViT state dict to DeiT names.

    Accepted: ``DeiTForImageClassification[WithTeacher]`` (keys under ``deit.``),
    ``ViTForImageClassification`` (under ``vit.``; the form of the non-distilled DeiT models on
    the Hugging Face hub) and the bare ``DeiTModel``/``ViTModel`` (no prefix, no classifier; its
    ``pooler`` is left out). Separate query/key/value projections are fused into ``attn.qkv``
    (rows q, k, v); ``cls_classifier``/``distillation_classifier`` become ``head``/``head_dist``.
    A plain ``classifier`` becomes ``head``, and ``head_dist`` too when the model has a
    distillation token (transformers' ``DeiTForImageClassification`` reads the class token
    only: use the class head alone to reproduce its output).

    Raises:
        CheckpointError: when the keys are not those of a transformers DeiT/ViT model, or one
            DeiT needs is absent (e.g. a ViT built with ``qkv_bias=False``).
    """
    try:
        return _convert_hf(hf, _hf_prefix(hf))
    except KeyError as e:
        raise CheckpointError(
            f"The Hugging Face checkpoint has no {e.args[0]!r}, which a DeiT needs (a ViT "
            "built without query/key/value biases or another layout); convert a standard "
            "DeiT/ViT checkpoint."
        ) from None


def _convert_hf(hf: dict[str, torch.Tensor], p: str) -> dict[str, torch.Tensor]:
    """:func:`convert_hf_deit` for keys under prefix ``p``."""
    out: dict[str, torch.Tensor] = {"cls_token": hf[f"{p}embeddings.cls_token"]}
    if f"{p}embeddings.distillation_token" in hf:
        out["dist_token"] = hf[f"{p}embeddings.distillation_token"]
    out["pos_embed"] = hf[f"{p}embeddings.position_embeddings"]
    for t in ("weight", "bias"):
        out[f"patch_embed.proj.{t}"] = hf[f"{p}embeddings.patch_embeddings.projection.{t}"]
        out[f"norm.{t}"] = hf[f"{p}layernorm.{t}"]
    i = 0
    while f"{p}encoder.layer.{i}.layernorm_before.weight" in hf:
        src, dst = f"{p}encoder.layer.{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            att = src + "attention.attention."
            out[dst + f"attn.qkv.{t}"] = torch.cat(
                [hf[att + f"query.{t}"], hf[att + f"key.{t}"], hf[att + f"value.{t}"]]
            )
            out[dst + f"attn.proj.{t}"] = hf[src + f"attention.output.dense.{t}"]
            out[dst + f"norm1.{t}"] = hf[src + f"layernorm_before.{t}"]
            out[dst + f"norm2.{t}"] = hf[src + f"layernorm_after.{t}"]
            out[dst + f"mlp.fc1.{t}"] = hf[src + f"intermediate.dense.{t}"]
            out[dst + f"mlp.fc2.{t}"] = hf[src + f"output.dense.{t}"]
        i += 1
    for t in ("weight", "bias"):
        if f"cls_classifier.{t}" in hf:
            out[f"head.{t}"] = hf[f"cls_classifier.{t}"]
            out[f"head_dist.{t}"] = hf[f"distillation_classifier.{t}"]
        elif f"classifier.{t}" in hf:
            out[f"head.{t}"] = hf[f"classifier.{t}"]
            if "dist_token" in out:
                out[f"head_dist.{t}"] = hf[f"classifier.{t}"].clone()
    return out
