#!/usr/bin/env python
"""Inference throughput of our DeiT-Ti/S/B against timm's same models, in one process, with the
same weights, under the same autocast (``benchmarks/gpu_check.sh`` runs it on a GPU).

Per model: timm's ``deit_*_patch16_224`` with random weights, ours built by
:func:`deit.checkpoints.create_model` and loaded with those weights, then
:func:`deit.inference.optimize_for_inference` (what ``deit benchmark`` times). The batch is the
largest power of two (up to ``--max-batch``) at which timm's model runs without running out of
memory (``--batch`` fixes it); both sides use it. The two sides are timed alternately, A B then
B A, ``--rounds`` times (each a median of blocks of at least ``--min-time`` seconds, the device
synchronised around each block); printed: images/s of each, the median ratio ours/timm, the
peak memory of each (CUDA), and the largest |logit difference|.

Usage::

    python benchmarks/gpu_vs_timm.py --device cuda --amp bf16
    python benchmarks/gpu_vs_timm.py --quick              # CPU smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deit.checkpoints import create_model  # noqa: E402
from deit.inference import optimize_for_inference  # noqa: E402
from deit.precision import set_cuda_backends  # noqa: E402

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    dtype = DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def _rate(model: torch.nn.Module, x: torch.Tensor, amp: str, min_time: float) -> float:
    """images/s: the median of 3 blocks of calls, each block at least ``min_time`` seconds."""
    rates = []
    with torch.inference_mode(), _autocast(x.device, amp):
        model(x)  # warm-up
        for _ in range(3):
            _sync(x.device)
            n, start = 0, time.perf_counter()
            while True:
                model(x)
                n += 1
                _sync(x.device)
                if time.perf_counter() - start >= min_time:
                    break
            rates.append(n * x.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def largest_batch(model: torch.nn.Module, device: torch.device, amp: str, cap: int) -> int:
    """The largest power of two up to ``cap`` at which ``model`` runs a forward pass."""
    batch, best = 1, 1
    while batch <= cap:
        try:
            with torch.inference_mode(), _autocast(device, amp):
                model(torch.randn(batch, 3, 224, 224, device=device))
            _sync(device)
            best, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return best


def _peak_mib(model: torch.nn.Module, x: torch.Tensor, amp: str) -> float | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(x.device)
    with torch.inference_mode(), _autocast(x.device, amp):
        model(x)
    _sync(x.device)
    return torch.cuda.max_memory_allocated(x.device) / 2**20


def compare(name: str, device: torch.device, args: argparse.Namespace) -> str:
    """One model: a Markdown table row."""
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval().to(device)
    ours = create_model(name, num_classes=ref.num_classes)
    ours.load_state_dict(ref.state_dict())
    ours = optimize_for_inference(ours.eval().to(device))
    batch = args.batch or largest_batch(ref, device, args.amp, args.max_batch)
    x = torch.randn(batch, 3, 224, 224, device=device)
    with torch.inference_mode(), _autocast(device, args.amp):
        diff = (ours(x).float() - ref(x).float()).abs().max().item()
    rates: dict[str, list[float]] = {"ours": [], "timm": []}
    sides = {"ours": ours, "timm": ref}
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else reversed(list(sides)):
            rates[side].append(_rate(sides[side], x, args.amp, args.min_time))
    ratio = statistics.median(o / t for o, t in zip(rates["ours"], rates["timm"]))
    mem = [_peak_mib(m, x, args.amp) for m in (ours, ref)]
    mems = " | ".join(f"{m:.0f}" if m is not None else "–" for m in mem)
    med = {s: statistics.median(v) for s, v in rates.items()}
    return (
        f"| {name} | {batch} | {args.amp} | {med['ours']:.1f} | {med['timm']:.1f} | "
        f"{ratio:.3f} | {mems} | {diff:.2e} |"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse flags, compare each model, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", choices=tuple(DTYPES), default="bf16")
    ap.add_argument("--batch", type=int, help="default: the largest power of two that fits")
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per timed block")
    ap.add_argument("--quick", action="store_true", help="DeiT-Ti, batch 2, fp32, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.amp, args.rounds, args.min_time = (
            [MODELS[0]],
            2,
            "fp32",
            1,
            0.1,
        )
    device = torch.device(args.device)
    set_cuda_backends(device)  # deit train's cuDNN / TF32 settings, for both sides
    print(
        "| model | batch | amp | ours img/s | timm img/s | ours/timm | ours peak MiB "
        "| timm peak MiB | max abs logit diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        print(compare(name, device, args), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
