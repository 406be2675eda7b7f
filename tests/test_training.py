"""Training engine: exact resume, DDP equivalence, torchrun, kill/signal, logs, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import deit
from conftest import abcd_tree
from deit.checkpoints import safe_torch_load
from deit.cli import main
from deit.config import Config
from deit.distillation import DistillationTask
from deit.engine import StepOptions, evaluate, train_one_epoch
from deit.precision import resolve_precision
from deit.train import LAST, run, wrap_ddp

STUDENT = "deit_pico_distilled_patch7_28"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return abcd_tree(tmp_path_factory, train=8, val=2)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A 'trained' CNN teacher checkpoint as deit train writes it (random weights)."""
    torch.manual_seed(1)
    cnn = deit.build_classifier("resnet10t", 4)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save(
        {"model": cnn.state_dict(), "model_name": "resnet10t", "num_classes": 4, "img_size": 28},
        path,
    )
    return path


def _cfg(data_root, out, **kw) -> Config:
    base = dict(
        model=STUDENT,
        input_size=28,
        data_set="folder",
        data_path=str(data_root),
        batch_size=8,
        epochs=2,
        warmup_epochs=1,
        num_workers=0,
        output_dir=str(out),
        model_ema=True,
        model_ema_decay=0.9,
        repeated_aug=False,
        mixup=0.8,
        cutmix=1.0,
        aa="rand-m9-mstd0.5-inc1",
        reprob=0.25,
        drop_path=0.1,
        pin_mem=False,
        device="cpu",
    )
    base.update(kw)
    return Config(**base)


def test_exact_resume(data_root, teacher_ckpt, tmp_path):
    kw = dict(distillation_type="hard", teacher_model="resnet10t", teacher_path=str(teacher_ckpt))
    full = run(_cfg(data_root, tmp_path / "full", **kw), progress=False)
    assert full["status"] == "completed" and len(full["history"]) == 2
    first = run(_cfg(data_root, tmp_path / "split", **kw), max_epochs_this_run=1, progress=False)
    assert first["status"] == "paused"
    resumed = run(
        _cfg(data_root, tmp_path / "split", resume=str(tmp_path / "split" / LAST), **kw),
        progress=False,
    )
    assert resumed["status"] == "completed"
    a = safe_torch_load(tmp_path / "full" / LAST)
    b = safe_torch_load(tmp_path / "split" / LAST)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 8
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]
    assert full["history"][-1]["train_loss"] == resumed["history"][-1]["train_loss"]


def test_logs_and_checkpoint_contents(data_root, tmp_path):
    result = run(_cfg(data_root, tmp_path, epochs=2, model_ema=False), progress=False)
    lines = [json.loads(x) for x in (tmp_path / "log.txt").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    for key in ("train_loss", "train_lr", "test_loss", "test_acc1", "test_acc5", "n_parameters"):
        assert all(key in x for x in lines), key
    assert lines[0]["n_parameters"] == result["n_parameters"]
    assert "test_acc1_cls" in lines[0] and "test_acc1_dist" in lines[0]
    assert (tmp_path / "config.yaml").is_file()
    assert Config.from_yaml(tmp_path / "config.yaml").model == STUDENT
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "test/acc1", "train/lr"} <= set(tags)
    assert len(events.Scalars("test/acc1")) == 2
    ck = safe_torch_load(tmp_path / LAST)
    assert ck["class_names"] == ["a", "b", "c", "d"] and ck["model_name"] == STUDENT
    for key in ("optimizer", "scheduler", "rng", "config", "epoch", "step", "mean", "std"):
        assert key in ck
    best = safe_torch_load(tmp_path / "best_checkpoint.pth")
    assert best["best_acc1"] == max(x["test_acc1"] for x in lines)


