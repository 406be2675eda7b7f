"""Reading every supported weights file (the kinds: :func:`read_weights`) into one
:class:`Weights` record. Nothing here knows a model: fitting the tensors to one is
:mod:`deit.checkpoints.fit`'s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .errors import CheckpointError
from .fetch import local_file
from .hf import convert_hf_deit
from .hub import hub_architecture, hub_folder, hub_weights_file, is_hub_id, recorded_image_size
from .run_checkpoint import RunCheckpoint, is_run_checkpoint
from .safe_load import RUN_CHECKPOINTS, checkpoint_path_error, refuse_non_finite, safe_torch_load

__all__ = ["Weights", "read_weights", "read_state_dict", "strip_ddp_prefix"]


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{str(path)!r} holds no state dict (expected a dict of tensors, possibly under "
            "'model'); pass a weights file saved from a DeiT/ViT model."
        )
    return _layer_scale_names(strip_ddp_prefix(obj))


def _layer_scale_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official DeiT III files' LayerScale ``blocks.{i}.gamma_1``/``gamma_2`` renamed to
    timm's ``blocks.{i}.ls1.gamma``/``ls2.gamma`` (timm's ``checkpoint_filter_fn`` does the same)."""
    if not any(k.endswith(".gamma_1") for k in sd):
        return sd
    return {re.sub(r"\.gamma_([12])$", r".ls\1.gamma", k): v for k, v in sd.items()}


