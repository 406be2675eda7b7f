"""Training's bad inputs and interruptions: each bad input or interruption a user met, with the expected value.

Seeds (3), resume with changed settings (4), BatchNorm at batch 1 (7), the NaN stop message (8),
reruns into a finished run (9), exit status and whole-epoch log lines after a stop (10), one-line
command-line errors and the warm-up note (11).
"""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import torch

import deit.train.data as train_data
import deit.train.loop as train_loop
from conftest import abcd_tree
from deit.checkpoints import CheckpointError, RunCheckpoint
from deit.cli import main
from deit.config import Config
from deit.engine import NonFiniteLossError
from deit.train import LAST, run

MODEL = "deit_pico_patch7_28"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return abcd_tree(tmp_path_factory, train=8, val=2)


def _cfg(tree, out, **kw) -> Config:
    base = dict(
        model=MODEL,
        input_size=28,
        data_set="folder",
        data_path=str(tree),
        batch_size=8,
        epochs=2,
        warmup_epochs=1,
        num_workers=0,
        output_dir=str(out) if out else "",
        model_ema=False,
        repeated_aug=False,
        mixup=0.8,
        cutmix=1.0,
        reprob=0.25,
        drop_path=0.1,
        pin_mem=False,
        device="cpu",
    )
    return Config(**{**base, **kw})


def _lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / "log.txt").read_text().splitlines()]


def test_same_seed_same_run_whatever_ran_before(tree, monkeypatch):
    """Case 3: the result depends on the configuration only, not on what the process drew from
    Python's, numpy's or torch's global generators, before the run or while its data was built
    (a lazy import of scikit-learn's data sets did that, once per process)."""
    cfg = _cfg(tree, None, epochs=1)
    clean = run(cfg, progress=False)["history"][0]["train_loss"]
    real = train_data.build_dataset

    def drawing_build_dataset(*args, **kw):  # what a first import may consume, after seeding
        random.random(), np.random.rand(3), torch.rand(5)
        return real(*args, **kw)

    monkeypatch.setattr(train_data, "build_dataset", drawing_build_dataset)
    random.random(), np.random.rand(3), torch.rand(5)  # and before the run
    assert run(cfg, progress=False)["history"][0]["train_loss"] == clean


def test_resume_with_changed_settings_is_refused_or_rebuilt(tree, tmp_path):
    """Case 4: batch 8 -> 16 on resume is refused naming the difference; with --new-schedule the
    schedule is rebuilt from the same epoch (its learning rates equal a fresh batch-16 run's)
    and config.yaml says batch 16."""
    out = tmp_path / "run"
    run(_cfg(tree, out, epochs=3), max_epochs_this_run=1, progress=False)
    changed = _cfg(tree, out, epochs=3, batch_size=16, auto_resume=True)
    with pytest.raises(CheckpointError, match=r"batch_size 8 -> 16.*--new-schedule"):
        run(changed, progress=False)
    assert json.loads((out / "log.txt").read_text())["epoch"] == 0  # nothing was lost
    with pytest.raises(CheckpointError, match=r"data_set 'folder' -> 'digits'.*--finetune"):
        run(changed.replace(data_set="digits", data_path="", input_size=28), progress=False)
    evaluated = run(changed.replace(eval=True), progress=False)  # evaluation trains nothing
    assert evaluated["status"] == "evaluated"
    resumed = run(changed.replace(new_schedule=True), progress=False)
    fresh = run(_cfg(tree, tmp_path / "fresh", epochs=3, batch_size=16), progress=False)
    assert [h["train_lr"] for h in resumed["history"][1:]] == [
        h["train_lr"] for h in fresh["history"][1:]
    ]
    assert Config.from_yaml(out / "config.yaml").batch_size == 16


def test_batch_norm_model_at_batch_one_is_refused_before_training(tree, tmp_path, capsys):
    """Case 7: one sentence before training, and no output folder left behind."""
    argv = ["train", "--model", "resnet10t", "--data-set", "folder", "--data-path", str(tree)]
    argv += ["--input-size", "28", "--batch-size", "1", "--mixup", "0", "--cutmix", "0"]
    argv += ["--device", "cpu", "--num_workers", "0", "--output_dir", str(tmp_path / "bn")]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the input-size note
    assert err == (
        "deit train: error: --batch-size 1 cannot train resnet10t: its BatchNorm layers need "
        "more than one image per training batch to normalise; use --batch-size 2 or more."
    )
    assert not (tmp_path / "bn").exists()


def test_non_finite_loss_says_which_checkpoint_is_kept(tree, tmp_path, monkeypatch):
    """Case 8: the NaN stop names the kept checkpoint, or says none was written."""
    real = train_loop._train_epoch

    def nan_in_epoch(bad_epoch):
        def train_epoch(state, epoch, show, stop):
            if epoch == bad_epoch:
                raise NonFiniteLossError(f"The training loss is nan at epoch {epoch}.")
            return real(state, epoch, show, stop)

        return train_epoch

    monkeypatch.setattr(train_loop, "_train_epoch", nan_in_epoch(1))
    kept = f"at epoch 1; the run stopped and {tmp_path / 'a' / LAST} is kept."
    with pytest.raises(NonFiniteLossError, match=re.escape(kept)):
        run(_cfg(tree, tmp_path / "a"), progress=False)
    monkeypatch.setattr(train_loop, "_train_epoch", nan_in_epoch(0))
    with pytest.raises(
        NonFiniteLossError, match="at epoch 0; the run stopped and no checkpoint was written."
    ):
        run(_cfg(tree, tmp_path / "b"), progress=False)


