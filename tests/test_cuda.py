"""The CUDA paths, run where a GPU is (``pytest -m cuda``; ``benchmarks/gpu_check.sh`` runs them):
training in fp32 / AMP bf16 / AMP fp16 with the teacher on the device and exact resume, the
GradScaler's unscale-before-clip and skipped inf steps, NCCL DDP against no DDP, the label pass
and stored labels against the CPU, Mixup/CutMix and the teacher's normalisation on the device, a
CUDA checkpoint read on the CPU, no per-step host synchronisation in the training loop, an EMA
forced to the CPU, an fp32 teacher inside AMP and the cuDNN autotuning policy.

Every test here is skipped with a reason where ``torch.cuda.is_available()`` is false.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

# deterministic cuBLAS (exact resume on the GPU); must be set before cuBLAS starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import deit  # noqa: E402
from deit.checkpoints import safe_torch_load  # noqa: E402
from deit.config import Config  # noqa: E402
from deit.data.transforms import SeededMixup  # noqa: E402
from deit.distillation import DistillationTask  # noqa: E402
from deit.engine import StepOptions, _backward_and_step, train_one_epoch  # noqa: E402
from deit.label_pass import compute_teacher_labels  # noqa: E402
from deit.optim import build_optimizer  # noqa: E402
from deit.precision import resolve_precision  # noqa: E402
from deit.teacher import Teacher, TeacherLabelStore  # noqa: E402
from deit.train import LAST, run, wrap_ddp  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU: torch.cuda.is_available() is False here",
    ),
]

STUDENT = "deit_pico_distilled_patch7_28"
BIN = Path(sys.executable).parent
AMPS = ("fp32", "bf16", "fp16")


@pytest.fixture(autouse=True)
def _deterministic():
    """Deterministic kernels, the math attention kernel (the fused ones' backward may add in
    any order) and no TF32 (CPU parity within fp32 round-off), restored after."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    old = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        (
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ) = old


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN teacher (timm test_resnet, random weights) saved as deit train saves one."""
    torch.manual_seed(3)
    cnn = deit.build_classifier("test_resnet", 10)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"model": cnn.state_dict(), "model_name": "test_resnet", "num_classes": 10}, path)
    return path


def _cfg(teacher: Path, out: Path | str = "", **kw: object) -> Config:
    """48 digits at 28 px, batch 8, 2 epochs on CUDA: Mixup/CutMix, RandAugment, random erasing,
    drop-path, EMA, clipping and a hard-distillation teacher on the device."""
    base = dict(
        model=STUDENT,
        input_size=28,
        data_set="digits",
        train_subset=48,
        batch_size=8,
        epochs=2,
        warmup_epochs=1,
        num_workers=0,
        output_dir=str(out),
        model_ema=True,
        model_ema_decay=0.9,
        repeated_aug=True,
        mixup=0.8,
        cutmix=1.0,
        aa="rand-m9-mstd0.5-inc1",
        reprob=0.25,
        drop_path=0.1,
        clip_grad=1.0,
        pin_mem=True,
        device="cuda",
        distillation_type="hard",
        teacher_model="test_resnet",
        teacher_path=str(teacher),
    )
    base.update(kw)
    return Config(**base)


def _skip_unsupported(amp: str) -> None:
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")


@pytest.mark.parametrize("amp", AMPS)
def test_distilled_training_on_cuda_resumes_exactly(amp, teacher_ckpt, tmp_path):
    _skip_unsupported(amp)
    full = run(_cfg(teacher_ckpt, tmp_path / "full", amp=amp), progress=False)
    assert full["status"] == "completed" and len(full["history"]) == 2
    assert all(np.isfinite(h["train_loss"]) for h in full["history"])
    first = run(
        _cfg(teacher_ckpt, tmp_path / "split", amp=amp), max_epochs_this_run=1, progress=False
    )
    assert first["status"] == "paused"
    resumed = run(
        _cfg(teacher_ckpt, tmp_path / "split", amp=amp, resume=str(tmp_path / "split" / LAST)),
        progress=False,
    )
    assert resumed["status"] == "completed"
    a, b = safe_torch_load(tmp_path / "full" / LAST), safe_torch_load(tmp_path / "split" / LAST)
    assert a["step"] == b["step"] > 0
    assert (a["scaler"] is not None) == (amp == "fp16")  # GradScaler with fp16 only
    for key in ("model", "model_ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{amp}: {key}.{k} differs after resume"
    assert full["history"][-1]["train_loss"] == resumed["history"][-1]["train_loss"]


def _linear_step(clip: float, init_scale: float) -> tuple[nn.Linear, torch.optim.Optimizer, float]:
    """One fp16-autocast SGD step (lr 1) of a Linear(8, 4) with a GradScaler; returns the model,
    the optimiser and the scale after the step."""
    torch.manual_seed(0)
    model = nn.Linear(8, 4).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cuda", init_scale=init_scale)
    x, y = torch.randn(16, 8, device="cuda") * 10, torch.arange(16, device="cuda") % 4
    with torch.autocast("cuda", dtype=torch.float16):
        loss = nn.functional.cross_entropy(model(x), y) * 100
    _backward_and_step(loss, model, opt, StepOptions(scaler=scaler, clip_grad=clip))
    return model, opt, scaler.get_scale()


def test_fp16_clips_the_unscaled_gradients():
    torch.manual_seed(0)
    before = [p.detach().clone() for p in nn.Linear(8, 4).cuda().parameters()]
    # scale 16: the scaled fp16 weight gradients stay near 7e3 (2**10 would overflow fp16's
    # 65,504 at these gradients, about 440 per entry, and skip the step)
    model, _, scale = _linear_step(clip=0.5, init_scale=2.0**4)
    assert scale == 2.0**4  # a finite step: the scale kept
    # SGD lr 1: the update is the clipped gradient (norm ~1e3 before clipping); clipped after
    # unscale_ its norm is 0.5 (clipped before it, 0.5 / 16)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert delta.norm().item() == pytest.approx(0.5, rel=1e-3)


def test_fp16_inf_step_is_skipped_and_the_optimizer_is_left_as_it_was():
    torch.manual_seed(0)
    before = [p.detach().clone() for p in nn.Linear(8, 4).cuda().parameters()]
    model, opt, scale = _linear_step(clip=0.5, init_scale=2.0**40)  # fp16 gradients overflow
    assert scale == 2.0**39  # backed off by half
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)  # the step was skipped
        assert torch.isfinite(p).all()
    assert not opt.state or all(not s for s in opt.state.values())


def _ddp_vs_plain(init_file: Path) -> float:
    import torch.distributed as dist

    torch.manual_seed(0)
    model = deit.create_model(STUDENT, num_classes=4).cuda()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [
        (torch.randn(8, 3, 28, 28, device="cuda"), torch.arange(8, device="cuda") % 4)
        for _ in range(3)
    ]
    device = torch.device("cuda", 0)
    model.set_distilled_training(True)
    task = DistillationTask(model, nn.CrossEntropyLoss())
    train_one_epoch(task, batches, torch.optim.SGD(model.parameters(), lr=0.5), device, 0)
    twin = deit.create_model(STUDENT, num_classes=4).cuda()
    twin.load_state_dict(state)
    twin.set_distilled_training(True)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=0, world_size=1)
    try:
        ddp = wrap_ddp(twin, device, "none")
        task = DistillationTask(ddp, nn.CrossEntropyLoss())
        train_one_epoch(task, batches, torch.optim.SGD(twin.parameters(), lr=0.5), device, 0)
    finally:
        dist.destroy_process_group()
    return max((twin.state_dict()[k] - v).abs().max().item() for k, v in model.state_dict().items())


def test_nccl_ddp_one_process_equals_no_ddp(tmp_path):
    torch.cuda.set_device(0)
    assert _ddp_vs_plain(tmp_path / "init") <= 1e-6


def _train(cmd_prefix: list[str], teacher: Path, out: Path, nproc: int) -> dict:
    argv = ["train", "--model", STUDENT, "--input-size", "28", "--data-set", "digits"]
    argv += ["--train-subset", "48", "--batch-size", str(8 // nproc), "--epochs", "1"]
    argv += ["--warmup-epochs", "0", "--num-workers", "0", "--device", "cuda", "--no-progress"]
    argv += ["--distillation-type", "hard", "--teacher-model", "test_resnet"]
    argv += ["--teacher-path", str(teacher), "--no-repeated-aug", "--no-model-ema"]
    argv += ["--amp", "fp32", "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd_prefix, *argv], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "log.txt").read_text().splitlines()[-1])


def test_torchrun_nccl_one_process_equals_plain_run(teacher_ckpt, tmp_path):
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "1", "-m", "deit.cli"]
    a = _train(torchrun, teacher_ckpt, tmp_path / "torchrun", 1)
    b = _train([sys.executable, "-m", "deit.cli"], teacher_ckpt, tmp_path / "plain", 1)
    assert a["train_steps"] == b["train_steps"] == 6
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert a["test_acc1"] == pytest.approx(b["test_acc1"], abs=1e-6)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_torchrun_nccl_two_processes(teacher_ckpt, tmp_path):
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "deit.cli"]
    log = _train(torchrun, teacher_ckpt, tmp_path, 2)
    assert log["train_steps"] == 6 and np.isfinite(log["train_loss"])  # 48 / 2 ranks / 4
    assert safe_torch_load(tmp_path / LAST)["world_size"] == 2


def test_label_pass_and_stored_labels_on_cuda_equal_the_cpus(teacher_ckpt, tmp_path):
    kw = dict(epochs=1, amp="fp32", model_ema=False, teacher_precision="fp32")
    for device in ("cpu", "cuda"):
        cfg = _cfg(teacher_ckpt, device=device, pin_mem=False, **kw)
        compute_teacher_labels(cfg, tmp_path / device, top_k=10, progress=False)
    cpu, gpu = TeacherLabelStore(tmp_path / "cpu"), TeacherLabelStore(tmp_path / "cuda")
    for i in range(len(cpu.arrays["top1"][0]) // 8):
        a, b = cpu.batch(0, i, "cpu"), gpu.batch(0, i, "cuda")
        assert b.device.type == "cuda"
        assert torch.allclose(a, b.cpu(), atol=2e-3, rtol=1e-3)  # fp16 storage of fp32 logits
        assert torch.equal(gpu.batch(0, i, "cpu"), b.cpu())  # the reader: same on both devices


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_seeded_mixup_cutmix_on_cuda_equal_the_cpus(mode):
    mix = SeededMixup(
        mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=5, mode=mode, seed=7
    )
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 28, 28), torch.tensor([0, 1, 2, 3, 4, 0])
    for key in [(0, 0), (0, 1), (3, 5), (1, 2)]:  # Mixup and CutMix both drawn over the keys
        xc, yc = mix(x.clone(), y.clone(), key=key)
        xg, yg = mix(x.cuda(), y.cuda(), key=key)
        assert xg.device.type == yg.device.type == "cuda"
        assert torch.allclose(xc, xg.cpu(), atol=1e-6) and torch.allclose(yc, yg.cpu(), atol=1e-7)


def test_random_erasing_views_train_on_cuda(teacher_ckpt, tmp_path):
    # reprob 1: every view erased (on the CPU, in the loader); its batch then trains on the GPU
    res = run(_cfg(teacher_ckpt, tmp_path, epochs=1, reprob=1.0, amp="fp32"), progress=False)
    assert res["status"] == "completed" and np.isfinite(res["history"][-1]["train_loss"])


def test_teacher_normalisation_on_cuda_equals_the_cpus():
    torch.manual_seed(0)
    cnn = deit.build_classifier("test_resnet", 10)
    kw = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    student = dict(student_mean=(0.485, 0.456, 0.406), student_std=(0.229, 0.224, 0.225))
    teacher = Teacher(cnn, **kw, **student)
    x = torch.randn(4, 3, 28, 28)
    cpu_x, cpu_out = teacher.normalize_input(x), teacher(x)
    teacher = teacher.cuda()
    assert teacher.scale.device.type == "cuda" and teacher.shift.device.type == "cuda"
    out = teacher(x.cuda())
    assert not out.requires_grad and not teacher.model.training
    assert torch.allclose(teacher.normalize_input(x.cuda()).cpu(), cpu_x, atol=1e-6)
    assert torch.allclose(out.cpu(), cpu_out, atol=1e-4, rtol=1e-4)


def test_cuda_checkpoint_loads_on_the_cpu(teacher_ckpt, tmp_path, monkeypatch):
    run(_cfg(teacher_ckpt, tmp_path, epochs=1, amp="fp16"), progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    ck = safe_torch_load(tmp_path / LAST)
    assert all(v.device.type == "cpu" for v in ck["model"].values())
    weights = deit.checkpoints.read_weights(tmp_path / LAST)
    model = deit.create_model(STUDENT, num_classes=10)
    model.load_state_dict(weights.state_dict)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 28, 28)).shape == (1, 10)


def _epoch_syncs(amp: str, steps: int, monkeypatch) -> tuple[int, int]:
    """``(Tensor.item calls, synchronising CUDA calls)`` in one epoch of ``steps`` steps of the
    run's loop (AdamW as built for runs, clipping, Mixup/CutMix, EMA, a teacher on the GPU)."""
    from timm.loss import SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    device = torch.device("cuda", 0)
    cfg = _cfg(Path("unused"), amp=amp)
    model = deit.create_model(STUDENT, num_classes=10).to(device)
    model.set_distilled_training(True)
    teacher = Teacher(deit.build_classifier("test_resnet", 10).to(device))
    precision = resolve_precision(amp, device)
    scaler = torch.amp.GradScaler("cuda") if precision.use_scaler else None
    mix = SeededMixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10, seed=0)
    task = DistillationTask(model, SoftTargetCrossEntropy(), teacher, "hard")
    opts = StepOptions(
        precision=precision,
        mixup_fn=mix,
        scaler=scaler,
        clip_grad=1.0,
        model_ema=ModelEmaV3(model, decay=0.9),
        log_interval=1000,
    )
    opt = build_optimizer(cfg, model)
    batches = [
        (torch.randn(8, 3, 28, 28, device=device), torch.arange(8, device=device) % 10)
        for _ in range(steps)
    ]
    train_one_epoch(task, batches[:1], opt, device, 0, opts)  # warm-up
    torch.cuda.synchronize()
    calls = [0]
    item = torch.Tensor.item

    def counted(self):
        calls[0] += 1
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    torch.cuda.set_sync_debug_mode("warn")
    # the kernels a run uses (the fixture's deterministic ones are for the parity tests)
    torch.use_deterministic_algorithms(False)
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        with warnings.catch_warnings(record=True) as seen, sdpa_kernel(backends):
            warnings.simplefilter("always")
            train_one_epoch(task, batches, opt, device, 1, opts)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        monkeypatch.undo()
    syncs = sum("synchroniz" in str(w.message) for w in seen)
    return calls[0], syncs


