"""Weights named by URL: fetched once into torch.hub's cache, as the official DeiT code does.

The official ``main.py`` reads ``--finetune``, ``--resume`` and ``--teacher-path`` beginning with
``https`` through ``torch.hub.load_state_dict_from_url(..., check_hash=True)``. :func:`local_file`
keeps that behaviour for every reader in deit: the file lands in
``$TORCH_HOME/hub/checkpoints/<name>`` (hash-checked when its name carries a hash prefix, as the
official files do), later runs read it from there, and it is then read like any local file
(``weights_only=True``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from .errors import CheckpointError

__all__ = ["is_url", "local_file", "hub_checkpoint_dir"]


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is a URL (``http://``, ``https://``) rather than a file name. A
    :class:`~pathlib.Path` never is: it has already folded the ``//``."""
    return isinstance(path, str) and path.startswith(("https://", "http://"))


def hub_checkpoint_dir() -> Path:
    """torch.hub's weight cache, ``$TORCH_HOME/hub/checkpoints``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def local_file(path: str | Path, what: str = "checkpoint") -> str | Path:
    """``path`` itself, or for a URL the file in torch.hub's cache, downloaded when absent.

    Args:
        path: a file or folder name, or a URL.
        what: how the message names the file (``"teacher checkpoint"``).

    Raises:
        CheckpointError: the download failed (no network, an HTTP error, a hash that does not
            match): one sentence naming the URL and where to put the file by hand.
    """
    if not is_url(path):
        return path
    import torch.hub

    url = str(path)
    name = os.path.basename(urlparse(url).path)
    cached = hub_checkpoint_dir() / name
    if cached.is_file():
        return cached
    found = torch.hub.HASH_REGEX.search(name)  # official names: <name>-<8 hex digits>.pth
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), found[1] if found else None)
    except Exception as e:  # URLError, socket errors, HTTP errors, a hash mismatch: one sentence
        raise CheckpointError(
            f"Could not download the {what} {url} ({type(e).__name__}: {str(e)[:120]}); "
            f"download {name} where a network is available and place it in {cached.parent} "
            "(the same URL then reads it from there), or pass the file's local path."
        ) from None
    return cached
