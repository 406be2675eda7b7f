"""Turning a weights file into a model: :func:`load_checkpoint` (into a built model),
:func:`load_pretrained` (the official weights through torch.hub's cache), :func:`load_model`
(the architecture too, with a :class:`ModelInfo` for the jobs) and :func:`create_model`.

As timm's ``_factory`` sits above its ``_builder``: :func:`deit.models.build_model` makes the
bare model and knows nothing of files; :func:`create_model` adds the official or a local
checkpoint, so the model package never imports the checkpoint package back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    build_classifier,
    build_model,
    get_model_spec,
    is_deit_model,
)
from ..models.vision_transformer import VisionTransformer
from .adapt import LoadReport
from .errors import CheckpointError
from .fetch import local_file
from .fit import fit_weights, load_state_dict_into
from .hub import hub_architecture, hub_config, is_hub_id, recorded_image_size
from .read import Weights, read_weights
from .run_checkpoint import RunCheckpoint

__all__ = ["ModelInfo", "create_model", "load_checkpoint", "load_model", "load_pretrained"]


def load_checkpoint(
    model: VisionTransformer,
    path: str | Path,
    finetune: bool = False,
    source_img_size: int | tuple[int, int] | None = None,
) -> LoadReport:
    """Load weights from ``path`` (any format of :func:`~deit.checkpoints.read_weights`) into ``model``.

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
        weights.meta["image_size"] = recorded_image_size(source_img_size)
    report = load_state_dict_into(model, weights.state_dict, finetune, weights.meta, str(path))
    for note in weights.notes:  # what reading the file chose (e.g. a pooler left out)
        report.add(note)
    return report


def load_pretrained(model: VisionTransformer, spec: ModelSpec) -> LoadReport:
    """Load the official weights of ``spec`` through torch.hub's cache, checking the file hash.

    Raises:
        CheckpointError: no official weights exist, or the download failed (no network); the
            message says where to put the file by hand (:func:`deit.checkpoints.fetch.local_file`).
    """
    if spec.url is None:
        raise CheckpointError(
            f"{spec.name} has no official pretrained weights; pass checkpoint_path=... instead."
        )
    path = local_file(spec.url, f"official weights of {spec.name}")
    return load_checkpoint(model, path)


@dataclass
class ModelInfo:
    """What a job needs to know about a loaded model besides its weights.

    Attributes:
        model_name: registered DeiT name, timm name, or ``torchvision:<name>``.
        num_classes: classes of the head(s).
        img_size: input ``(H, W)`` in pixels.
        in_chans: input channels.
        class_names: one name per class index (indices as strings when unknown).
        class_names_recorded: whether the file records ``class_names`` (else they are
            indices, or ImageNet's for a 1000-class head).
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
    class_names_recorded: bool = False
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    notes: list[str] = field(default_factory=list)
    data_set: str | None = None


def _recorded_name(weights: Weights, model_name: str | None) -> str:
    recorded = weights.run.model_name if weights.run else weights.meta.get("model_name")
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
    size = recorded_image_size(size)
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
        class_names_recorded=bool(names),
        mean=tuple(run.mean or mean),
        std=tuple(run.std or std),
        crop_pct=float(run.crop_pct or crop),
        notes=notes,
        data_set=run.data_set,
    )
    return model.to(device).eval(), info


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> VisionTransformer:
    """Build a registered DeiT model, optionally with weights (timm's ``create_model`` contract).

    Args:
        name: a name from :func:`deit.models.list_models`, or a Hub name
            ``hf-hub:ORG/NAME`` (timm's spelling): a timm DeiT repository or a transformers
            DeiT/ViT one (e.g. ``facebook/deit-base-distilled-patch16-224``, or a folder
            ``deit export --format hf`` wrote), built as the registered configuration its
            ``config.json`` describes, at its class count and image size unless given.
        pretrained: load the official weights through torch.hub's cache (hash-checked); for a
            Hub name, the repository's weights through ``huggingface_hub``'s cache (offline:
            from the cache; a name not cached is one sentence saying what to run).
        checkpoint_path: a local weights file or Hugging Face folder to load instead (official
            ``.pth`` with ``model``, plain/timm state dict, ``.safetensors``, or a
            transformers ``save_pretrained`` folder). Position embeddings are interpolated to
            ``img_size``; heads of another class count are an error (use
            :func:`deit.checkpoints.load_checkpoint` with ``finetune=True`` to drop them).
        num_classes: classes of the head(s) (default 1000, or a Hub repository's).
        img_size: input size; defaults to the configuration's.
        in_chans: input channels.
        drop_rate: dropout rate.
        drop_path_rate: stochastic-depth rate (the paper uses 0.1).
        **kwargs: any other :class:`~deit.models.VisionTransformer` argument (e.g. ``depth``).

    Returns:
        :class:`~deit.models.VisionTransformer` or
        :class:`~deit.models.DistilledVisionTransformer`.

    Raises:
        ValueError: unknown name or impossible argument.
        deit.checkpoints.CheckpointError: weights that cannot be read or do not fit; a Hub name
            neither cached nor reachable, or of a model no registered configuration builds.
    """
    hub_id = None
    if is_hub_id(name):
        hub_id, (name, classes, size) = name, hub_architecture(name, hub_config(name))
        num_classes = classes if num_classes is None else num_classes
        img_size = size if img_size is None else img_size
    model = build_model(
        name,
        num_classes=1000 if num_classes is None else num_classes,
        img_size=img_size,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    elif pretrained and hub_id is not None:
        load_checkpoint(model, hub_id)
    elif pretrained:
        load_pretrained(model, get_model_spec(name))
    return model
