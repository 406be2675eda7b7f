"""The check every weights reader makes: no NaN or infinite value in a state dict's tensors.

Below :mod:`deit.checkpoints.read` and :mod:`deit.checkpoints.run_checkpoint` (both use it).
"""

from __future__ import annotations

import torch

from .errors import CheckpointError

__all__ = ["refuse_non_finite"]


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
