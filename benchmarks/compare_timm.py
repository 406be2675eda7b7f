#!/usr/bin/env python
"""Our DeiT against timm's, side by side in one process, with the same weights.

For every case (``--cases``, default DeiT-Ti at batch 1 and 16, DeiT-S at batch 8) timm and each
variant of our model are timed in turn, A B C ... then ... C B A, round after round, and the
median of the per-round throughput ratios ours/timm (> 1: ours faster) is printed with its
interquartile range. Ratios of neighbouring samples survive a machine shared with other jobs far
better than absolute times; ``--busy 2`` adds two processes that each spin a core (bounded in
time, killed at the end) to measure "under load" on purpose. Variants (``--variants``):

- ``ours``: the plain reference model, eager, ``torch.inference_mode``.
- ``prefix``: :func:`deit.inference.optimize_for_inference`: the last block computes only the
  class/distillation tokens.
- ``mlp-tiles``, ``block-tiles``: two CPU tricks the model classes once had, re-created here as
  module swaps (MLP in row tiles of ~4 MiB of hidden units; blocks a few samples at a time).
- ``compiled``: ``torch.compile`` with Inductor weight freezing of the plain model.
- ``compiled-prefix``: ``optimize_for_inference(model, compile=True)``.

Also: ``--train`` (one distillation training step, DeiT-Ti distilled + a CNN teacher, against
``timm.task.TokenDistillationTask``) and ``--memory`` (peak CPU memory of one batch of 64, read
from torch.profiler's allocator events). For each case the machine's fp32 matmul rate is
measured in the same rounds and the model's FLOP/s printed as a fraction of it.

``OMP_WAIT_POLICY=PASSIVE`` is set unless the environment sets it or ``--omp-active`` is given
(see the comment below). Figures and dates: ``benchmarks/README.md``.

Usage::

    python benchmarks/compare_timm.py                       # the three cases, all variants
    python benchmarks/compare_timm.py --busy 2              # the same beside two busy processes
    python benchmarks/compare_timm.py --cases tiny:1 --variants ours prefix
"""

from __future__ import annotations

import os
import sys

# libgomp's default spin-waiting at every parallel region is ruinous on a machine shared with
# other jobs (DeiT-Ti at batch 1 measured 5-16x slower than with passive waiting, while a big
# matmul was not). It must be set before torch loads libgomp; it applies to both sides alike.
if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "--cold-compile" in sys.argv:  # an empty Inductor cache: compile times from scratch
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import deit  # noqa: E402
from deit.benchmark import count_flops  # noqa: E402
from deit.inference import optimize_for_inference  # noqa: E402

SIZES = {"tiny": "deit_tiny_patch16_224", "small": "deit_small_patch16_224"}
SIZES["base"] = "deit_base_patch16_224"
SHORT = {"tiny": "Ti", "small": "S", "base": "B"}
MM_SIZE = 2048
PARITY_TOL = 1e-5


