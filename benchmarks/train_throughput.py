#!/usr/bin/env python
"""`deit train`'s loop against its own bare step and against a loop built from timm's parts.

For every case (``--cases``; default the demo's student at batch 16 and 64, DeiT-Ti 224 at
batch 32 and the demo's distilled student from stored teacher labels) three sides are timed in
one process, single-threaded by default (``--threads``), A B C then C B A, round after
round, and each round's ratios deit/bare and deit/timm are taken; the medians and interquartile
ranges of those ratios are printed with the medians of the images/s. Ratios of neighbouring
samples survive a machine shared with other jobs far better than absolute rates.

- **bare**: the step alone on batches made beforehand: forward, soft-target cross-entropy
  (with stored teacher logits: the run's :class:`~deit.distillation.DistillationLoss`),
  backward, the optimiser ``deit train`` builds (:func:`deit.optim.build_optimizer`). No data,
  no mixing, no schedule.
- **deit**: :func:`deit.train.run` (what ``deit train`` calls) with the demo's recipe: the
  ``small`` preset, CutMix + Mixup on every batch, RandAugment m6, random erasing 0.1, no crop
  padding, ``--train-subset``, ``--num_workers 0``. It runs ``1 + timed`` epochs; the rate is
  that of the timed epochs as ``train_one_epoch`` measures them (from the loader's first batch
  to the last step: loading, augmentation, mixing, step, schedule and bookkeeping; set-up,
  evaluation and checkpoints are outside), so the first epoch is the warm-up.
- **timm**: the loop a user of timm's ``train.py`` writes, on the same digits and recipe: our
  model (so only the loop differs), ``timm.data.create_transform(is_training=True)`` with the
  same RandAugment and erasing (for inputs of at most 32 px its crop swapped for the same
  Resize + RandomCrop the official DeiT code uses), a shuffling ``DataLoader``,
  ``timm.data.Mixup``, ``SoftTargetCrossEntropy``, ``timm.optim.create_optimizer_v2`` and
  ``timm.scheduler.create_scheduler_v2`` (per-step updates), ``loss.item()`` every step as
  timm's ``train.py`` logs it. One warm-up epoch, then the timed epochs. timm has no
  stored-label distillation, so the distilled cases have no timm side.

Usage::

    python benchmarks/train_throughput.py                     # the four cases, 5 rounds
    python benchmarks/train_throughput.py --cases nano:16 --rounds 9
    python benchmarks/train_throughput.py --quick             # smoke test, a few seconds
    python benchmarks/train_throughput.py --quick --workers 0 1 2   # the loader-worker cases
    python benchmarks/train_throughput.py --quick --workers 0 1 2 --prefetch 2 4  # and prefetch
    python benchmarks/train_throughput.py --cases small:128 --device cuda --amp bf16 \
        --workers 8 --jpeg 1024 --rounds 2                    # DeiT-S 224 on a GPU (gpu_check.sh)

``--workers 0 1 2`` runs every case once per worker count (deit's and timm's loaders keep their
workers across epochs), ``--prefetch 2 4`` each case with workers once per ``prefetch_factor``
(deit's loader patched: it has no flag for it); ``--device cuda --amp bf16|fp16`` runs all three sides on the GPU under
autocast (fp16 through a ``GradScaler``) and prints each side's peak GPU memory; ``--jpeg N``
trains from N synthetic 256-px JPEGs in an ImageFolder-like tree instead of the digits.

Figures, machine and date: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import timm.data
import timm.loss
import timm.optim
import timm.scheduler
import torch
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# deit internals, in one block so that their paths are easy to update
import deit.train.data as training_module  # noqa: E402  (--prefetch patches its DataLoader)
from deit.checkpoints import create_model  # noqa: E402
from deit.config import Config, get_preset  # noqa: E402
from deit.data import build_dataset, dataset_info, subset_split  # noqa: E402
from deit.distillation import DistillationLoss  # noqa: E402
from deit.label_pass import compute_teacher_labels  # noqa: E402
from deit.models import build_classifier  # noqa: E402
from deit.optim import build_optimizer  # noqa: E402
from deit.precision import resolve_precision, set_cuda_backends  # noqa: E402
from deit.train import run  # noqa: E402

SIDES = ("bare", "deit", "timm")


@dataclass(frozen=True)
class Case:
    """One comparison. ``train_subset`` digits, ``timed`` epochs after one warm-up epoch."""

    name: str
    model: str
    batch: int
    input_size: int = 28
    train_subset: int = 500
    timed: int = 2
    distilled: bool = False
    data_set: str = "mnist5k"
    workers: int = 0
    prefetch: int = 0  # batches each worker loads ahead (DataLoader prefetch_factor); 0: torch's 2
    device: str = "cpu"
    amp: str = "fp32"
    data_path: str = ""  # an ImageFolder (--jpeg): data_set "folder"


def case_of(spec: str) -> Case:
    """``name:batch``: ``nano`` (the demo's student), ``nano-dist`` (its distilled twin, soft
    distillation from stored teacher logits), ``tiny`` / ``tiny-dist`` (DeiT-Ti(⚗) at 224 px,
    few steps), ``small`` (DeiT-S 224, few steps: the GPU case), ``pico`` (the earlier demo student the issue measured)."""
    name, _, batch = spec.partition(":")
    b = int(batch or 16)
    kinds = {
        "nano": Case(spec, "deit_nano_patch7_28", b),
        "pico": Case(spec, "deit_pico_patch7_28", b),
        "nano-dist": Case(spec, "deit_nano_distilled_patch7_28", b, distilled=True),
        "tiny": Case(spec, "deit_tiny_patch16_224", b, 224, train_subset=3 * b, timed=1),
        "small": Case(spec, "deit_small_patch16_224", b, 224, train_subset=3 * b, timed=1),
        "tiny-dist": Case(
            spec, "deit_tiny_distilled_patch16_224", b, 224, 3 * b, timed=1, distilled=True
        ),
    }
    if name not in kinds:
        raise SystemExit(f"unknown case {name!r}; use one of {', '.join(kinds)}")
    return kinds[name]


def deit_config(case: Case, out: Path, store: Path | None = None) -> Config:
    """The demo's student recipe (``deit.demo``) for ``case``; ``store``: stored teacher logits."""
    cfg = get_preset("small").to_dict()
    cfg.update(
        model=case.model,
        data_set=case.data_set,
        input_size=case.input_size,
        epochs=1 + case.timed,
        warmup_epochs=0,
        batch_size=case.batch,
        lr=3.2e-2,
        train_subset=case.train_subset,
        val_images=16,  # the run's closing evaluation stays short (it is not timed)
        cutmix=1.0,
        mixup_prob=1.0,
        crop_padding=0,
        num_workers=case.workers,
        device=case.device,
        amp=case.amp,
        pin_mem=case.device != "cpu",
        data_path=case.data_path,
        eval_interval=0,
        output_dir=str(out),
        overwrite=True,
    )
    if case.distilled:
        cfg.update(distillation_type="soft", distillation_alpha=0.9, distillation_tau=4.0)
        cfg.update(kl_reduction="batchmean", teacher_model="test_resnet")
        cfg.update(teacher_path=str(out.parent / "teacher.pth"), teacher_precision="fp32")
        cfg.update(teacher_labels=str(store) if store else "")
    return Config.from_dict(cfg)


