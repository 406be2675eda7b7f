"""Teacher labels computed once: equal to the online teacher, equal students, small, refused
when they do not match the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import deit
from deit.checkpoints import safe_torch_load
from deit.cli import main
from deit.config import Config
from deit.data.transforms import SeededMixup
from deit.label_pass import compute_teacher_labels
from deit.teacher import (
    TeacherLabelStore,
    build_run_teacher,
    file_sha256,
    label_dtype,
    store_size_bytes,
)
from deit.train import LAST, label_pass_state, run

STUDENT = "deit_pico_distilled_patch7_28"


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN teacher (timm test_resnet, random weights) saved as deit train saves one."""
    torch.manual_seed(3)
    cnn = deit.build_classifier("test_resnet", 10)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"model": cnn.state_dict(), "model_name": "test_resnet", "num_classes": 10}, path)
    return path


def _cfg(teacher: Path, out: Path | str = "", **kw: object) -> Config:
    """48 real 8 px digits at 28 px, batch 8 (6 steps per epoch), CutMix/Mixup, RandAugment,
    erasing, drop-path: every random part of the recipe is on."""
    base = dict(
        model=STUDENT,
        input_size=28,
        data_set="digits",
        train_subset=48,
        batch_size=8,
        epochs=2,
        warmup_epochs=0,
        num_workers=0,
        output_dir=str(out),
        model_ema=False,
        repeated_aug=True,
        mixup=0.8,
        cutmix=1.0,
        reprob=0.25,
        drop_path=0.1,
        pin_mem=False,
        device="cpu",
        eval_interval=0,
        distillation_type="hard",
        teacher_model="test_resnet",
        teacher_path=str(teacher),
    )
    base.update(kw)
    return Config(**base)


