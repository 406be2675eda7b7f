"""The demo's statistics: mean top-1 per model and paired gains over seeds, with t-intervals."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .._optional import require
from .settings import Variant

__all__ = ["paired_interval", "summarize"]


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


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per training-set size and variant: mean top-1 with its 95 % interval; for distilled
    variants also ``gain`` = mean paired difference to ``none`` (same seed) and ``ci95``, its
    95 % interval (two numbers), and the mean teacher disagreement on training views (%)."""
    out: list[dict[str, Any]] = []
    sizes = sorted({r["train_images"] for r in runs})
    for n in sizes:
        at_n = [r for r in runs if r["train_images"] == n]
        none = {r["seed"]: r["top1"] for r in at_n if r["variant"] == "none"}
        seen: list[dict[str, Any]] = []
        for r in at_n:
            spec = Variant.of(r).record()
            if spec not in seen:
                seen.append(spec)
        for spec in seen:
            rows = [r for r in at_n if Variant.of(r).record() == spec]
            tops = [r["top1"] for r in rows]
            ci = paired_interval(tops)
            entry = {
                **spec,
                "train_images": n,
                "seeds": len(rows),
                "mean": _r(statistics.fmean(tops)),
            }
            entry["mean_ci95"] = None if ci is None else [_r(ci[0]), _r(ci[1])]
            if spec["variant"] not in ("none", "teacher") and none:
                if sorted(r["seed"] for r in rows) != sorted(none):
                    raise ValueError(
                        f"N={n}: {Variant.of(spec).label} has seeds "
                        f"{sorted(r['seed'] for r in rows)} but no distillation has "
                        f"{sorted(none)}; a paired gain needs the same seeds once each."
                    )
                diffs = [r["top1"] - none[r["seed"]] for r in rows]
                gci = paired_interval(diffs)
                entry["gain"] = _r(statistics.fmean(diffs))
                entry["ci95"] = None if gci is None else [_r(gci[0]), _r(gci[1])]
                entry["teacher_disagreement"] = _r(
                    statistics.fmean(r["teacher_disagreement"] for r in rows)
                )
            out.append(entry)
    return out
