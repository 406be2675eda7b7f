"""`deit demo`: the paper's claims as a small controlled study on 5,000 real MNIST digits (CPU).

For every seed a CNN teacher and the same small DeiT, without distillation and distilled
through the distillation token, train on the same N digits with the same budget, data order
and seed (paired by seed), and are scored on the mnist5k digits none of them trained on (the
validation digits that settings were chosen on are left out). The report gives each model's
mean top-1 and each comparison's paired gain with a 95 % t-interval over seeds, beside
scikit-learn baselines on the same pixels.

The default run measures the headline pair (no distillation vs the leading soft setting) over
5 seeds, in about 13.5 minutes on 2 idle cores. With --full (about 80 minutes) it measures
every claim of the paper: hard vs soft vs none, hard distillation on unmixed views, a CNN vs
a transformer teacher of matched accuracy, twice the training budget, the gain against the
training-set size, fine-tuning at a larger input, and the class/distillation token cosines
through depth (docs/demo.md). --claims picks some.

Every run is a `deit train` run, recorded under the output folder when it finishes: the same
command started again (after Ctrl-C, a reboot, or with more --seeds) runs only what is missing,
and a changed setting makes new runs. --quick is a smoke run of the same pipeline, with numbers
near chance (not results). The demo's seed-0 runs by hand: deit train --preset demo_teacher,
then --preset demo_student (README, "The jobs").
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
from .figures import claim_figure, claims_figure, tokens_figure
from .report import machine, markdown
from .settings import CLAIMS, DemoSettings, claims
from .stats import paired_gain, summarize
from .study import StudyStopped, _execute, _jobs, _prune, _seeds_and_sizes

__all__ = ["add_subcommand", "run_demo"]


def _check(s: DemoSettings) -> None:
    if not s.seeds:
        raise ValueError("The demo needs at least one seed (--seeds).")
    unknown = [c for c in s.claims if c not in CLAIMS]
    if unknown:
        raise ValueError(f"Unknown claim {unknown[0]!r}; choose from {', '.join(CLAIMS)}.")
    sizes = (s.train_images, *s.curve_images)
    if max(sizes) + s.val_images >= 4000 or min(sizes) < 10:
        raise ValueError(
            f"training-set sizes {sorted(set(sizes))} must lie between 10 and "
            f"{3999 - s.val_images:,}: mnist5k's training split holds 4,000, {s.val_images:,} "
            "of them are validation digits and the digits left out are the held-out set."
        )
    if s.keep_checkpoints not in ("first", "all", "none"):
        raise ValueError(
            f"keep_checkpoints is {s.keep_checkpoints!r}; use 'first', 'all' or 'none'."
        )


def comparisons(s: DemoSettings, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim's paired comparisons (:func:`deit.demo.stats.paired_gain`) at each of its
    training-set sizes, with the claim's ``claim`` name and ``title``."""
    out = []
    known = claims(s)
    for name in s.claims:
        claim = known[name]
        seeds, sizes = _seeds_and_sizes(s, claim)
        for n in sizes:
            for treatment, control in claim.pairs:
                gain = paired_gain(runs, treatment.key, control.key, n, seeds)
                out.append({"claim": name, "title": claim.title, **gain})
    return out


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the study (only the runs not recorded yet) and write its results.

    Writes under ``settings.output_dir``: ``n<N>/seed<S>/<run>/`` (each a ``deit train``
    folder: ``config.yaml``, ``log.txt``, and ``checkpoint.pth`` for the kept runs),
    ``records/<key>.json`` (one per finished run), ``results.json`` (``runs``: one record per
    run with its ``key``, ``variant`` and departures, ``seed``, ``train_images``,
    ``test_images``, ``top1`` in %, ``curve``; ``summary`` as :func:`summarize`;
    ``comparisons`` as :func:`comparisons`; ``beside``: per claim, the keys of the runs its
    report shows beside the comparisons (the teachers compared); ``baselines``; ``computed``:
    runs computed by this call), ``results.md`` and the figures: ``top1.png`` (the headline),
    ``claim_<name>.png`` per other claim, ``claims.png`` with several claims, ``tokens.png``
    where distilled students were probed.

    Raises:
        ValueError: no seed, an unknown claim, or a size the training split cannot hold.
        StudyStopped / KeyboardInterrupt: a signal stopped it (the finished runs are kept).
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

    jobs = _jobs(s, out)
    runs, computed = _execute(s, jobs, out, say)
    _prune(s, jobs)
    sizes = sorted({r["train_images"] for r in runs})
    results: dict[str, Any] = {
        "settings": {k: v for k, v in asdict(s).items() if k != "progress"},
        "machine": machine(),
        "seconds": round(time.time() - start, 1),
        "computed": computed,
        # every run's CPU time (each run is single-threaded): the study's cost on idle cores
        "cpu_seconds": round(sum(r.get("cpu_seconds") or 0.0 for r in runs), 1),
        "runs": runs,
        "summary": summarize(runs),
        "comparisons": comparisons(s, runs),
        "beside": {name: [spec.key for spec in claims(s)[name].extra] for name in s.claims},
        "baselines": [
            b for n in sizes for b in fit_baselines("mnist5k", n, s.val_images, s.eval_unused)
        ],
    }
    _figures(results, out)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "results.md", markdown(results))
    say(f"done in {results['seconds']:.0f} s ({computed} runs computed); results in {out}")
    return results