@pytest.fixture(scope="module")
def store(teacher_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full fp16 logits (top-k = the class count), teacher batches of 4 training batches."""
    out = tmp_path_factory.mktemp("labels")
    compute_teacher_labels(_cfg(teacher_ckpt), out, top_k=10, teacher_batch_size=32)
    return out


def test_stored_labels_equal_the_online_teachers_batch_by_batch(teacher_ckpt, store) -> None:
    labels = TeacherLabelStore(store)
    assert labels.kind == "logits" and labels.arrays["top1"].dtype == np.uint8
    assert labels.arrays["top1"].shape == (2, 48)  # 2 epochs x 6 batches of 8
    state = label_pass_state(_cfg(teacher_ckpt))
    teacher = build_run_teacher(
        state.cfg, state.device, state.num_classes, state.mean, state.std, state.loader_train,
        state.mixup_fn,
    )  # fmt: skip
    assert isinstance(state.mixup_fn, SeededMixup)
    checked = 0
    for epoch in range(2):  # the online path: one training batch at a time, as in the loop
        state.sampler_train.set_epoch(epoch)
        for i, (x, y) in enumerate(state.loader_train):
            mixed, _ = state.mixup_fn(x, y, key=(epoch, i))
            with torch.no_grad():
                online = teacher(mixed)
            stored = torch.from_numpy(np.array(labels.arrays["top1"][epoch, i * 8 : i * 8 + 8]))
            assert torch.equal(stored.long(), online.argmax(1))
            assert torch.allclose(labels.batch(epoch, i), online, atol=2e-2, rtol=1e-2)
            checked += 1
    assert checked == 12
    # the two epochs' views differ, so do (some of) their labels' logits
    assert not np.array_equal(labels.arrays["logits"][0], labels.arrays["logits"][1])


def test_student_equals_the_online_teacher_run_after_an_epoch(teacher_ckpt, store, tmp_path):
    online = run(_cfg(teacher_ckpt, tmp_path / "online", epochs=2), max_epochs_this_run=1,
                 progress=False)  # fmt: skip
    stored = run(
        _cfg(teacher_ckpt, tmp_path / "stored", epochs=2, teacher_labels=str(store)),
        max_epochs_this_run=1,
        progress=False,
    )
    a = safe_torch_load(tmp_path / "online" / LAST)["model"]
    b = safe_torch_load(tmp_path / "stored" / LAST)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "stored labels trained another student"
    h1, h2 = online["history"][0], stored["history"][0]
    assert h1["train_loss"] == h2["train_loss"]
    assert h1["train_teacher_disagreement"] == h2["train_teacher_disagreement"] > 0


def test_soft_students_reuse_the_store_without_building_a_teacher(teacher_ckpt, store, tmp_path):
    cfg = _cfg(teacher_ckpt, tmp_path, distillation_type="soft", distillation_alpha=0.9,
               distillation_tau=4.0, teacher_labels=str(store), teacher_path="")  # fmt: skip
    result = run(cfg, max_epochs_this_run=1, progress=False)
    assert result["history"][0]["train_loss_distillation"] > 0
    with open(store / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["teacher_sha256"] == file_sha256(teacher_ckpt)
    assert manifest["teacher"] == "test_resnet" and manifest["teacher_seconds"] > 0
    assert "distillation_type" not in manifest and "model" not in manifest


def test_top_k_probabilities_come_back_as_logits(teacher_ckpt, tmp_path) -> None:
    cfg = _cfg(teacher_ckpt, epochs=1)
    compute_teacher_labels(cfg, tmp_path, top_k=3, progress=False)
    labels = TeacherLabelStore(tmp_path)
    assert labels.kind == "topk"
    probs = torch.from_numpy(np.array(labels.arrays["topk_probs"][0, :8])).float()
    classes = torch.from_numpy(np.array(labels.arrays["topk_classes"][0, :8])).long()
    back = labels.batch(0, 0).softmax(1)
    assert torch.allclose(back.gather(1, classes), probs, atol=1e-6)
    rest = (1 - probs.sum(1)) / 7  # the other 7 classes share what is left
    mask = torch.ones_like(back, dtype=torch.bool).scatter_(1, classes, False)
    assert torch.allclose(back[mask].view(8, 7), rest[:, None].expand(8, 7), atol=1e-6)


def _resolved(cfg):
    """``cfg`` as a run holds it: the model's input size and normalisation filled in."""
    from deit.train import label_pass_state

    return label_pass_state(cfg).cfg


def test_store_refuses_a_run_it_was_not_made_for(teacher_ckpt, store, tmp_path) -> None:
    labels = TeacherLabelStore(store)
    ok = _resolved(_cfg(teacher_ckpt, teacher_labels=str(store)))
    labels.check_run(ok, 10, 48, 1)
    with pytest.raises(ValueError, match=r"made for batch_size 8 but this run has 16; "):
        labels.check_run(ok.replace(batch_size=16), 10, 48, 1)
    with pytest.raises(ValueError, match="made for seed 0 but this run has 1"):
        labels.check_run(ok.replace(seed=1), 10, 48, 1)
    with pytest.raises(ValueError, match="single-process"):
        labels.check_run(ok, 10, 48, 2)
    other = tmp_path / "other.pth"
    other.write_bytes(teacher_ckpt.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="made for teacher_sha256"):
        labels.check_run(ok.replace(teacher_path=str(other)), 10, 48, 1)
    # the same through `deit train`: one line, exit code 2, before any training
    assert main(["train", "--config", _yaml(ok.replace(epochs=3), tmp_path)]) == 2
    with pytest.raises(ValueError, match="manifest.json is missing"):
        TeacherLabelStore(tmp_path)


def test_top1_store_refuses_soft_distillation_and_cli_writes_one(teacher_ckpt, tmp_path):
    cfg = _cfg(teacher_ckpt, epochs=1)
    out = tmp_path / "labels"
    args = ["teacher-labels", "--config", _yaml(cfg, tmp_path), "--output", str(out)]
    assert main(args) == 0
    labels = TeacherLabelStore(out)
    assert labels.kind == "top1" and list(labels.arrays) == ["top1"]
    assert (out / "top1.npy").stat().st_size == store_size_bytes(48, 1, 10)
    assert labels.batch(0, 1).dtype == torch.int64 and labels.batch(0, 1).shape == (8,)
    soft = _resolved(cfg.replace(distillation_type="soft", teacher_labels=str(out)))
    with pytest.raises(ValueError, match="top-1 classes only"):
        labels.check_run(soft, 10, 48, 1)


def test_the_store_kind_follows_the_runs_distillation_type(teacher_ckpt, tmp_path, capsys):
    """Without --top-k the store is what the run its flags describe reads: full logits for a
    soft run (which then trains from it); --top-k 0 with soft flags writes the top-1 store it
    asks for (hard runs read it) with a note that the soft run refuses it."""
    soft = _cfg(teacher_ckpt, epochs=1, distillation_type="soft", distillation_tau=2.0)
    out = tmp_path / "labels"
    args = ["teacher-labels", "--config", _yaml(soft, tmp_path), "--output", str(out)]
    assert main(args) == 0
    labels = TeacherLabelStore(out)
    assert labels.kind == "logits" and labels.manifest["top_k"] == 10
    labels.check_run(_resolved(soft.replace(teacher_labels=str(out))), 10, 48, 1)
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "top1"), "--top-k", "0"]) == 0
    assert capsys.readouterr().err.startswith(
        "note: top-k 0 stores the teacher's top-1 classes only: hard-distillation runs read it, "
        "the soft run these flags describe refuses it; leave --top-k out for full logits.\n"
    )
    assert TeacherLabelStore(tmp_path / "top1").kind == "top1"


def test_store_size_of_mnist5k_hard_labels() -> None:
    # 4,000 training digits x 100 epochs, one uint8 class per view: 0.4 MB (+ the header)
    assert store_size_bytes(4000, 100, 10) == 400_000 + 128 < 2_000_000
    assert store_size_bytes(4000, 100, 10, top_k=10) == 400_128 + 128 + 8_000_000
    assert store_size_bytes(4000, 100, 10, top_k=3) == 400_128 + 256 + 4000 * 100 * 3 * 3
    assert (label_dtype(256), label_dtype(257), label_dtype(40_000)) == (
        np.uint8,
        np.int16,
        np.int32,
    )
    assert store_size_bytes(10, 1, 1000) == 128 + 10 * 2


def _yaml(cfg: Config, folder: Path) -> str:
    return str(cfg.to_yaml(folder / "run.yaml"))
