"""Export a trained model for inference outside this package: ``deit export``.

Formats:

- ``onnx``: ``torch.onnx.export`` with a dynamic batch axis (input ``images``
  ``(batch, C, H, W)``, output ``logits`` ``(batch, num_classes)``), through the TorchScript-based
  exporter (``dynamo=False``) and, where that exporter is missing or fails, the
  ``torch.export``-based one with ``dynamic_shapes``. Checked with onnxruntime.
- ``torchscript``: ``torch.jit.trace`` saved with ``torch.jit.save``; the batch size stays free
  because every shape the model reads is traced as a shape operation. Checked with
  ``torch.jit.load``.

A distilled model exports its inference output: the average of its two heads (the paper's late
fusion, section 4), or one head alone with ``head``. Before success is reported the exported
model is run on a random batch of another size than the traced one and compared with PyTorch;
the maximum absolute difference is returned (and printed by the CLI).

What a user of the file needs to feed it travels with it (:func:`export_metadata`): in an ONNX
file as ``metadata_props``, in a TorchScript file as the extra file ``metadata.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ._choices import EXPORT_FORMATS
from ._notes import _print_notes
from ._optional import require
from ._write import atomic_write_bytes
from .checkpoints import CheckpointError, ModelInfo
from .inference import optimize_for_inference
from .models import HEAD_CHOICES
from .models.distilled import late_fusion
from .predict import ModelLike, _set_head, info_from_model, resolve_model

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportResult",
    "InferenceWrapper",
    "export_metadata",
    "export_model",
]

#: Export formats: ONNX (onnxruntime) and TorchScript (``torch.jit.trace``).
FORMATS = EXPORT_FORMATS


class ExportError(ValueError):
    """The export failed, or the exported model does not reproduce PyTorch's outputs."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how well it matches PyTorch.

    Attributes:
        path: the written file.
        format: ``"onnx"`` or ``"torchscript"``.
        input_shape: the traced input ``(batch, C, H, W)``; the batch axis is dynamic.
        check_shape: the shape of the random batch used for the parity check.
        max_abs_diff: max |exported - PyTorch| over the check batch's logits.
        exporter: which exporter wrote the file (``"torchscript-onnx"``, ``"dynamo-onnx"``,
            ``"jit.trace"``).
        head: the distilled model's head that was exported (``"both"``/``"cls"``/``"dist"``).
        metadata: what the file carries besides the model (:func:`export_metadata`), each value
            a JSON text.
    """

    path: str
    format: str
    input_shape: tuple[int, ...]
    check_shape: tuple[int, ...]
    max_abs_diff: float
    exporter: str
    head: str
    metadata: dict[str, str]


def export_metadata(
    info: ModelInfo | None, shape: tuple[int, int, int], head: str
) -> dict[str, str]:
    """What an exported file carries so that it can be fed without this package: ``model_name``,
    ``input_size`` ``[C, H, W]``, ``mean`` and ``std`` (per channel, on pixels scaled to
    [0, 1]: ``(pixel / 255 - mean) / std``), ``crop_pct`` (the evaluation centre crop),
    ``head`` and ``class_names`` (index order); each value a JSON text (ONNX ``metadata_props``
    hold strings). A module without :class:`ModelInfo` gets the input size and head only."""
    meta: dict = {"input_size": list(shape), "head": head}
    if info is not None:
        meta.update(
            model_name=info.model_name,
            mean=[round(float(v), 6) for v in info.mean],
            std=[round(float(v), 6) for v in info.std],
            crop_pct=info.crop_pct,
            class_names=list(info.class_names),
        )
    return {k: json.dumps(v) for k, v in meta.items()}


def _with_onnx_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """The ONNX file ``data`` with ``metadata`` as its ``metadata_props``."""
    import onnx

    proto = onnx.load_from_string(data)
    onnx.helper.set_model_props(proto, metadata)
    return proto.SerializeToString()


class InferenceWrapper(nn.Module):
    """The model in eval mode returning one logits tensor ``(B, num_classes)``.

    A distilled model returns the head chosen with ``head`` (``"both"``: the average of the two
    heads); a model that returns a tuple has it averaged.
    """

    def __init__(self, model: nn.Module, head: str = "both") -> None:
        super().__init__()
        self.model = model.eval()
        _set_head(self.model, head)
        # DeiT models: the last block computes only the tokens the heads read (same logits)
        self.fast = optimize_for_inference(self.model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for normalised images ``(B, C, H, W)``."""
        out = self.fast(images)
        if isinstance(out, tuple):
            out = late_fusion(*out)
        return out


