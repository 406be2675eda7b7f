"""``results.md`` (:func:`markdown`), and the run labels it shares with the figures."""

from __future__ import annotations

import os
from typing import Any

from .settings import Variant

__all__ = ["BASELINE_LABELS", "conclusion", "machine", "markdown", "run_label"]


def machine() -> str:
    """The processor (:func:`deit.benchmark.device_name`), core count and torch version."""
    import torch

    from ..benchmark.measure import device_name

    return f"{device_name('cpu')}, {os.cpu_count()} cores, torch {torch.__version__}"


def _interval(ci: list[float] | None, sign: str = "+") -> str:
    if ci is None:
        return "—"
    return f"[{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]"


def run_label(entry: dict[str, Any]) -> str:
    """What the tables call a run: its variant's label and each departure from the headline
    recipe (a ``results.json`` run, summary entry or spec record)."""
    label = Variant.of(entry).label
    if entry.get("finetune"):
        return f"{label}, fine-tuned at {entry.get('input_size', 28)} px"
    if entry.get("input_size", 28) != 28:
        label += f", at {entry['input_size']} px"
    budget = entry.get("budget", 1.0)
    if budget != 1:
        label += f", {budget:g}× budget"
    if entry.get("mix") is False:
        label += ", no Mixup/CutMix"
    if entry.get("teacher"):
        label += f", taught by {_teacher_label(entry['teacher'])}"
    return label


def _teacher_label(key: str) -> str:
    if key.startswith("teacher_") and key.endswith("px"):
        return f"the CNN at {key[len('teacher_') : -2]} px"
    if key.startswith("teacher_x"):
        return f"the CNN at {key.removeprefix('teacher_x')}× its budget"
    if key.startswith("none"):
        return "the plain DeiT at 2× budget"
    return key


def _verdict(ci: list[float] | None) -> str:
    if ci is None:
        return "one seed: no interval"
    if ci[0] > 0:
        return "above 0: a gain beyond seed noise"
    if ci[1] < 0:
        return "below 0: a loss beyond seed noise"
    return "contains 0: no effect shown"