def _teacher_store(case: Case, work: Path) -> Path:
    """A CNN teacher (timm ``test_resnet``, random weights: its cost is not measured here) and
    its full logits on every view of the run, computed once (``deit teacher-labels``)."""
    torch.manual_seed(3)
    cnn = build_classifier("test_resnet", 10)
    ckpt = {"model": cnn.state_dict(), "model_name": "test_resnet", "num_classes": 10}
    torch.save(ckpt, work / "teacher.pth")
    store = work / "labels"
    cfg = deit_config(case, work / "run")
    compute_teacher_labels(cfg, store, top_k=10, teacher_batch_size=256, progress=False)
    return store


# ----------------------------------------------------------------------------- the three sides
@contextlib.contextmanager
def _prefetch(factor: int):
    """Inside: the DataLoaders ``deit train`` builds (``deit.train.data``) load ``factor``
    batches ahead per worker (``prefetch_factor``; deit has no flag for it); 0: unchanged."""
    real = training_module.DataLoader

    def loader(*args: object, **kw: object) -> torch.utils.data.DataLoader:
        if factor and kw.get("num_workers"):
            kw["prefetch_factor"] = factor
        return real(*args, **kw)  # type: ignore[arg-type]

    training_module.DataLoader = loader
    try:
        yield
    finally:
        training_module.DataLoader = real