def _input_shape(
    model: nn.Module, info: ModelInfo | None, input_size: int | tuple[int, int] | None
) -> tuple[int, int, int]:
    """``(C, H, W)`` the model takes; errors when it cannot be told or conflicts."""
    size = None
    if input_size is not None:
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        size = (int(size[0]), int(size[1]))
    fixed = getattr(model, "img_size", None)  # DeiT models only take their own size
    if fixed is not None and size is not None and tuple(fixed) != size:
        raise ValueError(
            f"This model takes {fixed[0]}x{fixed[1]} inputs, not {size[0]}x{size[1]}; drop "
            "--input-size or fine-tune the model at that size."
        )
    if size is None and info is not None:
        size = tuple(info.img_size)
    if size is None:
        size = info_from_model(model).img_size  # raises ValueError when unknown
    in_chans = info.in_chans if info is not None else getattr(model, "in_chans", 3)
    patch = getattr(model, "patch_embed", None)
    in_chans = getattr(patch, "in_chans", in_chans)
    return int(in_chans), int(size[0]), int(size[1])


def _export_onnx(
    wrapper: nn.Module, x: torch.Tensor, opset: int, exporter: str
) -> tuple[bytes, str]:
    """The ONNX file's bytes (kept in memory: checked before anything is written) and the
    exporter that made them."""
    errors = []
    common = dict(input_names=["images"], output_names=["logits"])
    if exporter in ("auto", "torchscript"):
        try:
            buffer = io.BytesIO()
            torch.onnx.export(
                wrapper,
                (x,),
                buffer,
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
                **common,
            )
            return buffer.getvalue(), "torchscript-onnx"
        except Exception as e:  # noqa: BLE001 - removed or failing legacy exporter: try dynamo
            if exporter != "auto":
                raise ExportError(f"The TorchScript-based ONNX exporter failed: {e}") from None
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(
            wrapper,
            (x,),
            None,
            dynamic_shapes={"images": {0: batch}},
            opset_version=max(opset, 18),
            dynamo=True,
            external_data=False,
            verbose=False,
            **common,
        )
        return program.model_proto.SerializeToString(), "dynamo-onnx"
    except Exception as e:  # noqa: BLE001
        errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
        raise ExportError(f"ONNX export failed ({'; '.join(errors)}).") from None


