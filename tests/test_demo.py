"""`deit demo`: the study end to end (`--quick --full`, stopped half-way by a signal and
started again), its runs never computed twice, its statistics by hand, its checkpoints in eval
and predict."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from deit.cli import build_parser, main
from deit.config import Config, config_from_args, get_preset
from deit.data import build_dataset
from deit.demo import (
    CLAIMS,
    HARD,
    LEADING,
    NONE,
    TEACHER,
    DemoSettings,
    RunSpec,
    claim_figure,
    claims_figure,
    comparisons,
    paired_gain,
    paired_interval,
    summarize,
    tokens_figure,
)
from deit.demo.study import _config, _critical_first, _Job, _jobs
from deit.evaluate import evaluate_checkpoint
from deit.predict import predict

T_975 = {1: 12.706204736, 2: 4.302652730}  # Student's t quantiles (tables)
QUICK_FULL = ["demo", "--quick", "--full", "--no-progress"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """`deit demo --quick --full` in its own process group, stopped by SIGTERM to the parent
    alone once a few runs are recorded: (folder, exit code, records kept, seconds until the
    whole group was gone)."""
    out = tmp_path_factory.mktemp("demo_full")
    cmd = [sys.executable, "-m", "deit.cli", *QUICK_FULL, "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True)
    records = out / "records"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(records.glob("*.json"))) < 4:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    start = time.time()
    code = proc.wait(30)
    while _group_alive(proc.pid) and time.time() - start < 15:
        time.sleep(0.1)
    gone = time.time() - start
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    stderr = proc.stderr.read()
    return out, code, len(list(records.glob("*.json"))), gone, stderr


@pytest.fixture(scope="module")
def full_dir(stopped):
    out, *_ = stopped
    assert main([*QUICK_FULL, "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def results(full_dir):
    return json.loads((full_dir / "results.json").read_text())


def test_a_stopped_study_leaves_no_process_and_says_how_to_continue(stopped):
    out, code, kept, gone, stderr = stopped
    assert code == 128 + signal.SIGTERM
    assert gone < 10, f"processes of the demo's group lived {gone:.1f} s after it stopped"
    assert f"the finished runs are kept in {out}: run the same command again" in stderr
    assert kept >= 4


def test_started_again_it_runs_only_what_had_not_finished(stopped, results, full_dir, tmp_path):
    _, _, kept, _, _ = stopped
    total = len(results["runs"])
    assert total == len(_jobs(DemoSettings.quick(claims=CLAIMS), Path("x")))
    assert results["computed"] == total - kept
    # a third time nothing at all; the default demo's runs are among them
    copy = tmp_path / "copy"
    shutil.copytree(full_dir, copy)
    assert main(["demo", "--quick", "--no-progress", "--output-dir", str(copy)]) == 0
    again = json.loads((copy / "results.json").read_text())
    assert again["computed"] == 0 and len(again["runs"]) == 6


def test_a_changed_setting_makes_new_runs_and_reuses_the_rest(full_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(full_dir, copy)
    argv = ["demo", "--quick", "--no-progress", "--output-dir", str(copy), "--seeds", "0"]
    assert main([*argv, "--student-images", "600"]) == 0
    res = json.loads((copy / "results.json").read_text())
    # the seed's teacher is reused; both students are new (another budget, another key)
    assert res["computed"] == 2 and {r["epochs"] for r in res["runs"][1:]} == {3}


def test_every_claim_is_measured_with_its_paired_interval(results):
    names = {c["claim"] for c in results["comparisons"]}
    assert names == set(CLAIMS)
    data = [c for c in results["comparisons"] if c["claim"] == "data"]
    assert sorted(c["train_images"] for c in data) == [100, 200]
    for c in results["comparisons"]:
        assert c["seeds"] == 2 and c["ci95"] is not None and len(c["per_seed"]) == 2
        assert c["gain"] == pytest.approx(statistics.fmean(c["per_seed"]), abs=0.006)
    keys = {r["key"] for r in results["runs"]}
    assert {
        "teacher_x0.625",
        "teacher_42px",
        "none_x2",
        f"{LEADING.key}_from_none_x2",
        f"{LEADING.key}_from_teacher_x0.625",
        "hard_nomix",
        "none_nomix",
        "none_ft42",
        "none_ft28",
        f"{LEADING.key}_ft42",
    } <= keys


def test_the_transformer_teacher_is_the_plain_deit_trained_twice_as_long(full_dir):
    base = full_dir / "n200" / "seed0"
    student = yaml.safe_load((base / f"{LEADING.key}_from_none_x2" / "config.yaml").read_text())
    teacher = yaml.safe_load((base / "none_x2" / "config.yaml").read_text())
    plain = yaml.safe_load((base / "none" / "config.yaml").read_text())
    assert student["teacher_model"] == "deit_nano_patch7_28"
    assert student["teacher_path"] == str(base / "none_x2" / "checkpoint.pth")
    assert teacher["epochs"] == 2 * plain["epochs"] and teacher["distillation_type"] == "none"
    matched = yaml.safe_load((base / "teacher_x0.625" / "config.yaml").read_text())
    full = yaml.safe_load((base / "teacher" / "config.yaml").read_text())
    assert matched["epochs"] == max(1, round(0.625 * full["epochs"]))


def test_fine_tuning_starts_from_the_student_at_the_larger_size(full_dir):
    base = full_dir / "n200" / "seed0"
    cfg = yaml.safe_load((base / f"{LEADING.key}_ft42" / "config.yaml").read_text())
    assert cfg["finetune"] == str(base / LEADING.key / "checkpoint.pth")
    assert cfg["input_size"] == 42 and cfg["distillation_type"] == "soft"
    # its teacher: the CNN trained at 42 px (the 28 px one is near chance on upscaled digits)
    assert cfg["teacher_path"] == str(base / "teacher_42px" / "checkpoint.pth")
    teacher = yaml.safe_load((base / "teacher_42px" / "config.yaml").read_text())
    assert teacher["input_size"] == 42 and not teacher["finetune"]
    same = yaml.safe_load((base / "none_ft28" / "config.yaml").read_text())
    assert same["input_size"] == 28 and same["epochs"] == cfg["epochs"]
    log = (base / "none_ft42" / "train.log").read_text()
    assert "pos_embed interpolated bicubically from a 4x4 to a 6x6 patch grid" in log
    assert "training crop: Resize(42) + RandomCrop" in log


def test_token_cosines_through_depth_are_recorded(results):
    lead = [r for r in results["runs"] if r["key"] == LEADING.key and r["train_images"] == 200]
    for r in lead:
        assert len(r["token_cosine"]) == 7  # the learned tokens, then 6 blocks
        assert all(-1 <= x <= 1 for x in r["token_cosine"])
        assert -1 <= r["head_output_cosine"] <= 1 and 0 <= r["head_agreement"] <= 100
    entry = next(
        e for e in results["summary"] if e["key"] == LEADING.key and e["train_images"] == 200
    )
    by_hand = [statistics.fmean(d) for d in zip(*(r["token_cosine"] for r in lead))]
    assert entry["token_cosine"] == pytest.approx(by_hand, abs=1e-4)
    assert not any("token_cosine" in r for r in results["runs"] if not r.get("top1_dist"))


def test_paired_interval_by_hand():
    lo, hi = paired_interval([1.0, 2.0, 3.0])  # mean 2, sd 1
    half = T_975[2] / math.sqrt(3)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half), abs=1e-9)
    assert paired_interval([4.0]) is None


def test_paired_gain_by_hand():
    runs = [
        {"key": k, "seed": s, "train_images": 500, "top1": v}
        for k, s, v in [("a", 0, 90.0), ("a", 1, 88.0), ("b", 0, 85.0), ("b", 1, 86.0)]
    ]
    g = paired_gain(runs, "a", "b", 500)
    half = T_975[1] * statistics.stdev([5.0, 2.0]) / math.sqrt(2)
    assert g["per_seed"] == [5.0, 2.0] and g["gain"] == 3.5
    assert g["ci95"] == pytest.approx([3.5 - half, 3.5 + half], abs=0.006)
    with pytest.raises(ValueError, match=r"a paired gain over seeds \[0, 1\] needs both"):
        paired_gain(runs[:3], "a", "b", 500)
    # a control on more seeds (the headline's plain student) is paired on the claim's seeds
    more = runs + [{"key": "b", "seed": 2, "train_images": 500, "top1": 70.0}]
    assert paired_gain(more, "a", "b", 500, seeds=(0, 1)) == g
    assert paired_gain(more, "a", "b", 500)["per_seed"] == [5.0, 2.0]  # the treatment's seeds


def test_every_claim_pairs_on_its_own_seeds(tmp_path):
    """The full study's design: the headline on 5 seeds, the other claims on 3 that share the
    headline's runs (the plain student at N 500 is in both)."""
    s = DemoSettings.full()

    def top1(key, seed, n):  # differs by run, seed and N, so a wrong pairing shows
        return 80.0 + seed * len(key) / 10 + n / 1000

    runs = [
        {
            "key": j.spec.key,
            "seed": j.seed,
            "train_images": j.n,
            "top1": top1(j.spec.key, j.seed, j.n),
        }
        for j in _jobs(s, tmp_path)
    ]
    rows = comparisons(s, runs)
    assert {c["claim"] for c in rows} == set(CLAIMS)
    head = [c for c in rows if c["claim"] == "headline"]
    assert [c["seeds"] for c in head] == [5]
    assert all(c["seeds"] == 3 for c in rows if c["claim"] != "headline")
    for c in rows:
        t, ctl, n = c["treatment"], c["control"], c["train_images"]
        want = [top1(t, seed, n) - top1(ctl, seed, n) for seed in range(c["seeds"])]
        assert c["per_seed"] == pytest.approx(want, abs=0.006), c