def deit_side(cfg: Config, prefetch: int = 0) -> float:
    """images/s of the timed epochs of a real ``training.run`` (its first epoch is the warm-up;
    its loader's workers persist across epochs, as timm's do; ``prefetch``: see
    :func:`_prefetch`)."""
    with contextlib.redirect_stderr(io.StringIO()), _prefetch(prefetch):
        history = run(cfg, progress=False)["history"]
    rates = [h["train_images_per_s"] for h in history[1:]]
    return len(rates) / sum(1.0 / r for r in rates)  # equal epochs: images / total seconds


def bare_side(case: Case, cfg: Config) -> Callable[[], float]:
    """A closure timing ``steps`` bare steps (one epoch's worth) on batches made beforehand."""
    torch.manual_seed(0)
    device, precision = torch.device(case.device), resolve_precision(case.amp, case.device)
    model = create_model(case.model, num_classes=10, drop_path_rate=cfg.drop_path)
    if case.distilled:
        model.set_distilled_training(True)
    model.train().to(device)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    soft = timm.loss.SoftTargetCrossEntropy()
    criterion = DistillationLoss(soft, None, "soft", 0.9, 4.0, "batchmean")
    steps = case.train_subset // case.batch
    x = torch.randn(steps, case.batch, 3, case.input_size, case.input_size, device=device)
    y = torch.softmax(torch.randn(steps, case.batch, 10, device=device), -1)
    t_logits = torch.randn(steps, case.batch, 10, device=device)

    def step(i: int) -> None:
        with precision.autocast():
            outputs = model(x[i])
            if case.distilled:
                loss = criterion.compute(x[i], outputs, y[i], teacher_outputs=t_logits[i]).total
            else:
                loss = soft(outputs, y[i])
        optimizer.zero_grad(set_to_none=True)
        _backward(loss, optimizer, scaler)

    def timed() -> float:
        _sync(device)
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        _sync(device)
        return steps * case.batch / (time.perf_counter() - start)

    timed()  # warm-up
    return timed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: object) -> None:
    """Backward and step, through ``scaler`` (a ``GradScaler``, fp16) when given."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()  # type: ignore[attr-defined]
    scaler.step(optimizer)  # type: ignore[attr-defined]
    scaler.update()  # type: ignore[attr-defined]


def write_jpeg_folder(root: Path, images: int, side: int = 256, classes: int = 10) -> Path:
    """An ImageFolder-like tree of synthetic JPEGs (``images`` in ``train``, 2 per class in
    ``val``), ``side`` px, noise over a per-class colour: decoding and cropping cost as real
    photographs do, roughly."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", images), ("val", 2 * classes)):
        for i in range(n):
            c = i % classes
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(0, 64, (side, side, 3), dtype=np.uint8)
            Image.fromarray(noise + np.uint8(19 * c)).save(d / f"{i}.jpg", quality=90)
    return root


