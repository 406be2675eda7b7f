"""`deit demo`: the paper's claim as a small controlled study on 5,000 real MNIST digits (CPU).

For every seed, a CNN teacher and DeiT students — without distillation, and distilled through the
distillation token in the soft setting that gained most while the demo was tuned (``--full``
adds hard distillation and the paper's soft setting) — train on the same ``N`` digits with the
same budget, data order and seed (paired by seed), and are evaluated on every mnist5k digit none
of them trained on. The report gives each model's mean top-1 and each distilled student's gain
over the plain one with a 95 % confidence interval (paired t-interval over seeds), and how often
the teacher's top class differed from the true label on the students' training views.
``deit demo --curve`` repeats the study over several ``N``: the data-efficiency curve.

Every run goes through :func:`deit.train.run` (what ``deit train`` calls, with
``--train-subset N --eval-unused``); runs are spread over worker processes. When a seed has
several distilled students (``--full``, ``--curve``) they see the same views, so the teacher's
outputs on them are computed once per seed (:func:`deit.label_pass.compute_teacher_labels`,
full fp16 logits) and every distilled student reads them (``--teacher-labels``); the report
says how many seconds of teacher forward that avoided. A single distilled student runs its
teacher online.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._write import atomic_write, atomic_write_text
from .figures import curve_figure, top1_figure
from .report import machine, markdown
from .settings import LEADING, DemoSettings
from .stats import _r, summarize
from .study import _execute, _jobs, _prune

__all__ = ["add_subcommand", "run_demo"]

# `deit demo --help`: the docstring above in plain words, without the markup
_DESCRIPTION = f"""The paper's claim as a small controlled study on 5,000 real MNIST digits (CPU).

For every seed, a CNN teacher and two DeiT students train on the same N digits with the same
budget, data order and seed: one without distillation, one distilled through the distillation
token in the setting that gained most while the demo was tuned:
{LEADING.label[6:]}.
--full adds hard distillation and the paper's soft setting (tau 3, alpha 0.1); --curve repeats
the study over several N (the data-efficiency curve); --quick is a smoke run of the same
pipeline in about a minute, whose numbers are not results.

Every model is scored on the mnist5k digits none of them trained on; the report gives each
model's mean top-1 and the distilled student's gain over the plain one with a 95 % interval
(paired t-interval over seeds), beside scikit-learn baselines on the same pixels. Each run is a
`deit train` run; the demo's seed-0 runs by hand: deit train --preset demo_teacher, then
--preset demo_student (README, "The jobs").
"""


def _check(s: DemoSettings) -> None:
    if not s.seeds or not s.train_images:
        raise ValueError("The demo needs at least one seed and one training-set size.")
    if max(s.train_images) + s.val_images >= 4000 or min(s.train_images) < 10:
        raise ValueError(
            f"train_images {sorted(s.train_images)} must lie between 10 and "
            f"{3999 - s.val_images:,}: mnist5k's training split holds 4,000, {s.val_images:,} "
            "of them are validation digits and the digits left out are the held-out set."
        )
    if s.keep_checkpoints not in ("first", "all", "none"):
        raise ValueError(
            f"keep_checkpoints is {s.keep_checkpoints!r}; use 'first', 'all' or 'none'."
        )


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the study and write ``results.json``, ``results.md`` and the figure.

    Writes under ``settings.output_dir``: ``n<N>/seed<S>/<variant>/`` (each a ``deit train``
    folder: ``config.yaml``, ``log.txt``, and ``checkpoint.pth`` for the kept runs),
    ``results.json`` (``runs``: one record per run with ``variant`` (plus ``alpha``/``tau``
    for soft), ``seed``, ``train_images``, ``test_images``, ``top1`` in %; ``summary`` as
    :func:`summarize`; ``teacher_labels``: one record per label pass with its
    ``teacher_seconds``, ``students`` and ``teacher_seconds_saved``, and their sum
    ``teacher_seconds_saved``), ``results.md`` and ``top1.png`` (one size) or
    ``data_efficiency.png``; each seed's label store in ``n<N>/seed<S>/teacher_labels/``.

    Raises:
        ValueError: an empty seed or size list, or a size the training split cannot hold.
    """
    s = settings
    _check(s)
    out = Path(s.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    def say(msg: str) -> None:
        if s.progress:
            print(f"[demo {time.time() - start:5.0f}s] {msg}", file=sys.stderr, flush=True)

    from ..baselines import fit_baselines  # numpy, scikit-learn: not for `deit demo --help`

    runs, passes = _execute(s, _jobs(s, out), say)
    _prune(s, runs)
    baselines = [b for n in s.train_images for b in fit_baselines("mnist5k", n, s.val_images)]
    results: dict[str, Any] = {
        "settings": {**asdict(s), "variants": [v.record() for v in s.variants]},
        "machine": machine(),
        "seconds": round(time.time() - start, 1),
        "runs": runs,
        "summary": summarize(runs),
        "baselines": baselines,
        "teacher_labels": passes,
        "teacher_seconds_saved": _r(sum(p["teacher_seconds_saved"] for p in passes)),
    }
    figure = curve_figure if len(s.train_images) > 1 else top1_figure
    path = out / ("data_efficiency.png" if len(s.train_images) > 1 else "top1.png")
    fig = figure(results)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    results["figure"] = str(path)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "results.md", markdown(results))
    say(f"done in {results['seconds']:.0f} s; results in {out}")
    return results


def _demo_cmd(args: argparse.Namespace) -> int:
    kw: dict[str, Any] = {"progress": not args.no_progress}
    for key in ("output_dir", "processes", "teacher_images", "student_images"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    for key in ("seeds", "train_images"):
        if getattr(args, key):
            kw[key] = tuple(getattr(args, key))
    maker = (
        DemoSettings.quick
        if args.quick
        else DemoSettings.full
        if args.full
        else DemoSettings.curve
        if args.curve
        else DemoSettings
    )
    results = run_demo(maker(**kw))
    print(Path(results["figure"]).parent.joinpath("results.md").read_text())
    print(f"figure: {results['figure']}")
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit demo``."""
    p = sub.add_parser(
        "demo",
        help="a CNN teacher and DeiT students on real MNIST digits: distillation gain, 95 %% CI",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output-dir", default=None, help="where runs and results go")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="smoke run of the same pipeline (about a minute; its numbers are not results)",
    )
    mode.add_argument(
        "--full",
        action="store_true",
        help="also hard distillation and the paper's soft setting, with their intervals",
    )
    mode.add_argument("--curve", action="store_true", help="the data-efficiency curve")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2 3 4)")
    p.add_argument("--train-images", type=int, nargs="+", help="training-set sizes N")
    p.add_argument("--teacher-images", type=int, help="teacher budget in image-steps")
    p.add_argument("--student-images", type=int, help="student budget in image-steps")
    p.add_argument("--processes", type=int, help="worker processes (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="print nothing while running")
    p.set_defaults(func=_demo_cmd)
