"""Inputs checked before anything runs: folder walks, split names, decompression bombs, checkpoint
paths, device names, batch sizes, the label store's lock, file names that are not UTF-8 and
paths too long for the file system.

Each case names the sentence a user now gets (docs/reliability.md lists them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import deit
from conftest import write_image_tree
from deit.checkpoints import CheckpointError, RunCheckpoint
from deit.cli import main
from deit.data import build_dataset
from deit.predict import find_images

MODEL = "deit_pico_patch7_28"
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """4 classes: train 4 images each, val 2, test 3 (28x28)."""
    root = tmp_path_factory.mktemp("tree")
    counts = {s: dict.fromkeys("abcd", n) for s, n in (("train", 4), ("val", 2), ("test", 3))}
    return write_image_tree(root, counts, size=(28, 28))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A run folder holding checkpoint.pth (a pico model of classes a-d, 28 px)."""
    run = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    model = deit.create_model(MODEL, num_classes=4)
    RunCheckpoint(model.state_dict(), MODEL, 4, 28, 3, class_names=list("abcd")).save(
        run / "checkpoint.pth"
    )
    return run / "checkpoint.pth"


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err.strip()


# -------------------------------------------------------------------- folder walks (case 2)


def test_symlink_loop_and_hidden_entries_in_a_training_folder(tmp_path):
    root = write_image_tree(tmp_path / "t", {"train": dict.fromkeys("ab", 4)}, size=(28, 28))
    (root / "train" / "a" / "up").symlink_to("..")  # a loop: train/a/up/a/up/...
    (root / "train" / "b" / "same.png").symlink_to(root / "train" / "b" / "0.png")
    hidden = root / "train" / ".ipynb_checkpoints"
    hidden.mkdir()
    Image.new("RGB", (28, 28)).save(hidden / "0-checkpoint.png")
    Image.new("RGB", (28, 28)).save(root / "train" / "a" / "._0.png")  # macOS metadata
    with pytest.warns(UserWarning) as caught:
        ds = build_dataset("folder", root, "train")
    assert ds.classes == ["a", "b"] and len(ds) == 8  # each file once (41 times each before)
    assert sorted(Path(p).name for p, _ in ds.samples) == sorted(
        ["0.png", "1.jpg", "2.png", "3.jpg"] * 2
    )
    link = str(root / "train" / "a" / "up")
    assert [str(w.message) for w in caught] == [
        f"skipped the link {link!r}: it leads back to {str(root / 'train')!r}, a folder it is "
        "inside (a loop); each image is read once."
    ]
    # deit predict walks the same way: each file once, no hidden entry
    found = find_images([root / "train"])
    assert len(found) == 8 and not [f for f in found if "._" in f.name or "ipynb" in str(f)]
    # a file reached in two classes is refused, naming both paths
    (root / "train" / "a" / "up").unlink()
    (root / "train" / "a" / "b0.png").symlink_to(root / "train" / "b" / "0.png")
    with pytest.raises(ValueError) as e:
        build_dataset("folder", root, "train")
    assert str(e.value) == (
        f"The image {str(root / 'train' / 'b' / '0.png')!r} is also "
        f"{str(root / 'train' / 'a' / 'b0.png')!r} (the same file, reached through a link) in "
        "another class; an image belongs to one class: remove the link or the copy."
    )


# ------------------------------------------------------------------ split names (case 3)


