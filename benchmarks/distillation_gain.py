"""The demo's study over several seeds: mean ± std top-1 per student variant on mnist5k.

One CNN teacher is trained once (first seed) or given with --teacher-path; each seed then trains
the three DeiT students (no distillation, hard, soft) with the demo's budget and evaluates them
on the 1,000 held-out digits. --include adds demo runs' results.json as more seeds.

    python benchmarks/distillation_gain.py --seeds 0 1 2 --output-dir runs/gain

Prints a Markdown table (also written to ``<output-dir>/gain.md`` and ``gain.json``) and the
hard-minus-none gain per seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from deit.demo import DemoSettings, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-dir", default="runs/gain")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--student-epochs", type=int, default=None)
    parser.add_argument(
        "--include",
        nargs="*",
        default=[],
        help="results.json of demo runs made with the same settings, counted as more seeds",
    )
    parser.add_argument(
        "--teacher-path", default="", help="reuse this teacher (e.g. the demo's) for every seed"
    )
    args = parser.parse_args()
    out = Path(args.output_dir)
    budget = {
        k: v
        for k, v in (
            ("teacher_epochs", args.teacher_epochs),
            ("student_epochs", args.student_epochs),
        )
        if v is not None
    }
    per_model: dict[str, list[float]] = {}
    for path in args.include:
        for row in json.loads(Path(path).read_text())["table"]:
            per_model.setdefault(row["model"], []).append(row["top1"])
    teacher_path = args.teacher_path
    for seed in args.seeds:
        settings = DemoSettings(
            output_dir=str(out / f"seed{seed}"),
            seed=seed,
            teacher_path=teacher_path,
            progress=False,
            **budget,
        )
        result = run_demo(settings)
        if not teacher_path:
            teacher_path = str(out / f"seed{seed}" / "teacher" / "best_checkpoint.pth")
        for row in result["table"]:
            per_model.setdefault(row["model"], []).append(row["top1"])
    lines = ["| model | top-1 mean ± std (%) | per seed |", "|---|---|---|"]
    for model, values in per_model.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = ", ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {model} | {statistics.mean(values):.2f} ± {std:.2f} | {per_seed} |")
    table = "\n".join(lines)
    gains = [
        h - n
        for h, n in zip(per_model["DeiT, hard distillation"], per_model["DeiT, no distillation"])
    ]
    summary = f"hard − none gain per seed: {', '.join(f'{g:+.1f}' for g in gains)} points"
    print(table)
    print(summary)
    (out / "gain.md").write_text(table + "\n\n" + summary + "\n")
    (out / "gain.json").write_text(json.dumps({"seeds": args.seeds, "top1": per_model}, indent=1))


if __name__ == "__main__":
    main()