def test_summary_mean_and_interval_by_hand(results):
    runs = results["runs"]
    assert summarize(runs) == results["summary"]
    tops = [r["top1"] for r in runs if r["key"] == "none" and r["train_images"] == 200]
    entry = next(e for e in results["summary"] if e["key"] == "none" and e["train_images"] == 200)
    half = T_975[1] * statistics.stdev(tops) / math.sqrt(2)
    assert entry["mean"] == pytest.approx(statistics.fmean(tops), abs=0.006)
    assert entry["mean_ci95"] == pytest.approx(
        [statistics.fmean(tops) - half, statistics.fmean(tops) + half], abs=0.006
    )


def test_run_keys_name_each_departure():
    assert RunSpec(NONE).key == "none" and RunSpec(TEACHER, budget=0.25).key == "teacher_x0.25"
    assert RunSpec(TEACHER, input_size=42).key == "teacher_42px"
    assert RunSpec(HARD, mix=False).key == "hard_nomix"
    assert RunSpec(LEADING, teacher="none_x2").key == f"{LEADING.key}_from_none_x2"
    assert RunSpec(NONE, finetune="none", input_size=42).key == "none_ft42"
    assert RunSpec(NONE, teacher="none_x2").key == "none"  # a plain student reads no teacher


def _makespan(order, procs=2):
    """Finish time of the study's rule (``_submit``) on ``procs`` processes, each job taking its
    ``est``: whenever a process is free, the first pending job none of whose dependencies is
    pending or running starts; a process with no such job waits for the next to finish."""
    now, pending, ends = 0.0, list(order), {}
    while pending:
        running = {j for j, end in ends.items() if end > now}
        busy = {*pending, *running}
        for job in [j for j in pending if not any(d in busy for d in j.deps)]:
            if len(running) >= procs:
                break
            pending.remove(job)
            running.add(job)
            ends[job] = now + job.est
        now = min(end for end in ends.values() if end > now)
    return max(ends.values())


