"""``deit export``: its flags; the command is :func:`deit.export.export_model`."""

from __future__ import annotations

import argparse

from .._choices import EXPORT_FORMATS, HEAD_CHOICES
from . import command

__all__ = ["add_subcommand"]


def _parse_size(text: str) -> int | tuple[int, int]:
    """``--input-size``: ``224`` -> 224, ``224x160`` (or ``224,160``) -> (224, 160) pixels.

    Raises:
        argparse.ArgumentTypeError: not one or two positive integers.
    """
    parts = text.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts if p]
    except ValueError:
        nums = []
    if len(nums) == 1 and nums[0] > 0:
        return nums[0]
    if len(nums) == 2 and min(nums) > 0:
        return (nums[0], nums[1])
    raise argparse.ArgumentTypeError(f"expected SIZE or HxW in pixels, got {text!r}")


def _run(args: argparse.Namespace) -> int | None:
    """The handler of the chosen format: a Hugging Face folder or a file."""
    return command("deit.hf_export" if args.format == "hf" else "deit.export", "_run")(args)


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit export`` on the ``deit`` parser's subparsers."""
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript (checked against PyTorch), or to a "
        "Hugging Face folder (hf)",
        description="Export the inference output (distilled: both heads averaged unless "
        "--head) with a dynamic batch axis, then check it against PyTorch on a random batch. "
        "--format hf writes a transformers save_pretrained folder instead (config.json, "
        "model.safetensors, preprocessor_config.json, README.md model card), checked against "
        "deit's logits.",
    )
    p.add_argument("checkpoint", help="checkpoint written by deit train, or any weights file")
    p.add_argument(
        "--format",
        choices=[*EXPORT_FORMATS, "hf"],
        default="onnx",
        help="default onnx; hf: a Hugging Face transformers folder",
    )
    p.add_argument(
        "--output", required=True, help="file to write (.onnx / .pt), or the folder for hf"
    )
    p.add_argument("--head", choices=HEAD_CHOICES, default="both", help="distilled models")
    p.add_argument("--model", help="architecture of a weights file without metadata")
    p.add_argument(
        "--input-size", type=_parse_size, help="SIZE or HxW, for models that do not record it"
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.set_defaults(func=_run)
