"""Learning curves of the demo's students on validation digits (issue: budgets from curves).

Every run trains on the demo's ``N`` training digits and is evaluated every few epochs on
``--val-images`` digits carved from the unused training digits (``deit train --val-images``):
digits the demo never reports on. Tuning seeds (default 100, 101) are not the demo's seeds
either. Each named setting is a set of ``deit train`` overrides on top of the demo's student
configuration; distilled students read the seed's teacher online (fp32), trained once per seed
with the demo's teacher recipe.

Usage::

    python benchmarks/demo_curves.py --settings demo nano_p4 --budget 64000 --points 8 \\
        --out runs/curves/curves.jsonl

Each finished run appends one JSON line: setting, variant, seed, budget, seconds, final top-1
and ``curve`` ([epoch, image-steps, top-1] at every evaluation). ``--report FILE`` prints a
table of mean top-1 per setting, variant and image-steps over the seeds in a JSONL file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from deit.demo import (
    HARD,
    LEADING,
    NONE,
    PAPER_SOFT,
    TEACHER,
    DemoSettings,
    Variant,
)
from deit.demo.settings import RunSpec
from deit.demo.study import _config, _init_worker, _Job
from deit.demo.study import _train as demo_train

#: Named settings: ``deit train`` overrides of the demo's student configuration.
SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {},
    "pico_p7": {"model": "deit_pico_patch7_28"},
    "nano_p7": {"model": "deit_nano_patch7_28"},
    "nano_p4": {"model": "deit_nano_patch4_28"},
    "pico_p4": {"model": "deit_pico_patch4_28"},
    "light_aug": {"aa": "rand-m3-mstd0.5-inc1", "cutmix": 0.0, "mixup": 0.0, "reprob": 0.0},
    "no_cutmix": {"cutmix": 0.0, "mixup_prob": 0.5},
    "lr2x": {"lr": 6.4e-2},
    "nano_p7_lr2x": {"model": "deit_nano_patch7_28", "lr": 6.4e-2},
    "nano_p7_b32": {"model": "deit_nano_patch7_28", "batch_size": 32, "lr": 3.2e-2},
    "nano_p7_b32_x2": {"model": "deit_nano_patch7_28", "batch_size": 32, "lr": 3.2e-2},
    "nano_p7_b64": {"model": "deit_nano_patch7_28", "batch_size": 64, "lr": 3.2e-2},
    "nano_p7_b64_lr_half": {"model": "deit_nano_patch7_28", "batch_size": 64, "lr": 1.6e-2},
    "nano_p7_b32_lr_half": {"model": "deit_nano_patch7_28", "batch_size": 32, "lr": 1.6e-2},
}
VARIANTS = {
    "none": NONE,
    "leading": LEADING,
    "hard": HARD,
    "paper_soft": PAPER_SOFT,
    "soft_t2": Variant("soft", alpha=0.9, tau=2.0, kl_reduction="batchmean"),
    "soft_t1": Variant("soft", alpha=0.9, tau=1.0, kl_reduction="batchmean"),
}


def _student(
    s: DemoSettings, out: Path, name: str, v: Variant, seed: int, a: argparse.Namespace
) -> dict[str, Any]:
    job = _Job(RunSpec(v), a.n, seed, out / name / f"seed{seed}" / v.key)
    cfg = _config(s, job)
    over = dict(SETTINGS[name])
    if v.variant != "none" and "model" in over:
        over["model"] = over["model"].replace("_patch", "_distilled_patch")
    cfg.update(over)
    cfg["eval_interval"] = max(1, cfg["epochs"] // a.points)
    cfg.update(eval_unused=False, val_images=a.val_images, teacher_labels="")
    if v.variant != "none":
        cfg.update(teacher_path=str(out / "teachers" / f"seed{seed}" / "checkpoint.pth"))
        cfg.update(teacher_precision="fp32")
    return cfg


def _teacher(s: DemoSettings, out: Path, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    job = _Job(RunSpec(TEACHER), a.n, seed, out / "teachers" / f"seed{seed}")
    cfg = _config(s, job)
    cfg.update(eval_unused=False, val_images=a.val_images)
    return cfg


def _cut(s: DemoSettings, out: Path, seed: int, budget: int) -> dict[str, Any]:
    """The teacher's configuration at another image-step budget, in its own folder."""
    epochs = s.epochs(budget, 500)
    return {
        "epochs": epochs,
        "warmup_epochs": max(1, round(0.1 * epochs)),
        "eval_interval": max(1, epochs // 4),
        "output_dir": str(out / f"teachers_b{budget}" / f"seed{seed}"),
    }


def _finetune(
    s: DemoSettings, out: Path, a: argparse.Namespace, v: Variant, seed: int, lr: float
) -> dict[str, Any]:
    """A student of ``--finetune-from`` fine-tuned at ``--finetune-size`` with base lr ``lr``
    for ``--budget`` image-steps (the distilled one keeps its teacher)."""
    cfg = _student(s, out, a.finetune_from, v, seed, a)
    cfg.update(
        finetune=str(Path(cfg["output_dir"]) / "checkpoint.pth"),
        input_size=a.finetune_size,
        lr=lr,
        output_dir=str(out / f"ft{a.finetune_size}_lr{lr:g}" / f"seed{seed}" / v.key),
    )
    return cfg


def _run(cfg: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    rec = demo_train(cfg)
    return {**meta, **rec}


def main(argv: list[str] | None = None) -> int:
    """Run the named settings' learning curves (or ``--report`` a JSONL file)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=["demo"], choices=sorted(SETTINGS))
    p.add_argument("--variants", nargs="+", default=["none", "leading"], choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101])
    p.add_argument("--n", type=int, default=500, help="training digits")
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--budget", type=int, default=64_000, help="image-steps per student")
    p.add_argument("--points", type=int, default=8, help="evaluations per run")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--out", default="runs/curves/curves.jsonl")
    p.add_argument(
        "--teacher-budgets",
        type=int,
        nargs="*",
        default=[],
        help="also CNN teachers cut to these image-step budgets (matching a teacher's accuracy)",
    )
    p.add_argument(
        "--finetune-from",
        default="",
        help="a setting whose students (same seeds, variants, budget) are fine-tuned instead",
    )
    p.add_argument("--finetune-size", type=int, default=42, help="fine-tuning input size (px)")
    p.add_argument("--finetune-lrs", type=float, nargs="*", default=[], help="base lrs to try")
    p.add_argument("--report", default="", help="print the table of a JSONL file and stop")
    p.add_argument("--figure", default="", help="with --report: also draw the curves here")
    a = p.parse_args(argv)
    if a.report:
        report(Path(a.report))
        if a.figure:
            figure(Path(a.report), Path(a.figure))
        return 0
    out = Path(a.out).parent
    out.mkdir(parents=True, exist_ok=True)
    s = DemoSettings(output_dir=str(out), student_images=a.budget)
    teachers = [
        (_teacher(s, out, seed, a), {"setting": "teacher", "variant": "teacher", "seed": seed})
        for seed in a.seeds
        if not (out / "teachers" / f"seed{seed}" / "checkpoint.pth").is_file()
    ]
    teachers += [
        (
            {**_teacher(s, out, seed, a), **_cut(s, out, seed, b)},
            {"setting": f"teacher_b{b}", "variant": "teacher", "seed": seed, "budget": b},
        )
        for b in a.teacher_budgets
        for seed in a.seeds
    ]
    students = [
        (
            _student(s, out, name, VARIANTS[v], seed, a),
            {"setting": name, "variant": v, "seed": seed, "budget": a.budget},
        )
        for name in ([] if a.finetune_from else a.settings)
        for seed in a.seeds
        for v in a.variants
    ]
    students += [
        (
            _finetune(s, out, a, VARIANTS[v], seed, lr),
            {
                "setting": f"ft{a.finetune_size}_lr{lr:g}",
                "variant": v,
                "seed": seed,
                "budget": a.budget,
            },
        )
        for lr in (a.finetune_lrs if a.finetune_from else [])
        for seed in a.seeds
        for v in a.variants
    ]
    ctx = get_context("spawn")
    with (
        ProcessPoolExecutor(
            a.processes, mp_context=ctx, initializer=_init_worker, initargs=(1, os.getpid())
        ) as pool,
        open(a.out, "a") as f,
    ):
        for batch in (teachers, students):
            running = {pool.submit(_run, cfg, meta) for cfg, meta in batch}
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    rec = fut.result()
                    rec["finished"] = time.strftime("%Y-%m-%d %H:%M")
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    print(
                        f"{rec['setting']} {rec['variant']} seed {rec['seed']}: "
                        f"{rec['top1']:.2f} ({rec['seconds']:.0f} s) {rec.get('curve')}",
                        flush=True,
                    )
    return 0


def _curves(
    path: Path,
) -> tuple[dict[tuple[str, str, int], dict[int, list[float]]], dict[tuple[str, str, int], Any]]:
    """Per (setting, variant, budget): top-1 per seed at every evaluated image-step, and the
    runs' seconds."""
    rows: dict[tuple[str, str, int], dict[int, list[float]]] = {}
    secs: dict[tuple[str, str, int], list[float]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        key = (r["setting"], r["variant"], r.get("budget", 0))
        secs.setdefault(key, []).append(r["seconds"])
        for _, steps, top1 in r.get("curve") or [[0, 0, r["top1"]]]:
            rows.setdefault(key, {}).setdefault(steps, []).append(top1)
    return rows, secs


def figure(path: Path, out: Path) -> None:
    """Mean validation top-1 against image-steps, one line per setting and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, _ = _curves(path)
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for (setting, variant, budget), curve in sorted(rows.items()):
        if setting == "teacher":
            continue
        xs = sorted(curve)
        ys = [statistics.fmean(curve[x]) for x in xs]
        style = "-" if variant == "leading" else "--"
        label = f"{setting} {variant}, {budget // 1000}k-image-step schedule"
        ax.plot([x / 1000 for x in xs], ys, style, marker="o", ms=3, label=label)
    ax.set_xlabel("image-steps (thousands)")
    ax.set_ylabel("validation top-1 (%), mean over tuning seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=110)


def report(path: Path) -> None:
    """Mean top-1 over seeds per (setting, variant, budget) at every evaluated image-step."""
    rows, secs = _curves(path)
    for key, curve in sorted(rows.items()):
        pts = ", ".join(
            f"{k // 1000}k {statistics.fmean(v):.1f}" + ("" if len(v) > 1 else "*")
            for k, v in sorted(curve.items())
        )
        print(f"{key[0]:>14} {key[1]:>8} {key[2]:>6} ({statistics.fmean(secs[key]):.0f} s): {pts}")


if __name__ == "__main__":
    sys.exit(main())
