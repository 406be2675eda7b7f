"""Hugging Face transformers DeiT/ViT state dicts renamed to DeiT keys (:func:`convert_hf_deit`)
and back (:func:`to_hf_deit`).

Only the key mapping lives here; reading a ``save_pretrained`` folder (its ``config.json`` and
weights file) is :func:`deit.checkpoints.read_weights`'s.
"""

from __future__ import annotations

import torch

from .errors import CheckpointError

__all__ = ["convert_hf_deit", "to_hf_deit"]

#: A block's DeiT name and transformers' name of the same weight, in the order both
#: conversions write them (query/key/value, fused in DeiT's ``attn.qkv``, are handled apart).
_BLOCK_KEYS = (
    ("attn.proj", "attention.output.dense"),
    ("norm1", "layernorm_before"),
    ("norm2", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
)


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
    p = _hf_prefix(hf)
    try:
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
                for ours, theirs in _BLOCK_KEYS:
                    out[dst + f"{ours}.{t}"] = hf[src + f"{theirs}.{t}"]
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
    except KeyError as e:
        raise CheckpointError(
            f"The Hugging Face checkpoint has no {e.args[0]!r}, which a DeiT needs (a ViT "
            "built without query/key/value biases or another layout); convert a standard "
            "DeiT/ViT checkpoint."
        ) from None


def to_hf_deit(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a DeiT state dict to transformers' names, the inverse of :func:`convert_hf_deit`:
    a distilled model (``dist_token``) to ``DeiTForImageClassificationWithTeacher`` (keys under
    ``deit.``, heads ``cls_classifier``/``distillation_classifier``), a plain one to
    ``ViTForImageClassification`` (under ``vit.``, head ``classifier``). The fused ``attn.qkv``
    is split into query, key and value (rows q, k, v). ``pos_embed`` must have a row per token,
    class and distillation tokens included (as transformers adds one to every token).

    Raises:
        CheckpointError: a key a DeiT has is missing (not a DeiT/ViT state dict).
    """
    p = "deit." if "dist_token" in sd else "vit."
    try:
        out = {f"{p}embeddings.cls_token": sd["cls_token"]}
        if "dist_token" in sd:
            out[f"{p}embeddings.distillation_token"] = sd["dist_token"]
        out[f"{p}embeddings.position_embeddings"] = sd["pos_embed"]
        for t in ("weight", "bias"):
            out[f"{p}embeddings.patch_embeddings.projection.{t}"] = sd[f"patch_embed.proj.{t}"]
        i = 0
        while f"blocks.{i}.norm1.weight" in sd:
            src, dst = f"blocks.{i}.", f"{p}encoder.layer.{i}."
            for t in ("weight", "bias"):
                q, k, v = sd[src + f"attn.qkv.{t}"].chunk(3)
                att = dst + "attention.attention."
                out.update({att + f"query.{t}": q, att + f"key.{t}": k, att + f"value.{t}": v})
                for ours, theirs in _BLOCK_KEYS:
                    out[dst + f"{theirs}.{t}"] = sd[src + f"{ours}.{t}"]
            i += 1
        for t in ("weight", "bias"):
            out[f"{p}layernorm.{t}"] = sd[f"norm.{t}"]
            if "dist_token" in sd:
                out[f"cls_classifier.{t}"] = sd[f"head.{t}"]
                out[f"distillation_classifier.{t}"] = sd[f"head_dist.{t}"]
            else:
                out[f"classifier.{t}"] = sd[f"head.{t}"]
    except KeyError as e:
        raise CheckpointError(
            f"The state dict has no {e.args[0]!r}, which a DeiT/ViT has; convert the state dict "
            "of a DeiT model (with a classification head)."
        ) from None
    return {k: v.contiguous() for k, v in out.items()}
