"""``deit export --format hf``: a Hugging Face ``save_pretrained`` folder of a DeiT checkpoint.

The folder holds what ``transformers`` reads: ``config.json``, ``model.safetensors``,
``preprocessor_config.json`` (its ``DeiTImageProcessor``: resize to ``input / crop_pct``,
bicubic, centre crop, the checkpoint's mean and std: the evaluation transform of deit) and a model
card ``README.md`` with the training configuration and the evaluation results the checkpoint
records. A distilled model becomes ``DeiTForImageClassificationWithTeacher`` (its logits: the
two heads averaged, the paper's late fusion), a plain one ``ViTForImageClassification``; a
DeiT III model too, its weights rewritten exactly up to float rounding (:func:`hf_state_dict`).

Before anything is written the folder is loaded back with ``AutoModelForImageClassification``
and its logits are compared with deit's on a random batch; the export fails beyond ``atol``.
Read such a folder back with :func:`deit.load_model`, or from the Hub with
``deit.create_model("hf-hub:ORG/NAME", pretrained=True)``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ._notes import _print_notes
from ._write import umask
from .checkpoints import ModelInfo, RunCheckpoint, read_weights
from .checkpoints.hf import to_hf_deit
from .models import DistilledVisionTransformer, VisionTransformer
from .predict import ModelLike, resolve_model

__all__ = ["HFExportResult", "export_hf", "hf_state_dict"]


@dataclass
class HFExportResult:
    """What :func:`export_hf` wrote.

    Attributes:
        path: the folder.
        architecture: the transformers class (``DeiTForImageClassificationWithTeacher`` or
            ``ViTForImageClassification``).
        max_abs_diff: max |transformers - deit| over a random batch's logits, the folder loaded
            back by ``AutoModelForImageClassification``.
        files: the folder's file names.
    """

    path: str
    architecture: str
    max_abs_diff: float
    files: list[str]


def hf_state_dict(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """The model's weights in transformers' names (:func:`deit.checkpoints.hf.to_hf_deit`), with
    a DeiT III model's LayerScale folded into ``attn.proj`` / ``mlp.fc2`` (``gamma * (W x + b)
    = (gamma W) x + gamma b``) and zero position rows for its prefix tokens (``no_embed_class``:
    the tokens get no position embedding, which transformers adds to every token)."""
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    for i in range(len(model.blocks)):
        for ls, layer in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            gamma = sd.pop(f"blocks.{i}.{ls}.gamma", None)
            if gamma is not None:
                sd[f"blocks.{i}.{layer}.weight"] *= gamma[:, None]
                sd[f"blocks.{i}.{layer}.bias"] *= gamma
    if model.num_pos_prefix_tokens < model.num_prefix_tokens:
        pos = sd["pos_embed"]
        zeros = pos.new_zeros(
            1, model.num_prefix_tokens - model.num_pos_prefix_tokens, pos.shape[-1]
        )
        sd["pos_embed"] = torch.cat([zeros, pos], dim=1)
    return to_hf_deit(sd)


def _hf_config(model: VisionTransformer, info: ModelInfo) -> Any:
    """transformers' ``DeiTConfig`` (distilled) or ``ViTConfig`` (plain) of ``model``."""
    from transformers import DeiTConfig, ViTConfig

    h, w = model.img_size
    names = info.class_names or [str(i) for i in range(model.num_classes)]
    kw = dict(
        hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=model.blocks[0].attn.num_heads,
        intermediate_size=model.blocks[0].mlp.fc1.out_features,
        hidden_act="gelu",  # exact (erf) GELU, nn.GELU's default
        layer_norm_eps=model.norm.eps,
        image_size=h if h == w else [h, w],
        patch_size=model.patch_embed.patch_size[0],
        num_channels=model.patch_embed.in_chans,
        qkv_bias=True,
        id2label={i: n for i, n in enumerate(names)},
        label2id={n: i for i, n in enumerate(names)},
    )
    distilled = isinstance(model, DistilledVisionTransformer)
    config = DeiTConfig(**kw) if distilled else ViTConfig(**kw)
    kind = "DeiTForImageClassificationWithTeacher" if distilled else "ViTForImageClassification"
    config.architectures = [kind]
    return config