def conclusion(comparisons: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """One sentence per comparison: gain, interval, verdict (``labels``: key -> run label)."""
    return [
        f"N={c['train_images']}: {labels[c['treatment']]} vs {labels[c['control']]}: "
        f"{c['gain']:+.2f} points, 95 % CI {_interval(c['ci95'])} over {c['seeds']} seeds — "
        f"the interval {_verdict(c['ci95'])}."
        for c in comparisons
    ]


def _header(results: dict[str, Any]) -> list[str]:
    s, runs = results["settings"], results["runs"]
    smoke = (
        [
            "> **A smoke run** (`--quick`): a few hundred image-steps per model, so the numbers "
            "sit near chance and say nothing about distillation; it checks the pipeline.",
            "",
        ]
        if s.get("quick_run")
        else []
    )
    held_out = (
        "every mnist5k digit not trained on and not a validation digit"
        if s.get("eval_unused", True)
        else "mnist5k's 1,000 test digits"
    )
    return [
        "# deit demo: distillation through attention on mnist5k",
        "",
        *smoke,
        f"- claims: {', '.join(s['claims'])}; headline N {s['train_images']}"
        + (
            f", data claim N {', '.join(map(str, s['curve_images']))}"
            if "data" in s["claims"]
            else ""
        ),
        f"- evaluated on {held_out} ({', '.join(sorted({str(r['test_images']) for r in runs}))} "
        "images)",
        f"- seeds: headline {', '.join(map(str, s['seeds']))}; other claims "
        f"{', '.join(map(str, s['claim_seeds'] or s['seeds'][:3]))} (paired: same data order "
        "per seed)",
        f"- teacher {s['teacher']}: {s['teacher_images']:,} image-steps, batch "
        f"{s['teacher_batch_size']}; students {s['student']} / {s['distilled_student']}: "
        f"{s['student_images']:,} image-steps, batch {s['batch_size']}",
        f"- machine: {results['machine']}; {results['seconds']:.0f} s "
        f"({results['computed']} runs computed now, {len(runs) - results['computed']} reused); "
        f"the runs' CPU time {results.get('cpu_seconds', 0) / 60:.0f} min, about "
        f"{results.get('cpu_seconds', 0) / 60 / (os.cpu_count() or 1):.0f} min on this "
        "machine's idle cores",
        "",
    ]


def _summary_table(results: dict[str, Any], n: int) -> list[str]:
    lines = [
        "| model | seeds | top-1 mean (%) | 95 % CI | teacher ≠ label on training views (%) |",
        "|---|---|---|---|---|",
    ]
    for e in results["summary"]:
        if e["train_images"] == n:
            seen = e.get("teacher_disagreement")
            lines.append(
                f"| {run_label(e)} | {e['seeds']} | {e['mean']:.2f} | "
                f"{_interval(e['mean_ci95'], '')} | {'—' if seen is None else f'{seen:.1f}'} |"
            )
    for b in results["baselines"]:
        if b["train_images"] == n:
            lines.append(
                f"| {BASELINE_LABELS[b['variant']]} | — | {b['top1']:.2f} | deterministic | — |"
            )
    return lines


def _claim_tables(results: dict[str, Any], labels: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for name in results["settings"]["claims"]:
        rows = [c for c in results["comparisons"] if c["claim"] == name]
        if not rows:
            continue
        lines += [f"## {name}: {rows[0]['title']}", ""]
        lines += ["| treatment | control | N | seeds | gain (points) | 95 % CI | per seed |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for c in rows:
            per = ", ".join(f"{d:+.1f}" for d in c["per_seed"])
            lines.append(
                f"| {labels[c['treatment']]} | {labels[c['control']]} | {c['train_images']} | "
                f"{c['seeds']} | {c['gain']:+.2f} | {_interval(c['ci95'])} | {per} |"
            )
        lines += ["", *conclusion(rows, labels), *_beside(results, name), ""]
    return lines


def _beside(results: dict[str, Any], name: str) -> list[str]:
    """The claim's other runs (the teachers compared, for instance) with their top-1."""
    keys = results.get("beside", {}).get(name, [])
    cells = [
        f"{run_label(e)} (N={e['train_images']}): {e['mean']:.2f} {_interval(e['mean_ci95'], '')}"
        for e in results["summary"]
        if e["key"] in keys
    ]
    return ["", "Beside: " + "; ".join(cells) + "."] if cells else []


def _token_table(results: dict[str, Any]) -> list[str]:
    entries = [e for e in results["summary"] if "token_cosine" in e]
    if not entries:
        return []
    depth = len(entries[0]["token_cosine"])
    lines = [
        "## tokens: cosine of the class and distillation tokens through depth",
        "",
        "Depth 0: the learned tokens (paper: 0.06); depth d: after block d (paper, last block: "
        "0.93); head outputs: cosine of the two heads' logits. Means over held-out digits and "
        "seeds.",
        "",
        "| model | N | " + " | ".join(f"depth {d}" for d in range(depth)) + " | head outputs |",
        "|---|---|" + "---|" * (depth + 1),
    ]
    for e in entries:
        cells = " | ".join(f"{x:.3f}" for x in e["token_cosine"])
        lines.append(
            f"| {run_label(e)} | {e['train_images']} | {cells} | {e['head_output_cosine']:.3f} |"
        )
    return [*lines, ""]


def markdown(results: dict[str, Any]) -> str:
    """``results.md``: design, machine and time, the headline table with the baselines, each
    claim's paired comparisons and verdicts, the token cosines, every run."""
    labels = {r["key"]: run_label(r) for r in results["runs"]}
    n = results["settings"]["train_images"]
    lines = [*_header(results), f"## top-1 at N={n}", "", *_summary_table(results, n), ""]
    lines += _claim_tables(results, labels)
    lines += _token_table(results)
    lines += ["## Every run", ""]
    lines += ["| model | N | seed | top-1 | class head | distillation head | seconds |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        heads = [r.get("top1_cls"), r.get("top1_dist")]
        cells = ["—" if h is None else f"{h:.2f}" for h in heads]
        lines.append(
            f"| {labels[r['key']]} | {r['train_images']} | {r['seed']} | {r['top1']:.2f} | "
            f"{cells[0]} | {cells[1]} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


#: What the tables call the scikit-learn baselines (:mod:`deit.baselines`).
BASELINE_LABELS = {
    "logistic_regression": "logistic regression (pixels)",
    "knn": "3-nearest neighbours (pixels)",
    "svm": "RBF-SVM (pixels)",
}
