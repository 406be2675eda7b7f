"""A full disk or a read-only folder, for every writer.

``torch.save`` on a full disk ended a run with a 20-line ``RuntimeError: [enforce fail at
inline_container.cc:672] unexpected pos``. Every writer now goes through
:func:`deit._write.atomic_write`; these tests make its temporary file refuse bytes mid-write
(``OSError(ENOSPC)``, what a full disk does) or refuse to be created (``EROFS``, ``EACCES``:
patched, since root ignores file permissions) and check the sentence, that the previous file
is byte for byte the same and loads, and that a run resumes from it bit-exactly.
"""

from __future__ import annotations

import errno
import hashlib
import io
import re
from pathlib import Path

import pytest
import torch

import deit
import deit._write as write_mod
import deit.train.loop as train_loop
from conftest import abcd_tree
from deit.checkpoints import RunCheckpoint, atomic_save
from deit.cli import main
from deit.config import Config
from deit.train import run

MODEL = "deit_pico_patch7_28"
FREE = 4_096  # what the patched disk reports free


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return abcd_tree(tmp_path_factory, train=4, val=2)


def _cfg(tree, out, **kw) -> Config:
    base = dict(model=MODEL, input_size=28, data_set="folder", data_path=str(tree))
    base |= dict(batch_size=4, epochs=2, warmup_epochs=1, num_workers=0, output_dir=str(out))
    base |= dict(model_ema=False, repeated_aug=False, drop_path=0.1, pin_mem=False)
    base |= dict(device="cpu", mixup=0.8, cutmix=1.0, reprob=0.25)
    return Config(**{**base, **kw})


class _FullFile(io.FileIO):
    """The temporary file on a disk that fills after ``room`` bytes."""

    room = 1_000

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if self.tell() + n > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def _full_disk(monkeypatch, only: str = "") -> None:
    """Every temporary file whose name starts with ``.<only>`` fills after 1,000 bytes; the
    disk reports :data:`FREE` bytes free."""
    real_open = write_mod._open
    names: dict[int, str] = {}
    real_make = write_mod._make_temp

    def make(folder, name):
        fd, tmp = real_make(folder, name)
        names[fd] = name
        return fd, tmp

    def open_(fd):
        if names.pop(fd, "").startswith(only):
            return io.BufferedWriter(_FullFile(fd, "wb", closefd=True))
        return real_open(fd)

    monkeypatch.setattr(write_mod, "_make_temp", make)
    monkeypatch.setattr(write_mod, "_open", open_)
    usage = write_mod.shutil.disk_usage(".")
    monkeypatch.setattr(write_mod.shutil, "disk_usage", lambda p: usage._replace(free=FREE))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(folder.iterdir())}


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*.tmp")]


def _sentence(path: Path, needed: int, what: str, fix: str, before: str) -> str:
    return (
        f"Could not write {path.name!r} in {str(path.parent)!r}: {what} ({needed:,} bytes "
        f"needed, {FREE:,} free); {before}; {fix}."
    )


def _needed(message: str) -> int:
    return int(re.search(r"\(([\d,]+) bytes needed", message)[1].replace(",", ""))


def test_full_disk_keeps_the_run_checkpoint_and_the_run_resumes_bit_exactly(
    tree, tmp_path, monkeypatch
):
    ref = run(_cfg(tree, tmp_path / "ref"), progress=False)
    out = tmp_path / "run"
    run(_cfg(tree, out), max_epochs_this_run=1, progress=False)
    last, best = out / "checkpoint.pth", out / "best_checkpoint.pth"
    before = {p.name: _sha(p) for p in (last, best, out / "log.txt")}

    with monkeypatch.context() as m:
        _full_disk(m, only="checkpoint.pth")
        with pytest.raises(OSError) as e:  # epoch 2 trains, its checkpoint does not fit
            run(_cfg(tree, out, auto_resume=True), progress=False)
    message = str(e.value)
    needed = _needed(message)
    fix = "free some space or write to another folder"
    assert message == _sentence(
        last, needed, "the disk is full", fix, "the previous 'checkpoint.pth' is intact"
    )
    assert {p.name: _sha(p) for p in (last, best, out / "log.txt")} == before
    assert _no_temp_files(out) and RunCheckpoint.load(last).epoch == 1

    result = run(_cfg(tree, out, auto_resume=True), progress=False)
    assert result["status"] == "completed" and len(result["history"]) == 2
    final = RunCheckpoint.load(last)
    assert 0.95 * last.stat().st_size < needed <= 1.05 * last.stat().st_size  # what did not fit
    want = RunCheckpoint.load(tmp_path / "ref" / "checkpoint.pth").model
    assert final.model.keys() == want.keys()
    assert all(torch.equal(final.model[k], want[k]) for k in want)  # bit for bit
    assert result["best_acc1"] == ref["best_acc1"]


