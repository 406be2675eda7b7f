"""The demo's statistics: mean top-1 per model and paired gains over seeds, with t-intervals."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .._optional import require

__all__ = ["paired_gain", "paired_interval", "summarize"]


def paired_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided t-interval of the mean of ``values`` (e.g. per-seed paired differences).

    ``mean ± t_{(1+level)/2, n-1} · sd / sqrt(n)`` with the sample standard deviation; ``None``
    for fewer than two values. With 3 seeds ``t`` is 4.30: the interval is wide on purpose.
    """
    if len(values) < 2:
        return None
    t = require("scipy.stats", "demo", "The demo's confidence intervals").t

    mean = statistics.fmean(values)
    half = float(t.ppf((1 + level) / 2, len(values) - 1)) * statistics.stdev(values)
    half /= math.sqrt(len(values))
    return (mean - half, mean + half)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 2)


def _spec(record: dict[str, Any]) -> dict[str, Any]:
    """The fields naming a run's model: its variant's and its departures (``key`` first)."""
    keep = ("key", "variant", "alpha", "tau", "kl_reduction", "budget", "mix", "input_size")
    return {k: record[k] for k in (*keep, "teacher", "finetune") if k in record}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per training-set size and run (``key``): mean top-1 over its seeds with the 95 %
    interval, and for distilled students the mean teacher disagreement on training views (%)
    and, where recorded, the mean token cosines through depth."""
    out: list[dict[str, Any]] = []
    for n in sorted({r["train_images"] for r in runs}):
        at_n = [r for r in runs if r["train_images"] == n]
        for key in dict.fromkeys(r["key"] for r in at_n):
            rows = [r for r in at_n if r["key"] == key]
            tops = [r["top1"] for r in rows]
            ci = paired_interval(tops)
            entry = {**_spec(rows[0]), "train_images": n, "seeds": len(rows)}
            entry["mean"] = _r(statistics.fmean(tops))
            entry["mean_ci95"] = None if ci is None else [_r(ci[0]), _r(ci[1])]
            if "teacher_disagreement" in rows[0]:
                entry["teacher_disagreement"] = _r(
                    statistics.fmean(r["teacher_disagreement"] for r in rows)
                )
            if "token_cosine" in rows[0]:
                depth = zip(*(r["token_cosine"] for r in rows))
                entry["token_cosine"] = [round(statistics.fmean(d), 4) for d in depth]
                entry["head_output_cosine"] = round(
                    statistics.fmean(r["head_output_cosine"] for r in rows), 4
                )
            out.append(entry)
    return out


def paired_gain(
    runs: list[dict[str, Any]],
    treatment: str,
    control: str,
    n: int,
    seeds: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """The paired comparison of two runs (keys) at training-set size ``n``: mean per-seed
    difference of top-1 (treatment − control, points) with its 95 % interval, over ``seeds``
    (default: the seeds of the treatment; a control measured on more seeds, as the headline's
    plain student is, is paired on these only).

    Returns:
        ``treatment``, ``control``, ``train_images``, ``seeds``, ``per_seed`` (the differences,
        in seed order), ``gain`` and ``ci95`` (``None`` with one seed).

    Raises:
        ValueError: one of the two runs lacks one of the seeds.
    """
    rows = {
        k: {r["seed"]: r["top1"] for r in runs if r["key"] == k and r["train_images"] == n}
        for k in (treatment, control)
    }
    t, c = rows[treatment], rows[control]
    wanted = sorted(t) if seeds is None else sorted(seeds)
    if not wanted or not set(wanted) <= set(t) or not set(wanted) <= set(c):
        raise ValueError(
            f"N={n}: {treatment} has seeds {sorted(t)} and {control} {sorted(c)}; a paired "
            f"gain over seeds {wanted} needs both on each of them."
        )
    diffs = [t[seed] - c[seed] for seed in wanted]
    ci = paired_interval(diffs)
    return {
        "treatment": treatment,
        "control": control,
        "train_images": n,
        "seeds": len(diffs),
        "per_seed": [_r(d) for d in diffs],
        "gain": _r(statistics.fmean(diffs)),
        "ci95": None if ci is None else [_r(ci[0]), _r(ci[1])],
    }
