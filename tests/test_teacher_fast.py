"""The fast frozen teacher (deit.teacher.optimize_teacher): parity of each path with fp32, the
fallback, the choice per device and CPU flags, the one-sentence errors, and a training run."""

from __future__ import annotations

import dataclasses
import math

import pytest
import timm
import torch
from torch import nn

import deit.teacher.fast as inf
from conftest import write_image_tree
from deit.config import Config, ConfigError
from deit.distillation import DistillationLoss
from deit.teacher import Teacher
from deit.teacher.fast import (
    FastTeacher,
    TeacherReport,
    draw_views,
    optimize_teacher,
    target_distance,
    teacher_candidates,
)
from deit.train import run


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    """timm ``test_resnet`` (10 classes, random weights) with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.3)
    return Teacher(model, mean=(0.5,) * 3, std=(0.25,) * 3, student_mean=(0.4,) * 3,
                   student_std=(0.2,) * 3)  # fmt: skip


@pytest.fixture(scope="module")
def views() -> torch.Tensor:
    """96 smooth 32-px images (upsampled 4x4 noise), student-normalised."""
    torch.manual_seed(1)
    return nn.functional.interpolate(torch.randn(96, 3, 4, 4), size=32, mode="bilinear")


def _no_bn(fast: FastTeacher) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.model.modules())


def test_fp32_fast_path_folds_bn_and_matches_fp32(teacher, views):
    fast, report = optimize_teacher(teacher, "auto", None)  # no views: fp32 numerics
    assert isinstance(fast, FastTeacher) and fast.name == "fp32+bn-fold+channels-last"
    assert report.path == fast.name and report.agreement is None
    assert _no_bn(fast) and any(isinstance(m, nn.BatchNorm2d) for m in teacher.model.modules())
    conv = next(m for m in fast.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    ref, out = teacher(views), fast(views)
    assert out.dtype == torch.float32 and not out.is_inference()
    assert (out - ref).abs().max().item() < 1e-4
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_fp32_teacher_paths_stay_fp32_inside_the_students_autocast(teacher, views):
    """``--teacher-precision fp32`` under AMP (issue 32, item 5): the loss calls the teacher
    inside the student's autocast region; the plain and the fp32 fast teacher still compute in
    fp32 (the same logits bit for bit as outside it), and so does the teacher the loss runs.
    CPU bf16 autocast stands for a GPU's here: a bf16 convolution would differ by ~1e-2."""
    fast, _ = optimize_teacher(teacher, "auto", None)  # the fp32 fast path
    x = views[:8]
    for t in (teacher, fast):
        ref = t(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = t(x)
        assert inside.dtype == torch.float32 and torch.equal(inside, ref), type(t).__name__
    loss = DistillationLoss(nn.CrossEntropyLoss(), teacher, "soft", alpha=1.0, tau=1.0)
    seen = []
    hook = teacher.model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pair = (torch.zeros(8, 10), torch.zeros(8, 10))
            loss.compute(x, pair, torch.zeros(8, dtype=torch.long))
    finally:
        hook.remove()
    assert seen == [torch.float32]


def test_int8_path_agrees_with_fp32(teacher, views):
    fast, report = optimize_teacher(teacher, "int8", views[32:], calibration=views[:32])
    assert fast.name == report.path == "int8+bn-fold+channels-last" and not report.fell_back
    assert any(isinstance(m, torch.ao.nn.quantized.Conv2d) for m in fast.model.modules())
    assert _no_bn(fast)
    ref, out = teacher(views[32:]), fast(views[32:])
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert report.agreement == agree and report.distance == pytest.approx(1 - agree)
    assert agree >= 0.995 and report.n_views == 64
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_float_paths_agree_with_fp32(teacher, views, precision):
    """The autocast paths, built directly (this CPU cannot be asked for them: emulated)."""
    fast = inf._build(teacher, precision, None, compile=False)
    assert fast.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    ref, out = teacher(views), fast(views)
    assert out.dtype == torch.float32
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.99
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def _fake_int8(model, calibration):
    """A quick stand-in for the int8 conversion where only the choice logic is under test."""
    return inf._fold_bn(model)[0]


def test_fallback_below_the_threshold(teacher, views, monkeypatch):
    monkeypatch.setattr(inf, "_int8", _fake_int8)
    monkeypatch.setattr(inf, "target_distance", lambda *a, **k: 0.02)  # 98 % agreement
    kept, report = optimize_teacher(teacher, "int8", views[32:], calibration=views[:32])
    assert kept is teacher and report.fell_back and report.path == "fp32"
    assert report.line().startswith("teacher: fp32 (kept the fp32 teacher: int8+bn-fold+")
    assert "target distance 0.0200 > 0.005" in report.line()


def test_auto_prefers_the_native_reduced_path_then_fp32_never_a_timing(teacher, views, monkeypatch):
    """auto takes the hardware's reduced precision when its targets pass, else the fp32 fast
    path; timings are reported only when asked and never change the choice."""
    monkeypatch.setattr(inf, "_int8", _fake_int8)
    monkeypatch.setattr(inf, "fast_int8_available", lambda: True)  # a CPU with VNNI
    monkeypatch.setenv("DEIT_FAST_BF16", "0")
    fast, report = optimize_teacher(teacher, "auto", views[32:], calibration=views[:32])
    assert fast.name == "int8+bn-fold+channels-last" and report.speedup is None
    monkeypatch.setattr(inf, "_check", _int8_misses_the_bar(inf._check))
    fast, report = optimize_teacher(teacher, "auto", views[32:], calibration=views[:32])
    assert fast.name == "fp32+bn-fold+channels-last"
    assert "int8+bn-fold+channels-last rejected: " in report.note
    monkeypatch.setattr(inf, "fast_int8_available", lambda: False)  # AVX2 only: no candidate
    fast, report = optimize_teacher(teacher, "auto", views[32:], calibration=views[:32], timed=True)
    assert fast.name == "fp32+bn-fold+channels-last" and report.speedup > 0


def _int8_misses_the_bar(check):
    """``_check`` with the int8 path's target distance forced to 0.02 (98 % agreement)."""

    def run(teacher, fasts, sample, kind, tau, timed):
        return [
            (f, dataclasses.replace(r, distance=0.02) if f.name.startswith("int8") else r)
            for f, r in check(teacher, fasts, sample, kind, tau, timed)
        ]

    return run


def test_report_line():
    r = TeacherReport("int8+bn-fold+channels-last", 0.997, 0.003, 2.1, 64)
    assert r.line() == (
        "teacher: int8+bn-fold+channels-last, 99.7 % top-1 agreement with fp32 on 64 training "
        "views, 2.10x the fp32 teacher's speed"
    )


def test_target_distance_hand_computed():
    ref = torch.zeros(2, 2)
    fast = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # softmax (0.25, 0.75) vs (0.5, 0.5)
    assert target_distance(fast, ref, "soft", 1.0) == pytest.approx(0.125)
    hard_ref = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    hard_fast = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert target_distance(hard_fast, hard_ref, "hard") == 0.25


def test_candidates_per_device_and_cpu_flags(monkeypatch):
    import deit.precision as prec

    monkeypatch.setenv("DEIT_FAST_BF16", "0")
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"sse4_2", "avx"}))  # no AVX2
    assert teacher_candidates("auto", "cpu") == []
    assert teacher_candidates("int8", "cpu") == ["int8"]  # asked for: allowed
    assert teacher_candidates("fp32", "cpu") == []
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx", "avx2", "fma"}))  # this EPYC
    assert teacher_candidates("auto", "cpu") == ["int8"]
    monkeypatch.setenv("DEIT_FAST_BF16", "1")  # AMX or AVX-512 BF16
    assert teacher_candidates("auto", "cpu") == ["bf16", "int8"]
    assert teacher_candidates("bf16", "cpu") == ["bf16"]
    monkeypatch.setattr(inf, "_int8_engine", lambda: None)  # e.g. an ARM CPU
    assert teacher_candidates("auto", "cpu") == ["bf16"]
    assert teacher_candidates("auto", "mps") == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))  # A100
    assert teacher_candidates("auto", "cuda") == ["bf16"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 0))  # V100: bf16
    # only emulated, though torch.cuda.is_bf16_supported() says True
    assert teacher_candidates("auto", "cuda") == ["fp16"]
    assert teacher_candidates("fp16", "cuda") == ["fp16"]