def _run_onnx(model: bytes, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    (out,) = sess.run(["logits"], {"images": x.numpy()})
    return torch.from_numpy(out)


@torch.no_grad()
def export_model(
    checkpoint_or_model: ModelLike,
    output: str | os.PathLike,
    format: str = "onnx",
    head: str = "both",
    model_name: str | None = None,
    input_size: int | tuple[int, int] | None = None,
    trace_batch: int = 2,
    check_batch: int = 3,
    atol: float = 1e-4,
    opset: int = 17,
    exporter: str = "auto",
    info: ModelInfo | None = None,
) -> ExportResult:
    """Export a classifier to ONNX or TorchScript and check it against PyTorch.

    The model is traced on CPU in eval mode with a random batch of ``trace_batch`` images,
    written to ``output``, reloaded (onnxruntime / ``torch.jit.load``) and run on a random
    batch of ``check_batch`` images; the export fails unless every logit is within ``atol`` of
    PyTorch's.

    Args:
        checkpoint_or_model: checkpoint path, module, or ``(model, info)`` pair.
        output: file to write (parent folders are created).
        format: ``"onnx"`` or ``"torchscript"``.
        head: distilled models: ``"both"`` (average, the default inference output), ``"cls"``
            or ``"dist"``.
        model_name: architecture of a weights file without metadata (its configuration gives
            the input size).
        input_size: input side(s) in pixels, for models whose size is not recorded (a timm or
            torchvision model); must equal a DeiT model's own size.
        trace_batch: batch size of the example input (the batch axis stays dynamic).
        check_batch: batch size of the parity check (different from ``trace_batch`` to show
            the batch axis is dynamic; 1 keeps a large model's check cheap).
        atol: largest allowed absolute difference of the logits.
        opset: ONNX opset (the dynamo exporter uses at least 18).
        exporter: ONNX only: ``"auto"`` (TorchScript-based first, then dynamo),
            ``"torchscript"`` or ``"dynamo"``.
        info: metadata of a module passed directly.

    Returns:
        :class:`ExportResult` with the maximum absolute difference.

    Raises:
        ValueError: unknown format/head/exporter, an ``output`` that is a folder, or an input
            size that is not given and cannot be told (a weights file without metadata and no
            ``model_name`` / ``input_size``).
        ExportError: the exporter failed, or the parity check did (nothing is written: the
            file is checked in memory first).
        WriteError: (an ``OSError``) the disk is full or the folder cannot be written: one
            sentence; a previous ``output`` is left as it was.
        deit.checkpoints.CheckpointError: the checkpoint cannot be read.
    """
    _check_options(format, exporter, head)
    _check_output(Path(output), checkpoint_or_model, format)
    if isinstance(checkpoint_or_model, nn.Module):
        model = checkpoint_or_model  # its size comes from input_size, info or the model itself
    elif isinstance(checkpoint_or_model, tuple):
        model, info = checkpoint_or_model
    else:
        model, info = _load(checkpoint_or_model, model_name)
    shape = _input_shape(model, info, input_size)
    if info is None:  # a bare module's export carries the input size and head only
        with contextlib.suppress(ValueError):
            info = info_from_model(model)
    metadata = export_metadata(info, shape, head)
    previous = getattr(model, "head_choice", None)
    checks = (trace_batch, check_batch, atol)
    try:
        return _export(model, shape, Path(output), format, head, checks, opset, exporter, metadata)
    finally:
        if previous is not None:
            model.set_head(previous)


def _check_options(format: str, exporter: str, head: str) -> None:
    """Raise ``ValueError`` for an unknown option, ``MissingExtraError`` without ONNX's extra."""
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be auto, torchscript or dynamo, got {exporter!r}.")
    if head not in HEAD_CHOICES:
        raise ValueError(f"head must be one of {', '.join(HEAD_CHOICES)}, got {head!r}.")
    if format == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module, "onnx", "deit export --format onnx")


def _check_output(path: Path, source: ModelLike, format: str) -> None:
    """Refuse an output path that is a folder, before anything is loaded, in one sentence."""
    if not path.is_dir():
        return
    stem = Path(source).stem if isinstance(source, (str, os.PathLike)) else "model"
    example = path / f"{stem}{'.onnx' if format == 'onnx' else '.pt'}"
    raise ValueError(
        f"The output {str(path)!r} is a folder; name the file to write, e.g. {str(example)!r}."
    )