@dataclass
class Case:
    """One comparison: medians over rounds. Throughputs in images/s, times in s, memory MiB."""

    kind: str
    model: str
    batch_size: int
    timm_ips: float = 0.0
    ours_ips: float = 0.0
    ratio: float = 0.0
    ratio_q1: float = 0.0
    ratio_q3: float = 0.0
    rounds: int = 0
    ours_mm_fraction: float | None = None
    timm_mm_fraction: float | None = None
    max_abs_diff: float | None = None
    compile_s: float | None = None
    timm_mib: float | None = None
    ours_mib: float | None = None
    note: str = ""
    vs_plain: float | None = None  # median per-round speed-up over the plain model ("ours")
    samples: list[float] = field(default_factory=list)


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def _time(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def alternate(
    fns: dict[str, Callable[[], object]],
    budget_s: float,
    min_rounds: int,
    max_rounds: int,
    mm: Callable[[], object] | None,
    sample_s: float = 0.25,
) -> dict[str, list[float]]:
    """Time the functions in turn, round after round, the order reversed every other round
    (A B C, C B A, ...); returns per-round seconds per call of each, and of one matmul under
    ``"mm"`` when given. Calls per sample make one sample about ``sample_s``; rounds run until
    ``budget_s`` is spent, within ``[min_rounds, max_rounds]``."""
    first = min(_time(f, 1) for f in fns.values())
    calls = max(1, round(sample_s / max(first, 1e-6)))
    per_round = len(fns) * calls * first + (0.3 if mm else 0)
    rounds = int(min(max_rounds, max(min_rounds, budget_s // max(per_round, 1e-6))))
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    if mm is not None:
        times["mm"] = []
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            times[n].append(_time(fns[n], calls))
        if mm is not None:
            times["mm"].append(_time(mm, 1))
    return times


def _summarise(case: Case, times: dict[str, list[float]], ours: str, flops: int) -> None:
    """Fill ``case`` from the per-round times of ``"timm"`` and ``ours``."""
    bs = case.batch_size
    ta, tb, tm = times["timm"], times[ours], times.get("mm", [])
    ratios = [a / b for a, b in zip(ta, tb)]
    case.ratio_q1, case.ratio, case.ratio_q3 = _quartiles(ratios)
    if ours != "ours" and "ours" in times:
        case.vs_plain = statistics.median(a / b for a, b in zip(times["ours"], tb))
    case.samples = ratios
    case.rounds = len(ratios)
    case.timm_ips = bs / statistics.median(ta)
    case.ours_ips = bs / statistics.median(tb)
    if tm and flops:
        mm_flops = 2.0 * MM_SIZE**3
        case.ours_mm_fraction = statistics.median(
            [flops * bs / b / (mm_flops / m) for b, m in zip(tb, tm)]
        )
        case.timm_mm_fraction = statistics.median(
            [flops * bs / a / (mm_flops / m) for a, m in zip(ta, tm)]
        )


def _line(c: Case) -> str:
    name = f"{c.kind:<15} {c.model:<22} b={c.batch_size:<3}"
    if c.kind == "memory":
        return f"{name} timm {c.timm_mib:8.1f} MiB  ours {c.ours_mib:8.1f} MiB  ours/timm {c.ours_mib / c.timm_mib:.3f}"
    s = (
        f"{name} timm {c.timm_ips:8.2f} img/s  ours {c.ours_ips:8.2f} img/s  "
        f"ours/timm {c.ratio:.3f} [IQR {c.ratio_q1:.3f}-{c.ratio_q3:.3f}, n={c.rounds}]"
    )
    if c.vs_plain is not None:
        s += f"  vs plain {c.vs_plain:.3f}"
    if c.ours_mm_fraction is not None:
        s += f"  mm-rate: ours {c.ours_mm_fraction:.0%} timm {c.timm_mm_fraction:.0%}"
    if c.max_abs_diff is not None:
        s += f"  |diff| {c.max_abs_diff:.1e}"
    if c.compile_s is not None:
        s += f"  compile {c.compile_s:.0f}s"
    if c.note:
        s += f"  {c.note}"
    return s


def make_pair(size: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """timm's model with random weights and ours loaded with timm's state dict (eval mode)."""
    name = SIZES[size]
    ref = timm.create_model(name, pretrained=False).eval()
    ours = deit.create_model(name).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _flops(model: torch.nn.Module, side: int = 224) -> int:
    """FLOPs of one image through ``model`` (counted on a ``meta`` copy)."""
    meta = copy.deepcopy(model).to("meta")
    return count_flops(meta, torch.empty(1, 3, side, side, device="meta"))


# -- candidate inference tricks ------------------------------------------------------------------
# The old in-model CPU tricks, re-created as module swaps on a copy so that each can be measured
# alone against timm and the plain model. Only what wins idle and under load is kept in
# deit.inference (see benchmarks/README.md); the others live on here as the record.
MLP_TILE_BYTES = 4 * 2**20  # row tiles of the MLP hold about this many bytes of hidden units
BLOCK_TILE_BYTES = 8 * 2**20  # sample tiles of a block: about this many bytes of MLP hidden


def _mlp_row_tiles(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode MLP in row tiles: the 4x-wide hidden activation never exists whole."""
    rows = max(128, MLP_TILE_BYTES // (4 * mlp.fc1.out_features))
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] <= rows:
        return mlp.fc2(mlp.act(mlp.fc1(x)))
    out = flat.new_empty(flat.shape[0], mlp.fc2.out_features)
    for start in range(0, flat.shape[0], rows):
        hidden = mlp.act(F.linear(flat[start : start + rows], mlp.fc1.weight, mlp.fc1.bias))
        torch.addmm(mlp.fc2.bias, hidden, mlp.fc2.weight.t(), out=out[start : start + rows])
    return out.view(*x.shape[:-1], -1)


def _block_sample_tiles(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode block a few samples at a time (every intermediate stays tile-sized)."""
    per_tile = max(1, BLOCK_TILE_BYTES // (4 * x.shape[1] * block.mlp.fc1.out_features))
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], per_tile):
        tile = x[start : start + per_tile]
        tile = tile + block.attn(block.norm1(tile))
        torch.add(tile, block.mlp(block.norm2(tile)), out=out[start : start + per_tile])
    return out


def with_swap(model: torch.nn.Module, kind: str, fn: Callable) -> torch.nn.Module:
    """A copy of ``model`` whose modules of class name ``kind`` run ``fn(module, x)``."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if type(m).__name__ == kind:
            m.forward = partial(fn, m)
    return model


def compiled_frozen(model: torch.nn.Module) -> Callable:
    """``torch.compile`` of the plain model with Inductor weight freezing (no prefix shortcut)."""
    return torch.compile(model, dynamic=False, options={"freezing": True})


VARIANTS = ("ours", "prefix", "mlp-tiles", "block-tiles", "compiled", "compiled-prefix")


def make_variants(ours: torch.nn.Module, names: list[str]) -> dict[str, Callable]:
    """The variants of our model named in ``names`` (see ``VARIANTS``), all in eval mode."""
    build = {
        "ours": lambda: ours,
        "prefix": lambda: optimize_for_inference(ours),
        "mlp-tiles": lambda: with_swap(ours, "Mlp", _mlp_row_tiles),
        "block-tiles": lambda: with_swap(ours, "Block", _block_sample_tiles),
        "compiled": lambda: compiled_frozen(ours),
        "compiled-prefix": lambda: optimize_for_inference(ours, compile=True),
    }
    return {n: build[n]() for n in names}


def run_inference(args: argparse.Namespace, mm: Callable[[], object] | None) -> list[Case]:
    """Inference cases: for each (model, batch) timm and every variant in ``args.variants`` are
    timed in the same rounds; one line per variant, its ratio against timm."""
    cases: list[Case] = []
    for size, bs in args.cases:
        ref, ours = make_pair(size)
        flops = _flops(ours)
        budget = args.budget if size != "base" else args.budget_base
        min_rounds = args.min_rounds if size != "base" else 2
        torch.manual_seed(bs)
        x = torch.randn(bs, 3, 224, 224)
        variants = make_variants(ours, args.variants)
        fns: dict[str, Callable[[], object]] = {"timm": partial(ref, x)}
        diffs, first_s = {}, {}
        with torch.inference_mode():
            expected = ref(x)
            for name, fn in variants.items():
                t0 = time.perf_counter()
                diffs[name] = (fn(x) - expected).abs().max().item()
                first_s[name] = time.perf_counter() - t0
                fns[name] = partial(fn, x)
            times = alternate(fns, budget, min_rounds, args.max_rounds, mm)
        for name in variants:
            c = Case(name, SIZES[size], bs, max_abs_diff=diffs[name])
            if name.startswith("compiled"):
                c.compile_s = first_s[name]
            _summarise(c, times, name, flops)
            print(_line(c), flush=True)
            cases.append(c)
        torch._dynamo.reset()
    return cases


def peak_memory_mib(fn: Callable[[], object], baseline_bytes: int = 0) -> tuple[float, str]:
    """CPU peak memory of one call of ``fn`` in MiB: ``baseline_bytes`` (weights and input) + the
    peak of the running sum of PyTorch's CPU allocator events recorded by ``torch.profiler``
    (``profile_memory=True``; read through private result fields, hence a tool, not library)."""
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence kineto's "no GPU" complaints
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cpu = torch._C._autograd.DeviceType.CPU
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == cpu
    ]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return (baseline_bytes + peak) / 2**20, "cpu: weights+input + torch.profiler allocator peak"


def run_memory(args: argparse.Namespace) -> list[Case]:
    """Peak memory of one inference batch of ``args.memory_batch`` (MiB), ours vs timm."""
    cases = []
    for size in dict.fromkeys(size for size, _ in args.cases):
        ref, ours = make_pair(size)
        x = torch.randn(args.memory_batch, 3, 224, 224)
        base = sum(p.numel() * p.element_size() for p in ours.parameters())
        base += x.numel() * x.element_size()
        with torch.inference_mode():
            ref(x[:1]), ours(x[:1])
            t, _ = peak_memory_mib(partial(ref, x), base)
            o, method = peak_memory_mib(partial(ours, x), base)
        c = Case("memory", SIZES[size], args.memory_batch, timm_mib=t, ours_mib=o, note=method)
        print(_line(c), flush=True)
        cases.append(c)
    return cases


def run_train(args: argparse.Namespace) -> list[Case]:
    """Distillation training step: DeiT-Ti distilled + CNN teacher, ours vs timm."""
    from timm.task import DistillationTeacher, TokenDistillationTask

    name = "deit_tiny_distilled_patch16_224"
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).train()
    ours = deit.create_model(name).train()
    ours.load_state_dict(ref.state_dict())
    ours.set_distilled_training(True)
    teacher = DistillationTeacher(timm.create_model(args.teacher, pretrained=False), 1000)
    teacher.requires_grad_(False)
    task = TokenDistillationTask(
        ref,
        teacher,
        criterion=torch.nn.CrossEntropyLoss(),
        distill_type="hard",
        task_loss_weight=0.5,
        verbose=False,
    )
    mean = torch.tensor(ours.default_cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(ours.default_cfg["std"]).view(1, -1, 1, 1)
    opt_t = torch.optim.AdamW(ref.parameters(), lr=5e-4, weight_decay=0.05)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=5e-4, weight_decay=0.05)
    bs = args.train_batch_size
    x = torch.randn(bs, 3, 224, 224)
    y = torch.randint(0, 1000, (bs,))

    def ours_loss() -> torch.Tensor:
        cls_logits, dist_logits = ours(x)
        with torch.no_grad():
            t_logits = teacher(teacher.normalize_input(x, mean, std))
        return 0.5 * F.cross_entropy(cls_logits, y) + 0.5 * F.cross_entropy(
            dist_logits, t_logits.argmax(dim=-1)
        )

    loss_t, loss_o = task(x, y)["loss"].item(), ours_loss().item()

    def step_timm() -> None:
        loss = task(x, y)["loss"]
        opt_t.zero_grad(set_to_none=True)
        loss.backward()
        opt_t.step()

    def step_ours() -> None:
        loss = ours_loss()
        opt_o.zero_grad(set_to_none=True)
        loss.backward()
        opt_o.step()

    cases = []
    fns = {"timm": step_timm, "ours": step_ours}
    times = alternate(fns, args.budget, args.min_rounds, args.max_rounds, mm=None)
    c = Case("train", name + f" + {args.teacher}", bs, max_abs_diff=abs(loss_t - loss_o))
    c.note = "(fwd+teacher+bwd+AdamW; |diff| = first-step loss)"
    _summarise(c, times, "ours", 0)
    print(_line(c), flush=True)
    cases.append(c)
    if args.fused_adamw:
        opt_o = torch.optim.AdamW(ours.parameters(), lr=5e-4, weight_decay=0.05, fused=True)
        times = alternate(fns, args.budget, args.min_rounds, args.max_rounds, mm=None)
        c = Case("train", name + f" + {args.teacher}", bs)
        c.note = "(ours: AdamW(fused=True); timm: default AdamW)"
        _summarise(c, times, "ours", 0)
        print(_line(c), flush=True)
        cases.append(c)
    return cases


def busy_processes(n: int, seconds: float) -> list[subprocess.Popen]:
    """Start ``n`` processes that each spin one core for at most ``seconds`` (bounded loops, so
    none outlives the run even if this one is killed); stop them with :func:`stop`."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    """Kill the processes started by :func:`busy_processes` (by handle) and reap them."""
    for proc in procs:
        proc.kill()
        proc.wait()


def _parse_case(text: str) -> tuple[str, int]:
    size, _, batch = text.partition(":")
    if size not in SIZES or not batch.isdigit():
        raise argparse.ArgumentTypeError(f"expected SIZE:BATCH with SIZE in {list(SIZES)}")
    return size, int(batch)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cases",
        nargs="+",
        type=_parse_case,
        default=[("tiny", 1), ("tiny", 16), ("small", 8)],
        help="SIZE:BATCH pairs (default tiny:1 tiny:16 small:8)",
    )
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--busy", type=int, default=0, help="busy processes beside the run (load)")
    p.add_argument("--budget", type=float, default=30.0, help="seconds per Ti/S case")
    p.add_argument("--budget-base", type=float, default=120.0, help="seconds per B case")
    p.add_argument("--min-rounds", type=int, default=6)
    p.add_argument("--max-rounds", type=int, default=200)
    p.add_argument("--threads", type=int, help="torch threads for both sides")
    p.add_argument("--train", action="store_true", help="also the distillation training step")
    p.add_argument("--teacher", default="resnet18", help="timm CNN teacher (random weights)")
    p.add_argument("--train-batch-size", type=int, default=32)
    p.add_argument("--fused-adamw", action="store_true", help="extra train line, fused AdamW")
    p.add_argument("--omp-active", action="store_true", help="keep libgomp's spin-waiting")
    p.add_argument(
        "--cold-compile", action="store_true", help="empty Inductor cache (true compile times)"
    )
    p.add_argument("--memory", action="store_true", help="also peak memory of one batch")
    p.add_argument("--memory-batch", type=int, default=64)
    p.add_argument("--no-mm", dest="mm", action="store_false", help="skip the matmul yardstick")
    p.add_argument("--json", help="write all cases to this JSON file")
    return p.parse_args(argv)


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; prints one line per case and a SUMMARY line; returns 0."""
    args = _args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    busy = busy_processes(args.busy, seconds=3600) if args.busy else []
    try:
        start = time.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"# {start}  torch {torch.__version__}  timm {timm.__version__}  threads "
            f"{torch.get_num_threads()}  OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}"
            f"  busy processes {args.busy}  {_load()}",
            flush=True,
        )
        mm = None
        if args.mm:
            a, b = torch.randn(MM_SIZE, MM_SIZE), torch.randn(MM_SIZE, MM_SIZE)
            mm = lambda: torch.mm(a, b)  # noqa: E731
            mm()
            rate = 2.0 * MM_SIZE**3 / statistics.median([_time(mm, 1) for _ in range(5)])
            print(
                f"# matmul rate now ({MM_SIZE}x{MM_SIZE} fp32 torch.mm): {rate / 1e9:.1f} GFLOP/s"
            )
        cases = run_inference(args, mm)
        if args.train:
            cases += run_train(args)
        if args.memory:
            cases += run_memory(args)
    finally:
        stop(busy)
    print(summary(cases), flush=True)
    print(f"# finished {time.strftime('%H:%M:%S')}  {_load()}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"start": start, "busy": args.busy, "cases": [asdict(c) for c in cases]})
        )
    return 0


def summary(cases: list[Case]) -> str:
    """One line: per variant the worst ratio to timm over the cases, then training and memory."""
    parts = []
    for name in VARIANTS:
        mine = [c for c in cases if c.kind == name]
        if mine:
            worst = min(mine, key=lambda c: c.ratio)
            each = ", ".join(
                f"{_short(c)} b{c.batch_size} {c.ratio:.3f}"
                + (f" ({c.vs_plain:.3f} of plain)" if c.vs_plain else "")
                for c in mine
            )
            parts.append(f"{name}: min {worst.ratio:.3f} ({each})")
    for c in cases:
        if c.kind == "train":
            fused = " (ours fused AdamW)" if "fused" in c.note else ""
            parts.append(f"train Ti-distilled step ours/timm {c.ratio:.3f}{fused}")
        if c.kind == "memory":
            parts.append(f"mem {_short(c)} b{c.batch_size} ours/timm {c.ours_mib / c.timm_mib:.2f}")
    return "SUMMARY: " + "; ".join(parts)


def _size_of(c: Case) -> str:
    return next((k for k, v in SIZES.items() if c.model.startswith(v)), "?")


def _short(c: Case) -> str:
    return SHORT.get(_size_of(c), c.model)


if __name__ == "__main__":
    sys.exit(main())