def test_full_disk_keeps_the_best_checkpoint(tree, tmp_path, monkeypatch):
    scores = iter([10.0, 20.0, 20.0])  # every evaluation a new best: both epochs write it
    monkeypatch.setattr(
        train_loop, "_evaluate", lambda *a, **k: {"acc1": next(scores), "acc5": 100.0, "loss": 1.0}
    )
    out = tmp_path / "run"
    run(_cfg(tree, out), max_epochs_this_run=1, progress=False)
    best = out / "best_checkpoint.pth"
    kept = _sha(best)
    with monkeypatch.context() as m:
        _full_disk(m, only="best_checkpoint.pth")
        with pytest.raises(OSError) as e:
            run(_cfg(tree, out, auto_resume=True), progress=False)
    message = str(e.value)
    assert message == _sentence(
        best,
        _needed(message),
        "the disk is full",
        "free some space or write to another folder",
        "the previous 'best_checkpoint.pth' is intact",
    )
    assert _sha(best) == kept and _no_temp_files(out)
    assert RunCheckpoint.load(best).epoch == 1 and RunCheckpoint.load(best).best_acc1 == 10.0
    assert RunCheckpoint.load(out / "checkpoint.pth").epoch == 2  # written before it, whole


@pytest.mark.parametrize(
    ("code", "what", "fix"),
    [
        (errno.EROFS, "the folder is on a read-only file system", "write to another folder"),
        (
            errno.EACCES,
            "the folder is not writable (permission denied)",
            "make it writable or write to another folder",
        ),
    ],
)
def test_read_only_output_folder_is_one_sentence(
    tree, tmp_path, monkeypatch, capsys, code, what, fix
):
    out = tmp_path / "run"
    run(_cfg(tree, out), max_epochs_this_run=1, progress=False)
    kept = {p.name: _sha(p) for p in out.iterdir() if p.is_file()}
    capsys.readouterr()

    def refuse(folder, name):
        raise OSError(code, "refused")

    monkeypatch.setattr(write_mod, "_make_temp", refuse)
    usage = write_mod.shutil.disk_usage(".")
    monkeypatch.setattr(write_mod.shutil, "disk_usage", lambda p: usage._replace(free=FREE))
    argv = ["train", "--model", MODEL, "--input-size", "28", "--data-set", "folder"]
    argv += ["--data-path", str(tree), "--batch-size", "4", "--epochs", "2", "--device", "cpu"]
    argv += ["--output_dir", str(out), "--auto-resume", "--no-progress", "--no-model-ema"]
    argv += [
        "--no-repeated-aug",
        "--num_workers",
        "0",
        "--warmup-epochs",
        "1",
        "--drop-path",
        "0.1",
    ]
    argv += ["--no-pin-mem"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    config = out / "config.yaml"  # the first file a resumed run writes
    needed = _needed(err)
    assert 0.9 * config.stat().st_size < needed < 1.1 * config.stat().st_size
    assert err.splitlines()[0].startswith("Resumed from ")  # then the error, alone
    assert err.splitlines()[1] + "\n" == (
        f"deit train: error: Could not write 'config.yaml' in {str(out)!r}: {what} "
        f"({needed:,} bytes needed, {FREE:,} free); the previous 'config.yaml' is intact; {fix}.\n"
    )
    assert {p.name: _sha(p) for p in out.iterdir() if p.is_file()} == kept


def test_atomic_save_on_a_full_disk_names_the_exact_size(tmp_path, monkeypatch):
    """The bytes needed are those the file would hold; no partial file when there was none."""
    obj = {"w": torch.arange(1000, dtype=torch.float32)}
    size = len((lambda b: (torch.save(obj, b), b.getvalue())[1])(io.BytesIO()))
    _full_disk(monkeypatch)
    path = tmp_path / "new.pth"
    with pytest.raises(OSError) as e:
        atomic_save(obj, path)
    assert str(e.value) == _sentence(
        path,
        size,
        "the disk is full",
        "free some space or write to another folder",
        "no partial file was left in its place",
    )
    assert e.value.errno == errno.ENOSPC and not path.exists() and _no_temp_files(tmp_path)


# ------------------------------------------------------------------- export, demo


def test_full_disk_keeps_the_previous_export(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model = deit.create_model(MODEL, num_classes=4)
    ck = tmp_path / "run.pth"
    RunCheckpoint(model.state_dict(), MODEL, 4, 28, 3).save(ck)
    out = tmp_path / "m.pt"
    argv = ["export", str(ck), "--format", "torchscript", "--output", str(out)]
    assert main(argv) == 0
    kept = _sha(out)
    capsys.readouterr()
    _full_disk(monkeypatch, only="m.pt")
    assert main(argv) == 2
    err = capsys.readouterr().err
    fix = "free some space or write to another folder"
    sentence = _sentence(
        out, _needed(err), "the disk is full", fix, "the previous 'm.pt' is intact"
    )
    assert err == f"deit export: error: {sentence}\n"
    assert abs(_needed(err) / out.stat().st_size - 1) < 0.01  # the model that did not fit
    assert _sha(out) == kept and _no_temp_files(tmp_path)
    assert torch.jit.load(str(out))(torch.zeros(1, 3, 28, 28)).shape == (1, 4)


def test_full_disk_keeps_the_previous_demo_results(tmp_path, monkeypatch):
    """The demo's results (figure, results.json, results.md) are written whole: with the
    study itself stubbed (its runs are deit train's, tested above), a full disk leaves the
    previous results as they were."""
    import deit.baselines
    import deit.demo.run as demo_run
    from deit.demo import DemoSettings

    runs = [{"key": "none", "variant": "none", "seed": 0, "train_images": 200, "top1": 50.0}]
    monkeypatch.setattr(demo_run, "_execute", lambda s, jobs, out, say: (runs, 1))
    monkeypatch.setattr(demo_run, "_prune", lambda s, r: None)
    monkeypatch.setattr(demo_run, "summarize", lambda r: {})
    monkeypatch.setattr(demo_run, "comparisons", lambda s, r: [])
    monkeypatch.setattr(demo_run, "claim_figure", lambda r, name: _Figure())
    monkeypatch.setattr(demo_run, "markdown", lambda r: "# results\n")
    monkeypatch.setattr(deit.baselines, "fit_baselines", lambda *a: [])
    settings = DemoSettings.quick(output_dir=str(tmp_path), progress=False)
    demo_run.run_demo(settings)
    kept = _files(tmp_path)
    assert set(kept) >= {"results.json", "results.md", "top1.png"}
    for name in ("top1.png", "results.json", "results.md"):
        with monkeypatch.context() as m:
            _full_disk(m, only=name)
            m.setattr(_FullFile, "room", 4)  # results.md is a few bytes here
            with pytest.raises(OSError) as e:
                demo_run.run_demo(settings)
        assert str(e.value).startswith(f"Could not write {name!r} in {str(tmp_path)!r}: ")
        assert f"the previous {name!r} is intact" in str(e.value)
        assert _files(tmp_path) == kept and _no_temp_files(tmp_path)


class _Figure:
    """A stand-in for a matplotlib figure: 5,000 bytes of PNG-like data."""

    def savefig(self, f, format, dpi):
        f.write(b"\x89PNG" + bytes(4_996))


def test_read_only_folder_at_the_run_lock_is_one_sentence(tree, tmp_path, monkeypatch, capsys):
    """A new run into a read-only place fails at its first write, the lock: one sentence, and
    the folders it made are removed."""
    from deit.train.lock import OutputLock

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(OutputLock, "_lock", staticmethod(refuse))
    out = tmp_path / "new" / "run"
    argv = ["train", "--model", MODEL, "--input-size", "28", "--data-set", "folder"]
    argv += ["--data-path", str(tree), "--batch-size", "4", "--epochs", "1", "--device", "cpu"]
    argv += ["--output_dir", str(out), "--no-progress", "--num_workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        f"deit train: error: Could not write '.deit-run.lock' in {str(out)!r}: the folder is on "
        "a read-only file system ("
    )
    assert err.endswith("; no partial file was left in its place; write to another folder.\n")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------- the teacher-label store


def _label_cfg(tree, tmp_path) -> Config:
    torch.manual_seed(3)
    teacher = tmp_path / "teacher.pth"
    cnn = deit.build_classifier("test_resnet", 4)
    torch.save({"model": cnn.state_dict(), "model_name": "test_resnet", "num_classes": 4}, teacher)
    distilled = dict(model="deit_pico_distilled_patch7_28", distillation_type="soft")
    return _cfg(tree, tmp_path / "run", **distilled, teacher_model="test_resnet").replace(
        teacher_path=str(teacher), eval_interval=0
    )


@pytest.mark.parametrize("refused", ["allocate", "create"])
def test_label_store_on_a_full_disk_or_read_only_folder_keeps_the_older_store(
    tree, tmp_path, monkeypatch, refused
):
    """The store's arrays are memory-mapped, where a full disk is a SIGBUS: their blocks are
    allocated before the pass (``posix_fallocate``), so the disk's refusal is the sentence, and
    the new arrays are renamed over the older store's only once complete."""
    import numpy as np

    from deit.label_pass import compute_teacher_labels
    from deit.teacher import TeacherLabelStore, store_size_bytes

    cfg, out = _label_cfg(tree, tmp_path), tmp_path / "labels"
    compute_teacher_labels(cfg, out, top_k=4, progress=False)
    kept = _files(out)
    older = TeacherLabelStore(out).batch(1, 2).clone()
    needed = store_size_bytes(16, 2, 4, top_k=4)

    real_open_memmap = np.lib.format.open_memmap

    def refuse(*args, **kw):
        if refused == "create" and args[1:2] != ("w+",):  # reading is allowed
            return real_open_memmap(*args, **kw)
        code = errno.ENOSPC if refused == "allocate" else errno.EACCES
        raise OSError(code, "refused")

    usage = write_mod.shutil.disk_usage(".")
    monkeypatch.setattr(write_mod.shutil, "disk_usage", lambda p: usage._replace(free=FREE))
    if refused == "allocate":
        monkeypatch.setattr(write_mod, "_allocate", refuse)
        what, fix = "the disk is full", "free some space or write to another folder"
    else:
        monkeypatch.setattr(np.lib.format, "open_memmap", refuse)
        what = "the folder is not writable (permission denied)"
        fix = "make it writable or write to another folder"
    with pytest.raises(write_mod.WriteError) as e:
        compute_teacher_labels(cfg.replace(seed=1), out, top_k=4, progress=False)
    before = "the previous 'top1.npy' is intact"
    assert str(e.value) == _sentence(out / "top1.npy", needed, what, fix, before)
    assert _files(out) == kept  # no partial file left, the older store byte for byte
    assert torch.equal(TeacherLabelStore(out).batch(1, 2), older)


def test_interrupted_label_pass_keeps_the_older_store(tree, tmp_path, monkeypatch):
    import deit.label_pass as label_pass
    from deit.teacher import TeacherLabelStore

    cfg, out = _label_cfg(tree, tmp_path), tmp_path / "labels"
    label_pass.compute_teacher_labels(cfg, out, top_k=0, progress=False)
    kept = _files(out)
    real = label_pass._teacher_pass

    def interrupted(state, teacher, writer, chunk, epoch, batches):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(state, teacher, writer, chunk, epoch, batches)

    monkeypatch.setattr(label_pass, "_teacher_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        label_pass.compute_teacher_labels(cfg.replace(seed=1), out, top_k=4, progress=False)
    assert _files(out) == kept and TeacherLabelStore(out).kind == "top1"
    monkeypatch.setattr(label_pass, "_teacher_pass", real)  # and a whole pass replaces it
    label_pass.compute_teacher_labels(cfg.replace(seed=1), out, top_k=4, progress=False)
    assert TeacherLabelStore(out).kind == "logits" and not list(out.glob(".*"))


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_take_the_users_umask(tmp_path, mask):
    """Checkpoints, exports, configs and results get what a plain open() gives (0o666 less the
    umask), not the temporary file's private 0o600."""
    import os
    import stat

    old = os.umask(mask)
    try:
        (tmp_path / "plain.txt").write_text("x")
        atomic_save({"w": torch.zeros(2)}, tmp_path / "checkpoint.pth")
        write_mod.atomic_write_text(tmp_path / "config.yaml", "epochs: 1\n")
        model = deit.create_model("deit_pico_patch4_28", num_classes=10)
        deit.export.export_model(model, tmp_path / "m.pt", format="torchscript")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(
        ["plain.txt", "checkpoint.pth", "config.yaml", "m.pt"], 0o666 & ~mask
    )
