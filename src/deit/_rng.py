"""Every RNG a run draws from: seeding, and saving / restoring their states.

A leaf (python, numpy and torch only) shared by the run (:mod:`deit.train`: seeding, the
checkpoint's RNG states) and the teacher step (:mod:`deit.teacher.for_run`: drawing the views
that check the fast teacher leaves the run's draws as they were).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "seed_everything", "seed_worker", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned (CUDA's when this machine has CUDA)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """A data-loader worker's ``worker_init_fn``: numpy and random seeded from torch's seed."""
    # each loader worker gets torch's per-worker seed; numpy and random follow it (timm does too).
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