def _timm_loader(case: Case, cfg: Config) -> torch.utils.data.DataLoader:
    """The same ``train_subset`` digits through timm's training transform, shuffled."""
    info = dataset_info(case.data_set)
    tf = timm.data.create_transform(
        input_size=case.input_size,
        is_training=True,
        hflip=cfg.hflip,
        auto_augment=cfg.aa,
        interpolation="bicubic",
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        mean=info.mean,
        std=info.std,
    )
    if case.input_size <= 32:  # official DeiT: small inputs are not resized-cropped
        bicubic = T.InterpolationMode.BICUBIC
        tf.transforms[0:1] = [
            T.Resize(case.input_size, interpolation=bicubic),
            T.RandomCrop(case.input_size, padding=cfg.crop_padding),
        ]
    data = build_dataset(case.data_set, case.data_path or None, "train", transform=tf)
    train, _, _ = subset_split(len(data), case.train_subset, cfg.val_images)
    data = torch.utils.data.Subset(data, train)
    return torch.utils.data.DataLoader(
        data,
        batch_size=case.batch,
        shuffle=True,
        num_workers=case.workers,
        drop_last=True,
        pin_memory=case.device != "cpu",
        persistent_workers=case.workers > 0,  # timm's train.py: the loader lives for the run
        prefetch_factor=(case.prefetch or None) if case.workers else None,
    )


def timm_side(case: Case, cfg: Config) -> float:
    """images/s of the timed epochs of a loop assembled from timm's parts (see the module
    docstring), after one warm-up epoch; set-up is not timed."""
    torch.manual_seed(0)
    device, precision = torch.device(case.device), resolve_precision(case.amp, case.device)
    loader = _timm_loader(case, cfg)
    model = create_model(case.model, num_classes=10, drop_path_rate=cfg.drop_path).train()
    model.to(device)
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    mixup = timm.data.Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        label_smoothing=cfg.smoothing,
        num_classes=10,
    )
    loss_fn = timm.loss.SoftTargetCrossEntropy()
    lr = cfg.lr * case.batch / 512
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=lr, weight_decay=0.05)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, "cosine", num_epochs=1 + case.timed, step_on_epochs=False,
        updates_per_epoch=len(loader), min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr,
    )  # fmt: skip
    updates, seconds, images = 0, 0.0, 0
    for epoch in range(1 + case.timed):
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x, y = mixup(x, y)
            with precision.autocast():
                loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            _backward(loss, optimizer, scaler)
            updates += 1
            scheduler.step_update(num_updates=updates)
            loss.item()  # timm's train.py updates its loss meter every step
            images += x.shape[0] if epoch else 0
        scheduler.step(epoch + 1)
        seconds += time.perf_counter() - start if epoch else 0.0
    return images / seconds


# ----------------------------------------------------------------------------- rounds and report
@dataclass
class Result:
    """Per-round images/s of each side and the per-round ratios."""

    case: Case
    rates: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    peak_mib: dict[str, float] = field(default_factory=dict)  # CUDA: each side's peak memory

    def ratio(self, side: str) -> list[float]:
        """deit / ``side`` per round."""
        return [d / o for d, o in zip(self.rates["deit"], self.rates[side])]


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0], xs[0]) if xs else (float("nan"),) * 3
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def measure(case: Case, rounds: int, work: Path, say: Callable[[str], None]) -> Result:
    """``rounds`` alternating rounds (A B C, C B A, ...) of the three sides of ``case``."""
    work.mkdir(parents=True, exist_ok=True)
    store = _teacher_store(case, work) if case.distilled else None
    cfg = deit_config(case, work / "run", store)
    bare = bare_side(case, cfg)
    sides: dict[str, Callable[[], float]] = {
        "bare": bare,
        "deit": lambda: deit_side(cfg, case.prefetch),
        "timm": lambda: timm_side(case, cfg),
    }
    if case.distilled:
        del sides["timm"]
    result = Result(case)
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            if case.device != "cpu":
                torch.cuda.reset_peak_memory_stats(case.device)
            result.rates[side].append(sides[side]())
            if case.device != "cpu":
                peak = torch.cuda.max_memory_allocated(case.device) / 2**20
                result.peak_mib[side] = max(result.peak_mib.get(side, 0.0), peak)
        line = ", ".join(f"{s} {result.rates[s][-1]:.1f}" for s in sides)
        say(f"  {case.name} round {r + 1}/{rounds}: {line} img/s")
    return result


