"""Runs that cannot go on: a seed out of range, out of memory, the output folder deleted
mid-run, a truncated ``checkpoint.pth`` on ``--auto-resume`` and ``--train-subset`` above the
data.

Each case names the sentence a user now gets (docs/reliability.md lists them).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import deit
import deit.train.loop as loop
import deit.train.memory as memory
from conftest import abcd_tree, tiny_train_argv
from deit.cli import main

MODEL = "deit_pico_patch7_28"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return abcd_tree(tmp_path_factory, train=4, val=2)


def _train(tree, out, *more: str) -> list[str]:
    return tiny_train_argv(tree, out, "--warmup-epochs", "0", *more)


def _last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# -------------------------------------------------------------------- the seed (case 8)


def test_seed_out_of_range_is_refused_and_a_failed_start_leaves_no_lock(
    tree, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "new" / "run"
    assert main(_train(tree, out, "--seed", str(2**64))) == 2
    assert _last_line(capsys) == (
        f"deit train: error: With --seed, 'seed' is {2**64} but must be a signed 64-bit "
        "integer, in [-9223372036854775808, 9223372036854775807]; pick a seed in that range."
    )
    assert main(_train(tree, out, "--seed", str(-(2**63) - 1))) == 2
    assert not (tmp_path / "new").exists()
    import deit.train.runner as runner

    def fails(seed):  # anything failing after the lock is taken, before training
        raise ValueError("the seed could not be set")

    monkeypatch.setattr(runner, "seed_everything", fails)
    assert main(_train(tree, out)) == 2
    assert _last_line(capsys) == "deit train: error: the seed could not be set"
    assert not (tmp_path / "new").exists()  # neither the lock nor the folders it made


# ------------------------------------------------------------ out of memory (case 10)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """The bytes autograd keeps for the backward pass of ``model(x)`` (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


@pytest.mark.parametrize(
    ("name", "size", "batch"), [(MODEL, 56, 4), ("deit_tiny_patch16_224", 224, 2)]
)
def test_step_memory_estimate_follows_what_autograd_keeps(name, size, batch):
    torch.manual_seed(0)
    model = deit.create_model(name, num_classes=10, img_size=size).train()
    kept = _saved_bytes(model, torch.randn(batch, 3, size, size))
    params = sum(p.numel() for p in model.parameters()) * 4
    est = memory.step_memory_bytes(model, batch)
    # the estimate: what autograd keeps (weights included) + gradients, 2 AdamW moments, batch
    assert 0.9 < (est - 3 * params) / kept < 1.25, (est, kept, params)
    tokens_x4 = deit.create_model(name, num_classes=10, img_size=2 * size)
    grows = memory.step_memory_bytes(tokens_x4, batch) - 4 * params
    assert 3.5 < grows / (est - 4 * params) < 4.5  # ~ tokens, the square of the input size
    assert memory.step_memory_bytes(torch.nn.Linear(2, 2), batch) is None  # not a ViT


def test_out_of_memory_is_a_note_before_and_one_sentence_when_it_happens(
    tree, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(memory, "available_bytes", lambda device, total=False: 2**20)
    real = loop.train_one_epoch
    calls = []

    def allocation_fails(*args, **kwargs):
        calls.append(1)
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
            "you tried to allocate 8589934592 bytes."
        )

    monkeypatch.setattr(loop, "train_one_epoch", allocation_fails)
    out = tmp_path / "run"
    assert main(_train(tree, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    need = memory.step_memory_bytes(deit.create_model(MODEL, num_classes=4, img_size=28), 4)
    gib = f"{need / 2**30:.1f}"
    assert err[-2] == (
        f"note: a step of 4 x 17 tokens needs about {gib} GiB but cpu has 0.0 GiB free, so "
        "training will likely run out of memory; lower --batch-size or --input-size."
    )
    assert err[-1] == (
        f"deit train: error: Training ran out of cpu memory in epoch 1 (a step of 4 x 17 tokens "
        f"needs about {gib} GiB; cpu has 0.0 GiB in all); lower --batch-size (now 4) or "
        "--input-size (now 28); the run stopped and no checkpoint was written."
    )
    assert calls == [1] and not (out / "checkpoint.pth").exists()
    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))
    monkeypatch.setattr(loop, "train_one_epoch", real)


# --------------------------------------------- the output folder deleted mid-run (case 11)


def test_output_folder_deleted_mid_run_is_one_sentence(tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = loop._train_epoch

    def delete_during_epoch_2(state, epoch, show, stop):
        stats = real(state, epoch, show, stop)
        if epoch == 1:
            shutil.rmtree(out)
        return stats

    monkeypatch.setattr(loop, "_train_epoch", delete_during_epoch_2)
    assert main(_train(tree, out, "--epochs", "3")) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"deit train: error: The output folder {str(out)!r} was deleted or moved during the run "
        "(found saving epoch 2); the run stopped without writing anywhere else; start it again "
        "with a --output_dir that stays in place."
    )
    assert "Traceback" not in err and not out.exists()  # not re-created by the next write


# ---------------------------------------- a truncated checkpoint.pth on --auto-resume (note)


def test_truncated_last_checkpoint_on_auto_resume_names_the_best_one(tree, tmp_path, capsys):
    out = tmp_path / "run"
    best, last = out / "best_checkpoint.pth", out / "checkpoint.pth"
    assert main(_train(tree, out)) == 0
    best_after_1 = best.read_bytes()
    assert main(_train(tree, out, "--epochs", "2", "--auto-resume", "--new-schedule")) == 0
    best.write_bytes(best_after_1)  # the best epoch was the first
    last.write_bytes(last.read_bytes()[:5000])  # a crash or a full disk on another machine
    capsys.readouterr()
    assert main(_train(tree, out, "--epochs", "2", "--auto-resume")) == 2
    assert _last_line(capsys) == (
        f"deit train: error: The run's last checkpoint {str(last)!r} is truncated or corrupt, "
        "but its best_checkpoint.pth (after epoch 1) is intact: continue from it with "
        f"--resume {str(best)!r}, or start the run again with --overwrite."
    )
    # as it says: the run continues from the best checkpoint, in its own folder
    assert main(_train(tree, out, "--epochs", "2", "--resume", str(best), "--new-schedule")) == 0
    logged = [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()]
    assert logged == [0, 1]  # epoch 2 once (the checkpoint's history), not the lost one too


# --------------------------------------------------- --train-subset above the data (note)


def test_train_subset_larger_than_the_data_is_noted(tree, tmp_path, capsys):
    assert main(_train(tree, tmp_path / "run", "--train-subset", "100000")) == 0
    assert (
        "note: --train-subset 100,000 is more than the 16 training images; all 16 are used."
        in capsys.readouterr().err.splitlines()
    )
    log = json.loads((tmp_path / "run" / "log.txt").read_text())
    assert log["train_images"] == 16