def _image_processor(model: VisionTransformer, info: ModelInfo) -> Any:
    """transformers' ``DeiTImageProcessor`` doing deit's evaluation transform: the short side
    resized to ``floor(side / crop_pct)`` (bicubic), the centre crop, the mean and std."""
    from transformers import DeiTImageProcessor

    h, w = model.img_size
    scale = [int(s / info.crop_pct) for s in (h, w)]  # timm: floor(img_size / crop_pct)
    size = {"shortest_edge": scale[0]} if h == w else {"height": scale[0], "width": scale[1]}
    return DeiTImageProcessor(
        do_resize=True,
        size=size,
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": h, "width": w},
        image_mean=list(info.mean),
        image_std=list(info.std),
    )


def _load_source(
    source: ModelLike, model_name: str | None, info: ModelInfo | None
) -> tuple[nn.Module, ModelInfo, RunCheckpoint | None]:
    """``(model, info, the deit train record or None)`` of what was passed."""
    model, info = resolve_model(
        source, model_name=model_name, device="cpu", info=info, warn_notes=False
    )
    if isinstance(source, nn.Module | tuple):
        return model, info, None
    for note in info.notes:  # class names matter here: the folder's labels come from them
        warnings.warn(note, UserWarning, stacklevel=3)
    return model, info, read_weights(source).run


def _check_output(path: Path) -> None:
    """Refuse an output that is a file or a folder with files in it, in one sentence."""
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise ValueError(
            f"The output {str(path)!r} exists and is not an empty folder; name a new folder for "
            "the Hugging Face files (config.json, model.safetensors, ...)."
        )


@torch.no_grad()
def export_hf(
    checkpoint_or_model: ModelLike,
    output: str | os.PathLike,
    model_name: str | None = None,
    atol: float = 1e-5,
    info: ModelInfo | None = None,
) -> HFExportResult:
    """Write a transformers ``save_pretrained`` folder of a DeiT model and check it.

    Args:
        checkpoint_or_model: checkpoint path (any file :func:`deit.load_model` reads), module,
            or ``(model, info)`` pair.
        output: the folder to create (new or empty).
        model_name: architecture of a weights file that does not record it.
        atol: largest allowed |transformers - deit| of the logits of a random batch.
        info: metadata (class names, normalisation, crop) of a module passed directly.

    Returns:
        :class:`HFExportResult`.

    Raises:
        ValueError: an output that is a file or a folder with files, a model that is not a
            DeiT/ViT, or logits beyond ``atol`` (nothing is left behind).
        deit.checkpoints.CheckpointError: the checkpoint cannot be read.
    """
    from transformers import AutoModelForImageClassification

    output = Path(output)
    _check_output(output)
    model, info, run = _load_source(checkpoint_or_model, model_name, info)
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"A {type(model).__name__} has no Hugging Face DeiT/ViT counterpart; export it with "
            "--format onnx or torchscript."
        )
    previous = getattr(model, "head_choice", None)
    if previous is not None:
        model.set_head("both")  # DeiTForImageClassificationWithTeacher averages the heads
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        config = _hf_config(model, info)
        diff = _write_folder(model.float(), info, config, tmp, AutoModelForImageClassification)
        if not diff <= atol:
            raise ValueError(
                f"transformers' {config.architectures[0]} does not reproduce deit's logits (max "
                f"abs difference {diff:.3g} > {atol}); nothing was written."
            )
        name = run.model_name if run else getattr(model, "default_cfg", {}).get("architecture")
        card = model_card(name or "deit", config.architectures[0], info, run, diff)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        tmp.chmod(0o777 & ~umask())  # mkdtemp's folder is private
        if output.is_dir():
            output.rmdir()  # empty (checked above)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if previous is not None:
            model.set_head(previous)
    files = sorted(p.name for p in output.iterdir())
    return HFExportResult(str(output), config.architectures[0], diff, files)