@pytest.mark.parametrize("distil", [False, True])
def test_grad_accum_steps_make_one_larger_batch(data_root, teacher_ckpt, tmp_path, distil):
    """--grad-accum-steps 4 at batch 8 trains as batch 32 in one step (no Mixup, dropout or
    drop path; SGD, whose update is the gradient): the same weights, EMA and optimiser steps
    after three epochs, with and without a distillation teacher."""
    kw = dict(epochs=3, mixup=0.0, cutmix=0.0, drop_path=0.0, opt="sgd", lr=0.5)
    if distil:
        kw.update(distillation_type="hard", teacher_model="resnet10t")
        kw.update(teacher_path=str(teacher_ckpt), teacher_precision="fp32")
    runs = {}
    for batch, n in ((32, 1), (8, 4)):
        out = tmp_path / f"b{batch}"
        cfg = _cfg(data_root, out, batch_size=batch, grad_accum_steps=n, **kw)
        runs[n] = run(cfg, progress=False)
        runs[n]["ck"] = safe_torch_load(out / LAST)
    one, four = runs[1], runs[4]
    assert [h["train_num_updates"] for h in four["history"]] == [1.0, 2.0, 3.0]
    assert [h["train_num_updates"] for h in one["history"]] == [1.0, 2.0, 3.0]
    for key in ("model", "model_ema"):
        worst = max((four["ck"][key][k] - v).abs().max().item() for k, v in one["ck"][key].items())
        assert worst <= 1e-6, key
    assert four["history"][-1]["train_loss"] == pytest.approx(
        one["history"][-1]["train_loss"], rel=1e-5
    )


def test_non_finite_loss_stops_with_step(data_root, tmp_path):
    model = deit.create_model(STUDENT, num_classes=4)
    model.set_distilled_training(True)
    model.train()
    task = DistillationTask(model, nn.CrossEntropyLoss())
    batch = [(torch.full((2, 3, 28, 28), float("nan")), torch.tensor([0, 1]))]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.cls_token.detach().clone()
    with pytest.raises(FloatingPointError, match="epoch 4, batch 1"):
        train_one_epoch(task, batch, opt, torch.device("cpu"), 3)
    assert torch.equal(model.cls_token, before)


def test_evaluate_heads_by_hand():
    torch.manual_seed(0)
    model = deit.create_model(STUDENT, num_classes=3).eval()
    x = torch.randn(6, 3, 28, 28)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    stats = evaluate(model, [(x[:4], y[:4]), (x[4:], y[4:])], torch.device("cpu"))
    with torch.no_grad():
        cls_logits, dist_logits = model.forward_heads(x)
    avg = (cls_logits + dist_logits) / 2
    assert stats["acc1"] == pytest.approx(100 * (avg.argmax(1) == y).float().mean().item())
    assert stats["acc1_cls"] == pytest.approx(100 * (cls_logits.argmax(1) == y).float().mean())
    assert stats["acc1_dist"] == pytest.approx(100 * (dist_logits.argmax(1) == y).float().mean())
    assert stats["acc5"] == 100.0  # 3 classes: top-5 always hits
    assert stats["loss"] == pytest.approx(nn.functional.cross_entropy(avg, y).item(), rel=1e-5)
    assert stats["n"] == 6


def _sgd(model):
    # SGD, not Adam: Adam's first step is ~lr * sign(g), which turns float round-off in
    # near-zero gradients into lr-sized differences and would hide what is compared here.
    return torch.optim.SGD(model.parameters(), lr=0.5)


def _ddp_worker(rank, world, init_file, x, y, state, out):
    import torch.distributed as dist

    torch.set_num_threads(1)  # two processes on two cores: no OpenMP oversubscription
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = deit.create_model(STUDENT, num_classes=4)
    model.load_state_dict(state)
    model.set_distilled_training(True)
    ddp = wrap_ddp(model, torch.device("cpu"), "none")
    opt = _sgd(model)
    task = DistillationTask(ddp, nn.CrossEntropyLoss())
    half = slice(rank * 4, rank * 4 + 4)
    train_one_epoch(task, [(x[half], y[half])], opt, torch.device("cpu"), 0)
    if rank == 0:
        torch.save(model.state_dict(), out)
    dist.destroy_process_group()


def test_ddp_two_processes_equal_one_process(tmp_path):
    torch.manual_seed(0)
    model = deit.create_model(STUDENT, num_classes=4)  # no dropout, no drop path
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 3, 28, 28), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    model.set_distilled_training(True)
    opt = _sgd(model)
    task = DistillationTask(model, nn.CrossEntropyLoss())
    train_one_epoch(task, [(x, y)], opt, torch.device("cpu"), 0)
    out = tmp_path / "ddp.pth"
    mp.spawn(_ddp_worker, args=(2, tmp_path / "init", x, y, state, out), nprocs=2, join=True)
    ddp_state = torch.load(out, weights_only=True)
    worst = max((ddp_state[k] - v).abs().max().item() for k, v in model.state_dict().items())
    assert worst <= 1e-6
    assert not torch.equal(ddp_state["cls_token"], state["cls_token"])  # a step was taken


