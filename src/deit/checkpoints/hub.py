"""Hugging Face Hub names (``hf-hub:ORG/NAME``, timm's spelling) through ``huggingface_hub``'s
cache: :func:`hub_folder` gives the local folder of a repository's ``config.json`` and weights
file, :func:`hub_architecture` the registered DeiT configuration its ``config.json`` describes.

Two layouts are read: a timm repository (``config.json`` names its ``architecture``, weights in
timm's names, e.g. ``timm/deit3_small_patch16_224.fb_in1k``) and a transformers
``save_pretrained`` repository (``model_type`` ``deit`` or ``vit``, e.g.
``facebook/deit-base-distilled-patch16-224``, or a folder ``deit export --format hf`` wrote).

A file already in the cache is used without asking the Hub (so names work offline, and quickly);
one that is not is downloaded into it, unless ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models.registry import get_model_spec, is_deit_model, list_models
from .errors import CheckpointError

__all__ = [
    "HUB_PREFIX",
    "hub_architecture",
    "hub_config",
    "hub_folder",
    "hub_weights_file",
    "is_hub_id",
]

#: The prefix of a Hub name (timm's).
HUB_PREFIX = "hf-hub:"
#: Weights files of a Hub repository, in the order they are looked for.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hub_id(name: Any) -> bool:
    """Whether ``name`` (text or path) is a Hub name, ``hf-hub:ORG/NAME[@REVISION]``."""
    return str(name).startswith(HUB_PREFIX)


def _repo(hub_id: str) -> tuple[str, str | None]:
    """``(ORG/NAME, revision or None)`` of ``hf-hub:ORG/NAME[@REVISION]``.

    Raises:
        CheckpointError: not of that form.
    """
    repo, _, revision = str(hub_id)[len(HUB_PREFIX) :].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise CheckpointError(
            f"{hub_id!r} is not a Hub name; write it as hf-hub:ORG/NAME (e.g. "
            "hf-hub:facebook/deit-base-distilled-patch16-224)."
        )
    return repo, revision or None


def _download(hub_id: str, filename: str, required: bool = True) -> Path | None:
    """The cached path of ``filename`` of the repository, from the cache when there, else
    downloaded; ``None`` when the repository has no such file and it is not ``required``.

    Raises:
        CheckpointError: not cached and the Hub cannot be reached (or ``HF_HUB_OFFLINE``), no
            such repository, or a ``required`` file it does not hold; one sentence with the fix.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    repo, revision = _repo(hub_id)
    try:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=True))
        except LocalEntryNotFoundError:
            return Path(hf_hub_download(repo, filename, revision=revision))  # not cached
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is one
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "no connection"
        raise CheckpointError(
            f"{filename} of {hub_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and the Hub cannot be reached ({why}); run `hf download {repo}` where a network is "
            "available and use that cache (HF_HUB_CACHE), or pass a local folder or file."
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"The Hub has no repository {repo!r} (or it is private: log in with `hf auth "
            "login`); check the name."
        ) from None
    except EntryNotFoundError:
        if required:
            raise CheckpointError(
                f"{hub_id!r} has no {filename}; pass a repository of a DeiT/ViT model."
            ) from None
        return None
    except Exception as e:  # a malformed name, an HTTP error: one sentence, as for the rest
        raise CheckpointError(
            f"Could not fetch {filename} of {hub_id!r} ({type(e).__name__}: {str(e)[:120]}); "
            "check the name and the network, or pass a local folder or file."
        ) from None


def hub_folder(hub_id: str) -> Path:
    """The local folder (a snapshot of ``huggingface_hub``'s cache) holding the repository's
    ``config.json`` and its weights file (``model.safetensors``, else ``pytorch_model.bin``).

    Raises:
        CheckpointError: see :func:`_download`; or no weights file in the repository.
    """
    folder = _download(hub_id, "config.json").parent
    if any((folder / name).is_file() for name in WEIGHTS_FILES):
        return folder
    for name in WEIGHTS_FILES:  # none cached: ask the Hub, safetensors first
        if _download(hub_id, name, required=False) is not None:
            return folder
    raise CheckpointError(
        f"{hub_id!r} holds neither {' nor '.join(WEIGHTS_FILES)}; pass a repository with "
        "model weights."
    )


def hub_weights_file(hub_id: str) -> Path:
    """The cached weights file of the repository (``model.safetensors`` first).

    Raises:
        CheckpointError: see :func:`hub_folder`.
    """
    folder = hub_folder(hub_id)
    return next(folder / n for n in WEIGHTS_FILES if (folder / n).is_file())


def hub_config(hub_id: str) -> dict[str, Any]:
    """The repository's ``config.json``.

    Raises:
        CheckpointError: not cached and the Hub cannot be reached, no such repository, or no
            ``config.json`` in it; one sentence with the fix.
    """
    return json.loads(_download(hub_id, "config.json").read_text())


def hub_architecture(hub_id: str, config: dict[str, Any]) -> tuple[str, int, tuple[int, int]]:
    """``(registered name, num_classes, (H, W) pixels)`` of the model ``config`` describes: a
    timm repository's ``architecture``; for transformers' DeiT/ViT the registered configuration
    of the same width, depth, heads and patch (distilled for ``model_type`` ``deit``, whose
    models always have a distillation token), at the recorded image size when one matches.

    Raises:
        CheckpointError: a model no registered DeiT configuration builds.
    """
    if "architecture" in config:  # timm
        name = str(config["architecture"])
        if not is_deit_model(name):
            raise CheckpointError(
                f"{hub_id!r} holds a timm {name}, not a DeiT; load it with timm.create_model."
            )
        side = get_model_spec(name).img_size
        size = config.get("pretrained_cfg", {}).get("input_size", [side, side])[-2:]
        return name, int(config.get("num_classes", 1000)), recorded_image_size(size)
    if config.get("model_type") not in ("deit", "vit"):
        raise CheckpointError(
            f"{hub_id!r} holds a {config.get('model_type')!r} model; only DeiT and ViT models "
            "(transformers model_type 'deit' or 'vit', or timm deit*) convert."
        )
    dims = [config.get(k, d) for k, d in _HF_DIMS]
    want = (*dims, config["model_type"] == "deit", False)
    names = [n for n in list_models() if _shape(n) == want]
    if not names:
        raise CheckpointError(
            f"{hub_id!r} holds a {config['model_type']} model (width {dims[0]}, depth {dims[1]}, "
            f"{dims[2]} heads, patch {dims[3]}) that no registered DeiT configuration builds; "
            "see deit.list_models()."
        )
    size = recorded_image_size(config.get("image_size", 224))
    # the configuration made for the repository's own image size first
    names.sort(key=lambda n: recorded_image_size(get_model_spec(n).img_size) != size)
    return names[0], len(config.get("id2label") or {}) or 1000, size


# transformers' config keys (and defaults) of a registered configuration's dimensions
_HF_DIMS = (
    ("hidden_size", 768),
    ("num_hidden_layers", 12),
    ("num_attention_heads", 12),
    ("patch_size", 16),
)


def _shape(name: str) -> tuple[Any, ...]:
    """Width, depth, heads, patch, distilled and LayerScale of a registered configuration."""
    spec = get_model_spec(name)
    dims = (spec.kwargs[k] for k in ("embed_dim", "depth", "num_heads", "patch_size"))
    return (*dims, spec.distilled, "init_values" in spec.kwargs)


def recorded_image_size(value: Any) -> tuple[int, int] | None:
    """A recorded image size (an int side, ``[H, W]``, or its JSON text) as ``(H, W)`` pixels."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, (int, float)):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)