@pytest.mark.parametrize(
    ("precision", "device", "fast_bf16", "message"),
    [
        ("fp16", "cpu", "1", "teacher_precision 'fp16' needs a CUDA device, not cpu; use 'auto' "
         "or 'fp32'."),
        ("bf16", "cpu", "0", "teacher_precision 'bf16' is not native on this cpu (no AMX or "
         "AVX-512 BF16 on a CPU; emulated bf16 is many times slower than fp32); use 'auto' or "
         "'fp32'."),
        ("int8", "meta", "0", "teacher_precision 'int8' runs on x86 CPUs only (PyTorch's "
         "x86/fbgemm engine); use 'auto', 'bf16' or 'fp16' on this device."),
        ("int4", "cpu", "0", "teacher_precision must be one of fp32, auto, bf16, fp16, int8; got "
         "'int4'."),
    ],
)  # fmt: skip
def test_impossible_choices_are_one_sentence(monkeypatch, precision, device, fast_bf16, message):
    monkeypatch.setenv("DEIT_FAST_BF16", fast_bf16)
    with pytest.raises(ValueError) as e:
        teacher_candidates(precision, device)
    assert str(e.value) == message


def test_config_field_is_validated():
    assert Config().teacher_precision == "auto"
    with pytest.raises(ConfigError, match="teacher_precision"):
        Config(teacher_precision="int4").validate()


