"""Reading a ``torch.save`` file safely: :func:`safe_torch_load`.

Every ``.pth``/``.pt``/``.bin`` read in deit goes through ``torch.load(weights_only=True)`` here,
so an untrusted pickle never runs code. It sits below the run-checkpoint schema and the readers
of the other file kinds, which all use it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .fetch import local_file

__all__ = ["safe_torch_load"]


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-sentence errors.

    Raises:
        CheckpointError: missing file, truncated/corrupt file, or a pickle holding objects other
            than tensors and plain containers (it is refused, never executed).
    """
    path = Path(local_file(path))  # a URL: torch.hub's cached copy
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
