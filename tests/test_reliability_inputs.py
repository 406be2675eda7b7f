"""Two runs into one folder, folder data sets whose classes do not
match, damaged teacher-label stores, bad configuration files; each with its expected value."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import deit
from conftest import write_image_tree
from deit.checkpoints import RunCheckpoint
from deit.cli import main
from deit.config import Config
from deit.label_pass import compute_teacher_labels
from deit.teacher import TeacherLabelStore
from deit.train import LAST, label_pass_state
from deit.train.lock import LOCK_NAME

PICO = "deit_pico_patch7_28"


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train", "--model", PICO, "--data-set", "folder", "--data-path", str(data)]
    argv += ["--input-size", "28", "--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0"]
    argv += ["--device", "cpu", "--num_workers", "0", "--no-model-ema", "--no-repeated-aug"]
    return [*argv, "--no-progress", "--output_dir", str(out), *extra]


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """The one error line of ``deit <argv>`` (exit status 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------ 2. two runs into one folder


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 8 training and 2 validation images, 28x28."""
    counts = {"train": dict.fromkeys("ab", 8), "val": dict.fromkeys("ab", 2)}
    return write_image_tree(tmp_path_factory.mktemp("tree"), counts, size=(28, 28))


def _start(tree: Path, out: Path, seed: int) -> subprocess.Popen:
    """A real `deit train` process, stopped (SIGSTOP) once it holds the folder's lock."""
    cmd = [sys.executable, "-m", "deit.cli", *_train_argv(tree, out, "--seed", str(seed))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    lock, end = out / LOCK_NAME, time.time() + 120
    while not (lock.is_file() and lock.read_text()):  # the owner is written once locked
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < end, "the run never took the lock"
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)
    return proc


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_second_run_into_a_running_runs_folder_is_refused(tree, tmp_path):
    """Case 2: two real processes, seeds 0 and 1, one --output_dir. The second is refused in one
    sentence naming the first (pid, host, start) and changes nothing; the first finishes alone:
    config.yaml, checkpoint and log say seed 0, one log line, one TensorBoard event file."""
    out = tmp_path / "run"
    first = _start(tree, out, seed=0)
    try:
        owner = json.loads((out / LOCK_NAME).read_text())
        assert (owner["pid"], owner["host"]) == (first.pid, socket.gethostname())
        before = _files(out)
        cmd = [sys.executable, "-m", "deit.cli", *_train_argv(tree, out, "--seed", "1")]
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1] == (
            f"deit train: error: The output folder {str(out)!r} is in use by another run (pid "
            f"{first.pid} on host {socket.gethostname()}, started {owner['started']}); wait for "
            "it to end, or choose another --output_dir."
        )
        assert _files(out) == before  # nothing of the first run changed
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert Config.from_yaml(out / "config.yaml").seed == 0
    assert RunCheckpoint.load(out / LAST).config["seed"] == 0
    assert [json.loads(x)["epoch"] for x in (out / "log.txt").read_text().splitlines()] == [0]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_lock_of_a_killed_run_is_taken_over_with_a_note(tree, tmp_path, capsys):
    """Case 2: a run killed (SIGKILL) while it holds the lock leaves the lock file naming it;
    --auto-resume takes the lock over with a note naming the dead run and trains."""
    out = tmp_path / "run"
    killed = _start(tree, out, seed=0)
    owner = json.loads((out / LOCK_NAME).read_text())
    killed.kill()
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert json.loads((out / LOCK_NAME).read_text()) == owner  # left behind
    assert main(_train_argv(tree, out, "--auto-resume")) == 0
    assert (
        f"note: the output folder {str(out)!r} was locked by pid {killed.pid} on host "
        f"{socket.gethostname()}, started {owner['started']}, which ended without releasing it "
        "(killed or crashed); the lock is taken over."
    ) in capsys.readouterr().err
    assert RunCheckpoint.load(out / LAST).epoch == 1
    assert not (out / LOCK_NAME).exists()


