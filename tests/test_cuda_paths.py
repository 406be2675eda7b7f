"""The CUDA paths' logic, checked on the CPU (gloo, monkeypatching, the meta device): the device
set before the process group, DDP after ``.to(device)`` and before ``torch.compile``,
``set_epoch`` every epoch (repeated augmentation too), evaluation summed by image counts,
checkpoints written by rank 0 only and read with ``map_location``, the GradScaler with fp16 only
and ``unscale_`` before clipping, autocast's ``device_type``, the teacher in eval mode without
gradients under DDP, the learning rate scaled by the global batch, persistent loader workers and
the stop flag's all-reduce only every log interval; Slurm's GPU per task, ``set_device`` for one
process on ``cuda:N``, DDP's unused-parameter search only where some are, an EMA forced to the
CPU and the cuDNN / TF32 policy (issue 32). The same on a GPU: ``tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import deit
from deit.config import Config
from deit.engine import StepOptions, _backward_and_step
from deit.precision import Precision, resolve_precision
from deit.train import DistEnv, RunState, build_optimisation, init_distributed, run
from deit.train import model as train_model_mod
from deit.train.distributed import _StopFlag

STUDENT = "deit_pico_distilled_patch7_28"


def _cfg(out: Path | str = "", **kw: object) -> Config:
    """16 digits at 28 px, batch 4 (4 steps per epoch), no evaluation, no EMA, on the CPU."""
    base = dict(
        model=STUDENT,
        input_size=28,
        data_set="digits",
        train_subset=16,
        batch_size=4,
        epochs=1,
        warmup_epochs=0,
        num_workers=0,
        output_dir=str(out),
        model_ema=False,
        repeated_aug=False,
        eval_interval=0,
        pin_mem=False,
        device="cpu",
    )
    base.update(kw)
    return Config(**base)


def test_cuda_device_is_set_before_the_process_group(monkeypatch):
    calls: list[str] = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(f"set_device {d}"))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        dist, "init_process_group", lambda backend, **kw: calls.append(f"init {backend}")
    )
    env, device = init_distributed("auto")
    assert device == torch.device("cuda", 1) and env == DistEnv(1, 2, 1, True)
    assert calls == ["set_device cuda:1", "init nccl"]


def _fake_cuda(monkeypatch, gpus: int, calls: list[str]) -> None:
    """``gpus`` visible GPUs; ``set_device`` and the process group recorded in ``calls``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(f"set_device {d}"))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        dist, "init_process_group", lambda backend, **kw: calls.append(f"init {backend}")
    )
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.setenv(name, "0")  # recorded, so that what init_distributed sets is undone
        monkeypatch.delenv(name)


@pytest.mark.parametrize("gpus, expected", [(1, 0), (8, 5), (4, 1)])
def test_slurm_task_takes_its_local_id_modulo_the_visible_gpus(monkeypatch, gpus, expected):
    """``srun --gpus-per-task=1``: each task sees one GPU (cuda:0), whatever its local id;
    tasks sharing a node's GPUs take local id modulo their count (issue 32, item 1)."""
    calls: list[str] = []
    _fake_cuda(monkeypatch, gpus, calls)
    monkeypatch.setenv("SLURM_PROCID", "13")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    env, device = init_distributed("auto")
    assert env == DistEnv(13, 16, 5, True) and device == torch.device("cuda", expected)
    assert calls == [f"set_device cuda:{expected}", "init nccl"]
    assert os.environ["LOCAL_RANK"] == "5"


def test_one_process_on_cuda_n_makes_it_the_current_device(monkeypatch):
    """One process on cuda:1: set_device(cuda:1), so that the pin-memory thread and any
    kernel without a device open no context on GPU 0 (issue 32, item 9); no process group."""
    calls: list[str] = []
    _fake_cuda(monkeypatch, 2, calls)
    env, device = init_distributed("cuda:1")
    assert env == DistEnv() and device == torch.device("cuda", 1)
    assert calls == ["set_device cuda:1"]