def test_rerun_into_a_finished_run_is_refused(tree, tmp_path, capsys):
    """Case 9: a finished run survives a rerun without --auto-resume/--overwrite; --overwrite
    replaces it (one log line per epoch of the new run); a failing run leaves no folder."""
    out = tmp_path / "x"
    run(_cfg(tree, out, epochs=2), progress=False)
    before = (out / LAST).read_bytes(), (out / "log.txt").read_text()
    capsys.readouterr()
    argv = ["train", "--model", MODEL, "--data-set", "folder", "--data-path", str(tree)]
    argv += ["--input-size", "28", "--batch-size", "8", "--epochs", "1", "--device", "cpu"]
    argv += ["--num_workers", "0", "--no-model-ema", "--no-progress", "--output_dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"deit train: error: The output folder {str(out)!r} already holds a run (checkpoint.pth, "
        "log.txt); continue it with --auto-resume, or pass --overwrite to replace it, or choose "
        "another --output_dir."
    )
    assert ((out / LAST).read_bytes(), (out / "log.txt").read_text()) == before
    other = tmp_path / "other"  # a resume from another run must not write over this one
    run(_cfg(tree, other, epochs=1), progress=False)
    assert main([*argv, "--resume", str(other / LAST)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert ((out / LAST).read_bytes(), (out / "log.txt").read_text()) == before
    assert main([*argv, "--overwrite"]) == 0
    assert [x["epoch"] for x in _lines(out)] == [0]
    assert RunCheckpoint.load(out / LAST).epoch == 1
    bad = tmp_path / "never"
    assert (
        main([*argv[:-1], str(bad), "--teacher-path", "nope", "--distillation-type", "hard"]) == 2
    )
    assert not bad.exists()


def test_stop_by_signal_exit_status_and_whole_epoch_log_line(tree, tmp_path, monkeypatch):
    """Case 10: SIGTERM -> exit status 143 (SIGINT 130); the message counts epochs from 1; the
    resumed epoch's log line covers all its steps."""
    import signal

    out = tmp_path / "s"
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] == 3

    class Flag(train_loop._StopFlag):
        def __call__(self) -> bool:
            if stop_after_three():
                self.raised, self.signum = True, signal.SIGTERM
            return self.raised

    monkeypatch.setattr(train_loop, "_StopFlag", Flag)
    cfg = _cfg(tree, out, epochs=1, batch_size=4, aa="rand-m9-mstd0.5-inc1")  # 8 steps
    result = run(cfg, progress=False)
    assert (result["status"], result["stop_signal"]) == ("stopped", 15)
    ck = RunCheckpoint.load(out / LAST)
    assert (ck.epoch, ck.batches_done, ck.epoch_stats["steps"]) == (0, 3, 3.0)
    monkeypatch.undo()
    done = run(cfg.replace(auto_resume=True), progress=False)
    assert done["status"] == "completed"
    assert [x["train_steps"] for x in _lines(out)] == [8.0]
    # bit-exact: the same weights as a run never stopped (RandAugment, erasing, Mixup/CutMix,
    # drop-path all on)
    whole = run(cfg.replace(output_dir=str(tmp_path / "whole")), progress=False)
    a, b = RunCheckpoint.load(out / LAST), RunCheckpoint.load(tmp_path / "whole" / LAST)
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert _lines(out)[0]["train_loss"] == pytest.approx(whole["history"][0]["train_loss"])


def test_command_line_errors_are_one_line(capsys):
    """Case 11: a bad value or an unknown flag is one line without the usage block, with the
    usual spelling here; a warm-up as long as the run gets a note."""
    for argv, expected in [
        (["train", "--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["train", "--preset", "tiny"], "argument --preset: invalid choice: 'tiny'"),
        (["train", "--learning-rate", "1e-3"], "did you mean --lr?"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "usage" not in err
        assert err.startswith("deit train: error: ") and expected in err, err


def test_warmup_longer_than_the_run_gets_a_note(tree, capsys):
    run(_cfg(tree, None, epochs=1, warmup_epochs=1), max_epochs_this_run=0, progress=False)
    assert "note: the warm-up (1 of 1 epochs) is not shorter than the run" in (
        capsys.readouterr().err
    )


def test_readme_reliability_table_names_real_tests():
    """Every test the reliability table (docs/reliability.md, linked from the README) and the
    recipe's many-GPU table cite exists."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    readme = (root / "docs" / "reliability.md").read_text()
    table = readme.split("# Reliability", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(test_\w+)`", table))
    defined = set()
    for f in (root / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", f.read_text(), re.M))
    assert len(names) >= 20 and names <= defined, sorted(names - defined)
    recipe = (root / "docs" / "recipe.md").read_text().split("## Many GPUs", 1)[1]
    gpus = set(re.findall(r"`(test_\w+)`", recipe.split("\n## ", 1)[0]))
    assert len(gpus) >= 10 and gpus <= defined, sorted(gpus - defined)  # and its GPU table
