"""The one error of the checkpoint layer: :class:`CheckpointError`.

Every reader, fitter and loader in :mod:`deit.checkpoints` raises it, with one sentence that
names the file, what is wrong and the fix; it is a ``ValueError`` so callers that catch bad
arguments catch it too.
"""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the model."""
