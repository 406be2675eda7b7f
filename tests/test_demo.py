"""`deit demo --quick`: the study end to end, its statistics by hand, its checkpoints in eval and
predict."""

from __future__ import annotations

import json
import math
import shlex
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from deit.cli import build_parser, main
from deit.config import Config, config_from_args, get_preset
from deit.data import build_dataset
from deit.demo import (
    HARD,
    LEADING,
    NONE,
    PAPER_SOFT,
    TEACHER,
    DemoSettings,
    curve_figure,
    markdown,
    paired_interval,
    summarize,
    top1_figure,
)
from deit.demo.study import _config, _Job, _jobs
from deit.evaluate import evaluate_checkpoint
from deit.predict import predict

T_975 = {1: 12.706204736, 2: 4.302652730}  # Student's t quantiles (tables)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--output-dir", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def results(demo_dir):
    return json.loads((demo_dir / "results.json").read_text())


def test_paired_interval_by_hand():
    lo, hi = paired_interval([1.0, 2.0, 3.0])  # mean 2, sd 1
    half = T_975[2] / math.sqrt(3)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half), abs=1e-9)
    assert paired_interval([4.0]) is None


def test_quick_demo_records_every_run(results):
    runs = results["runs"]
    quick = DemoSettings.quick()
    assert len(runs) == len(quick.seeds) * (1 + len(quick.variants))
    for r in runs:
        assert r["train_images"] == 200 and r["test_images"] == 3800  # 1,000 + 2,800 unused
        assert 0.0 <= r["top1"] <= 100.0 and r["top1"] == round(r["top1"], 2)
    soft = [r for r in runs if r["variant"] == "soft"]
    assert {(r["alpha"], r["tau"]) for r in soft} == {(0.9, 4.0)}  # the headline pair
    assert {r["variant"] for r in runs} == {"teacher", "none", "soft"}
    assert 0.0 <= soft[0]["teacher_disagreement"] <= 100.0 and soft[0]["top1_dist"] is not None
    assert "teacher_disagreement" not in runs[0]


def test_summary_gain_and_interval_by_hand(results):
    runs = results["runs"]
    none = {r["seed"]: r["top1"] for r in runs if r["variant"] == "none"}
    for e in results["summary"]:
        if e["variant"] != "soft" or e["alpha"] != LEADING.alpha:
            continue
        rows = [r for r in runs if r["variant"] == "soft" and r["alpha"] == LEADING.alpha]
        diffs = [r["top1"] - none[r["seed"]] for r in rows]
        assert e["gain"] == pytest.approx(statistics.fmean(diffs), abs=0.006)
        half = T_975[1] * abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2)
        mean = statistics.fmean(diffs)
        assert e["ci95"] == pytest.approx([mean - half, mean + half], abs=0.006)
        break
    else:
        pytest.fail("no summary entry for the leading variant")
    assert summarize(runs) == results["summary"]


def test_one_distilled_student_runs_its_teacher_online(demo_dir, results):
    """The default pair has one distilled student per seed: no label pass (it would re-create
    every view for one reader); the student reads its seed's teacher checkpoint."""
    assert results["teacher_labels"] == [] and results["teacher_seconds_saved"] == 0
    assert not (demo_dir / "n200" / "seed1" / "teacher_labels").exists()
    cfg = yaml.safe_load((demo_dir / "n200" / "seed1" / LEADING.key / "config.yaml").read_text())
    assert cfg["teacher_labels"] == ""
    assert cfg["teacher_path"] == str(demo_dir / "n200" / "seed1" / "teacher" / "checkpoint.pth")


def test_full_demo_shares_one_label_store_per_seed(tmp_path):
    """`deit demo --full`: per seed one teacher, one label pass after it, and the three
    distilled students waiting for that store and reading it; the plain student reads none."""
    s = DemoSettings.full(output_dir=str(tmp_path), seeds=(3,))
    assert s.variants == (NONE, LEADING, HARD, PAPER_SOFT) and s.student_images == 80_000
    jobs = _jobs(s, tmp_path)
    base = tmp_path / "n500" / "seed3"
    store = base / "teacher_labels"
    assert [j.labels for j in jobs] == [None, store, None, None, None, None]
    assert jobs[1].needs == base / "teacher" / "checkpoint.pth"
    for job in jobs[3:]:
        assert job.cfg["teacher_labels"] == str(store) and job.needs == store / "manifest.json"
    assert jobs[2].cfg["teacher_labels"] == "" and jobs[2].needs is None


def test_results_md_says_design_machine_and_verdict(demo_dir, results):
    text = (demo_dir / "results.md").read_text()
    assert "seeds: 0, 1" in text and "machine:" in text and "image-steps" in text
    assert "3800 images" in text
    # the scikit-learn baselines on the same held-out digits, beside the transformers
    baselines = {b["variant"]: b for b in results["baselines"]}
    assert set(baselines) == {"logistic_regression", "knn", "svm"}
    assert all(b["test_images"] == 3800 and 0 < b["top1"] <= 100 for b in baselines.values())
    assert f"| RBF-SVM (pixels) | 200 | — | {baselines['svm']['top1']:.2f} |" in text
    # each run's held-out top-1 along its schedule ends at its final top-1
    assert all(r["curve"][-1][2] == r["top1"] for r in results["runs"])
    assert text.count("vs no distillation") == 1  # one sentence per distilled variant
    assert "97.89999" not in text and "999999" not in json.dumps(results)
    # --quick says what it is, before its numbers and before its verdict
    assert text.splitlines()[2].startswith("**A smoke run** (400 image-steps per student;")
    assert "Of a smoke run, so not a finding:\nN=200:" in text


