"""The file ``deit train`` writes: one typed record, :class:`RunCheckpoint`, with a version.

Every reader of a training checkpoint (resume, ``--finetune``, teachers, ``deit eval``,
``predict``, ``analyze``, ``export``) goes through :meth:`RunCheckpoint.load` /
:meth:`RunCheckpoint.from_dict`; every writer through :meth:`RunCheckpoint.save`.

On disk it is a ``torch.save`` archive of a plain dict (keys = the field names below), readable
with ``torch.load(weights_only=True)`` and, for the weights alone, by the official DeiT code
(``checkpoint["model"]``). Files written before the ``version`` key existed (version 0) hold the
same keys and load unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .safe_load import refuse_non_finite, safe_torch_load
from .write import atomic_save

__all__ = ["RUN_CHECKPOINT_VERSION", "RunCheckpoint", "is_run_checkpoint"]

#: Version written by this code. 0: files without a ``version`` key (same fields).
RUN_CHECKPOINT_VERSION = 1


def is_run_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is a run checkpoint: a dict with a ``model`` state dict and the
    ``model_name`` it belongs to."""
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "model_name" in obj


@dataclass
class RunCheckpoint:
    """Everything needed to rebuild a trained model, and to resume its run exactly.

    The model and its data:
        model: the student's state dict (no ``module.`` prefix).
        model_name: registry / timm / ``torchvision:`` name it was built from.
        num_classes, img_size (pixels, square), in_chans: the architecture's arguments.
        class_names: one name per class index.
        mean, std: input normalisation per channel; crop_pct: evaluation centre-crop ratio.
        data_set: the data set name; config: every :class:`deit.config.Config` field.
        n_parameters: trainable parameters of the model.

    The run (``None`` / defaults in weights-only files such as a teacher's):
        optimizer, scheduler, scaler: their ``state_dict()`` (scheduler/scaler may be ``None``).
        model_ema: the EMA weights, or ``None``.
        epoch: epochs completed; step: optimiser updates done; batches_done: batches of
            epoch ``epoch`` already trained (non-zero only after a stop by signal);
            epoch_stats: the training statistics of those batches (so that the resumed
            epoch's ``log.txt`` line covers the whole epoch), else ``None``.
        best_acc1: best top-1 (%) so far; history: the ``log.txt`` lines so far.
        rng: python / numpy / torch (/ cuda) RNG states, a list with one per rank when
            distributed; world_size: processes that wrote it (RNG states are restored only
            under the same world size).
        version: :data:`RUN_CHECKPOINT_VERSION` when written; 0 for older files.
    """

    model: dict[str, torch.Tensor]
    model_name: str
    num_classes: int | None = None
    img_size: int | None = None
    in_chans: int | None = None
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    crop_pct: float | None = None
    data_set: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    model_ema: dict[str, torch.Tensor] | None = None
    epoch: int = 0
    step: int = 0
    batches_done: int = 0
    epoch_stats: dict[str, float] | None = None
    best_acc1: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: Any = None
    world_size: int = 1
    n_parameters: int | None = None
    version: int = RUN_CHECKPOINT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The dict that is saved (tensors shared, not copied)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, obj: Any, source: str = "checkpoint") -> RunCheckpoint:
        """Read a loaded run checkpoint (any version); keys it does not know are ignored.

        Raises:
            deit.checkpoints.CheckpointError: ``obj`` is not a run checkpoint (no ``model`` state
                dict and ``model_name``), or it was written by a newer version of deit.
        """
        if not is_run_checkpoint(obj):
            raise CheckpointError(
                f"{source!r} is not a training checkpoint of `deit train` (no 'model' and "
                "'model_name'); pass a file written by deit train, or use --finetune for weights."
            )
        version = int(obj.get("version", 0))
        if version > RUN_CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{source!r} has checkpoint version {version}, newer than this deit reads "
                f"({RUN_CHECKPOINT_VERSION}); upgrade deit."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in obj.items() if k in names and v is not None}
        return cls(**{**kept, "version": version})

    @classmethod
    def load(cls, path: str | Path) -> RunCheckpoint:
        """Read ``path`` with ``torch.load(weights_only=True)`` (see :meth:`from_dict`).

        Raises:
            deit.checkpoints.CheckpointError: missing, unreadable or unsafe file; not a run
                checkpoint; a newer version; a NaN or infinite value in its weights or EMA
                weights (one sentence naming the file and the first such tensor, as every
                other reader: :func:`deit.checkpoints.refuse_non_finite`).
        """
        ck = cls.from_dict(safe_torch_load(path), str(path))
        refuse_non_finite(ck.model, str(path))
        if ck.model_ema is not None:
            refuse_non_finite(ck.model_ema, str(path))
        return ck

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file, fsync, rename) with the current version.

        Raises:
            OSError: the folder cannot be written.
        """
        self.version = RUN_CHECKPOINT_VERSION
        atomic_save(self.to_dict(), path)
