"""``results.md``: the demo's design, machine, summary table with intervals, and every run."""

from __future__ import annotations

import os
from typing import Any

from .settings import DemoSettings, Variant

__all__ = ["BASELINE_LABELS", "conclusion", "machine", "markdown"]


def machine() -> str:
    """The processor (:func:`deit.benchmark.device_name`), core count and torch version."""
    import torch

    from ..benchmark.measure import device_name

    return f"{device_name('cpu')}, {os.cpu_count()} cores, torch {torch.__version__}"


def _interval(ci: list[float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _summary_label(entry: dict[str, Any]) -> str:
    return Variant.of(entry).label


def conclusion(summary: list[dict[str, Any]]) -> list[str]:
    """One sentence per distilled variant and training-set size: gain, interval, verdict."""
    lines = []
    for e in summary:
        if "gain" not in e:
            continue
        ci = e["ci95"]
        if ci is None:
            verdict = "one seed: no interval"
        elif ci[0] > 0:
            verdict = "the interval lies above 0: a gain beyond seed noise"
        elif ci[1] < 0:
            verdict = "the interval lies below 0: a loss beyond seed noise"
        else:
            verdict = "the interval contains 0: no effect shown"
        lines.append(
            f"N={e['train_images']}: {_summary_label(e)} vs no distillation: "
            f"{e['gain']:+.2f} points, 95 % CI {_interval(ci)} over {e['seeds']} seeds — {verdict}."
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """``results.md``: design, machine and time, the summary with intervals, every run."""
    s = results["settings"]
    runs = results["runs"]
    smoke = _smoke_line(s)
    lines = [
        "# deit demo: distillation through attention on mnist5k",
        "",
        *([smoke, ""] if smoke else []),
        f"- training images N: {', '.join(str(n) for n in s['train_images'])} (the same for "
        f"every model of a seed); evaluated on every other mnist5k digit "
        f"({', '.join(sorted({str(r['test_images']) for r in runs}))} images)",
        f"- seeds: {', '.join(str(x) for x in s['seeds'])} (paired: same data order per seed)",
        f"- teacher {s['teacher']}: {s['teacher_images']:,} image-steps, batch "
        f"{s['teacher_batch_size']}; students {s['student']} / {s['distilled_student']}: "
        f"{s['student_images']:,} image-steps, batch {s['batch_size']}",
        f"- machine: {results['machine']}; {results['seconds']:.0f} s",
        *_labels_line(results),
        "",
        "| model | N | seeds | top-1 mean (%) | 95 % CI | gain vs none | 95 % CI of gain | "
        "teacher ≠ label on training views (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in results["summary"]:
        gain = f"{e['gain']:+.2f}" if "gain" in e else "—"
        dis = f"{e['teacher_disagreement']:.1f}" if "teacher_disagreement" in e else "—"
        lines.append(
            f"| {_summary_label(e)} | {e['train_images']} | {e['seeds']} | {e['mean']:.2f} | "
            f"{_interval(e['mean_ci95']).replace('+', '')} | {gain} | "
            f"{_interval(e.get('ci95'))} | {dis} |"
        )
    for b in results.get("baselines", []):
        lines.append(
            f"| {BASELINE_LABELS[b['variant']]} | {b['train_images']} | — | {b['top1']:.2f} | "
            "deterministic | — | — | — |"
        )
    verdicts = conclusion(results["summary"])
    if smoke and verdicts:
        verdicts = ["Of a smoke run, so not a finding:", *verdicts]
    lines += ["", *verdicts, "", "## Every run", ""]
    lines += ["| model | N | seed | top-1 | class head | distillation head | seconds |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in runs:
        label = Variant.of(r).label
        heads = [r.get("top1_cls"), r.get("top1_dist")]
        cells = ["—" if h is None else f"{h:.2f}" for h in heads]
        lines.append(
            f"| {label} | {r['train_images']} | {r['seed']} | {r['top1']:.2f} | {cells[0]} | "
            f"{cells[1]} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _smoke_line(s: dict[str, Any]) -> str:
    """The results.md line saying that a run's budget is a smoke run's (under a tenth of the
    default demo's), or ``""``."""
    full = DemoSettings()
    if 10 * s["student_images"] >= full.student_images:
        return ""
    return (
        f"**A smoke run** ({s['student_images']:,} image-steps per student; `deit demo` spends "
        f"{full.student_images:,}): it checks the pipeline end to end, and its numbers are not "
        "results — at this budget the students are near chance."
    )


def _labels_line(results: dict[str, Any]) -> list[str]:
    """The results.md line on the teacher-label stores (none for older results)."""
    passes = results.get("teacher_labels") or []
    if not passes:
        return []
    spent = sum(p["teacher_seconds"] for p in passes)
    wall = sum(p.get("seconds", 0.0) for p in passes)
    saved = results["teacher_seconds_saved"]
    verdict = (
        "; with a teacher this small, re-creating every view for the passes costs more than "
        "the teacher time it saves (the store pays off with a large teacher: "
        "benchmarks/README.md)"
        if wall > saved
        else ""
    )
    return [
        f"- teacher labels: computed once per seed ({len(passes)} passes, {spent:.1f} s of "
        f"teacher forward, {wall:.0f} s in all) and read by the {passes[0]['students']} "
        f"distilled students of each seed: about {saved:.1f} s of teacher forward avoided "
        f"((students - 1) x each pass's teacher seconds){verdict}"
    ]


#: What the tables call the scikit-learn baselines (:mod:`deit.baselines`).
BASELINE_LABELS = {
    "logistic_regression": "logistic regression (pixels)",
    "knn": "3-nearest neighbours (pixels)",
    "svm": "RBF-SVM (pixels)",
}