def test_run_in_the_same_process_is_refused_and_a_failed_run_leaves_no_folder(tree, tmp_path):
    """Case 2, in one process: a lock held by this process refuses a second acquisition; a run
    that fails before training removes the folder it created for its lock."""
    from deit.train.lock import OutputFolderBusyError, OutputLock

    lock = OutputLock.acquire(tmp_path / "a" / "b")
    with pytest.raises(OutputFolderBusyError, match=rf"\(pid {os.getpid()}: this process\)"):
        OutputLock.acquire(tmp_path / "a" / "b")
    lock.release(remove_created=True)
    assert not (tmp_path / "a").exists()  # both folders it created, empty, are gone
    assert main(_train_argv(tree, tmp_path / "x", "--finetune", str(tmp_path / "none"))) == 2
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------ 3. classes that do not match


def test_folder_classes_that_do_not_match_are_refused_before_training(tmp_path, capsys):
    """Case 3: val/ with a class train/ lacks, val/ with 'z' where train/ has 'c', and a single
    class: one sentence before training, naming the classes; no output folder is left."""
    root = tmp_path / "extra"
    write_image_tree(root, {"train": dict.fromkeys("abc", 4), "val": dict.fromkeys("abcd", 1)})
    err = _error(capsys, _train_argv(root, tmp_path / "o1"))
    assert err == (
        f"deit train: error: The validation data {root / 'val'} has class 'd' that the "
        f"training data {root / 'train'} lacks; a model trained there cannot predict it, so "
        "give validation only classes the training data has."
    )
    root = tmp_path / "renamed"
    write_image_tree(root, {"train": dict.fromkeys("abc", 4), "val": dict.fromkeys("abz", 1)})
    err = _error(capsys, _train_argv(root, tmp_path / "o2"))
    assert err == (
        f"deit train: error: The validation data {root / 'val'} has class 'z' that the "
        f"training data {root / 'train'} lacks (it has class 'c' instead); a model trained "
        "there cannot predict it, so give validation only classes the training data has."
    )
    root = tmp_path / "one"
    write_image_tree(root, {"train": {"a": 4}, "val": {"a": 2}})
    err = _error(capsys, _train_argv(root, tmp_path / "o3"))
    assert err == (
        f"deit train: error: The training data {root / 'train'} has 1 class ('a'), so there "
        "is nothing to tell apart; give it a sub-folder per class, at least two."
    )
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_validation_with_fewer_classes_is_labelled_by_trains_names(tmp_path):
    """Case 3: val/ holding a and c of train's a, b, c is legitimate; its labels are train's
    indices (a 0, c 2), not its own sub-folder order (a 0, c 1)."""
    root = tmp_path / "sub"
    write_image_tree(root, {"train": dict.fromkeys("abc", 4), "val": {"a": 1, "c": 2}})
    cfg = Config(model=PICO, input_size=28, data_set="folder", data_path=str(root), device="cpu")
    state = label_pass_state(cfg.replace(batch_size=4, num_workers=0, repeated_aug=False))
    val = state.loader_val.dataset
    assert val.targets == [0, 2, 2] and val.classes == ["a", "b", "c"]
    assert torch.cat([y for _, y in state.loader_val]).tolist() == [0, 2, 2]  # what eval sees