def report(results: list[Result]) -> str:
    """A Markdown table: median images/s per side, ratios with their IQR, rounds."""
    lines = [
        "| case | model | bare img/s | deit img/s | timm img/s | deit/bare [IQR] "
        "| deit/timm [IQR] | rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        med = {s: statistics.median(v) if v else None for s, v in res.rates.items()}
        cells = [f"{med[s]:.1f}" if med[s] else "–" for s in SIDES]
        ratios = []
        for side in ("bare", "timm"):
            if not res.rates[side]:
                ratios.append("–")
                continue
            lo, mid, hi = _quartiles(res.ratio(side))
            ratios.append(f"{mid:.3f} [{lo:.3f}, {hi:.3f}]")
        n = len(res.rates["deit"])
        lines.append(f"| {res.case.name} | {res.case.model} | {' | '.join(cells)} | "
                     f"{' | '.join(ratios)} | {n} |")  # fmt: skip
    peaks = [r for r in results if r.peak_mib]
    if peaks:
        lines += ["", "GPU memory peaks (MiB): " + "; ".join(
            f"{r.case.name}: " + ", ".join(f"{s} {v:.0f}" for s, v in r.peak_mib.items())
            for r in peaks
        )]  # fmt: skip
    return "\n".join(lines)


def _cases(args: argparse.Namespace, root: Path) -> list[Case]:
    """The cases of the flags: each of ``--cases`` (``--quick``: two on 48 8-px digits) with
    each of ``--workers``, on ``--device`` with ``--amp``, from ``--jpeg`` synthetic JPEGs."""
    specs, quick = args.cases, {}
    if args.quick:
        specs, quick = (
            ["nano:16", "nano-dist:16"],
            dict(train_subset=48, timed=1, data_set="digits"),
        )
    if args.jpeg:
        quick.update(data_set="folder", data_path=str(write_jpeg_folder(root / "jpeg", args.jpeg)))
    cases = []
    loaders = [(w, p) for w in args.workers for p in (args.prefetch if w else [0])]
    for spec in specs:
        for w, p in loaders:
            name = f"{spec} w{w}" if len(args.workers) > 1 or w else spec
            name += f" p{p}" if p else ""
            base = {**asdict(case_of(spec)), **quick, "name": name, "workers": w, "prefetch": p}
            cases.append(Case(**{**base, "device": args.device, "amp": args.amp}))
    return cases


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the cases, print the table (and write ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["nano:16", "nano:64", "tiny:32", "nano-dist:16"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke test: 48 8-px digits, 1 round")
    ap.add_argument("--json", type=Path, help="also write the per-round rates here")
    ap.add_argument(
        "--workers", type=int, nargs="+", default=[0], help="loader worker processes (both loops; "
        "several values: one case each, e.g. 0 1 2); deit's and timm's workers persist"
    )  # fmt: skip
    ap.add_argument(
        "--prefetch", type=int, nargs="+", default=[0], help="batches loaded ahead per worker "
        "(prefetch_factor, both loops; several values: one case each with workers; 0: torch's 2)"
    )  # fmt: skip
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="compute threads on the CPU")
    ap.add_argument("--amp", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--jpeg", type=int, default=0, help="N synthetic 256-px JPEGs (ImageFolder)")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    set_cuda_backends(args.device)  # deit train's cuDNN / TF32 settings, for every side
    if args.quick:
        args.rounds = 1
    results = []
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        for i, case in enumerate(_cases(args, Path(tmp))):
            if case.data_path:
                n = min(case.train_subset, args.jpeg - 16)  # val_images: 16 held out
                case = Case(**{**asdict(case), "train_subset": n})
            results.append(measure(case, args.rounds, Path(tmp) / str(i), print))
    print(report(results))
    if args.json:
        rows = [{"case": asdict(r.case), "rates": r.rates, "peak_mib": r.peak_mib} for r in results]
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
