#!/usr/bin/env python
"""`deit train`'s loop against its own bare step and against a loop built from timm's parts.

For every case (``--cases``; default the demo's student at batch 16 and 64, DeiT-Ti 224 at
batch 32 and the demo's distilled student from stored teacher labels) three sides are timed in
one process, single-threaded (``torch.set_num_threads(1)``), A B C then C B A, round after
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

import timm.data
import timm.loss
import timm.optim
import timm.scheduler
import torch
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# deit internals, in one block so that their paths are easy to update
import deit.train.data as training_module  # noqa: E402  (--persistent patches its DataLoader)
from deit.checkpoints import create_model  # noqa: E402
from deit.config import Config, get_preset  # noqa: E402
from deit.data import build_dataset, dataset_info, subset_split  # noqa: E402
from deit.distillation import DistillationLoss  # noqa: E402
from deit.label_pass import compute_teacher_labels  # noqa: E402
from deit.models import build_classifier  # noqa: E402
from deit.optim import build_optimizer  # noqa: E402
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


def case_of(spec: str) -> Case:
    """``name:batch``: ``nano`` (the demo's student), ``nano-dist`` (its distilled twin, soft
    distillation from stored teacher logits), ``tiny`` / ``tiny-dist`` (DeiT-Ti(⚗) at 224 px,
    few steps), ``pico`` (the earlier demo student the issue measured)."""
    name, _, batch = spec.partition(":")
    b = int(batch or 16)
    kinds = {
        "nano": Case(spec, "deit_nano_patch7_28", b),
        "pico": Case(spec, "deit_pico_patch7_28", b),
        "nano-dist": Case(spec, "deit_nano_distilled_patch7_28", b, distilled=True),
        "tiny": Case(spec, "deit_tiny_patch16_224", b, 224, train_subset=3 * b, timed=1),
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
        device="cpu",
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
def _persistent_loader(*args: object, **kw: object) -> torch.utils.data.DataLoader:
    """``DataLoader`` with ``persistent_workers`` whenever it has workers (``--persistent``:
    what ``training._loader`` would build with that setting; today it passes ``False``)."""
    kw["persistent_workers"] = bool(kw.get("num_workers"))
    return torch.utils.data.DataLoader(*args, **kw)  # type: ignore[arg-type]


def deit_side(cfg: Config, persistent: bool = False) -> float:
    """images/s of the timed epochs of a real ``training.run`` (its first epoch is the warm-up)."""
    loader = training_module.DataLoader
    if persistent:
        training_module.DataLoader = _persistent_loader
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            history = run(cfg, progress=False)["history"]
    finally:
        training_module.DataLoader = loader
    rates = [h["train_images_per_s"] for h in history[1:]]
    return len(rates) / sum(1.0 / r for r in rates)  # equal epochs: images / total seconds


def bare_side(case: Case, cfg: Config) -> Callable[[], float]:
    """A closure timing ``steps`` bare steps (one epoch's worth) on batches made beforehand."""
    torch.manual_seed(0)
    model = create_model(case.model, num_classes=10, drop_path_rate=cfg.drop_path)
    if case.distilled:
        model.set_distilled_training(True)
    model.train()
    optimizer = build_optimizer(cfg, model)
    soft = timm.loss.SoftTargetCrossEntropy()
    criterion = DistillationLoss(soft, None, "soft", 0.9, 4.0, "batchmean")
    steps = case.train_subset // case.batch
    x = torch.randn(steps, case.batch, 3, case.input_size, case.input_size)
    y = torch.softmax(torch.randn(steps, case.batch, 10), -1)
    t_logits = torch.randn(steps, case.batch, 10)

    def step(i: int) -> None:
        outputs = model(x[i])
        if case.distilled:
            loss = criterion.compute(x[i], outputs, y[i], teacher_outputs=t_logits[i])[0]
        else:
            loss = soft(outputs, y[i])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed() -> float:
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        return steps * case.batch / (time.perf_counter() - start)

    timed()  # warm-up
    return timed


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
    data = build_dataset(case.data_set, None, "train", transform=tf)
    train, _, _ = subset_split(len(data), case.train_subset, cfg.val_images)
    data = torch.utils.data.Subset(data, train)
    return torch.utils.data.DataLoader(
        data,
        batch_size=case.batch,
        shuffle=True,
        num_workers=case.workers,
        drop_last=True,
        persistent_workers=case.workers > 0,  # timm's train.py: the loader lives for the run
    )


def timm_side(case: Case, cfg: Config) -> float:
    """images/s of the timed epochs of a loop assembled from timm's parts (see the module
    docstring), after one warm-up epoch; set-up is not timed."""
    torch.manual_seed(0)
    loader = _timm_loader(case, cfg)
    model = create_model(case.model, num_classes=10, drop_path_rate=cfg.drop_path).train()
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
            x, y = mixup(x, y)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
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

    def ratio(self, side: str) -> list[float]:
        """deit / ``side`` per round."""
        return [d / o for d, o in zip(self.rates["deit"], self.rates[side])]


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0], xs[0]) if xs else (float("nan"),) * 3
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def measure(
    case: Case, rounds: int, work: Path, say: Callable[[str], None], persistent: bool = False
) -> Result:
    """``rounds`` alternating rounds (A B C, C B A, ...) of the three sides of ``case``."""
    work.mkdir(parents=True, exist_ok=True)
    store = _teacher_store(case, work) if case.distilled else None
    cfg = deit_config(case, work / "run", store)
    bare = bare_side(case, cfg)
    sides: dict[str, Callable[[], float]] = {
        "bare": bare,
        "deit": lambda: deit_side(cfg, persistent),
        "timm": lambda: timm_side(case, cfg),
    }
    if case.distilled:
        del sides["timm"]
    result = Result(case)
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            result.rates[side].append(sides[side]())
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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the cases, print the table (and write ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["nano:16", "nano:64", "tiny:32", "nano-dist:16"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke test: 48 8-px digits, 1 round")
    ap.add_argument("--json", type=Path, help="also write the per-round rates here")
    ap.add_argument("--workers", type=int, default=0, help="loader worker processes (both loops)")
    ap.add_argument(
        "--persistent", action="store_true", help="deit's loader with persistent workers"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = [Case(**{**asdict(case_of(c)), "workers": args.workers}) for c in args.cases]
    if args.quick:
        quick = dict(train_subset=48, timed=1, data_set="digits")
        cases = [Case(**{**asdict(case_of(c)), **quick}) for c in ("nano:16", "nano-dist:16")]
        args.rounds = 1
    results = []
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        for i, case in enumerate(cases):
            work = Path(tmp) / str(i)
            results.append(measure(case, args.rounds, work, print, args.persistent))
    print(report(results))
    if args.json:
        rows = [{"case": asdict(r.case), "rates": r.rates} for r in results]
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