def test_split_test_scores_the_test_folder_or_is_refused(tree, ckpt, tmp_path, capsys):
    assert len(build_dataset("folder", tree, "test")) == 12  # test/, not val/'s 8
    assert len(build_dataset("folder", tree, "val")) == 8
    argv = ["eval", str(ckpt), "--data-set", "folder", "--data-path", str(tree), "--json"]
    assert main([*argv, "--split", "test", "--device", "cpu"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["split"], stats["n"]) == ("test", 12)
    no_test = write_image_tree(tmp_path / "t", {"train": {"a": 1}, "val": {"a": 1}}, (28, 28))
    assert main(["eval", str(ckpt), "--data-set", "folder", "--data-path", str(no_test)]
                + ["--split", "test", "--device", "cpu"]) == 2  # fmt: skip
    assert _err(capsys) == (
        f"deit eval: error: folder: {str(no_test)!r} has no test/ folder; pass --split val to "
        "evaluate val/, or add <root>/test/<class>/ folders of images."
    )
    # a tree with train/ and test/ only validates on test/, saying so
    only_test = write_image_tree(tmp_path / "o", {"train": {"a": 1}, "test": {"a": 2}}, (28, 28))
    with pytest.warns(UserWarning, match="has no val/ folder: its test/ folder is the val split"):
        assert len(build_dataset("folder", only_test, "val")) == 2
    with pytest.raises(ValueError, match="test set has no public labels.*pass --split val"):
        build_dataset("inat18", tmp_path, "test")


# --------------------------------------------------------- decompression bombs (case 4)


def test_decompression_bomb_is_one_sentence(tree, ckpt, tmp_path, monkeypatch, capsys):
    # PIL refuses an image of more than 2 x MAX_IMAGE_PIXELS (a 20,000^2 PNG at the default
    # limit); a lower limit makes a 28x28 image one, without writing 400 MB of pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    img = tree / "val" / "a" / "0.png"
    want = (
        f"{str(img)!r} is too large to decode (784 pixels, more than PIL's limit of 200: a "
        "possible decompression bomb); pass a smaller image, or raise PIL.Image.MAX_IMAGE_PIXELS "
        "in Python if you trust the file."
    )
    assert main(["predict", str(ckpt), str(img), "--no-progress"]) == 2
    assert _err(capsys) == f"deit predict: error: {want}"
    assert main(["analyze", str(ckpt), str(img), "--output-dir", str(tmp_path / "an")]) == 2
    assert _err(capsys) == f"deit analyze: error: {want}"
    ds = build_dataset("folder", tree, "val")  # training and deit eval: the loader's sentence
    with pytest.raises(OSError, match=r"cannot read image file .*0\.png \(too large to decode"):
        ds[0]


# ---------------------------------------------------- checkpoint paths (cases 5 and 6)


def test_run_folder_as_a_checkpoint_names_its_checkpoint_files(tree, ckpt, tmp_path, capsys):
    run = ckpt.parent
    want = (
        f"Checkpoint {str(run)!r} is a folder (a deit train run); pass its checkpoint file, "
        f"{str(ckpt)!r}."
    )
    for argv in (
        ["eval", str(run), "--data-set", "folder", "--data-path", str(tree), "--device", "cpu"],
        ["predict", str(run), str(tree / "val" / "a")],
        ["export", str(run), "--output", str(tmp_path / "m.onnx")],
        ["analyze", str(run), str(tree / "val" / "a"), "--output-dir", str(tmp_path / "an")],
    ):
        assert main(argv) == 2
        assert _err(capsys) == f"deit {argv[0]}: error: {want}"
    with pytest.raises(CheckpointError) as e:  # --resume (and --finetune) read it the same way
        RunCheckpoint.load(run)
    assert str(e.value) == want
    with pytest.raises(CheckpointError, match=r"^Teacher checkpoint .* is a folder \(a deit"):
        deit.build_teacher(MODEL, run, num_classes=4)


def test_exports_are_named_with_what_to_pass_instead(ckpt, tree, tmp_path, capsys):
    from deit.export import export_model

    script = tmp_path / "pico.pt"
    export_model(str(ckpt), script, format="torchscript")
    assert torch.jit.load(str(script))(torch.zeros(1, 3, 28, 28)).shape == (1, 4)
    onnx = tmp_path / "pico.onnx"
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch")  # an ONNX protobuf's first bytes
    instead = "pass the checkpoint it was exported from (e.g. <run>/checkpoint.pth)."
    assert main(["predict", str(script), str(tree / "val")]) == 2
    assert _err(capsys) == (
        f"deit predict: error: {str(script)!r} is a TorchScript program (deit export --format "
        f"torchscript, torch.jit.save), not a checkpoint; run it with torch.jit.load, or {instead}"
    )
    assert main(["predict", str(onnx), str(tree / "val")]) == 2
    assert _err(capsys) == (
        f"deit predict: error: {str(onnx)!r} is an ONNX model (deit export), not a checkpoint; "
        f"run it with onnxruntime, or {instead}"
    )


# ------------------------------------------------------------- device names (case 7)


def _every_command(tree, ckpt, tmp_path, device: str) -> list[list[str]]:
    train = ["--model", MODEL, "--data-set", "folder", "--data-path", str(tree)]
    train += ["--input-size", "28", "--device", device]
    return [
        ["train", *train, "--output_dir", str(tmp_path / "run")],
        ["teacher-labels", *train, "--output", str(tmp_path / "labels")]
        + ["--distillation-type", "hard", "--teacher-path", str(ckpt), "--teacher-model", MODEL],
        ["eval", str(ckpt), "--data-set", "folder", "--data-path", str(tree), "--device", device],
        ["predict", str(ckpt), str(tree / "val"), "--device", device],
        ["analyze", str(ckpt), str(tree / "val"), "--output-dir", str(tmp_path / "an")]
        + ["--device", device],
        ["benchmark", "--models", MODEL, "--device", device],
    ]


@pytest.mark.parametrize(
    ("device", "gpus", "want"),
    [
        ("mps", 0, "device 'mps' was asked but Apple's Metal (MPS) backend is not available on "
         "this machine; use cpu."),
        ("cuda:3", 2, "device 'cuda:3' was asked but this machine shows 2 CUDA GPU(s) (cuda:0 "
         "to cuda:1); pass one of those."),
        ("cuda:3", 0, "device 'cuda:3' was asked but no CUDA GPU is visible; use cpu."),
    ],
)  # fmt: skip
def test_device_names_are_one_check_in_every_command(
    tree, ckpt, tmp_path, monkeypatch, capsys, device, gpus, want
):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    for argv in _every_command(tree, ckpt, tmp_path, device):
        assert main(argv) == 2, argv[0]
        assert _err(capsys) == f"deit {argv[0]}: error: {want}"
    assert not (tmp_path / "run").exists() and not (tmp_path / "labels").exists()
    from deit.precision import resolve_device

    with pytest.raises(ValueError, match="^device 'gpu' is not a device name; use 'auto', 'cpu'"):
        resolve_device("gpu")


# -------------------------------------------------------------- batch sizes (case 9)


def test_batch_size_zero_is_one_sentence_in_every_command(tree, ckpt, tmp_path, capsys):
    fix = {"predict": " (default 64)", "eval": " (default 128)", "analyze": " (default 16)"}
    for argv in _every_command(tree, ckpt, tmp_path, "cpu")[2:5]:
        assert main([*argv, "--batch-size", "0"]) == 2
        assert _err(capsys) == (
            f"deit {argv[0]}: error: 'batch_size' is 0 but must be at least 1; pass a positive "
            f"batch size{fix[argv[0]]}."
        )
    labels = _every_command(tree, ckpt, tmp_path, "cpu")[1]
    assert main([*labels, "--teacher-batch-size", "0"]) == 2
    assert _err(capsys) == (
        "deit teacher-labels: error: 'teacher_batch_size' is 0 but must be at least 1; pass a "
        "positive batch size."
    )
    assert main([*_every_command(tree, ckpt, tmp_path, "cpu")[0], "--batch-size", "0"]) == 2
    assert "'batch_size' is 0 but must be at least 1; use a positive batch size per process" in (
        capsys.readouterr().err
    )


# ------------------------------------------------------- the label store's lock (case 1)


def _hold_lock(folder: Path, user: str, flag: str) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from deit.train.lock import OutputLock
        OutputLock.acquire({str(folder)!r}, {user!r}, {flag!r})
        print("locked", flush=True)
        sys.stdin.read()
    """)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    assert p.stdout.readline() == b"locked\n"
    return p


def _label_cfg(tree, ckpt):
    from deit.config import Config

    return Config(
        model=MODEL, input_size=28, data_set="folder", data_path=str(tree), batch_size=4,
        epochs=2, device="cpu", num_workers=0, mixup=0, cutmix=0, distillation_type="hard",
        teacher_model=MODEL, teacher_path=str(ckpt), model_ema=False,
    )  # fmt: skip


def test_second_label_pass_into_one_store_is_refused_and_the_first_completes(
    tree, ckpt, tmp_path, monkeypatch, capsys
):
    import deit.label_pass as label_pass
    from deit.teacher import TeacherLabelStore
    from deit.train.lock import OutputFolderBusyError

    out = tmp_path / "labels"
    holder = _hold_lock(out, "label pass", "--output")  # a pass of another process
    try:
        with pytest.raises(OutputFolderBusyError) as e:
            label_pass.compute_teacher_labels(_label_cfg(tree, ckpt), out, progress=False)
    finally:
        holder.communicate(b"")
    assert str(e.value).startswith(
        f"The output folder {str(out)!r} is in use by another label pass (pid {holder.pid} on host "
    )
    assert str(e.value).endswith("; wait for it to end, or choose another --output.")
    # a second pass while the first runs: refused at once; the first writes a whole store
    real, refused = label_pass._teacher_pass, []

    def with_a_second_pass(state, teacher, writer, chunk, epoch, *rest):
        if epoch == 0:
            with pytest.raises(OutputFolderBusyError) as second:
                label_pass.compute_teacher_labels(_label_cfg(tree, ckpt), out, progress=False)
            refused.append(str(second.value))
        return real(state, teacher, writer, chunk, epoch, *rest)

    monkeypatch.setattr(label_pass, "_teacher_pass", with_a_second_pass)
    label_pass.compute_teacher_labels(_label_cfg(tree, ckpt), out, progress=False)
    assert refused and "is in use by another label pass" in refused[0]
    assert TeacherLabelStore(out).manifest["epochs"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "top1.npy"]


def test_partial_files_a_killed_label_pass_left_are_removed_with_a_note(
    tree, ckpt, tmp_path, capsys
):
    from deit.label_pass import compute_teacher_labels

    out = tmp_path / "labels"
    out.mkdir()
    (out / ".top1.npy.partial").write_bytes(b"\0" * 100)  # kill -9 during a pass
    (out / ".logits.npy.partial").write_bytes(b"\0" * 28)
    compute_teacher_labels(_label_cfg(tree, ckpt), out, progress=False)
    assert (
        capsys.readouterr().err.count(
            f"note: removed 2 partial file(s) (128 bytes) that an interrupted label pass left in "
            f"{str(out)!r}."
        )
        == 1
    )
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "top1.npy"]


def test_analysis_and_benchmark_folders_are_locked_for_their_job(ckpt, tree, tmp_path, capsys):
    out = tmp_path / "an"
    holder = _hold_lock(out, "analysis", "--output-dir")
    try:
        assert main(["analyze", str(ckpt), str(tree / "val" / "a"), "--output-dir", str(out)]) == 2
        err = _err(capsys)
        assert main(["benchmark", "--models", MODEL, "--output-dir", str(out), "--min-time", "0"]
                    + ["--warmup", "0", "--no-latency", "--no-plot"]) == 2  # fmt: skip
        bench = capsys.readouterr().err
    finally:
        holder.communicate(b"")
    assert err.startswith(f"deit analyze: error: The output folder {str(out)!r} is in use by "
                          f"another analysis (pid {holder.pid} on host ")  # fmt: skip
    assert err.endswith("; wait for it to end, or choose another --output-dir.")
    assert "is in use by another benchmark (pid" in bench
    assert [p.name for p in out.iterdir()] == [".deit-run.lock"]  # the holder's; none of theirs


# ----------------------------------------- file names that are not UTF-8, long paths (notes)


def test_latin1_file_names_are_valid_json_and_print(ckpt, tree, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name: a lone surrogate in Python
    Image.open(tree / "val" / "a" / "0.png").save(folder / name)
    assert main(["predict", str(ckpt), str(folder), "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out
    row = json.loads(out)
    assert row["path"] == str(folder / "caf") + "\\xe9.png"
    assert out.encode("utf-8")  # valid Unicode throughout (a lone surrogate would raise)
    assert main(["predict", str(ckpt), str(folder), "--no-progress"]) == 0
    assert str(folder / "caf") + "\\xe9.png" in capsys.readouterr().out


def test_path_too_long_for_the_file_system_is_one_sentence(ckpt, tree, tmp_path, capsys):
    long = tmp_path / ("x" * 300)
    argv = ["train", "--model", MODEL, "--data-set", "folder", "--data-path", str(tree)]
    assert main([*argv, "--output_dir", str(long), "--device", "cpu"]) == 2
    shown = f"{str(long)[:24]}...{'x' * 24}"
    assert _err(capsys) == (
        f"deit train: error: The path {shown!r} is too long: the name {'x' * 24 + '...' + 'x' * 24!r} "
        "has 300 bytes, more than the 255 a name may have there; choose a shorter path."
    )
    assert main(["export", str(ckpt), "--output", f"{long}.onnx"]) == 2
    assert "has 305 bytes, more than the 255 a name may have there" in _err(capsys)
