"""The demo's figures: the headline (top-1 per model with the paired gain), and the claims
(every paired gain, the gain against N, the token cosines through depth)."""

from __future__ import annotations

from typing import Any

from .._optional import require
from .report import run_label

__all__ = ["claims_figure", "top1_figure"]

_COLORS = {"teacher": "#777777", "none": "#1f77b4", "hard": "#2ca02c", "soft": "#d62728"}


def _yerr(entry: dict[str, Any], mean_key: str, ci_key: str) -> list[float]:
    ci = entry.get(ci_key)
    if ci is None:
        return [0.0, 0.0]
    return [entry[mean_key] - ci[0], ci[1] - entry[mean_key]]


def _figure(width: float, panels: int) -> tuple[Any, list[Any]]:
    require("matplotlib", "demo", "deit demo's figures")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.5))
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def top1_figure(results: dict[str, Any]) -> Any:
    """Left: mean top-1 of each headline model with its 95 % interval (axis from 0). Right:
    the headline comparisons' paired gains, per seed (x) and mean with 95 % interval (o)."""
    n = results["settings"]["train_images"]
    keys = {k for c in _claim(results, "headline") for k in (c["treatment"], c["control"])}
    keys.add("teacher")
    entries = [e for e in results["summary"] if e["train_images"] == n and e["key"] in keys]
    fig, (ax, gx) = _figure(11, 2)
    for i, e in enumerate(entries):
        err = [[v] for v in _yerr(e, "mean", "mean_ci95")]
        ax.bar(i, e["mean"], yerr=err, capsize=4, color=_COLORS[e["variant"]])
        ax.text(i, e["mean"] / 2, f"{e['mean']:.1f}", ha="center", color="white")
    ax.set_xticks(range(len(entries)), [run_label(e) for e in entries], rotation=20, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"top-1 (%) on {_test_images(results, n)} held-out digits")
    ax.set_title(f"mean over {len(results['settings']['seeds'])} seeds, 95 % CI (N={n})")
    gains = [c for c in _claim(results, "headline") if c["train_images"] == n]
    labels = {r["key"]: run_label(r) for r in results["runs"]}
    for i, c in enumerate(gains):
        err = [[v] for v in _yerr(c, "gain", "ci95")]
        gx.errorbar(i, c["gain"], yerr=err, fmt="o", capsize=6, color="#d62728", ms=8)
        gx.scatter([i + 0.15] * len(c["per_seed"]), c["per_seed"], color="#d62728", marker="x")
    gx.axhline(0, color="black", lw=0.8)
    gx.set_xticks(
        range(len(gains)), [labels[c["treatment"]] for c in gains], rotation=20, ha="right"
    )
    gx.set_xlim(-0.5, max(len(gains), 1) - 0.5)
    gx.set_ylabel("top-1 gain over no distillation (points)")
    gx.set_title("paired gain: mean and 95 % CI (o), per seed (x)")
    fig.tight_layout()
    return fig


def _claim(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [c for c in results["comparisons"] if c["claim"] == name]


def _test_images(results: dict[str, Any], n: int) -> str:
    sizes = {r["test_images"] for r in results["runs"] if r["train_images"] == n}
    return "/".join(f"{x:,}" for x in sorted(sizes))


def claims_figure(results: dict[str, Any]) -> Any:
    """Left: every paired gain at the headline size with its 95 % interval, one row per
    comparison (the data claim's are in the middle panel). Middle: the leading student's gain
    against the training-set size N (log axis). Right: the class/distillation token cosine
    through depth (depth 0: the learned tokens), one line per distilled student."""
    fig, (fx, dx, tx) = _figure(16, 3)
    labels = {r["key"]: run_label(r) for r in results["runs"]}
    rows = [c for c in results["comparisons"] if c["claim"] != "data"]
    for i, c in enumerate(reversed(rows)):
        lo, hi = c["ci95"] or (c["gain"], c["gain"])
        fx.plot([lo, hi], [i, i], color="#333333")
        fx.plot(c["gain"], i, "o", color="#d62728" if lo > 0 else "#1f77b4")
    fx.set_yticks(
        range(len(rows)),
        [
            f"{c['claim']}: {labels[c['treatment']]}\nvs {labels[c['control']]}"
            for c in reversed(rows)
        ],
        fontsize=6,
    )
    fx.axvline(0, color="black", lw=0.8)
    fx.set_xlabel("paired gain in top-1 (points), 95 % CI")
    data = sorted(_claim(results, "data"), key=lambda c: c["train_images"])
    if data:
        ns = [c["train_images"] for c in data]
        err = list(zip(*(_yerr(c, "gain", "ci95") for c in data)))
        dx.errorbar(ns, [c["gain"] for c in data], yerr=err, marker="o", capsize=4)
        dx.set_xscale("log")
    dx.axhline(0, color="black", lw=0.8)
    dx.set_xlabel("training digits N (log scale)")
    dx.set_ylabel("gain of distillation (points), 95 % CI")
    dx.set_title("data efficiency")
    for e in (e for e in results["summary"] if "token_cosine" in e):
        tx.plot(range(len(e["token_cosine"])), e["token_cosine"], marker="o", label=run_label(e))
    tx.plot([0], [0.06], "k*", ms=10, label="paper: learned tokens 0.06")
    tx.axhline(0.93, color="black", ls=":", lw=0.8, label="paper: last block 0.93")
    tx.set_xlabel("depth (0: the learned tokens; d: after block d)")
    tx.set_ylabel("cosine(class token, distillation token)")
    tx.legend(fontsize=6)
    fig.tight_layout()
    return fig