@pytest.mark.parametrize(
    "model_name, kind, unused",
    [
        (STUDENT, "none", False),
        (STUDENT, "hard", False),
        (STUDENT, "soft", False),
        ("deit_pico_patch7_28", "none", False),
        (STUDENT + ":pair", "none", True),  # the pair output with a loss on one head
    ],
)
def test_ddp_looks_for_unused_parameters_only_where_some_are(tmp_path, model_name, kind, unused):
    """DDP set up as a run sets it up (issue 32, item 8): ``find_unused_parameters`` only where a
    parameter really has no gradient; two steps without it succeed (an unused parameter would
    fail the second: "Expected to have finished reduction in the prior iteration")."""
    from deit.distillation import DistillationTask, prepare_student
    from deit.engine import train_one_epoch
    from deit.teacher import Teacher
    from deit.train import wrap_ddp

    torch.manual_seed(0)
    name, _, pair = model_name.partition(":")
    model = deit.create_model(name, num_classes=4)
    teacher = Teacher(deit.build_classifier("test_resnet", 4)) if kind != "none" else None
    prepare_student(model, kind, teacher)
    if pair:
        model.set_distilled_training(True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = wrap_ddp(model, torch.device("cpu"), kind)
        assert ddp.find_unused_parameters is unused
        task = DistillationTask(ddp, nn.CrossEntropyLoss(), teacher, kind)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        batches = [(torch.randn(2, 3, 28, 28), torch.tensor([0, 3]))] * 2
        stats = train_one_epoch(task, batches, opt, torch.device("cpu"), 0)
        assert stats["steps"] == 2.0
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("run_device", ["cpu", "cuda"])
def test_ema_forced_to_the_cpu_is_not_evaluated_with_the_gpu_images(monkeypatch, run_device):
    """``--model-ema-force-cpu`` on a GPU (issue 32, item 3): the EMA's CPU weights never meet
    the GPU's images (timm evaluates an EMA only when it is not forced to the CPU); an EMA on
    the run's device is evaluated. The GPU is stood for by the run's device alone."""
    import time
    from types import SimpleNamespace

    from deit.train import loop

    cfg = _cfg(model_ema=True, model_ema_force_cpu=True).validate()
    device = torch.device(run_device, 0 if run_device == "cuda" else None)
    student = SimpleNamespace(eval_model=nn.Linear(2, 2), n_parameters=0)
    step = SimpleNamespace(model_ema=SimpleNamespace(module=nn.Linear(2, 2)))  # on the CPU
    data, precision = SimpleNamespace(train_images=0), Precision("fp32", None, run_device)
    state = RunState(cfg, DistEnv(), device, precision, None, None, data, student, None, step)
    evaluated: list[nn.Module] = []

    def evaluate(_state, model, teacher=None):
        evaluated.append(model)
        return {"acc1": 50.0, "loss": 1.0}

    monkeypatch.setattr(loop, "_evaluate", evaluate)
    loop._end_epoch(state, 0, {"loss": 1.0, "images_per_s": 1.0}, time.time())
    if run_device == "cuda":
        assert (
            evaluated == [student.eval_model] and "test_ema_acc1" not in state.progress.history[-1]
        )
    else:
        assert evaluated == [student.eval_model, step.model_ema.module]
        assert state.progress.history[-1]["test_ema_acc1"] == 50.0


@pytest.fixture
def _backends():
    """cuDNN / TF32 / determinism settings restored after the test."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    old = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(was_deterministic)
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = old


def test_cuda_runs_autotune_cudnn_and_keep_pytorchs_tf32(monkeypatch, _backends):
    """The cuDNN / TF32 policy (issue 32, item 10; docs/recipe.md): a process on a GPU turns
    cuDNN autotuning on, as the official code, unless deterministic algorithms were asked;
    TF32 stays as PyTorch has it; a CPU run changes nothing."""
    from deit.precision import set_cuda_backends

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    cudnn.benchmark, cudnn.deterministic = False, False
    cudnn.allow_tf32, matmul.allow_tf32 = True, False  # PyTorch's defaults
    assert set_cuda_backends("cpu")["cudnn_benchmark"] is False
    calls: list[str] = []
    _fake_cuda(monkeypatch, 2, calls)
    init_distributed("cuda:1")  # what deit train and the label pass start with
    assert cudnn.benchmark is True and (cudnn.allow_tf32, matmul.allow_tf32) == (True, False)
    torch.use_deterministic_algorithms(True)
    assert set_cuda_backends("cuda") == {
        "cudnn_benchmark": False, "matmul_tf32": False, "cudnn_tf32": True
    }  # fmt: skip
    torch.use_deterministic_algorithms(False)
    cudnn.deterministic = True
    assert set_cuda_backends(torch.device("cuda", 0))["cudnn_benchmark"] is False


def _meta_student(**kw: object):
    from types import SimpleNamespace

    data = SimpleNamespace(num_classes=4, mixup_fn=None)
    env, device = DistEnv(0, 2, 0, True), torch.device("meta")
    return train_model_mod.build_student(_cfg(**kw).validate(), data, env, device)


def test_ddp_wraps_the_student_after_it_is_on_the_device_then_compile(monkeypatch):
    seen: list[tuple[str, torch.device]] = []

    class Wrapped(nn.Module):
        def __init__(self, kind: str, inner: nn.Module) -> None:
            super().__init__()
            self.kind, self.inner = kind, inner

    def ddp(model, device, distillation_type):
        seen.append(("ddp", next(model.parameters()).device))
        return Wrapped("ddp", model)

    monkeypatch.setattr(train_model_mod, "wrap_ddp", ddp)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: Wrapped("compiled", m))
    state = _meta_student()  # the meta device: a model not moved yet would still be on the CPU
    assert seen == [("ddp", torch.device("meta"))]
    assert state.train_model.kind == "ddp" and state.train_model.inner is state.model
    assert state.eval_model is state.model  # evaluation: no collectives
    state = _meta_student(compile=True)
    t, e = state.train_model, state.eval_model
    assert (t.kind, t.inner.kind, t.inner.inner) == ("compiled", "ddp", state.model)
    assert (e.kind, e.inner) == ("compiled", state.model)


@pytest.mark.parametrize("repeated_aug", [False, True])
def test_sampler_set_epoch_every_epoch(repeated_aug, monkeypatch, tmp_path):
    from deit.data import transforms

    epochs: list[tuple[str, int]] = []
    for cls in (transforms.SeededRepeatAugSampler, torch.utils.data.DistributedSampler):
        orig = cls.set_epoch

        def record(self, epoch, _orig=orig):
            epochs.append((type(self).__name__, int(epoch)))
            return _orig(self, epoch)

        monkeypatch.setattr(cls, "set_epoch", record)
    cfg = _cfg(tmp_path, epochs=3, batch_size=8, repeated_aug=repeated_aug, drop_path=0.0)
    assert run(cfg, progress=False)["status"] == "completed"
    name = "SeededRepeatAugSampler" if repeated_aug else "DistributedSampler"
    assert epochs == [(name, 0), (name, 1), (name, 2)]


def test_repeated_aug_order_changes_with_set_epoch():
    from deit.data.transforms import build_sampler

    s = build_sampler(list(range(32)), True, repeated_aug=True, num_repeats=3, seed=0)
    s.set_epoch(0)
    a = list(s)
    s.set_epoch(1)
    assert list(s) != a
    s.set_epoch(0)
    assert list(s) == a


def test_gradscaler_with_fp16_only(monkeypatch):
    made = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: made.append(device) or "scaler")
    for name, dtype, scaler in (
        ("fp32", None, None),
        ("bf16", torch.bfloat16, None),
        ("fp16", torch.float16, "scaler"),
    ):
        cfg = _cfg(amp="fp32").validate()
        precision = Precision(name, dtype, "cuda")
        loader = [0, 1]  # two batches: the schedule's length
        cpu = torch.device("cpu")
        _, state = build_optimisation(cfg, nn.Linear(3, 2), loader, DistEnv(), cpu, precision)
        assert state.scaler == scaler, name
    assert made == ["cpu"]  # the run's device type


def test_unscale_before_clipping(monkeypatch):
    calls: list[str] = []

    class Scaler:
        def scale(self, loss):
            calls.append("scale")
            return loss

        def unscale_(self, opt):
            calls.append("unscale_")

        def step(self, opt):
            calls.append("step")

        def update(self):
            calls.append("update")

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", lambda p, c: calls.append(f"clip {c}"))
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.ones(1, 3)).sum()
    _backward_and_step(loss, model, opt, StepOptions(scaler=Scaler(), clip_grad=0.5))
    assert calls == ["scale", "unscale_", "clip 0.5", "step", "update"]


def test_autocast_device_type_is_the_type_not_the_device():
    p = resolve_precision("bf16", torch.device("cuda", 1))  # no CUDA needed to resolve it
    assert p.device_type == "cuda" and p.dtype is torch.bfloat16
    with pytest.warns(UserWarning):  # CUDA autocast without CUDA: made (no error), disabled
        ctx = p.autocast()
    assert ctx.device == "cuda"
    assert resolve_precision("bf16", "cpu").autocast().device == "cpu"
    assert resolve_precision("auto", "cpu").dtype is None  # CPU auto: fp32


def test_checkpoints_are_read_onto_the_cpu(monkeypatch, tmp_path):
    from deit.checkpoints import RunCheckpoint, read_weights, safe_load, safe_torch_load

    run(_cfg(tmp_path), progress=False)
    seen = []
    load = torch.load

    def recording(*a, **kw):
        seen.append(kw.get("map_location"))
        return load(*a, **kw)

    monkeypatch.setattr(safe_load.torch, "load", recording)
    safe_torch_load(tmp_path / "checkpoint.pth")
    RunCheckpoint.load(tmp_path / "checkpoint.pth")
    read_weights(tmp_path / "checkpoint.pth")
    assert seen == ["cpu"] * 3


def test_lr_scaled_by_the_global_batch():
    from deit.optim import build_optimizer

    cfg = _cfg(lr=5e-4, batch_size=64).validate()
    for world in (1, 4):
        opt = build_optimizer(cfg, nn.Linear(3, 2), world_size=world)
        assert opt.param_groups[0]["lr"] == pytest.approx(5e-4 * 64 * world / 512)


def test_loader_workers_persist(monkeypatch):
    from deit.train.data import _loader

    data = list(range(8))
    sampler = torch.utils.data.SequentialSampler(data)
    for workers in (0, 2):
        cfg = _cfg(num_workers=workers)
        loader = _loader(data, sampler, cfg, torch.device("cpu"), train=True)
        assert loader.persistent_workers is (workers > 0)


def test_cpu_loader_workers_hand_batches_back_by_value():
    """On the CPU, workers return numpy arrays (pickled by value: no file descriptor and
    socket round trip per tensor) that become the same tensors here; a GPU run keeps torch's
    shared tensors, which it pins."""
    from deit.train.data import _ByValueLoader, _collate_to_numpy, _loader

    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(3, 4, 4, generator=g), i % 3) for i in range(12)]
    sampler = torch.utils.data.SequentialSampler(data)
    batches = {}
    for workers in (0, 2):
        loader = _loader(data, sampler, _cfg(num_workers=workers), torch.device("cpu"), True)
        assert isinstance(loader, _ByValueLoader) is (workers > 0)
        batches[workers] = list(loader)
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and y2.dtype == torch.int64
    gpu = _loader(data, sampler, _cfg(num_workers=2), torch.device("cuda"), True)
    assert type(gpu) is torch.utils.data.DataLoader and gpu.collate_fn is not _collate_to_numpy


@pytest.mark.parametrize(
    ("cores", "threads", "local", "device", "expected"),
    [
        (2, 2, 1, "cpu", 0),  # 2 compute threads on 2 cores: no core for a worker
        (2, 1, 1, "cpu", 1),  # one compute thread leaves one core: one worker
        (16, 1, 1, "cuda", 10),  # a GPU node: 15 cores free, at most the official 10
        (16, 1, 8, "cuda", 1),  # 8 ranks on 16 cores: 2 each, one feeds its GPU
        (4, 8, 1, "cpu", 0),  # more threads than cores: never negative
    ],
)
def test_auto_num_workers_counts_the_free_cores(
    monkeypatch, cores, threads, local, device, expected
):
    from deit.train.data import auto_num_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
    assert auto_num_workers(torch.device(device)) == expected


def test_num_workers_defaults_to_auto_and_the_run_records_the_count(monkeypatch, tmp_path):
    """``num_workers=-1`` (the default, the ``small`` preset too) is resolved before the loaders
    are built and recorded in ``config.yaml``; below -1 is one sentence."""
    from deit.config import presets

    assert Config().num_workers == -1
    assert presets.get_preset("small").num_workers == -1
    with pytest.raises(ValueError, match="'num_workers' is -2 but must be at least -1; use -1"):
        Config(num_workers=-2).validate()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    run(_cfg(tmp_path, num_workers=-1, epochs=1), progress=False)
    assert "num_workers: 1" in (tmp_path / "config.yaml").read_text()


def test_stop_flag_all_reduces_only_every_log_interval(monkeypatch):
    reduced = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", lambda t, op: reduced.append(float(t)))
    stop = _StopFlag(torch.device("cpu"), every=3)
    answers = []
    for i in range(7):
        if i == 4:
            stop._handle(15, None)
        answers.append(stop())
    assert answers == [False, False, False, False, False, True, False]
    assert reduced == [0.0, 1.0]  # polls 3 and 6


def _two_ranks(rank: int, world: int, tmp: Path, teacher: str) -> None:
    """One of two gloo processes: an evaluation over unequal shares, then a distilled
    ``deit.train.run``; what it saw goes to ``tmp/rank<r>.json``."""
    from deit.checkpoints import RunCheckpoint
    from deit.engine import evaluate
    from deit.teacher.frozen import Teacher
    from deit.train import optimisation

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp / 'init'}", rank=rank, world_size=world
    )
    # rank 0: 3 images, all right; rank 1: 1 image, wrong -> 75 % (a mean of means: 50 %)
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0]] * (3 if rank == 0 else 1))
    y = torch.tensor([0] * 3 if rank == 0 else [1])
    record: dict = {"acc1": evaluate(model, [(x, y)], torch.device("cpu"))["acc1"]}
    record["saves"], record["teacher"], record["world"] = [], [], []
    save = RunCheckpoint.save

    def counted_save(self, path):
        record["saves"].append(Path(path).name)
        return save(self, path)

    logits = Teacher._logits  # inside the teacher's no_grad / inference_mode (any fast path)

    def watched(self, x, run_model):
        out = logits(self, x, run_model)
        record["teacher"].append([torch.is_grad_enabled(), self.model.training, out.requires_grad])
        return out

    build = optimisation.build_optimizer

    def built(cfg, model, world_size=1, lr=None):
        opt = build(cfg, model, world_size=world_size, lr=lr)
        record["world"].append([world_size, opt.param_groups[0]["lr"]])
        return opt

    RunCheckpoint.save, Teacher._logits, optimisation.build_optimizer = counted_save, watched, built
    cfg = _cfg(
        tmp / "out",
        distillation_type="hard",
        teacher_model="test_resnet",
        teacher_path=teacher,
        batch_size=4,
        lr=5e-4,
        epochs=2,
    )
    run(cfg, progress=False)
    (tmp / f"rank{rank}.json").write_text(json.dumps(record))
    if dist.is_initialized():
        dist.destroy_process_group()


def test_two_gloo_ranks_eval_counts_rank0_writes_teacher_frozen_lr_global(tmp_path):
    torch.manual_seed(3)
    cnn = deit.build_classifier("test_resnet", 10)
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": cnn.state_dict(), "model_name": "test_resnet", "num_classes": 10}, teacher)
    mp.spawn(_two_ranks, args=(2, tmp_path, str(teacher)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["acc1"] == r1["acc1"] == pytest.approx(75.0)  # summed by image counts
    # by rank 0 only: checkpoint.pth after each epoch, best_checkpoint.pth after the evaluation
    assert r0["saves"] == ["checkpoint.pth"] * 2 + ["best_checkpoint.pth"] and r1["saves"] == []
    assert (tmp_path / "out" / "checkpoint.pth").is_file()
    for r in (r0, r1):
        assert r["teacher"] and all(t == [False, False, False] for t in r["teacher"])
        assert r["world"] == [[2, pytest.approx(5e-4 * 4 * 2 / 512)]]  # lr x global batch / 512


def _label_rank(rank: int, world: int, tmp: Path, teacher: str) -> None:
    """One rank of a split label pass; the views it made and the files it opened for writing
    go to ``tmp/labels<rank>.json``."""
    import numpy as np

    from deit.data.transforms import SeededViews
    from deit.label_pass import compute_teacher_labels

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp / 'init'}", rank=rank, world_size=world
    )
    made: list[int] = []
    written: set[str] = set()
    getitems, open_memmap, load = SeededViews.__getitems__, np.lib.format.open_memmap, np.load

    def counted(self, keys):
        made.extend(position for _, position, _ in keys)
        return getitems(self, keys)

    def create(path, mode="r+", *args, **kw):
        if mode != "r":
            written.add(Path(path).name)
        return open_memmap(path, mode, *args, **kw)

    def opened(path, mmap_mode=None, **kw):
        if mmap_mode not in (None, "r", "c"):
            written.add(Path(path).name)
        return load(path, mmap_mode=mmap_mode, **kw)

    SeededViews.__getitems__, np.lib.format.open_memmap, np.load = counted, create, opened
    compute_teacher_labels(
        _label_cfg(teacher), tmp / "split", top_k=10, teacher_batch_size=8, progress=False
    )
    record = {"made": made, "written": sorted(written)}
    (tmp / f"labels{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def _label_cfg(teacher: str) -> Config:
    return _cfg(
        epochs=2,
        train_subset=40,
        batch_size=4,
        mixup=0.8,
        cutmix=1.0,
        distillation_type="hard",
        teacher_model="test_resnet",
        teacher_path=teacher,
        teacher_precision="fp32",
    )


def test_label_pass_split_over_two_ranks_equals_one_process(tmp_path):
    import numpy as np

    from deit.label_pass import compute_teacher_labels

    torch.manual_seed(3)
    cnn = deit.build_classifier("test_resnet", 10)
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": cnn.state_dict(), "model_name": "test_resnet", "num_classes": 10}, teacher)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same kernels, bit-equal logits
    try:
        one = compute_teacher_labels(
            _label_cfg(str(teacher)),
            tmp_path / "one",
            top_k=10,
            teacher_batch_size=8,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_label_rank, args=(2, tmp_path, str(teacher)), nprocs=2, join=True)
    split = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert split["processes"] == 2 and split["views_per_epoch"] == one["views_per_epoch"] == 40
    for name in ("top1.npy", "logits.npy"):
        a, b = np.load(tmp_path / "one" / name), np.load(tmp_path / "split" / name)
        assert a.shape == b.shape and np.array_equal(a, b), name  # both ranks' rows: 5 chunks
    # chunks of 2 batches of 4 views: rank 0 makes chunks 0, 2, 4 (views 0-7, 16-23, 32-39),
    # rank 1 chunks 1, 3, in each of the 2 epochs, and writes to no file rank 0 writes
    r0, r1 = (json.loads((tmp_path / f"labels{r}.json").read_text()) for r in (0, 1))
    views0 = [*range(0, 8), *range(16, 24), *range(32, 40)]
    views1 = [*range(8, 16), *range(24, 32)]
    assert sorted(r0["made"]) == sorted(views0 * 2) and sorted(r1["made"]) == sorted(views1 * 2)
    parts = [f".{a}.rank{{}}.npy.partial" for a in ("logits", "top1")]
    assert r1["written"] == [p.format(1) for p in parts]
    assert r0["written"] == sorted(
        [".logits.npy.partial", ".top1.npy.partial"] + [p.format(0) for p in parts]
    )
    assert not list((tmp_path / "split").glob(".*"))  # the parts merged and removed