def _train_argv(data_root, out, **flags) -> list[str]:
    """`deit train` arguments on the tiny image tree; ``flags`` become ``--name value`` (``True``
    gives a bare ``--name``)."""
    argv = ["train", "--model", STUDENT, "--input-size", "28", "--data-set", "folder"]
    argv += ["--data-path", str(data_root), "--num-workers", "0", "--device", "cpu"]
    argv += ["--no-progress", "--output_dir", str(out)]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def test_torchrun_two_processes(data_root, teacher_ckpt, tmp_path):
    # --standalone: a free port on localhost, so parallel test runs do not collide
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "deit.cli"]
    cmd += _train_argv(
        data_root,
        tmp_path,
        batch_size=4,
        epochs=1,
        warmup_epochs=0,
        distillation_type="hard",
        teacher_path=teacher_ckpt,
        teacher_model="resnet10t",
        repeated_aug=True,
        no_model_ema=True,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Grad strides do not match" not in proc.stderr  # DDP buckets match the parameters
    log = json.loads((tmp_path / "log.txt").read_text().splitlines()[-1])
    # RepeatAugSampler: 32 images x 3 repeats spread over 2 ranks, each rank keeps
    # ceil(32 / 2) = 16 per epoch -> 4 steps of 4
    assert log["train_steps"] == 4 and log["epoch"] == 0
    assert safe_torch_load(tmp_path / LAST)["world_size"] == 2


def _train_cmd(data_root, out, epochs):
    argv = _train_argv(data_root, out, batch_size=2, epochs=epochs, warmup_epochs=0)
    return [str(BIN / "deit"), *argv, "--no-repeated-aug", "--auto-resume"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes(data_root, tmp_path, sig):
    cmd = _train_cmd(data_root, tmp_path, epochs=2)  # 16 steps of 2 images per epoch
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / LAST, proc)  # epoch 1 is done and saved
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    err = proc.stderr.read()
    ck = safe_torch_load(tmp_path / LAST)  # loadable whatever the moment of the kill
    if sig == signal.SIGTERM:  # graceful: a checkpoint in the middle of epoch 2
        assert rc == 128 + signal.SIGTERM and "Stopped by a signal during epoch 2/2" in err, err[
            -2000:
        ]
        assert ck["epoch"] == 1 and 0 < ck["batches_done"] < 16
    else:  # the atomic end-of-epoch checkpoint survives
        assert rc == -signal.SIGKILL and ck["epoch"] == 1 and ck["batches_done"] == 0
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resumed from" in done.stderr
    if sig == signal.SIGKILL:  # the killed run's lock of the folder is stale, not stuck
        assert "which ended without releasing it (killed or crashed)" in done.stderr
    final = safe_torch_load(tmp_path / LAST)
    assert final["epoch"] == 2 and final["step"] == 2 * 16
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "log.txt").read_text().splitlines()]
    assert epochs == [0, 1]


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_bad_input_is_one_sentence_before_training(data_root, tmp_path, capsys, teacher_ckpt):
    base = ["train", "--model", STUDENT, "--input-size", "28", "--data-set", "folder"]
    base += ["--num-workers", "0", "--device", "cpu", "--no-progress"]
    err = _err(capsys, [*base, "--data-path", str(tmp_path / "nope")])
    assert "nope" in err
    ok = [*base, "--data-path", str(data_root)]
    err = _err(capsys, [*ok, "--distillation-type", "hard", "--output_dir", str(tmp_path / "o")])
    assert "--teacher-path" in err
    err = _err(capsys, [*ok, "--distillation-type", "hard", "--teacher-path", str(tmp_path / "t")])
    assert "does not exist" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _err(capsys, [*ok, "--output_dir", str(blocker / "run")])
    assert "cannot be written" in err
    err = _err(capsys, [*ok, "--finetune", str(teacher_ckpt), "--output_dir", str(tmp_path / "f")])
    assert "holds a resnet10t" in err
    assert not (tmp_path / "f" / LAST).exists()


def test_precision_choice():
    # CPUs train in fp32 unless bf16 is asked for, whatever their flags
    assert resolve_precision("auto", "cpu").name == "fp32"
    assert resolve_precision("auto", "cpu").dtype is None
    assert resolve_precision("bf16", "cpu").dtype is torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("fp16", "cpu")