def test_teachers_then_the_longest_runs_first(tmp_path):
    s = DemoSettings()
    jobs = _jobs(s, tmp_path)
    order = [j.spec.key for j in _critical_first(jobs)]
    assert order == ["teacher"] * 5 + [LEADING.key] * 5 + ["none"] * 5
    assert [j.seed for j in _critical_first(jobs)][:5] == [0, 1, 2, 3, 4]  # ties: study order
    # on 2 processes the order saves the idle wait for each seed's teacher and the tail
    est = {"teacher": 32_000, "none": 110_000, LEADING.key: 137_500}
    assert {j.spec.key: j.est for j in jobs} == est
    # by hand: teachers 0-1, 2-3 on both processes, then teacher 4 beside the first distilled
    # student; the rest alternate: process 0 ends at 96k + 2 x 137.5k + 3 x 110k = 701k,
    # 2,250 above the bound of half the total work (5 x 279.5k / 2 = 698.75k)
    assert _makespan(_critical_first(jobs)) == 701_000
    # the study order (seed by seed): each distilled student waits for its seed's teacher, so
    # a process runs a plain student meanwhile and the last seeds' students end unpaired
    assert _makespan(jobs) == 728_500  # the order saves 3.8 %
    full = _jobs(DemoSettings.full(), tmp_path)
    first = _critical_first(full)
    assert sorted(map(id, first)) == sorted(map(id, full))
    assert all(first.index(d) < first.index(j) for j in first for d in j.deps if d in first)
    # --full: 84 runs whose order matters less (many claims' runs are ready at once): 0.9 %
    assert (_makespan(first), _makespan(full)) == (4_213_000, 4_251_000)