def test_results_md_of_the_full_budget_is_not_called_a_smoke_run(results):
    full = {
        **results,
        "settings": {**results["settings"], "student_images": DemoSettings().student_images},
    }
    assert "smoke" not in markdown(full).lower()


def test_figures_show_intervals_from_zero(demo_dir, results):
    with Image.open(demo_dir / "top1.png") as im:
        assert im.size[0] > 800 and im.size[1] > 300
    left, right = top1_figure(results).axes
    assert left.get_ylim()[0] == 0 and "95 % CI" in left.get_title()
    assert len(left.patches) == 3  # teacher + the headline pair
    assert "gain" in right.get_ylabel()
    two = {
        **results,
        "summary": [{**e, "train_images": n} for n in (100, 200) for e in results["summary"]],
    }
    ax, gx = curve_figure(two).axes
    assert ax.get_xscale() == "log" and len(ax.get_legend().get_texts()) == 3
    assert len(gx.get_legend().get_texts()) == 1


def test_checkpoints_kept_for_the_first_seed_only(demo_dir):
    assert not list(demo_dir.rglob("best_checkpoint.pth"))
    kept = sorted(p.parent.name for p in demo_dir.rglob("checkpoint.pth"))
    assert kept == sorted(["teacher", "none", LEADING.key])
    assert all(p.parent.parent.name == "seed0" for p in demo_dir.rglob("checkpoint.pth"))
    student = yaml.safe_load(
        (demo_dir / "n200" / "seed0" / LEADING.key / "config.yaml").read_text()
    )
    teacher = yaml.safe_load((demo_dir / "n200" / "seed0" / "teacher" / "config.yaml").read_text())
    assert (student["cutmix"], student["mixup_prob"]) == (1.0, 1.0)  # students add CutMix
    assert (teacher["cutmix"], teacher["mixup_prob"]) == (0.0, 0.5)  # the teacher keeps the preset
    assert student["train_subset"] == 200 and student["eval_unused"] is True


def test_demo_checkpoint_in_eval_and_predict(demo_dir, capsys):
    ckpt = demo_dir / "n200" / "seed0" / LEADING.key / "checkpoint.pth"
    assert main(["eval", str(ckpt), "--data-set", "mnist5k", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n"] == 1000
    # predict on the same 1,000 held-out images gives the same top-1 as eval
    ds = build_dataset("mnist5k", split="val")
    images, labels = zip(*(ds[i] for i in range(len(ds))))
    preds = predict(ckpt, list(images), topk=1)
    acc1 = 100 * np.mean([p.index == y for p, y in zip(preds, labels)])
    assert acc1 == pytest.approx(stats["acc1"], abs=1e-6)
    assert acc1 == pytest.approx(evaluate_checkpoint(ckpt, "mnist5k")["acc1"], abs=1e-6)


def _readme_commands() -> list[list[str]]:
    """The `deit train` commands of the block that reproduces the demo's runs (docs/demo.md)."""
    text = (Path(__file__).parents[1] / "docs" / "demo.md").read_text()
    block = text.split("<!-- demo-runs -->")[1].split("```bash")[1].split("```")[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(x.split("#")[0])[2:] for x in lines if x.startswith("deit train")]


def test_readme_commands_reproduce_the_demo_runs():
    teacher_argv, student_argv = _readme_commands()
    s = DemoSettings()
    base = Path("runs/demo/n500/seed0")
    expected = {}
    for v, needs in ((TEACHER, None), (LEADING, base / "teacher" / "checkpoint.pth")):
        job = _Job(v, 500, 0, base / v.key, needs=needs)
        expected[v.key] = _config(s, job)
    for argv, key in ((teacher_argv, "teacher"), (student_argv, LEADING.key)):
        args = build_parser().parse_args(["train", *argv])
        got = config_from_args(args).to_dict()
        want = Config.from_dict(expected[key]).to_dict()
        # the demo's students read the seed's teacher-label store; the documented command runs
        # the teacher online over the same views instead
        skip = {"output_dir", "teacher_path", "device", "teacher_labels"}
        differ = {k for k in want if got[k] != want[k]} - skip
        assert not differ, {k: (got[k], want[k]) for k in differ}


def test_demo_presets_are_the_demos_seed_0_runs():
    """``--preset demo_teacher`` / ``demo_student`` (the README's commands) are the runs ``deit
    demo`` makes of its first seed, read from the same settings."""
    s = DemoSettings()
    n, seed = s.train_images[0], s.seeds[0]
    base = Path("runs/demo") / f"n{n}" / f"seed{seed}"
    for preset, v in (("demo_teacher", TEACHER), ("demo_student", LEADING)):
        want = Config.from_dict(_config(s, _Job(v, n, seed, base / v.key))).to_dict()
        got = get_preset(preset).to_dict()
        # where the run writes, the machine, and the teacher's file are the command's to say;
        # the demo's students read a label store, the preset's run the teacher online
        skip = {"output_dir", "teacher_path", "device", "teacher_labels"}
        differ = {k for k in want if got[k] != want[k]} - skip
        assert not differ, {k: (got[k], want[k]) for k in differ}
    student = get_preset("demo_student")
    assert (student.distillation_type, student.model) == ("soft", s.distilled_student)
    assert student.epochs == s.epochs(s.student_images, n) and student.batch_size == s.batch_size


def test_demo_help_is_plain_and_says_what_the_default_run_trains(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "``" not in text and ":func:" not in text and ":mod:" not in text
    assert f"the demo was tuned: {LEADING.label[6:]}." in text
    # hard distillation and the paper's soft setting are --full's, not the default run's
    assert "--full adds hard distillation and the paper's soft setting" in text
    assert text.count("hard") == 2  # the sentence above and --full's own help
    assert "smoke run" in text
