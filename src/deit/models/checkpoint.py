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
    "Weights",
    "mismatch",
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


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with ``torch.save`` (or safetensors for a ``.safetensors`` path) atomically.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then renamed
    over ``path``, so a crash never leaves a half-written checkpoint.

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

                f.write(save({k: v.contiguous() for k, v in obj.items()}))
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


def mismatch(
    own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], ignore_missing: tuple = ()
) -> tuple[list[str], bool]:
    """Describe how ``sd`` fails to fit a model's state dict ``own``.

    Returns:
        ``(parts, only_heads)``: phrases for wrong shapes, missing and unexpected keys (empty
        when ``sd`` fits), and whether the only problem is the shape of classifier heads.
    """
    wrong = [k for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing = sorted(k for k in set(own) - set(sd) if k not in ignore_missing)
    unexpected = sorted(set(sd) - set(own))
    parts = []
    if wrong:
        shapes = [
            f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong
        ]
        parts.append("shape mismatch " + "; ".join(shapes[:4]))
    if missing:
        parts.append(f"{len(missing)} missing keys {missing[:6]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys {unexpected[:6]}")
    only_heads = bool(wrong) and not missing and not unexpected
    return parts, only_heads and all(k in _HEAD_KEYS for k in wrong)


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
        meta: what other formats record: ``class_names``, ``layer_norm_eps`` and ``image_size``
            (Hugging Face ``config.json``).
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
    if not cfg_file.is_file() or found is None:
        raise CheckpointError(
            f"Folder {str(path)!r} is not a Hugging Face checkpoint: it needs config.json and "
            "model.safetensors (or pytorch_model.bin), as written by save_pretrained()."
        )
    config = json.loads(cfg_file.read_text())
    raw = _read_safetensors(found) if found.suffix == ".safetensors" else None
    if raw is None:
        raw = _unwrap(safe_torch_load(found), found)
    meta: dict[str, Any] = {
        "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12)),
        "image_size": int(config.get("image_size", 224)),
    }
    id2label = config.get("id2label")
    if id2label:
        meta["class_names"] = [id2label[str(i)] for i in range(len(id2label))]
    return Weights(convert_hf_deit(raw), str(path), meta=meta)


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
        CheckpointError: missing, unreadable or unsafe file, or no state dict inside.
    """
    path = Path(path)
    if path.is_dir():
        return _read_hf_folder(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist; check the path.")
    if path.suffix == ".safetensors":
        return Weights(_read_safetensors(path), str(path))
    obj = safe_torch_load(path)
    if not is_run_checkpoint(obj):
        meta = {}
        if isinstance(obj, dict) and isinstance(obj.get("class_names"), list):
            meta["class_names"] = obj["class_names"]
        return Weights(_unwrap(obj, path), str(path), meta=meta)
    run = RunCheckpoint.from_dict(obj, str(path))
    sd, notes = run.model, []
    if use_ema and run.model_ema is None:
        notes.append("No EMA weights in the checkpoint: the model weights are used.")
    elif use_ema:
        sd = run.model_ema
    meta = {"class_names": run.class_names} if run.class_names else {}
    return Weights(strip_ddp_prefix(sd), str(path), run, meta, notes)


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of any file :func:`read_weights` reads; ``meta`` may hold
    ``class_names``, ``layer_norm_eps`` and ``image_size``.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, or no state dict inside.
    """
    weights = read_weights(path)
    return weights.state_dict, weights.meta


def convert_hf_deit(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ``DeiTForImageClassification[WithTeacher]`` state dict to DeiT names.

    Separate query/key/value projections are fused into ``attn.qkv`` (rows q, k, v);
    ``cls_classifier``/``distillation_classifier`` become ``head``/``head_dist``. A plain
    ``classifier`` becomes ``head`` (and ``head_dist`` too, so the model loads; use the class
    head alone to reproduce transformers' output, which reads the class token only).

    Raises:
        CheckpointError: when the keys are not those of a transformers DeiT model.
    """
    out: dict[str, torch.Tensor] = {}
    p = "deit."
    if f"{p}embeddings.cls_token" not in hf:
        raise CheckpointError(
            "Not a Hugging Face DeiT checkpoint (no 'deit.embeddings.cls_token'); save the model "
            "with DeiTForImageClassificationWithTeacher.save_pretrained()."
        )
    out["cls_token"] = hf[f"{p}embeddings.cls_token"]
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


def _adapt(
    sd: dict[str, torch.Tensor], model: VisionTransformer, finetune: bool, report: LoadReport
) -> dict[str, torch.Tensor]:
    """Make ``sd`` fit ``model``: prefix tokens, position grid and (when fine-tuning) heads."""
    sd = dict(sd)
    distilled = isinstance(model, DistilledVisionTransformer)
    prefix = model.num_prefix_tokens
    if "pos_embed" not in sd or "cls_token" not in sd:
        raise CheckpointError(
            "The checkpoint has no 'pos_embed'/'cls_token': it is not a DeiT/ViT state dict."
        )
    ck_prefix = 2 if "dist_token" in sd else 1
    if distilled and ck_prefix == 1:
        sd["dist_token"] = sd["cls_token"].clone()
        pe = sd["pos_embed"]
        sd["pos_embed"] = torch.cat([pe[:, :1], pe[:, :1], pe[:, 1:]], dim=1)
        if "head.weight" in sd:
            sd["head_dist.weight"] = sd["head.weight"].clone()
            sd["head_dist.bias"] = sd["head.bias"].clone()
        report.add(
            "The checkpoint is not distilled: dist_token, its position embedding and head_dist "
            "were initialised from the class token's."
        )
    elif not distilled and ck_prefix == 2:
        del sd["dist_token"]
        sd.pop("head_dist.weight", None)
        sd.pop("head_dist.bias", None)
        pe = sd["pos_embed"]
        sd["pos_embed"] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
        report.add("The checkpoint is distilled: dist_token and head_dist were dropped.")
    if sd["pos_embed"].shape != model.pos_embed.shape:
        old = tuple(sd["pos_embed"].shape)
        sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], model.grid_size, prefix)
        if sd["pos_embed"].shape[-1] == model.pos_embed.shape[-1]:
            report.add(
                f"pos_embed interpolated bicubically from {old} to {tuple(model.pos_embed.shape)}."
            )
    if finetune:
        own = model.state_dict()
        for k in _HEAD_KEYS:
            if k in sd and k in own and sd[k].shape != own[k].shape:
                shape = tuple(sd.pop(k).shape)
                report.add(f"Dropped {k} {shape}: the model's class count differs (finetune).")
    return sd


def load_checkpoint(
    model: VisionTransformer, path: str | Path, finetune: bool = False
) -> LoadReport:
    """Load weights from ``path`` (any format of :func:`read_state_dict`) into ``model``.

    Position embeddings are resampled to the model's patch grid; a non-distilled checkpoint
    fills a distilled model's ``dist_token``/``head_dist`` from the class token/head (and says
    so). With ``finetune=True`` heads whose class count differs are left at their fresh
    initialisation (the official ``--finetune``); otherwise a mismatch is an error.

    Returns:
        :class:`LoadReport` listing every adaptation (each also issued as a warning).

    Raises:
        CheckpointError: unreadable file, or tensors that do not fit (message names keys and
            shapes).
    """
    sd, meta = read_state_dict(path)
    return load_state_dict_into(model, sd, finetune=finetune, meta=meta, source=str(path))


def load_state_dict_into(
    model: VisionTransformer,
    sd: dict[str, torch.Tensor],
    finetune: bool = False,
    meta: dict[str, Any] | None = None,
    source: str = "state dict",
) -> LoadReport:
    """Adapt a DeiT/timm-named state dict to ``model`` and load it (see :func:`load_checkpoint`).

    Raises:
        CheckpointError: tensors that do not fit; the message names ``source``, keys and shapes.
    """
    meta = meta or {}
    report = LoadReport()
    sd = _adapt(sd, model, finetune, report)
    parts, only_heads = mismatch(model.state_dict(), sd, _HEAD_KEYS if finetune else ())
    if parts:
        hint = (
            " For another class count pass finetune=True (--finetune) to drop the heads."
            if only_heads
            else " Check that the model name matches the checkpoint's architecture."
        )
        raise CheckpointError(f"{source!r} does not fit this model: {', '.join(parts)}.{hint}")
    model.load_state_dict(sd, strict=not finetune)
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

    Raises:
        OSError: the destination cannot be written.
    """
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    sd = {k: v.detach().cpu() for k, v in sd.items()}
    path = Path(path)
    atomic_save(sd if path.suffix == ".safetensors" else {"model": sd}, path)


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
    model: nn.Module, weights: Weights, finetune: bool = False, hint: str = ""
) -> list[str]:
    """Load ``weights`` into ``model``; the one fitting step behind every load in deit.

    A DeiT/ViT goes through :func:`load_state_dict_into` (prefix tokens and position grid
    adapted, paper section 6 for the resolution change; heads of another class count dropped
    with ``finetune``). Any other model (a CNN teacher or baseline) loads strictly; with
    ``finetune`` its classifier layers alone are left fresh when their class count differs.

    Returns:
        Sentences describing every adaptation made.

    Raises:
        CheckpointError: tensors that do not fit; the message names the file, keys and shapes,
            then ``hint``.
    """
    if isinstance(model, VisionTransformer):
        report = load_state_dict_into(
            model, weights.state_dict, finetune=finetune, meta=weights.meta, source=weights.source
        )
        return report.notes
    sd, own = weights.state_dict, model.state_dict()
    heads = _classifier_names(model) if finetune else ()
    sd = {k: v for k, v in sd.items() if not (k in heads and k in own and v.shape != own[k].shape)}
    parts, _ = mismatch(own, sd, ignore_missing=heads)
    if parts:
        raise CheckpointError(
            f"{weights.source!r} does not fit this model: {', '.join(parts)}; {hint}".rstrip()
        )
    model.load_state_dict(sd, strict=not finetune)
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
    notes = weights.notes + fit_weights(model, weights, hint=f"check that it holds a {name}.")
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