def test_keys_follow_the_configuration_and_what_a_run_reads(tmp_path):
    s = DemoSettings.full(seeds=(0,), claim_seeds=(0,))
    base = {(j.n, j.seed, j.spec.key): j.key for j in _jobs(s, tmp_path)}
    assert len(set(base.values())) == len(base)
    more = {
        (j.n, j.seed, j.spec.key): j.key
        for j in _jobs(dataclasses.replace(s, student_images=90_000), tmp_path)
    }
    teachers = [k for k in base if k[2].startswith("teacher")]
    assert all(base[k] == more[k] for k in teachers)
    assert all(base[k] != more[k] for k in base if k not in teachers)
    # a student taught by a teacher whose run changed is a new run too
    cut = {
        (j.n, j.seed, j.spec.key): j.key
        for j in _jobs(dataclasses.replace(s, teacher_images=16_000), tmp_path)
    }
    assert cut[(500, 0, LEADING.key)] != base[(500, 0, LEADING.key)]


def test_results_md_says_design_machine_verdicts_and_smoke_run(full_dir, results):
    text = (full_dir / "results.md").read_text()
    assert "A smoke run" in text and "machine:" in text and "image-steps" in text
    assert "mnist5k's 1,000 test digits (1000 images)" in text  # --quick: the test digits
    baselines = {b["variant"]: b for b in results["baselines"] if b["train_images"] == 200}
    assert set(baselines) == {"logistic_regression", "knn", "svm"}
    assert all(b["test_images"] == 1000 and 0 < b["top1"] <= 100 for b in baselines.values())
    assert f"| RBF-SVM (pixels) | — | {baselines['svm']['top1']:.2f} |" in text
    assert all(r["curve"][-1][2] == r["top1"] for r in results["runs"])
    assert text.count(" — the interval ") == len(results["comparisons"])
    for name in CLAIMS:
        assert f"## {name}: " in text
    assert "Beside: CNN teacher, 0.625× budget (N=200)" in text
    assert "## tokens: cosine of the class and distillation tokens through depth" in text


