"""Reading a ``torch.save`` file safely: :func:`safe_torch_load`; and the check every weights
reader makes, :func:`refuse_non_finite`.

Every ``.pth``/``.pt``/``.bin`` read in deit goes through ``torch.load(weights_only=True)`` here,
so an untrusted pickle never runs code. It sits below the run-checkpoint schema and the readers
of the other file kinds, which all use it.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .fetch import local_file

__all__ = ["checkpoint_path_error", "refuse_non_finite", "safe_torch_load"]

#: The files a ``deit train`` run folder holds its checkpoints in (last epoch, best).
RUN_CHECKPOINTS = ("checkpoint.pth", "best_checkpoint.pth")


def checkpoint_path_error(
    path: str | Path, what: str = "Checkpoint", fix: str = "check the path", hf_folder: bool = False
) -> CheckpointError | None:
    """The one check of a checkpoint path every reader makes: ``None`` for a file (or, with
    ``hf_folder``, a folder with ``config.json``), else the sentence for a path that does not
    exist or is a folder (a ``deit train`` run folder is answered with the checkpoint files it
    holds). ``what`` names the file, ``fix`` ends the sentence for a missing one."""
    path = Path(path)
    if path.is_file() or (hf_folder and (path / "config.json").is_file()):
        return None
    if not path.is_dir():
        return CheckpointError(f"{what} {str(path)!r} does not exist; {fix}.")
    inside = [str(path / n) for n in RUN_CHECKPOINTS if (path / n).is_file()]
    if inside:
        choice = " or ".join(repr(p) for p in inside)
        return CheckpointError(
            f"{what} {str(path)!r} is a folder (a deit train run); pass its checkpoint file, "
            f"{choice}."
        )
    return CheckpointError(
        f"{what} {str(path)!r} is a folder, not a checkpoint file; pass the checkpoint file "
        "(.pth, .pt, .safetensors) or a Hugging Face folder with config.json."
    )


def _refuse_export(path: Path, magic: bytes) -> None:
    """Raise the sentence for a file ``deit export`` wrote (TorchScript, ONNX): a program, not
    weights a model can be built from."""
    instead = "pass the checkpoint it was exported from (e.g. <run>/checkpoint.pth)"
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{str(path)!r} is an ONNX model (deit export), not a checkpoint; run it with "
            f"onnxruntime, or {instead}."
        )
    if not magic.startswith(b"PK"):
        return
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return  # a damaged archive: torch.load names it
    if any(n.endswith("constants.pkl") for n in names) or any("/code/" in n for n in names):
        raise CheckpointError(
            f"{str(path)!r} is a TorchScript program (deit export --format torchscript, "
            f"torch.jit.save), not a checkpoint; run it with torch.jit.load, or {instead}."
        )


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-sentence errors.

    Raises:
        CheckpointError: missing file or a folder (:func:`checkpoint_path_error`), an export
            (TorchScript, ONNX), a truncated/corrupt file, or a pickle holding objects other
            than tensors and plain containers (it is refused, never executed).
    """
    path = Path(local_file(path))  # a URL: torch.hub's cached copy
    error = checkpoint_path_error(path)
    if error is not None:
        raise error
    with open(path, "rb") as f:
        magic = f.read(4)
    _refuse_export(path, magic)
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
