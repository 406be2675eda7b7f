"""Images/s of K students trained alone (one after another) and as one batched computation
(:mod:`deit.batched`), measured in alternating rounds of one run.

Each case times full optimiser steps (forward, loss, backward, AdamW) at fixed random views:
``alone`` runs the K single students one step each, ``batched`` one step of the stack. Prints
per case the median images/s per student and for the whole process (one compute thread by
default) and the ratio batched / alone with its spread over rounds.

    python benchmarks/batched_students.py --model deit_nano_distilled_patch7_28 --ks 2 5 10
    python benchmarks/batched_students.py --quick   # smoke test (tests/test_batched.py)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from timm.loss import SoftTargetCrossEntropy

import deit
from deit.batched import BatchedStudents, batched_train_step
from deit.config import Config
from deit.distillation import DistillationLoss
from deit.optim import build_optimizer


def _students(name: str, k: int) -> list[torch.nn.Module]:
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = deit.create_model(name, num_classes=10, drop_path_rate=0.05)
        m.train()
        if hasattr(m, "set_distilled_training"):
            m.set_distilled_training(True)
        out.append(m)
    return out


def _case(name: str, k: int, batch: int, steps: int):
    """Two callables that each train the K students ``steps`` steps: alone and batched."""
    cfg = Config(model=name, batch_size=batch, lr=1e-3 * 512 / batch)
    kind = "soft" if "distilled" in name else "none"
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 10)).eval()
    criterion = DistillationLoss(SoftTargetCrossEntropy(), teacher, kind, alpha=0.9, tau=4.0)
    images = torch.randn(k, batch, 3, 28, 28)
    targets = torch.softmax(torch.randn(k, batch, 10), -1)
    singles = _students(name, k)
    opts = [build_optimizer(cfg, m) for m in singles]
    stack = BatchedStudents(_students(name, k))
    stack_opt = stack.optimizer(build_optimizer(cfg, stack.models[0]))

    def alone() -> None:
        for _ in range(steps):
            for i, (m, opt) in enumerate(zip(singles, opts)):
                loss = criterion.compute(images[i], m(images[i]), targets[i]).total
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def batched() -> None:
        for _ in range(steps):
            batched_train_step(stack, [criterion] * k, images, targets, stack_opt)

    return alone, batched


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_nano_distilled_patch7_28")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 5, 10])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="steps per round and mode")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="K 2, 2 steps, 1 round")
    a = p.parse_args(argv)
    if a.quick:
        a.ks, a.steps, a.rounds = [2], 2, 1
    torch.set_num_threads(a.threads)
    print(f"{a.model}, batch {a.batch_size}, {a.threads} thread(s), torch {torch.__version__}")
    print(
        "K | alone img/s per student | batched img/s per student | batched img/s (process) "
        "| batched / alone [min, max]"
    )
    for k in a.ks:
        alone, batched = _case(a.model, k, a.batch_size, a.steps)
        alone(), batched()  # warm-up
        t = {"alone": [], "batched": []}
        for _ in range(a.rounds):  # alternate, so that load changes hit both modes
            for mode, fn in (("alone", alone), ("batched", batched)):
                start = time.perf_counter()
                fn()
                t[mode].append(time.perf_counter() - start)
        per = {m: k * a.steps * a.batch_size / statistics.median(v) for m, v in t.items()}
        ratios = [x / y for x, y in zip(t["alone"], t["batched"])]
        print(
            f"{k} | {per['alone'] / k:.0f} | {per['batched'] / k:.0f} | {per['batched']:.0f} | "
            f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