def _write_folder(
    model: VisionTransformer, info: ModelInfo, config: Any, folder: Path, auto: Any
) -> float:
    """Write ``config.json``, ``model.safetensors`` (transformers' checkpoint key names, which
    its 4.x and 5.x releases both read) and the image processor into ``folder``, load the model
    back with ``auto`` (``AutoModelForImageClassification``) and return its logits'
    difference from deit's (infinite when a weight was not loaded)."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    config.save_pretrained(folder)
    save_file(hf_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _image_processor(model, info).save_pretrained(folder)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for loading a local file is noise in the output
    try:
        loaded, report = auto.from_pretrained(folder, output_loading_info=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if report.get("missing_keys") or report.get("unexpected_keys"):
        return float("inf")
    shape = (2, model.patch_embed.in_chans, *model.img_size)  # a random batch of 2
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    theirs = loaded.eval()(pixel_values=x).logits
    return float((model.eval()(x) - theirs).abs().max())


def model_card(
    model_name: str, architecture: str, info: ModelInfo, run: RunCheckpoint | None, diff: float
) -> str:
    """The folder's ``README.md``: Hub metadata, how to load it, the evaluation results and the
    training configuration a ``deit train`` checkpoint records (else a sentence saying so)."""
    data = info.data_set or (run.data_set if run else None)
    meta = {"library_name": "transformers", "pipeline_tag": "image-classification"}
    meta["tags"] = ["deit", "vision-transformer", "image-classification"]
    if data:
        meta["datasets"] = [data]
    heads = "the class and distillation heads averaged (the paper's late fusion)"
    output = heads if "Teacher" in architecture else "the class-token head"
    lines = [
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---",
        f"# {model_name}",
        f'A DeiT image classifier (Touvron et al., 2021, "Training data-efficient image '
        f'transformers & distillation through attention") written by the `deit` package '
        f"(`deit export --format hf`) as transformers' `{architecture}`: its logits are "
        f"{output}. {info.num_classes} classes, "
        f"{info.img_size[0]}x{info.img_size[1]} px inputs.",
        "## Use",
        "```python\nfrom transformers import AutoImageProcessor, AutoModelForImageClassification\n"
        'processor = AutoImageProcessor.from_pretrained("THIS_FOLDER_OR_HUB_NAME")\n'
        'model = AutoModelForImageClassification.from_pretrained("THIS_FOLDER_OR_HUB_NAME")\n'
        "```",
        'With deit: `deit.load_model("THIS_FOLDER", model_name=...)`, or once on the Hub '
        '`deit.create_model("hf-hub:ORG/NAME", pretrained=True)`. transformers\' logits equal '
        f"deit's within {diff:.1e} on a random batch (checked when the folder was written).",
        "## Evaluation results",
        _results(run, data),
        "## Training configuration",
        _configuration(run),
    ]
    return "\n\n".join(lines) + "\n"


def _results(run: RunCheckpoint | None, data: str | None) -> str:
    """A table of the last evaluation and the best top-1, or a sentence when none is recorded."""
    evaluated = [h for h in (run.history if run else []) if "test_acc1" in h]
    if not evaluated:
        return "The checkpoint records no evaluation."
    last = evaluated[-1]
    head = (run.config or {}).get("eval_head", "both")
    top5 = f"{last['test_acc5']:.2f}" if "test_acc5" in last else "-"
    return (
        "| data set | epochs | top-1 % | top-5 % | best top-1 % | head |\n"
        "|---|---|---|---|---|---|\n"
        f"| {data or '-'} (its evaluation split) | {int(last.get('epoch', 0)) + 1} | "
        f"{last['test_acc1']:.2f} | {top5} | {run.best_acc1:.2f} | {head} |"
    )


def _configuration(run: RunCheckpoint | None) -> str:
    """The run's configuration as YAML (every ``deit train`` field), or a sentence."""
    if not run or not run.config:
        return "The checkpoint records no training configuration (not written by `deit train`)."
    text = yaml.safe_dump(run.config, sort_keys=False, default_flow_style=False)
    return "`deit train` settings (`config.yaml` of the run):\n\n```yaml\n" + text + "```"


def _run(args: argparse.Namespace) -> int:
    """``deit export CHECKPOINT --format hf --output FOLDER``."""
    if args.head != "both" or args.input_size is not None:
        raise ValueError(
            "--head and --input-size are for onnx/torchscript; a Hugging Face folder keeps the "
            "model's size and its class averages both heads: drop them."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export_hf(args.checkpoint, args.output, model_name=args.model)
    _print_notes(caught)
    print(
        f"exported a transformers {result.architecture} to {result.path}/: {', '.join(result.files)}"
    )
    print(
        "AutoModelForImageClassification vs deit on a random batch: max abs difference "
        f"{result.max_abs_diff:.3g}"
    )
    return 0
