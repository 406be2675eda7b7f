"""The checks of values several commands take, one each: ``--batch-size`` and ``--seed``.

Every command that takes one of these values checks it here, so the same bad value gets the
same sentence everywhere (the device check is :func:`deit.precision.resolve_device`, checkpoint
paths :func:`deit.checkpoints.safe_load.checkpoint_path_error`). Imports no torch.
"""

from __future__ import annotations

__all__ = ["SEED_RANGE", "check_batch_size", "seed_problem"]

#: The seeds a run takes: a signed 64-bit integer, as torch's generators store it (they refuse
#: more than 2**64 - 1, and a run adds its rank and the epoch to the seed).
SEED_RANGE = (-(2**63), 2**63 - 1)


def check_batch_size(
    value: int | None, fix: str = "pass a positive batch size", name: str = "batch_size"
) -> None:
    """Refuse a batch size below 1 in one sentence, ended by ``fix`` (``None``: left to the
    default).

    Raises:
        ValueError: ``value`` < 1.
    """
    if value is not None and value < 1:
        raise ValueError(f"'{name}' is {value} but must be at least 1; {fix}.")


def seed_problem(value: int | None) -> str | None:
    """The sentence for a seed outside :data:`SEED_RANGE` (``None``: fine)."""
    lo, hi = SEED_RANGE
    if value is None or lo <= value <= hi:
        return None
    return (
        f"'seed' is {value} but must be a signed 64-bit integer, in [{lo}, {hi}]; pick a "
        "seed in that range."
    )
