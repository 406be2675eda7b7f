#!/usr/bin/env python
"""What a CPU loader worker's batch costs on its way back: torch's shared tensors against the
numpy arrays deit's CPU loader hands back by value (``deit.train.data._ByValueLoader``).

One worker, one compute thread, batches ready-made (the worker only collates), so the time per
batch is the hand-off alone. The two loaders alternate, A B then B A, round after round; the
medians of the milliseconds per batch and of the per-round ratio shared/by-value are printed.

    python benchmarks/loader_handoff.py --batch 16 --size 28 --batches 400 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset

from deit.train.data import _ByValueLoader, _collate_to_numpy


class _Views(Dataset):
    """``n`` fixed (3, size, size) float images with int labels, as the demo's views."""

    def __init__(self, n: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], i % 10


def _ms_per_batch(loader: DataLoader) -> float:
    it = iter(loader)
    next(it)  # the worker is up
    t0 = time.perf_counter()
    n = sum(1 for _ in it)
    return 1000 * (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> int:
    """Parse flags, time both loaders in alternating rounds, print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=28, help="image side in pixels")
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = _Views(args.batch * args.batches, args.size)
    kw = dict(batch_size=args.batch, num_workers=1, persistent_workers=False)
    sides = {
        "shared": lambda: DataLoader(data, **kw),
        "by-value": lambda: _ByValueLoader(data, collate_fn=_collate_to_numpy, **kw),
    }
    ms: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            ms[name].append(_ms_per_batch(sides[name]()))
    ratios = [a / b for a, b in zip(ms["shared"], ms["by-value"], strict=True)]
    for name, values in ms.items():
        print(f"{name:9s} {statistics.median(values):.3f} ms per batch")
    print(f"shared/by-value {statistics.median(ratios):.2f} (median of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
