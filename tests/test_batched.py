"""The batched-students seam (deit.batched) against single runs on the same views."""

from __future__ import annotations

import pytest
import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn

import deit
from deit.batched import BatchedStudents, batched_train_step
from deit.config import Config
from deit.distillation import DistillationLoss
from deit.optim import build_optimizer

K, B, STEPS = 3, 8, 3


def _students(name: str = "deit_nano_distilled_patch7_28", drop_path: float = 0.0):
    out = []
    for seed in range(K):
        torch.manual_seed(seed)
        m = deit.create_model(name, num_classes=10, drop_path_rate=drop_path)
        m.train()
        if hasattr(m, "set_distilled_training"):
            m.set_distilled_training(True)
        out.append(m)
    return out


def _criteria():
    torch.manual_seed(100)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 10)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    base = SoftTargetCrossEntropy()
    # one student per loss: soft (per-sample KL), hard, soft (official KL) with clipping
    return [
        DistillationLoss(base, teacher, "soft", alpha=0.9, tau=4.0, kl_reduction="batchmean"),
        DistillationLoss(base, teacher, "hard", alpha=0.5),
        DistillationLoss(base, teacher, "soft", alpha=0.1, tau=3.0),
    ]


def _views():
    g = torch.Generator().manual_seed(7)
    images = torch.randn(STEPS, K, B, 3, 28, 28, generator=g)
    targets = torch.softmax(torch.randn(STEPS, K, B, 10, generator=g), -1)
    return images, targets


def _cfg() -> Config:
    # applied lr 1e-4 (x 64/512). Gradients agree to ~1e-7, but AdamW divides each by its own
    # size: where one is near eps (1e-8) its round-off moves the weight by up to ~lr, so at
    # the demo's 1e-3 some weights differ by ~2e-5 after 3 steps (round-off, not a defect)
    return Config(model="deit_nano_distilled_patch7_28", lr=8e-4, weight_decay=0.05)


def test_batched_students_match_their_single_runs():
    """Each student's loss, gradients and weights after 3 steps of the batched computation
    equal its own single run on the same views (soft, hard and official-KL soft students,
    AdamW with weight-decay groups, gradient clipping), to 1e-5."""
    images, targets = _views()
    criteria = _criteria()
    singles = _students()
    clip = 0.5
    single_losses, single_grads = torch.zeros(STEPS, K), []
    for k, m in enumerate(singles):
        opt = build_optimizer(_cfg(), m)
        for s in range(STEPS):
            loss = criteria[k].compute(images[s, k], m(images[s, k]), targets[s, k]).total
            opt.zero_grad()
            loss.backward()
            if s == 0:
                single_grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
            torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
            opt.step()
            single_losses[s, k] = loss.detach()

    batched = BatchedStudents(_students())
    opt = batched.optimizer(build_optimizer(_cfg(), batched.models[0]))
    assert [len(g["params"]) for g in opt.param_groups] == [
        len(g["params"]) for g in build_optimizer(_cfg(), singles[0]).param_groups
    ]
    for s in range(STEPS):
        losses = batched_train_step(batched, criteria, images[s], targets[s], opt, clip_grad=clip)
        torch.testing.assert_close(losses, single_losses[s], atol=1e-5, rtol=1e-5)
    batched.write_back()
    for k in range(K):
        for (n, p), (_, q) in zip(
            singles[k].named_parameters(), batched.models[k].named_parameters()
        ):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5, msg=f"student {k}: {n}")

    # gradients of the first step, before clipping
    fresh = BatchedStudents(_students())
    outputs = fresh(images[0])
    total = sum(
        criteria[k].compute(images[0, k], tuple(o[k] for o in outputs), targets[0, k]).total
        for k in range(K)
    )
    total.backward()
    for n, p in fresh.named_parameters():
        for k in range(K):
            torch.testing.assert_close(p.grad[k], single_grads[k][n], atol=1e-5, rtol=1e-4)


def test_clip_grad_norm_is_per_student():
    """Each student's gradient is scaled by its own norm: norms 5 and 0.5 with max 1 give
    scales 1/5 (to within the 1e-6 guard) and 1."""
    batched = BatchedStudents(_students("deit_nano_patch7_28")[:2])
    for p in batched.parameters():
        p.grad = torch.zeros_like(p)
    first = batched.params["head.bias"]
    first.grad[0, 0], first.grad[1, 0] = 5.0, 0.5
    norms = batched.clip_grad_norm_(1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))
    assert first.grad[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert first.grad[1, 0].item() == 0.5


def test_stochastic_depth_draws_differ_between_students():
    """With drop_path > 0 the batched students train (vmap randomness 'different'): two
    students with equal weights and inputs give different outputs in training mode and equal
    ones in eval mode."""
    students = _students("deit_nano_patch7_28", drop_path=0.5)[:2]
    students[1].load_state_dict(students[0].state_dict())
    batched = BatchedStudents(students)
    x = torch.randn(1, 4, 3, 28, 28).expand(2, -1, -1, -1, -1)
    torch.manual_seed(0)
    out = batched(x)
    assert not torch.allclose(out[0], out[1])
    batched.eval()
    out = batched(x)
    torch.testing.assert_close(out[0], out[1])


def test_mismatched_students_are_refused():
    plain = deit.create_model("deit_nano_patch7_28", num_classes=10)
    distilled = deit.create_model("deit_nano_distilled_patch7_28", num_classes=10)
    with pytest.raises(ValueError, match="batch only students of one architecture"):
        BatchedStudents([plain, distilled])
    with pytest.raises(ValueError, match=r"one batch per student"):
        BatchedStudents([plain])(torch.randn(2, 1, 3, 28, 28))


def test_benchmark_quick_runs(capsys):
    """benchmarks/batched_students.py --quick prints one row for K=2 with a positive ratio."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "batched_students.py"
    spec = importlib.util.spec_from_file_location("batched_students", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("2 | ") and float(row.split("|")[4].split()[0]) > 0