def test_fast_teacher_feeds_the_soft_loss_backward(teacher, views):
    fast, _ = optimize_teacher(teacher, "auto", None)
    dist = torch.zeros(8, 10, requires_grad=True)
    loss = DistillationLoss(nn.CrossEntropyLoss(), fast, "soft", alpha=0.5, tau=3.0)
    out = loss.compute(views[:8], (torch.zeros(8, 10), dist), torch.zeros(8, dtype=torch.long))
    out.total.backward()  # the teacher's logits are ordinary tensors, not inference tensors
    assert dist.grad is not None and dist.grad.abs().sum() > 0


def test_draw_views_takes_n_views_across_batches():
    batches = [(torch.full((3, 1, 2, 2), float(i)), torch.zeros(3)) for i in range(4)]
    out = draw_views(batches, 5)
    assert out.shape == (5, 1, 2, 2) and out[:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1]
    mixed = draw_views([(torch.arange(4.0).view(4, 1, 1, 1), torch.zeros(4))], 4,
                       mixup_fn=lambda x, y: (x.flip(0), y))  # fmt: skip
    assert mixed.flatten().tolist() == [3.0, 2.0, 1.0, 0.0]


def test_training_with_auto_equals_fp32_when_auto_is_exact(tmp_path, monkeypatch, capsys):
    """Hard distillation: the fp32 fast path (no int8 engine) gives the same teacher labels, so
    the same losses as the fp32 teacher, and the run prints its one line."""
    data = write_image_tree(tmp_path / "d", {"train": dict.fromkeys("ab", 8),
                                             "val": dict.fromkeys("ab", 2)}, size=(28, 28))  # fmt: skip
    torch.manual_seed(1)
    cnn = timm.create_model("test_resnet", num_classes=2)
    torch.save({"model": cnn.state_dict(), "model_name": "test_resnet", "num_classes": 2},
               tmp_path / "t.pth")  # fmt: skip
    monkeypatch.setattr(inf, "_int8_engine", lambda: None)
    # a CPU with AVX-512 BF16 or AMX would try bf16 first: this test is about the fp32 path
    monkeypatch.setattr(inf, "fast_bf16_available", lambda device: False)
    kw = dict(model="deit_pico_distilled_patch7_28", input_size=28, data_set="folder",
              data_path=str(data), batch_size=8, epochs=1, warmup_epochs=0, num_workers=0,
              model_ema=False, pin_mem=False, device="cpu", distillation_type="hard",
              teacher_model="test_resnet", teacher_path=str(tmp_path / "t.pth"))  # fmt: skip
    fp32 = run(Config(**kw, teacher_precision="fp32"), progress=False)
    assert "teacher:" not in capsys.readouterr().err
    auto = run(Config(**kw, teacher_precision="auto"), progress=False)
    # 16 training views: 4 to calibrate int8 (rejected or not buildable here), 12 to check
    line = "teacher: fp32+bn-fold+channels-last, 100.0 % top-1 agreement with fp32 on 12"
    assert line in capsys.readouterr().err
    assert auto["history"][0]["train_loss"] == fp32["history"][0]["train_loss"]
    assert auto["final"] == fp32["final"]
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):  # before any step
        run(Config(**kw, teacher_precision="fp16"), progress=False)


def test_benchmark_ratios_hand_computed():
    """benchmarks/teacher_cost.py: amortised stored-label cost = (c) + B * (d) / L / n."""
    import argparse
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_cost.py"
    spec = importlib.util.spec_from_file_location("teacher_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(batch_size=32, label_batch=128)
    times = {"timm": [20.0], "a_fp32": [20.0], "b_fast": [10.0], "b_auto": [16.0], "c_stored": [4.0],
             "e_plain": [3.6], "d_labels": [48.0]}  # fmt: skip
    got = dict(module.ratios(args, times))
    assert got["(b) ours, fast teacher online / timm"] == [2.0]
    assert got["(c)+(d)/1 stored, 1 student / timm"] == [20.0 / (4.0 + 12.0)]
    assert got["(c)+(d)/3 stored, 3 students / timm"] == [20.0 / (4.0 + 4.0)]
    assert got["(c) stored step vs (e): e_time / c_time"] == [0.9]


def test_a_path_that_cannot_be_built_is_skipped_by_auto_and_named_when_asked(
    teacher, views, monkeypatch
):
    """A teacher torch.fx cannot trace: auto goes on to the next path and says why; asking for
    that path explicitly is one sentence."""

    def untraceable(model, calibration):
        raise RuntimeError("symbolically traced variables cannot be used as inputs to control flow")

    monkeypatch.setattr(inf, "_int8", untraceable)
    monkeypatch.setattr(inf, "fast_int8_available", lambda: True)
    monkeypatch.setenv("DEIT_FAST_BF16", "0")
    fast, report = optimize_teacher(teacher, "auto", views[32:], calibration=views[:32])
    assert fast.name == "fp32+bn-fold+channels-last"
    assert report.note == "int8 not buildable (RuntimeError)"
    with pytest.raises(ValueError) as e:
        optimize_teacher(teacher, "int8", views[32:], calibration=views[:32])
    assert str(e.value) == (
        "teacher_precision 'int8' cannot be built for this teacher (RuntimeError: symbolically "
        "traced variables cannot be used as inputs to control flow); use 'auto' or 'fp32'."
    )