def strip_ddp_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``sd`` without the ``module.`` prefix of DistributedDataParallel (PyTorch's
    ``consume_prefix_in_state_dict_if_present``)."""
    sd = dict(sd)
    consume_prefix_in_state_dict_if_present(sd, "module.")
    return sd


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"Could not read {str(path)!r} as a safetensors file ({e}); check the file."
        ) from None


@dataclass
class Weights:
    """A weights file read into memory, whatever its format (see :func:`read_weights`).

    Attributes:
        state_dict: tensors in DeiT/timm key names, without a ``module.`` prefix.
        source: the path, for messages.
        run: the :class:`RunCheckpoint` when the file was written by ``deit train`` (it records
            the architecture, classes and normalisation), else ``None``.
        meta: what the file records besides tensors: ``model_name`` (a ``deit train``
            checkpoint), ``class_names``, ``image_size`` as ``(H, W)`` pixels (``deit train``
            and :func:`save_weights` files, Hugging Face ``config.json``; ``None`` when
            unrecorded) and ``layer_norm_eps`` (Hugging Face).
        notes: sentences about choices made while reading.
    """

    state_dict: dict[str, torch.Tensor]
    source: str
    run: RunCheckpoint | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _read_hf_folder(path: Path) -> Weights:
    cfg_file = path / "config.json"
    weights = [path / "model.safetensors", path / "pytorch_model.bin"]
    found = next((w for w in weights if w.is_file()), None)
    if not cfg_file.is_file() and any((path / n).is_file() for n in RUN_CHECKPOINTS):
        raise checkpoint_path_error(path)  # a run folder: its checkpoint files, named
    if not cfg_file.is_file() or found is None:
        raise CheckpointError(
            f"Folder {str(path)!r} is not a Hugging Face checkpoint: it needs config.json and "
            "model.safetensors (or pytorch_model.bin), as written by save_pretrained()."
        )
    config = json.loads(cfg_file.read_text())
    kind = config.get("model_type")
    if kind not in ("deit", "vit"):
        raise CheckpointError(
            f"Folder {str(path)!r} holds a Hugging Face {kind!r} model; only DeiT and ViT "
            "(model_type 'deit' or 'vit') convert to DeiT weights."
        )
    raw = _read_safetensors(found) if found.suffix == ".safetensors" else None
    if raw is None:
        raw = _unwrap(safe_torch_load(found), found)
    refuse_non_finite(raw, str(found))  # the file's own key names
    meta: dict[str, Any] = {
        "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12)),
        "image_size": recorded_image_size(config.get("image_size", 224)),
    }
    id2label = config.get("id2label")
    if id2label:
        meta["class_names"] = [id2label[str(i)] for i in range(len(id2label))]
    notes = []
    if any(k.startswith("pooler.") for k in raw):
        notes.append(
            "The Hugging Face pooler (pooler.dense) has no DeiT counterpart and was left out."
        )
    return Weights(convert_hf_deit(raw), str(path), meta=meta, notes=notes)


def read_weights(path: str | Path, use_ema: bool = False) -> Weights:
    """Read any supported weights file; the one reader behind every load in deit.

    Accepted: a ``deit train`` checkpoint (:class:`RunCheckpoint`, any version), an official
    DeiT ``.pth`` (dict with ``model``), a plain or timm state dict (``.pth``/``.pt``/``.bin``,
    possibly under ``state_dict``/``model_state_dict``, possibly with DDP's ``module.``
    prefix), a ``.safetensors`` file, a Hugging Face transformers ``save_pretrained`` folder
    (converted with :func:`convert_hf_deit`), or a Hub name ``hf-hub:ORG/NAME`` of either
    (through ``huggingface_hub``'s cache, :mod:`deit.checkpoints.hub`).

    Args:
        path: the file or folder, a Hub name (``hf-hub:ORG/NAME``), or a URL (fetched once
            into torch.hub's cache, :func:`deit.checkpoints.fetch.local_file`).
        use_ema: take the EMA weights (``model_ema``) of a training checkpoint when present.

    Returns:
        :class:`Weights`.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, no state dict inside, a NaN or
            infinite value in a tensor (the first such tensor is named), or a Hub name that is
            neither cached nor reachable (the sentence says what to run).
    """
    if is_hub_id(path):
        return _read_hub(str(path))
    path = Path(local_file(path))  # a URL: torch.hub's cached copy, as the official code
    if path.is_dir():
        return _read_hf_folder(path)
    weights = _read_file(path, use_ema)
    refuse_non_finite(weights.state_dict, weights.source)
    return weights


def _read_hub(hub_id: str) -> Weights:
    """:func:`read_weights` of a Hub name: a transformers repository as a ``save_pretrained``
    folder, a timm one as its weights file with its ``config.json``'s input size and class
    names; ``meta["model_name"]`` is the registered configuration it holds
    (:func:`~deit.checkpoints.hub.hub_architecture`)."""
    folder = hub_folder(hub_id)
    config = json.loads((folder / "config.json").read_text())
    if "architecture" not in config:
        weights = _read_hf_folder(folder)
    else:
        weights = _read_file(hub_weights_file(hub_id), use_ema=False)
        refuse_non_finite(weights.state_dict, hub_id)
        size = config.get("pretrained_cfg", {}).get("input_size")
        if size:
            weights.meta["image_size"] = recorded_image_size(size[-2:])
        if config.get("label_names"):
            weights.meta["class_names"] = list(config["label_names"])
    weights.meta["model_name"] = hub_architecture(hub_id, config)[0]
    weights.source = hub_id
    return weights


def _read_file(path: Path, use_ema: bool) -> Weights:
    """:func:`read_weights` of a file (not a folder)."""
    error = checkpoint_path_error(path)
    if error is not None:
        raise error
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        sd = _read_safetensors(path)  # first: it names a bad file in one sentence
        with safe_open(str(path), framework="pt") as f:
            size = recorded_image_size((f.metadata() or {}).get("img_size"))
        return Weights(sd, str(path), meta={"image_size": size} if size else {})
    obj = safe_torch_load(path)
    if not is_run_checkpoint(obj):
        meta = {}
        if isinstance(obj, dict) and isinstance(obj.get("class_names"), list):
            meta["class_names"] = obj["class_names"]
        if isinstance(obj, dict) and recorded_image_size(obj.get("img_size")):
            meta["image_size"] = recorded_image_size(obj["img_size"])
        return Weights(_unwrap(obj, path), str(path), meta=meta)
    run = RunCheckpoint.from_dict(obj, str(path))
    sd, notes = run.model, []
    if use_ema and run.model_ema is None:
        notes.append("No EMA weights in the checkpoint: the model weights are used.")
    elif use_ema:
        sd = run.model_ema
    meta = {"model_name": run.model_name, "image_size": recorded_image_size(run.img_size)}
    if run.class_names:
        meta["class_names"] = run.class_names
    return Weights(strip_ddp_prefix(sd), str(path), run, meta, notes)


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of any file :func:`read_weights` reads; ``meta`` is
    :attr:`Weights.meta`.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, or no state dict inside.
    """
    weights = read_weights(path)
    return weights.state_dict, weights.meta
