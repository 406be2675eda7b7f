"""The demo's figures: top-1 per model with the paired gains, and the data-efficiency curve."""

from __future__ import annotations

from typing import Any

from .._optional import require
from .report import _summary_label
from .settings import LEADING, Variant

__all__ = ["curve_figure", "top1_figure"]

_COLORS = {"teacher": "#777777", "none": "#1f77b4", "hard": "#2ca02c"}


def _color(entry: dict[str, Any]) -> str:
    if entry["variant"] != "soft":
        return _COLORS[entry["variant"]]
    leading = Variant.of(entry) == LEADING
    return "#d62728" if leading else "#ff7f0e"


def _yerr(entry: dict[str, Any], mean_key: str, ci_key: str) -> list[float]:
    ci = entry.get(ci_key)
    if ci is None:
        return [0.0, 0.0]
    return [entry[mean_key] - ci[0], ci[1] - entry[mean_key]]


def top1_figure(results: dict[str, Any]) -> Any:
    """Left: mean top-1 of each model with its 95 % interval (axis from 0). Right: each
    distilled student's paired gain over the plain one, per seed and mean with 95 % interval."""
    require("matplotlib", "demo", "deit demo's figures")
    from matplotlib.figure import Figure

    n = results["settings"]["train_images"][0]
    entries = [e for e in results["summary"] if e["train_images"] == n]
    fig = Figure(figsize=(11, 4.5))
    ax, gx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, e in enumerate(entries):
        err = [[v] for v in _yerr(e, "mean", "mean_ci95")]
        ax.bar(i, e["mean"], yerr=err, capsize=4, color=_color(e))
        ax.text(i, e["mean"] / 2, f"{e['mean']:.1f}", ha="center", color="white")
    ax.set_xticks(
        range(len(entries)), [_summary_label(e) for e in entries], rotation=20, ha="right"
    )
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"top-1 (%) on {_test_images(results, n)} held-out digits")
    ax.set_title(f"mean over {len(results['settings']['seeds'])} seeds, 95 % CI (N={n})")
    gains = [e for e in entries if "gain" in e]
    for i, e in enumerate(gains):
        err = [[v] for v in _yerr(e, "gain", "ci95")]
        gx.errorbar(i, e["gain"], yerr=err, fmt="o", capsize=6, color=_color(e), ms=8)
        per_seed = _per_seed_gains(results, e)
        gx.scatter([i + 0.15] * len(per_seed), per_seed, color=_color(e), marker="x", s=20)
    gx.axhline(0, color="black", lw=0.8)
    gx.set_xticks(range(len(gains)), [_summary_label(e) for e in gains], rotation=20, ha="right")
    gx.set_xlim(-0.5, max(len(gains), 1) - 0.5)
    gx.set_ylabel("top-1 gain over no distillation (points)")
    gx.set_title("paired gain: mean and 95 % CI (o), per seed (x)")
    fig.tight_layout()
    return fig


def _test_images(results: dict[str, Any], n: int) -> str:
    sizes = {r["test_images"] for r in results["runs"] if r["train_images"] == n}
    return "/".join(f"{x:,}" for x in sorted(sizes))


def _per_seed_gains(results: dict[str, Any], e: dict[str, Any]) -> list[float]:
    runs = [r for r in results["runs"] if r["train_images"] == e["train_images"]]
    none = {r["seed"]: r["top1"] for r in runs if r["variant"] == "none"}
    same = [r for r in runs if Variant.of(r) == Variant.of(e)]
    return [r["top1"] - none[r["seed"]] for r in same if r["seed"] in none]


def curve_figure(results: dict[str, Any]) -> Any:
    """The data-efficiency curve: top-1 against N (log axis) per model with 95 % intervals,
    and the distilled students' gain over the plain one against N."""
    require("matplotlib", "demo", "deit demo's figures")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    ax, gx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    specs: list[Variant] = []
    for e in results["summary"]:
        if Variant.of(e) not in specs:
            specs.append(Variant.of(e))
    for spec in specs:
        rows = [e for e in results["summary"] if Variant.of(e) == spec]
        panels = [(ax, "mean", "mean_ci95")] + ([(gx, "gain", "ci95")] if "gain" in rows[0] else [])
        for axis, key, ci in panels:
            axis.errorbar(
                [e["train_images"] for e in rows],
                [e[key] for e in rows],
                yerr=list(zip(*(_yerr(e, key, ci) for e in rows))),
                marker="o",
                capsize=4,
                color=_color(rows[0]),
                label=_summary_label(rows[0]),
            )
    for a in (ax, gx):
        a.set_xscale("log")
        a.set_xlabel("training images N (log scale)")
        a.grid(alpha=0.3)
        a.legend()
    gx.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("top-1 (%) on every digit not trained on, 95 % CI")
    gx.set_ylabel("gain over no distillation (points), 95 % CI")
    ax.set_title(f"data efficiency on mnist5k ({len(results['settings']['seeds'])} seeds)")
    gx.set_title("distillation gain against training-set size")
    fig.tight_layout()
    return fig