def _load(checkpoint: str | os.PathLike, model_name: str | None) -> tuple[nn.Module, ModelInfo]:
    """The model of a checkpoint file on CPU; its notes (except class names) as warnings."""
    try:
        model, info = resolve_model(checkpoint, model_name, "cpu", warn_notes=False)
    except CheckpointError as e:
        if model_name is not None or "does not record its architecture" not in str(e):
            raise
        raise ValueError(
            f"The input size of {str(checkpoint)!r} is unknown: the file records "
            "no architecture; pass the model name (--model NAME) whose configuration gives "
            "the input size (and --input-size for a non-DeiT model)."
        ) from None
    for note in info.notes:  # class names do not matter to an exported model
        if "class names" not in note:
            warnings.warn(note, UserWarning, stacklevel=4)
    return model, info


def _export(
    model: nn.Module,
    shape: tuple[int, int, int],
    path: Path,
    format: str,
    head: str,
    checks: tuple[int, int, float],
    opset: int,
    exporter: str,
    metadata: dict[str, str],
) -> ExportResult:
    """Export ``model`` traced at ``checks[0]`` images, check it on ``checks[1]`` images within
    ``checks[2]`` of PyTorch, write it with ``metadata``."""
    trace_batch, check_batch, atol = checks
    wrapper = InferenceWrapper(model.float(), head).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(trace_batch, *shape, generator=gen)
    x_check = torch.randn(check_batch, *shape, generator=gen)
    with warnings.catch_warnings():
        # Tracer warnings about shape reads and the deprecation notices of the exporters.
        warnings.simplefilter("ignore")
        if format == "onnx":
            data, used = _export_onnx(wrapper, x, opset, exporter)
            data = _with_onnx_metadata(data, metadata)
            got = _run_onnx(data, x_check)
        else:
            try:
                traced = torch.jit.trace(wrapper, x, check_trace=False)
                buffer = io.BytesIO()
                extra = {"metadata.json": json.dumps(metadata)}  # as ONNX's metadata_props
                torch.jit.save(traced, buffer, _extra_files=extra)
            except Exception as e:  # noqa: BLE001
                raise ExportError(
                    f"TorchScript tracing failed ({type(e).__name__}: {str(e)[:160]})."
                ) from None
            used, data = "jit.trace", buffer.getvalue()
            got = torch.jit.load(io.BytesIO(data), map_location="cpu")(x_check)
    ref = wrapper(x_check)
    diff = float((got.float() - ref.float()).abs().max())
    if got.shape != ref.shape or not diff <= atol:
        raise ExportError(
            f"The exported {format} model does not reproduce PyTorch (output {tuple(got.shape)} "
            f"vs {tuple(ref.shape)}, max abs difference {diff:.3g} > {atol}); nothing was kept."
        )
    atomic_write_bytes(path, data)  # whole or not at all; a full disk keeps the previous file
    return ExportResult(
        path=str(path),
        format=format,
        input_shape=tuple(x.shape),
        check_shape=tuple(x_check.shape),
        max_abs_diff=diff,
        exporter=used,
        head=head,
        metadata=metadata,
    )


def _run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export_model(
            args.checkpoint,
            args.output,
            format=args.format,
            head=args.head,
            model_name=args.model,
            input_size=args.input_size,
            opset=args.opset,
        )
    _print_notes(caught)
    runtime = "onnxruntime" if result.format == "onnx" else "torch.jit.load"
    print(
        f"exported {result.format} ({result.exporter}, head {result.head}) to {result.path}: "
        f"input (batch, {', '.join(map(str, result.input_shape[1:]))}), dynamic batch"
    )
    print(
        f"{runtime} vs PyTorch on a random batch of {result.check_shape[0]}: "
        f"max abs difference {result.max_abs_diff:.3g}"
    )
    where = "metadata_props" if result.format == "onnx" else "extra file metadata.json"
    print(f"metadata ({where}, JSON values):")
    for key, value in result.metadata.items():
        names = json.loads(value) if key == "class_names" else []
        if len(names) > 10:  # ImageNet's thousand: the count and the first few
            value = f"{len(names)} names: {json.dumps(names[:5])[:-1]}, ...]"
        print(f"  {key}: {value}")
    return 0
