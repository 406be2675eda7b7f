"""Reading and writing DeiT weights: official ``.pth``, timm and plain state dicts, safetensors,
Hugging Face transformers folders; position-embedding resampling for another resolution.

Every read goes through ``torch.load(weights_only=True)`` or safetensors, so an untrusted pickle
never runs code.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .distilled import DistilledVisionTransformer
from .registry import IMAGENET_MEAN, IMAGENET_STD
from .run_checkpoint import RunCheckpoint, is_run_checkpoint
from .vision_transformer import VisionTransformer

__all__ = [
    "CheckpointError",
    "LoadReport",
    "safe_torch_load",
    "atomic_save",
    "read_state_dict",
    "convert_hf_deit",
    "resample_pos_embed",
    "load_checkpoint",
    "load_pretrained",
    "save_weights",
    "load_state_dict_into",
    "load_model",
    "fit_weights",
    "read_weights",
    "refuse_non_finite",
    "Weights",
    "mismatch",
    "guess_architecture",
    "strip_ddp_prefix",
    "ModelInfo",
]

_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


class CheckpointError(ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` changed to make a checkpoint fit, one sentence per item."""

    notes: list[str] = field(default_factory=list)

    def add(self, note: str) -> None:
        self.notes.append(note)
        warnings.warn(note, stacklevel=3)


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-sentence errors.

    Raises:
        CheckpointError: missing file, truncated/corrupt file, or a pickle holding objects other
            than tensors and plain containers (it is refused, never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist; check the path.")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (PK..); older files are pickles (protocol 2+: 0x80)
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch checkpoint (neither a torch.save archive nor a "
            "pickle); pass a .pth/.pt checkpoint, a .safetensors file or a Hugging Face folder."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"Refused to load {str(path)!r}: it holds Python objects beyond tensors and plain "
            "containers, which could run code; re-save it as a state dict or safetensors file "
            "from a trusted environment."
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError... on bad bytes
        raise CheckpointError(
            f"Could not read {str(path)!r} as a PyTorch checkpoint ({type(e).__name__}: the "
            "file is truncated or corrupt); check the file or download it again."
        ) from None


def atomic_save(obj: Any, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``obj`` with ``torch.save`` (or safetensors for a ``.safetensors`` path) atomically.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed
    over ``path``, so a crash never leaves a half-written checkpoint. ``metadata`` (text
    key/values) goes into a safetensors file's header.

    Raises:
        OSError: the folder cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".safetensors":
                from safetensors.torch import save

                f.write(save({k: v.contiguous() for k, v in obj.items()}, metadata=metadata))
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


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
    return strip_ddp_prefix(obj)


def strip_ddp_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``sd`` without the ``module.`` prefix of DistributedDataParallel (PyTorch's
    ``consume_prefix_in_state_dict_if_present``)."""
    sd = dict(sd)
    consume_prefix_in_state_dict_if_present(sd, "module.")
    return sd


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
    from .registry import get_model_spec, list_models

    dim, patch = sd["cls_token"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
    depth, distilled = _count(sd, "blocks."), "dist_token" in sd
    rows = sd["pos_embed"].shape[1] - (2 if distilled else 1) if "pos_embed" in sd else -1
    specs = [get_model_spec(n) for n in list_models()]
    same = [
        s
        for s in specs
        if s.distilled == distilled
        and (s.kwargs["embed_dim"], s.kwargs["depth"], s.kwargs["patch_size"])
        == (dim, depth, patch)
    ]
    same.sort(key=lambda s: (s.img_size // patch) ** 2 != rows)  # the recorded grid first
    kind = "distilled DeiT" if distilled else "ViT/DeiT"
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


def _model_name(model: nn.Module) -> str:
    """The name a model was built from (DeiT registry / timm ``architecture``), else its class."""
    cfg = getattr(model, "default_cfg", None) or getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _misfit(
    source: str,
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    ignore: tuple,
    meta: dict[str, Any],
    flag: str,
    original: dict[str, torch.Tensor] | None = None,
) -> CheckpointError | None:
    """One sentence on why ``sd`` does not fit ``model`` (``None`` when it fits): counts and
    examples (:func:`mismatch`), the architecture the file holds (recorded ``model_name``, else
    :func:`guess_architecture` of ``original``, the file's keys before any adaptation) and the
    fix, naming ``flag`` (``--model``, ``--teacher-model``)."""
    parts, only_heads = mismatch(model.state_dict(), sd, ignore)
    if not parts:
        return None
    target, recorded = _model_name(model), meta.get("model_name")
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
    return CheckpointError(f"{who}{source!r} does not fit this model: {', '.join(parts)}; {fix}.")


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


def _image_size(value: Any) -> tuple[int, int] | None:
    """A recorded image size (an int side, ``[H, W]``, or its JSON text) as ``(H, W)`` pixels."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, (int, float)):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


_HF_MODEL_TYPES = ("deit", "vit")


def _read_hf_folder(path: Path) -> Weights:
    cfg_file = path / "config.json"
    weights = [path / "model.safetensors", path / "pytorch_model.bin"]
    found = next((w for w in weights if w.is_file()), None)
    if not cfg_file.is_file() or found is None:
        raise CheckpointError(
            f"Folder {str(path)!r} is not a Hugging Face checkpoint: it needs config.json and "
            "model.safetensors (or pytorch_model.bin), as written by save_pretrained()."
        )
    config = json.loads(cfg_file.read_text())
    kind = config.get("model_type")
    if kind not in _HF_MODEL_TYPES:
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
        "image_size": _image_size(config.get("image_size", 224)),
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


def refuse_non_finite(sd: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming ``source`` and its first tensor (state-dict order)
    with a NaN or infinite value; weights like that make every output NaN.

    Raises:
        CheckpointError: one sentence with the file, the tensor key and its NaN/inf counts.
    """
    for key, value in sd.items():
        if not (value.is_floating_point() or value.is_complex()):
            continue
        if bool(torch.isfinite(value).all()):
            continue
        nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
        counts = " and ".join(f"{n:,} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
        raise CheckpointError(
            f"{source!r} holds non-finite weights: tensor {key!r} has {counts} of its "
            f"{value.numel():,} values; use a checkpoint saved before the values diverged, "
            "or copy or download the file again."
        )


def read_weights(path: str | Path, use_ema: bool = False) -> Weights:
    """Read any supported weights file; the one reader behind every load in deit.

    Accepted: a ``deit train`` checkpoint (:class:`RunCheckpoint`, any version), an official
    DeiT ``.pth`` (dict with ``model``), a plain or timm state dict (``.pth``/``.pt``/``.bin``,
    possibly under ``state_dict``/``model_state_dict``, possibly with DDP's ``module.``
    prefix), a ``.safetensors`` file, or a Hugging Face transformers ``save_pretrained`` folder
    (converted with :func:`convert_hf_deit`).

    Args:
        path: the file or folder.
        use_ema: take the EMA weights (``model_ema``) of a training checkpoint when present.

    Returns:
        :class:`Weights`.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, no state dict inside, or a NaN or
            infinite value in a tensor (the first such tensor is named).
    """
    path = Path(path)
    if path.is_dir():
        return _read_hf_folder(path)
    weights = _read_file(path, use_ema)
    refuse_non_finite(weights.state_dict, weights.source)
    return weights


def _read_file(path: Path, use_ema: bool) -> Weights:
    """:func:`read_weights` of a file (not a folder)."""
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist; check the path.")
    if path.suffix == ".safetensors":
        sd = _read_safetensors(path)  # first: it names a bad file in one sentence
        size = _image_size(_safetensors_metadata(path).get("img_size"))
        return Weights(sd, str(path), meta={"image_size": size} if size else {})
    obj = safe_torch_load(path)
    if not is_run_checkpoint(obj):
        meta = {}
        if isinstance(obj, dict) and isinstance(obj.get("class_names"), list):
            meta["class_names"] = obj["class_names"]
        if isinstance(obj, dict) and _image_size(obj.get("img_size")):
            meta["image_size"] = _image_size(obj["img_size"])
        return Weights(_unwrap(obj, path), str(path), meta=meta)
    run = RunCheckpoint.from_dict(obj, str(path))
    sd, notes = run.model, []
    if use_ema and run.model_ema is None:
        notes.append("No EMA weights in the checkpoint: the model weights are used.")
    elif use_ema:
        sd = run.model_ema
    meta = {"model_name": run.model_name, "image_size": _image_size(run.img_size)}
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


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int,
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize the patch rows of a position embedding to another patch grid.

    Bicubic interpolation with ``align_corners=False`` of the patch rows laid out as an image
    (timm's ``resample_abs_pos_embed`` without antialiasing); the prefix rows (class / distillation tokens) are kept untouched — the procedure of the
    official fine-tuning at 384 px (paper section 6, "Fine-tuning at different resolution").

    Args:
        pos_embed: ``(1, num_prefix_tokens + H0 * W0, D)``.
        new_grid: target ``(H1, W1)`` patch grid.
        num_prefix_tokens: leading rows that are not patches.
        old_grid: source grid; defaults to a square grid.

    Returns:
        ``(1, num_prefix_tokens + H1 * W1, D)``.

    Raises:
        CheckpointError: the patch rows do not form ``old_grid`` (or a square).
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(n**0.5))
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise CheckpointError(
            f"pos_embed has {n} patch rows, which is not a {old_grid[0]}x{old_grid[1]} grid; "
            "pass the checkpoint's grid size."
        )
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed,
        list(new_grid),
        list(old_grid),
        num_prefix_tokens=num_prefix_tokens,
        interpolation="bicubic",
        antialias=False,
    )


def _adapt_prefix(
    sd: dict[str, torch.Tensor], model: VisionTransformer, report: LoadReport
) -> dict[str, torch.Tensor]:
    """Add or drop the distillation token, its position row and ``head_dist`` (paper section
    4: the distillation token is a second class token) so the prefix matches ``model``'s."""
    distilled = isinstance(model, DistilledVisionTransformer)
    pe = sd["pos_embed"]
    if distilled and "dist_token" not in sd:
        sd["dist_token"] = sd["cls_token"].clone()
        sd["pos_embed"] = torch.cat([pe[:, :1], pe[:, :1], pe[:, 1:]], dim=1)
        if "head.weight" in sd:
            sd["head_dist.weight"] = sd["head.weight"].clone()
            sd["head_dist.bias"] = sd["head.bias"].clone()
        report.add(
            "The checkpoint is not distilled: dist_token, its position embedding and head_dist "
            "were initialised from the class token's."
        )
    elif not distilled and "dist_token" in sd:
        del sd["dist_token"]
        sd.pop("head_dist.weight", None)
        sd.pop("head_dist.bias", None)
        sd["pos_embed"] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
        report.add("The checkpoint is distilled: dist_token and head_dist were dropped.")
    return sd


def _source_grid(
    sd: dict[str, torch.Tensor], model: VisionTransformer, meta: dict[str, Any], source: str
) -> tuple[int, int]:
    """The checkpoint's patch grid ``(H, W)``: from its recorded image size (``meta
    ["image_size"]``) and patch size when known; else the model's grid when both are square
    with the same row count, or a square of the row count.

    Raises:
        CheckpointError: a recorded size that does not match the rows, or an unrecorded grid
            that the row count leaves ambiguous (a non-square model grid of the same count, or a
            count that is not a square); the message names ``source_img_size``.
    """
    n = sd["pos_embed"].shape[1] - model.num_prefix_tokens
    size = meta.get("image_size")
    if size is not None:
        proj = sd.get("patch_embed.proj.weight")
        ph, pw = tuple(proj.shape[-2:]) if proj is not None else model.patch_embed.patch_size
        grid = (size[0] // ph, size[1] // pw)
        if grid[0] * grid[1] != n:
            raise CheckpointError(
                f"{source!r} records image size {size[0]}x{size[1]} (a {grid[0]}x{grid[1]} "
                f"patch grid) but its pos_embed has {n} patch rows; pass the size it was "
                "trained at (--finetune-img-size H W, or source_img_size=(H, W) in Python)."
            )
        return grid
    side = int(round(n**0.5))
    gh, gw = model.grid_size
    if n == gh * gw and gh == gw:
        return gh, gw
    if n == gh * gw or side * side != n:
        raise CheckpointError(
            f"{source!r} does not record its image size and its {n} position rows fit several "
            f"patch grids (the model's is {gh}x{gw}); pass the size it was trained at "
            "(--finetune-img-size H W, or source_img_size=(H, W) in Python), or re-save it with "
            "deit.save_weights from a model of that size, which records it."
        )
    return side, side


def _adapt(
    sd: dict[str, torch.Tensor],
    model: VisionTransformer,
    finetune: bool,
    report: LoadReport,
    meta: dict[str, Any],
    source: str,
) -> dict[str, torch.Tensor]:
    """Make ``sd`` fit ``model``: prefix tokens, position grid (resampled from the file's own
    grid, paper section 6) and, when fine-tuning, heads of another class count dropped."""
    sd = _adapt_prefix(dict(sd), model, report)
    if sd["pos_embed"].shape[-1] == model.pos_embed.shape[-1]:  # else a width mismatch
        grid = _source_grid(sd, model, meta, source)
        if grid != tuple(model.grid_size):
            prefix = model.num_prefix_tokens
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], model.grid_size, prefix, grid)
            new = tuple(model.grid_size)
            report.add(
                f"pos_embed interpolated bicubically from a {grid[0]}x{grid[1]} to a "
                f"{new[0]}x{new[1]} patch grid."
            )
    if finetune:
        own = model.state_dict()
        for k in _HEAD_KEYS:
            if k in sd and k in own and sd[k].shape != own[k].shape:
                shape = tuple(sd.pop(k).shape)
                report.add(f"Dropped {k} {shape}: the model's class count differs (finetune).")
    return sd


def load_checkpoint(
    model: VisionTransformer,
    path: str | Path,
    finetune: bool = False,
    source_img_size: int | tuple[int, int] | None = None,
) -> LoadReport:
    """Load weights from ``path`` (any format of :func:`read_state_dict`) into ``model``.

    Position embeddings are resampled from the file's patch grid to the model's (the grid comes
    from the image size the file records, else a square); a non-distilled checkpoint fills a
    distilled model's ``dist_token``/``head_dist`` from the class token/head, a distilled one
    loses them (each said in a note). With ``finetune=True`` heads whose class count differs
    are left at their fresh initialisation (the official ``--finetune``); otherwise a mismatch
    is an error.

    Args:
        model: the DeiT/ViT to fill.
        path: any file or folder :func:`read_weights` reads.
        finetune: drop heads of another class count instead of refusing them.
        source_img_size: the image size (pixels, side or ``(H, W)``) the weights were trained
            at, for a file that does not record it and whose grid is ambiguous (a non-square
            model); overrides a recorded size.

    Returns:
        :class:`LoadReport` listing every adaptation (each also issued as a warning).

    Raises:
        CheckpointError: unreadable file, an ambiguous position grid, or tensors that do not
            fit (one sentence: counts, examples, the architecture the file holds, the fix).
    """
    weights = read_weights(path)
    if source_img_size is not None:
        weights.meta["image_size"] = _image_size(source_img_size)
    report = load_state_dict_into(model, weights.state_dict, finetune, weights.meta, str(path))
    for note in weights.notes:  # what reading the file chose (e.g. a pooler left out)
        report.add(note)
    return report


def load_state_dict_into(
    model: VisionTransformer,
    sd: dict[str, torch.Tensor],
    finetune: bool = False,
    meta: dict[str, Any] | None = None,
    source: str = "state dict",
    flag: str = "--model",
) -> LoadReport:
    """Adapt a DeiT/timm-named state dict to ``model`` and load it (see :func:`load_checkpoint`).

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
    if "pos_embed" in sd and "cls_token" in sd:  # else not a ViT: _misfit says what it holds
        adapted = _adapt(sd, model, finetune, report, meta, source)
    error = _misfit(source, model, adapted, _HEAD_KEYS if finetune else (), meta, flag, sd)
    if error is not None:
        raise error
    model.load_state_dict(adapted, strict=not finetune)
    eps = meta.get("layer_norm_eps")
    if eps is not None:
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = eps
        report.add(f"LayerNorm eps set to {eps} as in the Hugging Face config.")
    if meta.get("class_names"):
        model.class_names = list(meta["class_names"])
    return report


def load_pretrained(model: VisionTransformer, spec: Any) -> LoadReport:
    """Load the official weights of ``spec`` through torch.hub's cache, checking the file hash.

    Raises:
        CheckpointError: no official weights exist, or the download failed (no network); the
            message says how to pass a local file instead.
    """
    if spec.url is None:
        raise CheckpointError(
            f"{spec.name} has no official pretrained weights; pass checkpoint_path=... instead."
        )
    fname = spec.url.rsplit("/", 1)[1]
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        torch.hub.load_state_dict_from_url(
            spec.url, map_location="cpu", check_hash=True, weights_only=True, progress=False
        )
    except Exception as e:  # URLError, socket errors, hash mismatch: all one sentence
        raise CheckpointError(
            f"Could not fetch the official weights for {spec.name} from {spec.url} "
            f"({type(e).__name__}: {str(e)[:120]}); download {fname} where a network is "
            f"available and pass it with checkpoint_path=... (CLI: --checkpoint PATH) or place it "
            f"in {hub_dir}."
        ) from None
    return load_checkpoint(model, hub_dir / fname)


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: str | Path) -> None:
    """Save a model's weights as safetensors (``.safetensors``) or official-style ``.pth``
    (``{"model": state_dict}``), atomically.

    A DeiT/ViT's input size is recorded too (``img_size``: ``[H, W]`` pixels, a key beside
    ``model``, or the safetensors metadata), so a later load resamples its position grid from
    the right shape (a non-square grid is ambiguous without it).

    Raises:
        OSError: the destination cannot be written.
    """
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    sd = {k: v.detach().cpu() for k, v in sd.items()}
    size = list(model.img_size) if isinstance(model, VisionTransformer) else None
    path = Path(path)
    if path.suffix == ".safetensors":
        atomic_save(sd, path, metadata={"img_size": json.dumps(size)} if size else None)
    else:
        atomic_save({"model": sd, **({"img_size": size} if size else {})}, path)


@dataclass
class ModelInfo:
    """What a job needs to know about a loaded model besides its weights.

    Attributes:
        model_name: registered DeiT name, timm name, or ``torchvision:<name>``.
        num_classes: classes of the head(s).
        img_size: input ``(H, W)`` in pixels.
        in_chans: input channels.
        class_names: one name per class index (indices as strings when unknown).
        mean, std: input normalisation per channel.
        crop_pct: evaluation centre-crop ratio.
        notes: sentences about what was assumed or adapted while loading.
        data_set: the data set a ``deit train`` checkpoint was trained on, else ``None``.
    """

    model_name: str
    num_classes: int
    img_size: tuple[int, int]
    in_chans: int = 3
    class_names: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    notes: list[str] = field(default_factory=list)
    data_set: str | None = None


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
    error = _misfit(weights.source, model, kept, heads, weights.meta, flag, sd)
    if error is not None:
        raise error
    model.load_state_dict(kept, strict=not finetune)
    return []


def _recorded_name(weights: Weights, model_name: str | None) -> str:
    recorded = weights.run.model_name if weights.run else None
    if model_name and recorded and model_name != recorded:
        raise CheckpointError(
            f"{weights.source!r} holds a {recorded} but the model asked for is {model_name}; "
            "leave out the model name (the checkpoint records its architecture) or pass "
            f"{recorded}."
        )
    name = model_name or recorded
    if name is None:
        raise CheckpointError(
            f"{weights.source!r} does not record its architecture; pass the model name "
            "(--model NAME, e.g. deit_tiny_distilled_patch16_224)."
        )
    return name


def _class_names(names: list[str] | None, num_classes: int, notes: list[str]) -> list[str]:
    if names:
        return list(names)
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        imagenet = ImageNetInfo()
        return [imagenet.index_to_description(i) for i in range(1000)]
    notes.append("The checkpoint has no class names: class indices are used instead.")
    return [str(i) for i in range(num_classes)]


def load_model(
    path: str | Path,
    model_name: str | None = None,
    use_ema: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelInfo]:
    """Rebuild a model from any supported file, ready for inference (eval mode).

    :func:`read_weights`, then :func:`deit.models.build_classifier`, then :func:`fit_weights`.
    A checkpoint written by ``deit train`` records its architecture (``model_name``,
    ``num_classes``, ``img_size``, ``in_chans``), class names and normalisation; any other
    weights file (official DeiT, timm, safetensors, Hugging Face folder) needs ``model_name``,
    and its class count is read from the head.

    Args:
        path: checkpoint file or Hugging Face folder.
        model_name: architecture, required for files that do not record it; for a file that
            records one it must be the same.
        use_ema: load the EMA weights (``model_ema``) of a training checkpoint when present.
        device: where to put the model.

    Returns:
        ``(model, info)``.

    Raises:
        CheckpointError: unreadable file, unknown architecture, a ``model_name`` other than
            the recorded one, or weights that do not fit.
    """
    from .registry import build_classifier, get_model_spec, is_deit_model

    weights = read_weights(path, use_ema=use_ema)
    name = _recorded_name(weights, model_name)
    run = weights.run or RunCheckpoint(weights.state_dict, name)
    sd = weights.state_dict
    head = sd.get("head.weight", sd.get("fc.weight"))
    num_classes = int(run.num_classes or (head.shape[0] if head is not None else 1000))
    proj = sd.get("patch_embed.proj.weight")
    in_chans = int(run.in_chans or (proj.shape[1] if proj is not None else 3))
    if is_deit_model(name):
        spec = get_model_spec(name)
        size = run.img_size or weights.meta.get("image_size") or spec.img_size
        model = build_classifier(name, num_classes, in_chans=in_chans, img_size=size)
        mean, std, crop = spec.mean, spec.std, spec.crop_pct
    else:
        model = build_classifier(name, num_classes, in_chans=in_chans)
        mean, std, crop = IMAGENET_MEAN, IMAGENET_STD, 0.875
        size = run.img_size or 224
    notes = weights.notes + fit_weights(model, weights)
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    names = weights.meta.get("class_names") or getattr(model, "class_names", None)
    if not (run.mean and run.std):
        notes.append(
            f"The file records no input normalisation: the {name} defaults are used (mean "
            f"{tuple(mean)}, std {tuple(std)}); set others if it was trained with others."
        )
    info = ModelInfo(
        model_name=name,
        num_classes=num_classes,
        img_size=size,
        in_chans=in_chans,
        class_names=_class_names(names, num_classes, notes),
        mean=tuple(run.mean or mean),
        std=tuple(run.std or std),
        crop_pct=float(run.crop_pct or crop),
        notes=notes,
        data_set=run.data_set,
    )
    return model.to(device).eval(), info
