"""Checkpoints: every weights file deit reads or writes, and turning one into a model.

Above :mod:`deit.models` (which never imports this package), one concern per module:

- :mod:`.errors`: :class:`CheckpointError`, the one error of this layer.
- :mod:`.safe_load`: :func:`safe_torch_load` (``torch.load(weights_only=True)``),
  :func:`refuse_non_finite`.
- :mod:`.write`: :func:`atomic_save`, :func:`save_weights`.
- :mod:`.run_checkpoint`: the file ``deit train`` writes, :class:`RunCheckpoint` (versioned).
- :mod:`.hf`: :func:`convert_hf_deit` (Hugging Face key names to DeiT's).
- :mod:`.read`: every file kind into :class:`Weights` (:func:`read_weights`).
- :mod:`.adapt`: prefix tokens, position grid (:func:`resample_pos_embed`), heads.
- :mod:`.fit`: :func:`load_state_dict_into`, :func:`fit_weights`, :func:`mismatch`,
  :func:`guess_architecture` from a state dict's keys.
- :mod:`.load`: :func:`load_checkpoint`, :func:`load_pretrained`, :func:`load_model`,
  :class:`ModelInfo`, :func:`create_model` (the registry's bare model plus weights).
"""

from .adapt import LoadReport, resample_pos_embed
from .errors import CheckpointError
from .fit import fit_weights, guess_architecture, load_state_dict_into, mismatch
from .hf import convert_hf_deit
from .load import ModelInfo, create_model, load_checkpoint, load_model, load_pretrained
from .read import Weights, read_state_dict, read_weights, strip_ddp_prefix
from .run_checkpoint import RUN_CHECKPOINT_VERSION, RunCheckpoint, is_run_checkpoint
from .safe_load import refuse_non_finite, safe_torch_load
from .write import atomic_save, save_weights

__all__ = [
    "RUN_CHECKPOINT_VERSION",
    "CheckpointError",
    "LoadReport",
    "ModelInfo",
    "RunCheckpoint",
    "Weights",
    "atomic_save",
    "convert_hf_deit",
    "create_model",
    "fit_weights",
    "guess_architecture",
    "is_run_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_pretrained",
    "load_state_dict_into",
    "mismatch",
    "read_state_dict",
    "read_weights",
    "refuse_non_finite",
    "resample_pos_embed",
    "safe_torch_load",
    "save_weights",
    "strip_ddp_prefix",
]