def test_figures_show_intervals_from_zero(full_dir, results):
    claim_files = [f"claim_{name}.png" for name in CLAIMS if name != "headline"]
    for name in ("top1.png", "claims.png", "tokens.png", *claim_files):
        with Image.open(full_dir / name) as im:
            assert im.size[0] > 500 and im.size[1] > 300
    left, right = claim_figure(results, "headline").axes
    assert left.get_ylim()[0] == 0 and "95 % CI" in left.get_title()
    assert len(left.patches) == 3  # teacher + the headline pair
    n = results["settings"]["train_images"]
    svm = next(
        b["top1"] for b in results["baselines"] if b["variant"] == "svm" and b["train_images"] == n
    )
    (dashed,) = [line for line in left.lines if line.get_linestyle() == "--"]
    assert dashed.get_ydata()[0] == svm  # the RBF-SVM on the same digits
    assert "gain" in right.get_ylabel() and len(right.get_xticks()) == 1
    losses, gains = claim_figure(results, "losses").axes
    assert len(gains.get_xticks()) == 3  # hard, the paper's soft, the leading: each vs none
    assert len(losses.patches) == 4  # their four students
    curve, gains = claim_figure(results, "data").axes
    assert curve.get_xscale() == "log" and len(curve.get_lines()) >= 2
    assert [t.get_text() for t in gains.get_xticklabels()] == ["N=100", "N=200"]
    forest, data, tokens = claims_figure(results).axes
    assert len(forest.get_yticks()) == len(
        [c for c in results["comparisons"] if c["claim"] != "data"]
    )
    assert data.get_xscale() == "log" and "cosine" in tokens.get_ylabel()
    (alone,) = tokens_figure(results).axes
    probed = [e for e in results["summary"] if "token_cosine" in e]
    assert len(alone.get_lines()) == len(probed) + 2  # one per student, the paper's two figures


def test_checkpoints_kept_for_the_first_seed_only(full_dir):
    assert not list(full_dir.rglob("best_checkpoint.pth"))
    assert all(p.parent.parent.name == "seed0" for p in full_dir.rglob("checkpoint.pth"))
    student = yaml.safe_load(
        (full_dir / "n200" / "seed0" / LEADING.key / "config.yaml").read_text()
    )
    teacher = yaml.safe_load((full_dir / "n200" / "seed0" / "teacher" / "config.yaml").read_text())
    assert (student["cutmix"], student["mixup_prob"]) == (1.0, 1.0)  # students add CutMix
    assert (teacher["cutmix"], teacher["mixup_prob"]) == (0.0, 0.5)  # the teacher keeps the preset
    unmixed = yaml.safe_load(
        (full_dir / "n200" / "seed0" / "hard_nomix" / "config.yaml").read_text()
    )
    assert (unmixed["cutmix"], unmixed["mixup"], unmixed["mixup_prob"]) == (0.0, 0.0, 0.0)


def test_demo_checkpoint_in_eval_and_predict(full_dir, capsys):
    ckpt = full_dir / "n200" / "seed0" / LEADING.key / "checkpoint.pth"
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


def test_documented_commands_reproduce_the_demo_runs():
    teacher_argv, student_argv = _readme_commands()
    s = DemoSettings()
    base = Path("runs/demo/n500/seed0")
    teacher = _Job(RunSpec(TEACHER), 500, 0, base / "teacher")
    teacher.cfg = _config(s, teacher)
    student = _Job(RunSpec(LEADING), 500, 0, base / LEADING.key, deps=[teacher])
    student.cfg = _config(s, student)
    for argv, job in ((teacher_argv, teacher), (student_argv, student)):
        args = build_parser().parse_args(["train", *argv])
        got = config_from_args(args).to_dict()
        want = Config.from_dict(job.cfg).to_dict()
        differ = {k for k in want if got[k] != want[k]} - {"output_dir", "teacher_path", "device"}
        assert not differ, {k: (got[k], want[k]) for k in differ}


def test_demo_presets_are_the_demos_seed_0_runs():
    """``--preset demo_teacher`` / ``demo_student`` (the README's commands) are the runs ``deit
    demo`` makes of its first seed, read from the same settings."""
    s = DemoSettings()
    n, seed = s.train_images, s.seeds[0]
    base = Path("runs/demo") / f"n{n}" / f"seed{seed}"
    for preset, v in (("demo_teacher", TEACHER), ("demo_student", LEADING)):
        want = Config.from_dict(_config(s, _Job(RunSpec(v), n, seed, base / v.key))).to_dict()
        got = get_preset(preset).to_dict()
        # where the run writes, the machine, and the teacher's file are the command's to say
        skip = {"output_dir", "teacher_path", "device"}
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
    # the default run is the headline pair; hard distillation and the rest are --full's
    assert "The default run measures the headline pair (no distillation vs the leading soft" in text
    assert (
        "With --full (about 80 minutes) it measures every claim of the paper: hard vs soft" in text
    )
    assert "smoke run" in text and "--preset demo_teacher" in text