# ------------------------------------------------------------ 4. damaged teacher-label stores


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A real top-1 store: 48 digits at 28 px, batch 8, 1 epoch (48 views, uint8 labels)."""
    torch.manual_seed(3)
    teacher = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    cnn = deit.build_classifier("test_resnet", 10)
    torch.save({"model": cnn.state_dict(), "model_name": "test_resnet", "num_classes": 10}, teacher)
    cfg = Config(
        model="deit_pico_distilled_patch7_28",
        input_size=28,
        data_set="digits",
        train_subset=48,
        batch_size=8,
        epochs=1,
        warmup_epochs=0,
        num_workers=0,
        model_ema=False,
        repeated_aug=False,
        pin_mem=False,
        device="cpu",
        distillation_type="hard",
        teacher_model="test_resnet",
        teacher_path=str(teacher),
        teacher_precision="fp32",
    )
    out = tmp_path_factory.mktemp("store") / "labels"
    compute_teacher_labels(cfg, out, progress=False)
    return out, cfg


def test_damaged_teacher_label_store_is_one_sentence(store, tmp_path, capsys):
    """Case 4: a top1.npy cut inside its header, cut inside its data, empty; a manifest.json cut
    short: one sentence naming the file, what is wrong and the command that recomputes it."""
    good, cfg = store
    assert (good / "top1.npy").stat().st_size == 128 + 48  # header + 1 epoch x 48 uint8 labels
    fix = (
        "recompute the store with `deit teacher-labels --config <the run's config.yaml> "
        "--output {}`."
    )
    lines = (good / "manifest.json").read_text().splitlines(keepends=True)
    cases = [
        ("top1.npy", (good / "top1.npy").read_bytes()[:100], "is cut short inside its .npy "
         "header (100 bytes)"),
        ("top1.npy", (good / "top1.npy").read_bytes()[:150], "is cut short (150 of 176 bytes)"),
        ("top1.npy", b"", "is empty (0 bytes)"),
        ("manifest.json", "".join(lines[:3]).encode(), "is not valid JSON (Expecting property "
         "name enclosed in double quotes at line 4, column 1; cut short?)"),
    ]  # fmt: skip
    for i, (name, data, what) in enumerate(cases):
        bad = shutil.copytree(good, tmp_path / f"s{i}")
        (bad / name).write_bytes(data)
        kind = "manifest" if name == "manifest.json" else "file"
        expected = f"The teacher-label {kind} {bad / name} {what}; {fix.format(bad)}"
        with pytest.raises(ValueError) as e:
            TeacherLabelStore(bad)
        assert str(e.value) == expected
    argv = ["train", "--model", cfg.model, "--data-set", "digits", "--train-subset", "48"]
    argv += ["--input-size", "28", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0"]
    argv += ["--device", "cpu"]
    argv += ["--num_workers", "0", "--no-repeated-aug", "--distillation-type", "hard"]
    argv += ["--teacher-labels", str(tmp_path / "s1"), "--no-progress"]
    assert _error(capsys, argv) == (  # deit train stops before training, in one line
        f"deit train: error: The teacher-label file {tmp_path / 's1' / 'top1.npy'} is cut short "
        f"(150 of 176 bytes); {fix.format(tmp_path / 's1')}"
    )


# ------------------------------------------------------------ 6. configuration files


def test_config_file_problems_name_the_file_and_the_key(tmp_path, capsys):
    """Case 6: a bad value a flag overrides, a binary file, a folder, a missing file, a key set
    twice: one sentence each, naming the file (and the key)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text('epochs: "ten"\nlr: -1\nbatch_size: 8\n')
    err = _error(capsys, ["train", "--config", str(bad), "--epochs", "1", "--lr", "1e-3"])
    assert err == (
        f"deit train: error: In {bad}, config key 'epochs' must be an integer, not str 'ten'. "
        f"In {bad}, 'lr' is -1.0 but must be greater than 0; set a positive value."
    )
    png = tmp_path / "run.yaml"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert _error(capsys, ["train", "--config", str(png)]) == (
        f"deit train: error: The config file {png} is not text (byte 0 is 0x89, not UTF-8); "
        "pass a YAML file of config keys."
    )
    folder = tmp_path / "runs"
    (folder / "config.yaml").parent.mkdir()
    (folder / "config.yaml").write_text("epochs: 2\n")
    assert _error(capsys, ["train", "--config", str(folder)]) == (
        f"deit train: error: The config file {folder} is a folder; pass the YAML file itself "
        f"such as {folder / 'config.yaml'}."
    )
    assert _error(capsys, ["train", "--config", str(tmp_path / "nope.yaml")]) == (
        f"deit train: error: The config file {tmp_path / 'nope.yaml'} does not exist; check its "
        "path."
    )
    twice = tmp_path / "twice.yaml"
    twice.write_text("lr: 1e-3\nepochs: 2\nlr: 2e-3\n")
    assert _error(capsys, ["train", "--config", str(twice)]) == (
        f"deit train: error: {twice} sets 'lr' twice (lines 1 and 3), so one value would be "
        "lost; keep one of them."
    )
    with pytest.raises(Exception, match=r"sets 'lr' twice"):
        Config.from_yaml(twice)  # the library reads files the same way
