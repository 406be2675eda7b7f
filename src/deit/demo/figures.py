"""The demo's figures: one per claim (:func:`claim_figure`), the overview, the token cosines."""

from __future__ import annotations

import textwrap
from typing import Any

from .._optional import require
from .report import BASELINE_LABELS, run_label

__all__ = ["claim_figure", "claims_figure", "tokens_figure"]

_COLORS = {"teacher": "#777777", "none": "#1f77b4", "hard": "#2ca02c", "soft": "#d62728"}


def _yerr(entry: dict[str, Any], mean_key: str, ci_key: str) -> list[float]:
    ci = entry.get(ci_key)
    if ci is None:
        return [0.0, 0.0]
    return [entry[mean_key] - ci[0], ci[1] - entry[mean_key]]


def _figure(width: float, panels: int) -> tuple[Any, list[Any]]:
    require("matplotlib", "demo", "deit demo's figures")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 5.5))
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _claim(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [c for c in results["comparisons"] if c["claim"] == name]


def _test_images(results: dict[str, Any], n: int) -> str:
    sizes = {r["test_images"] for r in results["runs"] if r["train_images"] == n}
    return "/".join(f"{x:,}" for x in sorted(sizes))


def _claim_entries(
    results: dict[str, Any], name: str, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The summary entries of the runs a claim (its comparison ``rows``) compares or shows
    beside, at its sizes."""
    keys = {k for c in rows for k in (c["treatment"], c["control"])}
    keys |= set(results.get("beside", {}).get(name, []))
    sizes = {c["train_images"] for c in rows}
    return [e for e in results["summary"] if e["key"] in keys and e["train_images"] in sizes]


def claim_figure(results: dict[str, Any], name: str) -> Any:
    """One claim (a name of ``results["comparisons"]``). Left: the mean top-1 of each of its
    models with the 95 % interval (bars from 0 at one size; against N, log axis, where the
    claim spans sizes) and the RBF-SVM on the same digits (dashed). Right: its paired gains,
    per seed (x) and mean with 95 % interval (o), one column per comparison or per N."""
    rows = _claim(results, name)
    fig, (ax, gx) = _figure(11, 2)
    entries = _claim_entries(results, name, rows)
    sizes = sorted({c["train_images"] for c in rows})
    svm = {b["train_images"]: b["top1"] for b in results["baselines"] if b["variant"] == "svm"}
    svm_label = BASELINE_LABELS["svm"]
    if len(sizes) == 1:
        _bars(ax, entries)
        ax.axhline(svm[sizes[0]], color="black", ls="--", lw=0.8, label=svm_label)
        ax.set_ylabel(f"top-1 (%) on {_test_images(results, sizes[0])} held-out digits")
        ax.set_title(f"mean over seeds, 95 % CI (N={sizes[0]})")
    else:
        _lines_against_n(ax, entries)
        ax.plot(sizes, [svm.get(n, float("nan")) for n in sizes], "k--", lw=0.8, label=svm_label)
        ax.set_ylabel("top-1 (%) on the held-out digits")
        ax.set_title("mean over seeds, 95 % CI")
    ax.legend(fontsize=7, loc="lower right")
    labels = {r["key"]: run_label(r) for r in results["runs"]}
    ticks = [
        f"N={c['train_images']}"
        if len(sizes) > 1
        else f"{_wrap(labels[c['treatment']])}\nvs {_wrap(labels[c['control']])}"
        for c in rows
    ]
    for i, c in enumerate(rows):
        err = [[v] for v in _yerr(c, "gain", "ci95")]
        gx.errorbar(i, c["gain"], yerr=err, fmt="o", capsize=6, color="#d62728", ms=8)
        gx.scatter([i + 0.15] * len(c["per_seed"]), c["per_seed"], color="#d62728", marker="x")
    gx.axhline(0, color="black", lw=0.8)
    gx.set_xticks(range(len(rows)), ticks, fontsize=6)
    gx.set_xlim(-0.5, max(len(rows), 1) - 0.5)
    gx.set_ylabel("paired gain in top-1 (points)")
    gx.set_title("paired gain: mean, 95 % CI (o); per seed (x)")
    fig.tight_layout()
    return fig


def _wrap(label: str) -> str:
    return textwrap.fill(label, 22)


def _bars(ax: Any, entries: list[dict[str, Any]]) -> None:
    for i, e in enumerate(entries):
        err = [[v] for v in _yerr(e, "mean", "mean_ci95")]
        ax.bar(i, e["mean"], yerr=err, capsize=4, color=_COLORS[e["variant"]])
        ax.text(i, e["mean"] / 2, f"{e['mean']:.1f}", ha="center", color="white")
    ax.set_xticks(range(len(entries)), [_wrap(run_label(e)) for e in entries], fontsize=6)
    ax.set_ylim(0, 100)


def _against_n(ax: Any, points: list[dict[str, Any]], value: str, ci: str, **style: Any) -> None:
    """One line of ``points[value]`` against their ``train_images``, with the ``ci`` interval."""
    points = sorted(points, key=lambda p: p["train_images"])
    err = list(zip(*(_yerr(p, value, ci) for p in points)))
    ns, values = [p["train_images"] for p in points], [p[value] for p in points]
    ax.errorbar(ns, values, yerr=err, marker="o", capsize=4, **style)


def _lines_against_n(ax: Any, entries: list[dict[str, Any]]) -> None:
    for key in dict.fromkeys(e["key"] for e in entries):
        line = [e for e in entries if e["key"] == key]
        style = {"color": _COLORS[line[0]["variant"]], "label": run_label(line[0])}
        _against_n(ax, line, "mean", "mean_ci95", **style)
    _log_n_axis(ax, sorted({e["train_images"] for e in entries}))
    ax.set_xlabel("training digits N (log scale)")


def _log_n_axis(ax: Any, sizes: list[int]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()


def _forest(fx: Any, results: dict[str, Any]) -> None:
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


def _data_gain(dx: Any, results: dict[str, Any]) -> None:
    data = _claim(results, "data")
    if data:
        _against_n(dx, data, "gain", "ci95")
        _log_n_axis(dx, sorted(c["train_images"] for c in data))
    dx.axhline(0, color="black", lw=0.8)
    dx.set_xlabel("training digits N (log scale)")
    dx.set_ylabel("gain of distillation (points), 95 % CI")
    dx.set_title("data efficiency")


def _tokens(tx: Any, results: dict[str, Any]) -> None:
    for e in (e for e in results["summary"] if "token_cosine" in e):
        label = f"{run_label(e)} (N={e['train_images']})"
        tx.plot(range(len(e["token_cosine"])), e["token_cosine"], marker="o", label=label)
    tx.plot([0], [0.06], "k*", ms=10, label="paper: learned tokens 0.06")
    tx.axhline(0.93, color="black", ls=":", lw=0.8, label="paper: last block 0.93")
    tx.set_xlabel("depth (0: the learned tokens; d: after block d)")
    tx.set_ylabel("cosine(class token, distillation token)")
    tx.legend(fontsize=5)


def tokens_figure(results: dict[str, Any]) -> Any:
    """The class/distillation token cosine through depth (depth 0: the learned tokens), one
    line per distilled student and training-set size, with the paper's two figures."""
    fig, (tx,) = _figure(7, 1)
    _tokens(tx, results)
    fig.tight_layout()
    return fig


def claims_figure(results: dict[str, Any]) -> Any:
    """The overview. Left: every paired gain with its 95 % interval, one row per comparison
    (the data claim's are in the middle panel). Middle: the leading student's gain against the
    training-set size N (log axis). Right: the token cosines as :func:`tokens_figure`."""
    fig, (fx, dx, tx) = _figure(16, 3)
    _forest(fx, results)
    _data_gain(dx, results)
    _tokens(tx, results)
    fig.tight_layout()
    return fig