def _figures(results: dict[str, Any], out: Path) -> None:
    """One figure per claim (``top1.png`` for the headline, ``claim_<name>.png`` for the
    others); with several claims also ``claims.png`` (the overview); ``tokens.png`` where
    students were probed."""
    measured = results["settings"]["claims"]
    figures = {
        "top1.png" if name == "headline" else f"claim_{name}.png": claim_figure(results, name)
        for name in measured
    }
    if len(measured) > 1:
        figures["claims.png"] = claims_figure(results)
    if any("token_cosine" in e for e in results["summary"]):
        figures["tokens.png"] = tokens_figure(results)
    for name, fig in figures.items():
        atomic_write(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))
    results["figure"] = str(out / next(iter(figures)))


def _settings(args: argparse.Namespace) -> DemoSettings:
    """The settings the flags ask for."""
    kw: dict[str, Any] = {"progress": not args.no_progress}
    for key in ("output_dir", "processes", "teacher_images", "student_images", "train_images"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    for key in ("seeds", "claim_seeds", "curve_images", "claims"):
        if getattr(args, key):
            kw[key] = tuple(getattr(args, key))
    if args.full:
        kw.setdefault("claims", CLAIMS)
    if args.full or args.claims:
        kw.setdefault("output_dir", "runs/demo_full")
    if args.quick:
        kw.setdefault("output_dir", "runs/demo_quick")
        return DemoSettings.quick(**kw)
    return DemoSettings(**kw)


def _words(values: tuple[int, ...]) -> str:
    return " ".join(map(str, values))


def _demo_cmd(args: argparse.Namespace) -> int:
    s = _settings(args)
    try:
        results = run_demo(s)
    except StudyStopped as e:
        print(
            f"deit demo: stopped by signal {e.signum}; the finished runs are kept in "
            f"{s.output_dir}: run the same command again to continue.",
            file=sys.stderr,
        )
        return 128 + e.signum
    print((Path(s.output_dir) / "results.md").read_text())
    print(f"figure: {results['figure']}")
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``deit demo``."""
    p = sub.add_parser(
        "demo",
        help="a CNN teacher and DeiT students on real MNIST digits: the paper's claims, 95 %% CI",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--output-dir", default=None, help="where runs and results go (default runs/demo)"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run of the same pipeline (near-chance numbers)"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--full",
        action="store_true",
        help="every claim (default folder runs/demo_full): " + ", ".join(CLAIMS),
    )
    which.add_argument("--claims", nargs="+", choices=CLAIMS, help="the claims to measure")
    d = DemoSettings()
    for flag, nargs, text in (
        ("--seeds", "+", f"the headline's seeds (default {_words(d.seeds)})"),
        ("--claim-seeds", "+", "the other claims' seeds (default: first 3)"),
        ("--train-images", None, f"the headline's training digits (default {d.train_images})"),
        ("--curve-images", "+", f"the data claim's sizes (default {_words(d.curve_images)})"),
        ("--teacher-images", None, f"teacher budget in image-steps (default {d.teacher_images})"),
        ("--student-images", None, f"student budget in image-steps (default {d.student_images})"),
        ("--processes", None, "worker processes (default: one per core)"),
    ):
        p.add_argument(flag, type=int, nargs=nargs, help=text)
    p.add_argument("--no-progress", action="store_true", help="print nothing while running")
    p.set_defaults(func=_demo_cmd)