def test_finetune_cnn_drops_only_the_classifier(tmp_path):
    from deit.checkpoints import CheckpointError
    from deit.train.model import _load_finetune

    torch.manual_seed(0)
    src = deit.build_classifier("resnet10t", 7)
    path = tmp_path / "seven.pth"
    torch.save({"model": src.state_dict(), "model_name": "resnet10t"}, path)
    model = deit.build_classifier("resnet10t", 4)
    fc_before = model.fc.weight.clone()
    _load_finetune(model, Config(model="resnet10t", finetune=str(path)))
    assert torch.equal(model.conv1[0].weight, src.conv1[0].weight)
    assert torch.equal(model.layer4[0].conv1.weight, src.layer4[0].conv1.weight)
    assert torch.equal(model.fc.weight, fc_before)  # 7-class head dropped, 4-class kept
    # another architecture's weights (no model name recorded) name the mismatch
    torch.save(deit.build_classifier("resnet18", 4).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="does not fit this model: shape mismatch"):
        _load_finetune(model, Config(model="resnet10t", finetune=str(tmp_path / "r18.pth")))


def test_eval_interval_and_unused_training_images(tmp_path):
    # digits: 1,438 train / 359 held-out images; 100 trained on -> 359 + 1,338 evaluated
    cfg = Config(
        **{
            **_cfg(None, tmp_path, epochs=3, model_ema=False).to_dict(),
            "data_set": "digits",
            "data_path": "",
            "input_size": 8,
            "model": "resnet10t",
            "train_subset": 100,
            "eval_unused": True,
            "eval_interval": 2,
            "batch_size": 50,
            "mixup": 0.0,
            "cutmix": 0.0,
        }
    )
    result = run(cfg, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "log.txt").read_text().splitlines()]
    assert [("test_acc1" in x) for x in lines] == [False, True, True]  # epoch 2 and the last
    assert [x["test_n"] for x in lines[1:]] == [1697, 1697]
    assert result["final"]["n"] == 1697
    assert all(x["train_steps"] == 2 for x in lines)


def test_eval_head_picks_the_reported_head():
    torch.manual_seed(0)
    model = deit.create_model(STUDENT, num_classes=3).eval()
    x, y = torch.randn(6, 3, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    both = evaluate(model, [(x, y)], torch.device("cpu"))
    for head in ("cls", "dist"):
        one = evaluate(model, [(x, y)], torch.device("cpu"), head=head)
        assert one["acc1"] == both[f"acc1_{head}"] and one[f"acc1_{head}"] == both[f"acc1_{head}"]
    with torch.no_grad():
        cls_logits, _ = model.forward_heads(x)
    loss = evaluate(model, [(x, y)], torch.device("cpu"), head="cls")["loss"]
    assert loss == pytest.approx(nn.functional.cross_entropy(cls_logits, y).item(), rel=1e-5)
    with pytest.raises(ValueError, match="head is 'avg'"):
        evaluate(model, [(x, y)], torch.device("cpu"), head="avg")


def test_dist_eval_shares_cover_the_set_once():
    from deit.train import DistEnv
    from deit.train.data import _eval_share

    data = list(range(11))
    shares = [list(_eval_share(data, DistEnv(r, 3, r, True), True)) for r in range(3)]
    assert sorted(sum(shares, [])) == data  # every image once: no padding duplicates
    assert _eval_share(data, DistEnv(1, 3, 1, True), False) is data  # full set on every rank


def test_log_interval_sets_how_often_the_bar_shows_the_loss():
    class Bar:
        def __init__(self):
            self.updates, self.postfixes = 0, 0

        def update(self, n):
            self.updates += n

        def set_postfix(self, **kw):
            self.postfixes += 1

    model = deit.create_model(STUDENT, num_classes=4)
    task = DistillationTask(model, nn.CrossEntropyLoss())
    batches = [(torch.randn(2, 3, 28, 28), torch.tensor([0, 1]))] * 7
    bar = Bar()
    opts = StepOptions(log_interval=3)
    train_one_epoch(task, batches, _sgd(model), torch.device("cpu"), 0, opts, progress=bar)
    assert (bar.updates, bar.postfixes) == (7, 3)  # steps 1, 4 and 7


def test_run_steps_and_loaders_are_short_functions():
    import ast

    src = Path(deit.__file__).parent
    files = [str(p.relative_to(src)) for p in sorted(src.rglob("*.py"))]  # every module
    long = []
    for name in files:
        for node in ast.walk(ast.parse((src / name).read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 80:
                long.append(f"{name}:{node.name}")
    assert long == []