@pytest.mark.parametrize("amp", AMPS)
def test_no_host_synchronisation_per_training_step(amp, monkeypatch):
    _skip_unsupported(amp)
    few, many = _epoch_syncs(amp, 3, monkeypatch), _epoch_syncs(amp, 9, monkeypatch)
    # the epoch's reads (the non-finite check, the sums) happen once, whatever its length;
    # fp16's GradScaler reads found_inf each step unless the optimiser is fused (it is on CUDA)
    assert few == many, f"{amp}: (item calls, syncs) grow with the steps: {few} -> {many}"


def test_stored_labels_reach_the_gpu_without_a_synchronisation(tmp_path):
    """The label store's batches go to the GPU through pinned memory without waiting: a copy
    from pageable memory synchronised the stream once per training step."""
    from deit.teacher.store import FORMAT_VERSION, StoreWriter

    writer = StoreWriter(tmp_path, (1, 32), 10, 0)
    logits = torch.randn(32, 10)
    writer.write(0, 0, logits)
    writer.close()
    manifest = dict(format_version=FORMAT_VERSION, kind="top1", batch_size=8, arrays=["top1"])
    manifest.update(epochs=1, views_per_epoch=32, num_classes=10)
    writer.install(manifest)
    store = TeacherLabelStore(tmp_path)
    store.batch(0, 0, "cuda")  # the pinned host allocator's first block
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = [store.batch(0, i, "cuda") for i in range(4)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not [w for w in seen if "synchroniz" in str(w.message)]
    assert torch.equal(torch.cat(got).cpu(), logits.argmax(1))


def test_ema_forced_to_the_cpu_trains_on_the_gpu(teacher_ckpt, tmp_path):
    """``--model-ema-force-cpu`` (issue 32, item 3): the EMA's CPU weights are updated from the
    GPU's and saved, never evaluated with the GPU's images (a device mismatch after epoch 1)."""
    cfg = _cfg(teacher_ckpt, tmp_path, model_ema_force_cpu=True, amp="fp32")
    result = run(cfg, progress=False)
    assert result["status"] == "completed" and len(result["history"]) == 2
    assert all("test_ema_acc1" not in h for h in result["history"])
    ck = safe_torch_load(tmp_path / LAST)
    assert ck["model_ema"] and all(torch.isfinite(v).all() for v in ck["model_ema"].values())
    assert any(not torch.equal(ck["model_ema"][k], ck["model"][k]) for k in ck["model"])


@pytest.mark.parametrize("amp", ("bf16", "fp16"))
def test_fp32_teacher_stays_fp32_inside_the_runs_autocast(amp, teacher_ckpt):
    """``--teacher-precision fp32`` under AMP (issue 32, item 5): the plain and the fp32 fast
    teacher give the same logits inside the student's CUDA autocast as outside it."""
    from deit.teacher import build_teacher, optimize_teacher

    _skip_unsupported(amp)
    teacher = build_teacher("test_resnet", teacher_ckpt, num_classes=10, device="cuda")
    fast, _ = optimize_teacher(teacher, "auto", None)  # the fp32 fast path
    x = torch.randn(8, 3, 28, 28, device="cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    for t in (teacher, fast):
        ref = t(x)
        with torch.autocast("cuda", dtype=dtype):
            inside = t(x)
        assert inside.dtype == torch.float32 and torch.equal(inside, ref), type(t).__name__


def test_a_gpu_run_autotunes_cudnn_unless_deterministic(teacher_ckpt, tmp_path):
    """The cuDNN / TF32 policy (issue 32, item 10; docs/recipe.md): cuDNN autotuning on for a
    run, off where deterministic algorithms were asked (as this module's fixture does); TF32
    as PyTorch (here the fixture) has it."""
    kw = dict(epochs=1, amp="fp32", model_ema=False)
    run(_cfg(teacher_ckpt, tmp_path / "deterministic", **kw), progress=False)
    assert torch.backends.cudnn.benchmark is False
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    run(_cfg(teacher_ckpt, tmp_path / "autotuned", **kw), progress=False)
    assert torch.backends.cudnn.benchmark is True
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False,) * 2
