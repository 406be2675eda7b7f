"""Tests of deit.distillation (the DeiT losses, paper section 4) and deit.teacher's frozen
teachers."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.task import TokenDistillationTask
from torch import nn

from deit.checkpoints import CheckpointError, create_model
from deit.distillation import DistillationLoss, LossOutput, prepare_student
from deit.teacher import Teacher, build_teacher


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids oversubscription slow-downs on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# Fixed small tensors (B = 2, C = 3) and an independent pure-Python reference
# ---------------------------------------------------------------------------------------------

CLS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
DIST = [[0.5, 1.5, -0.5], [2.0, 0.0, 1.0]]
TEACH = [[2.0, 0.0, 1.0], [-1.0, 0.5, 0.0]]  # argmax: [0, 1]
LABELS = [1, 2]
SOFT = [[0.1, 0.8, 0.1], [0.3, 0.0, 0.7]]  # Mixup-style soft targets, rows sum to 1


def py_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    z = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - z for v in row]


def py_base(logits, targets, kind: str) -> float:
    """Mean over the batch of CE / label-smoothed CE (eps 0.1) / soft-target CE."""
    total = 0.0
    for row, t in zip(logits, targets):
        lp = py_log_softmax(row)
        if kind == "ce":
            total += -lp[t]
        elif kind == "smooth":
            total += 0.9 * -lp[t] + 0.1 * -sum(lp) / len(lp)
        else:  # soft targets
            total += -sum(p * v for p, v in zip(t, lp))
    return total / len(logits)


def py_soft(dist, teach, tau: float, reduction: str) -> float:
    """tau^2 * sum_b KL(softmax(t_b / tau) || softmax(d_b / tau)) / (B*C or B)."""
    total = 0.0
    for d, t in zip(dist, teach):
        ld = py_log_softmax([v / tau for v in d])
        lt = py_log_softmax([v / tau for v in t])
        total += sum(math.exp(a) * (a - b) for a, b in zip(lt, ld))
    denom = len(dist) * len(dist[0]) if reduction == "mean" else len(dist)
    return tau * tau * total / denom


def py_hard(dist, teach) -> float:
    total = 0.0
    for d, t in zip(dist, teach):
        total += -py_log_softmax(d)[max(range(len(t)), key=t.__getitem__)]
    return total / len(dist)


class FixedLogits(nn.Module):
    """A 'teacher' returning fixed logits, whatever the images."""

    def __init__(self, logits) -> None:
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32).clone())
        self.num_classes = self.logits.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == self.logits.shape[0]
        return self.logits.clone()


def _criterion(kind: str) -> nn.Module:
    return {
        "ce": nn.CrossEntropyLoss(),
        "smooth": LabelSmoothingCrossEntropy(0.1),
        "soft": SoftTargetCrossEntropy(),
    }[kind]


def _targets(kind: str) -> torch.Tensor:
    return torch.tensor(SOFT) if kind == "soft" else torch.tensor(LABELS)


def _py_targets(kind: str):
    return SOFT if kind == "soft" else LABELS


IMAGES = torch.zeros(2, 3, 4, 4)
TARGET_KINDS = ["ce", "smooth", "soft"]


# ---------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------


def test_literal_values_of_the_reference():
    """Pin the pure-Python reference itself to numbers worked out once by hand/calculator."""
    assert py_base(CLS, LABELS, "ce") == pytest.approx(0.2651263439, abs=1e-9)
    assert py_soft(DIST, TEACH, 1.0, "mean") == pytest.approx(0.2682174026, abs=1e-9)
    assert py_soft(DIST, TEACH, 1.0, "batchmean") == pytest.approx(0.8046522079, abs=1e-9)
    assert py_soft(DIST, TEACH, 3.0, "mean") == pytest.approx(0.3201236457, abs=1e-9)
    assert py_soft(DIST, TEACH, 3.0, "batchmean") == pytest.approx(0.9603709370, abs=1e-9)
    assert py_hard(DIST, TEACH) == pytest.approx(1.9076059644, abs=1e-9)


@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("pair", [False, True])
def test_none_is_base_on_class_head(kind, pair):
    loss_fn = DistillationLoss(_criterion(kind), None, "none")
    out = (torch.tensor(CLS), torch.tensor(DIST)) if pair else torch.tensor(CLS)
    loss = loss_fn(IMAGES, out, _targets(kind))
    expected = py_base(CLS, _py_targets(kind), kind)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    parts = loss_fn.compute(IMAGES, out, _targets(kind))
    assert parts.base.item() == pytest.approx(expected, abs=1e-6)
    assert parts.distillation is None and parts.teacher_disagreement is None


def test_none_literal_value():
    loss = DistillationLoss(nn.CrossEntropyLoss(), None, "none")(
        IMAGES, torch.tensor(CLS), torch.tensor(LABELS)
    )
    assert loss.item() == pytest.approx(0.2651263439, abs=1e-6)


@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
@pytest.mark.parametrize("alpha", [0.5, 0.1])
def test_soft_hand_values(kind, tau, reduction, alpha):
    loss_fn = DistillationLoss(
        _criterion(kind), FixedLogits(TEACH), "soft", alpha=alpha, tau=tau, kl_reduction=reduction
    )
    loss = loss_fn(IMAGES, (torch.tensor(CLS), torch.tensor(DIST)), _targets(kind))
    base = py_base(CLS, _py_targets(kind), kind)
    dist = py_soft(DIST, TEACH, tau, reduction)
    assert loss.item() == pytest.approx((1 - alpha) * base + alpha * dist, abs=1e-6)
    out = loss_fn.compute(IMAGES, (torch.tensor(CLS), torch.tensor(DIST)), _targets(kind))
    assert (out.base.item(), out.distillation.item()) == pytest.approx((base, dist), abs=1e-6)


def test_soft_literal_value_paper_setting():
    """Paper's soft setting (tau 3, lambda 0.1), official 'mean' normalisation, plain CE."""
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), FixedLogits(TEACH), "soft", 0.1, 3.0)
    loss = loss_fn(IMAGES, (torch.tensor(CLS), torch.tensor(DIST)), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(0.9 * 0.2651263439 + 0.1 * 0.3201236457, abs=1e-6)


@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("alpha", [0.5, 0.25])
def test_hard_hand_values(kind, alpha):
    loss_fn = DistillationLoss(_criterion(kind), FixedLogits(TEACH), "hard", alpha=alpha)
    loss = loss_fn(IMAGES, (torch.tensor(CLS), torch.tensor(DIST)), _targets(kind))
    base = py_base(CLS, _py_targets(kind), kind)
    dist = py_hard(DIST, TEACH)
    assert loss.item() == pytest.approx((1 - alpha) * base + alpha * dist, abs=1e-6)
    out = loss_fn.compute(IMAGES, (torch.tensor(CLS), torch.tensor(DIST)), _targets(kind))
    assert (out.base.item(), out.distillation.item()) == pytest.approx((base, dist), abs=1e-6)


def test_hard_literal_value_and_no_smoothing_on_teacher_term():
    """With label smoothing on the base term, the teacher term stays un-smoothed CE."""
    loss_fn = DistillationLoss(LabelSmoothingCrossEntropy(0.1), FixedLogits(TEACH), "hard")
    out = loss_fn.compute(IMAGES, (torch.tensor(CLS), torch.tensor(DIST)), torch.tensor(LABELS))
    assert out.distillation.item() == pytest.approx(1.9076059644, abs=1e-6)


def test_mean_is_batchmean_over_num_classes():
    torch.manual_seed(0)
    cls, dist, teach = torch.randn(3, 5, 7).unbind(0)
    y = torch.randint(0, 7, (5,))
    parts = {}
    for red in ("mean", "batchmean"):
        fn = DistillationLoss(nn.CrossEntropyLoss(), FixedLogits(teach), "soft", tau=2.0,
                              kl_reduction=red)  # fmt: skip
        parts[red] = fn.compute(torch.zeros(5, 3, 2, 2), (cls, dist), y).distillation.item()
    assert parts["batchmean"] > 0
    assert parts["mean"] == pytest.approx(parts["batchmean"] / 7, rel=1e-6)


def test_compute_parts_are_detached_and_make_the_total():
    fn = DistillationLoss(SoftTargetCrossEntropy(), FixedLogits(TEACH), "hard", alpha=0.3)
    cls = torch.tensor(CLS, requires_grad=True)
    out = fn.compute(IMAGES, (cls, torch.tensor(DIST)), torch.tensor(SOFT))
    assert isinstance(out, LossOutput) and out.total.requires_grad
    assert not out.base.requires_grad and not out.distillation.requires_grad
    expected = 0.7 * out.base.item() + 0.3 * out.distillation.item()
    assert out.total.item() == pytest.approx(expected, abs=1e-6)
    loss = fn(IMAGES, (cls, torch.tensor(DIST)), torch.tensor(SOFT))
    assert loss.item() == out.total.item()


def test_teacher_sees_the_student_inputs():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((x.clone(), torch.is_grad_enabled()))
            return torch.tensor(TEACH)

    x = torch.randn(2, 3, 4, 4)
    fn = DistillationLoss(nn.CrossEntropyLoss(), Spy(), "soft")
    fn(x, (torch.tensor(CLS, requires_grad=True), torch.tensor(DIST)), torch.tensor(LABELS))
    assert len(seen) == 1
    assert torch.equal(seen[0][0], x)
    assert seen[0][1] is False  # no graph is built for the teacher


# ---------------------------------------------------------------------------------------------
# Equality with timm's TokenDistillationTask ('batchmean')
# ---------------------------------------------------------------------------------------------


class _FixedStudent(nn.Module):
    """A student whose training output is the (cls, dist) pair held as parameters."""

    def __init__(self, cls: torch.Tensor, dist: torch.Tensor, mean, std) -> None:
        super().__init__()
        self.cls = nn.Parameter(cls.clone())
        self.dist = nn.Parameter(dist.clone())
        self.num_classes = cls.shape[1]
        self.in_chans = 3
        self.pretrained_cfg = {"mean": mean, "std": std}

    def set_distilled_training(self, enable: bool = True) -> None:
        pass

    def forward(self, x):
        return self.cls * 1.0, self.dist * 1.0


IMNET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize(
    "dtype,tau,alpha,student_norm,soft_targets",
    [
        ("soft", 1.0, 0.5, IMNET, False),
        ("soft", 3.0, 0.1, IMNET, True),
        ("soft", 2.0, 0.7, ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), False),
        ("hard", 1.0, 0.5, ((0.2, 0.3, 0.4), (0.3, 0.2, 0.1)), True),
    ],
)
def test_matches_timm_token_distillation(dtype, tau, alpha, student_norm, soft_targets):
    torch.manual_seed(1)
    b, c = 6, 10
    cls, dist = torch.randn(2, b, c).unbind(0)
    x = torch.randn(b, 3, 8, 8)
    y = torch.softmax(torch.randn(b, c), 1) if soft_targets else torch.randint(0, c, (b,))
    crit = SoftTargetCrossEntropy() if soft_targets else nn.CrossEntropyLoss()
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, c))
    nn.init.normal_(net[1].weight, std=0.5)
    net.pretrained_cfg = {"mean": IMNET[0], "std": IMNET[1]}

    s_timm = _FixedStudent(cls, dist, *student_norm)
    task = TokenDistillationTask(
        s_timm, net, criterion=crit, distill_type=dtype, temperature=tau,
        task_loss_weight=1 - alpha, verbose=False,
    )  # fmt: skip
    ref = task(x, y)
    ref["loss"].backward()

    s_ours = _FixedStudent(cls, dist, *student_norm)
    teacher = Teacher(net, student_mean=student_norm[0], student_std=student_norm[1])
    ours_fn = DistillationLoss(crit, teacher, dtype, alpha=alpha, tau=tau, kl_reduction="batchmean")
    parts = ours_fn.compute(x, s_ours(x), y)
    loss = parts.total
    loss.backward()

    assert ref["distill_loss"].item() > 0
    torch.testing.assert_close(loss, ref["loss"], rtol=1e-5, atol=1e-6)
    assert parts.base.item() == pytest.approx(ref["task_loss"].item(), rel=1e-5)
    assert parts.distillation.item() == pytest.approx(ref["distill_loss"].item(), rel=1e-5)
    torch.testing.assert_close(s_ours.dist.grad, s_timm.dist.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s_ours.cls.grad, s_timm.cls.grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Gradients and the frozen teacher
# ---------------------------------------------------------------------------------------------


def _quiet_build(*args, **kwargs) -> Teacher:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_teacher(*args, **kwargs)


def test_gradients_reach_student_only_and_teacher_is_unchanged():
    torch.manual_seed(0)
    student = create_model("deit_pico_distilled_patch4_28", num_classes=5, depth=1)
    teacher = _quiet_build("resnet10t", num_classes=5)  # has BatchNorm: eval mode matters
    assert all(not p.requires_grad for p in teacher.parameters())
    prepare_student(student, "hard", teacher)
    fn = DistillationLoss(LabelSmoothingCrossEntropy(0.1), teacher, "hard")
    parent = nn.ModuleDict({"student": student, "criterion": fn})
    parent.train()
    teacher.train()
    teacher.train(True)
    assert student.training
    assert not teacher.training
    assert not any(m.training for m in teacher.modules())

    before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    opt = torch.optim.AdamW(parent.parameters(), lr=1e-2, weight_decay=0.05)
    x = torch.randn(8, 3, 28, 28)
    y = torch.randint(0, 5, (8,))
    for _ in range(2):
        opt.zero_grad()
        out = student(x)
        assert isinstance(out, tuple) and len(out) == 2
        loss = fn(x, out, y)
        loss.backward()
        opt.step()

    assert all(p.grad is None for p in teacher.parameters())
    for name in ("cls_token", "dist_token", "head.weight", "head_dist.weight", "pos_embed"):
        assert student.get_parameter(name).grad is not None, name
        assert student.get_parameter(name).grad.abs().sum() > 0, name
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # weights and BatchNorm running statistics, exactly
        assert torch.equal(v, after[k]), k
    assert not torch.equal(student_before["head_dist.weight"], student.head_dist.weight)
    assert not teacher.training
    assert not any(m.training for m in teacher.modules())


def test_training_drives_distillation_head_to_teacher():
    """Hard distillation from a fixed random teacher, random labels for the class head: the
    distillation head's agreement with the teacher on held-out images rises from chance."""
    torch.manual_seed(0)
    c = 4

    def images(n: int) -> torch.Tensor:  # a random colour per image plus pixel noise
        return torch.randn(n, 3, 1, 1) + 0.5 * torch.randn(n, 3, 16, 16)

    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, c))
    nn.init.normal_(net[2].weight, std=1.0)
    teacher = Teacher(net)
    x_train, x_test = images(512), images(256)
    y_train = torch.randint(0, c, (512,))  # labels unrelated to the teacher
    t_test = teacher(x_test).argmax(1)
    assert (t_test.bincount(minlength=c) > 20).sum() >= 3  # teacher uses several classes

    student = create_model(
        "deit_pico_distilled_patch4_28", num_classes=c, img_size=16, depth=1, embed_dim=32
    )
    prepare_student(student, "hard", teacher)

    def agreement() -> float:
        student.eval()
        with torch.no_grad():
            _, dist = student.forward_heads(x_test)
        student.train()
        return (dist.argmax(1) == t_test).float().mean().item()

    before = agreement()
    fn = DistillationLoss(nn.CrossEntropyLoss(), teacher, "hard", alpha=0.5)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=0.0)
    student.train()
    for _epoch in range(10):
        perm = torch.randperm(512)
        for i in range(0, 512, 64):
            idx = perm[i : i + 64]
            loss = fn(x_train[idx], student(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = agreement()
    assert before < 0.5
    assert after > 0.85, (before, after)


# ---------------------------------------------------------------------------------------------
# Teachers
# ---------------------------------------------------------------------------------------------


def test_build_teacher_timm_name():
    t = _quiet_build("resnet10t", num_classes=7, device="cpu")
    assert isinstance(t, Teacher) and t.num_classes == 7 and t.model_name == "resnet10t"
    out = t(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and not out.requires_grad
    assert all(not p.requires_grad for p in t.parameters())


def test_build_teacher_warns_about_random_weights():
    with pytest.warns(UserWarning, match="random weights"):
        build_teacher("resnet10t", num_classes=3)


def test_build_teacher_torchvision_name():
    t = _quiet_build("torchvision:resnet18", num_classes=5)
    assert t.num_classes == 5
    assert t(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert all(not p.requires_grad for p in t.parameters())
    assert not t.model.training


def test_a_teacher_is_in_eval_mode_from_the_start():
    """`Teacher.training` is False as built (the README calls it frozen, in eval mode), and
    stays so; the fast frozen teacher too."""
    from deit.teacher import optimize_teacher

    t = Teacher(timm.create_model("test_resnet", num_classes=3))
    assert not t.training and not any(m.training for m in t.modules())
    t.train()
    assert not t.training and not any(m.training for m in t.modules())
    views = torch.randn(8, 3, 32, 32)
    fast, _ = optimize_teacher(t, "fp32", views[4:], calibration=views[:4])
    assert not fast.training and not any(m.training for m in fast.modules())


def _project_checkpoint(tmp_path, model, name, num_classes, img_size, mean, std, fname="t.pth"):
    path = tmp_path / fname
    torch.save(
        {
            "model": model.state_dict(),
            "model_name": name,
            "num_classes": num_classes,
            "img_size": img_size,
            "in_chans": 3,
            "class_names": [f"c{i}" for i in range(num_classes)],
            "mean": list(mean),
            "std": list(std),
            "config": {"epochs": 1},
        },
        path,
    )
    return path


def test_build_teacher_from_project_deit_checkpoint_averages_heads(tmp_path):
    torch.manual_seed(0)
    name = "deit_pico_distilled_patch4_28"
    model = create_model(name, num_classes=4)
    with torch.no_grad():  # make the two heads clearly different
        model.head_dist.weight.normal_(std=0.5)
        model.head.bias.normal_()
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    path = _project_checkpoint(tmp_path, model, name, 4, 28, mean, std)
    t = build_teacher(checkpoint_path=path, student_mean=mean, student_std=std)
    assert t.model_name == name and t.num_classes == 4
    assert t.class_names == ["c0", "c1", "c2", "c3"]
    assert t.mean == mean and t.std == std and t.scale is None  # same normalisation
    x = torch.randn(3, 3, 28, 28)
    model.eval()
    with torch.no_grad():
        cls, dist = model.forward_heads(x)
    assert not torch.allclose(cls, dist, atol=1e-3)
    t.train()  # must not switch to the (cls, dist) output
    torch.testing.assert_close(t(x), (cls + dist) / 2)


def test_build_teacher_converts_normalisation(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    t_mean, t_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    s_mean, s_std = (0.5, 0.4, 0.3), (0.25, 0.5, 0.2)
    path = _project_checkpoint(tmp_path, model, "resnet10t", 5, 32, t_mean, t_std)
    t = build_teacher(None, path, num_classes=5, student_mean=s_mean, student_std=s_std)
    x = torch.randn(2, 3, 32, 32)
    sm, ss = torch.tensor(s_mean).view(1, 3, 1, 1), torch.tensor(s_std).view(1, 3, 1, 1)
    tm, ts = torch.tensor(t_mean).view(1, 3, 1, 1), torch.tensor(t_std).view(1, 3, 1, 1)
    x_t = (x * ss + sm - tm) / ts
    torch.testing.assert_close(t.normalize_input(x), x_t, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(t(x), model(x_t), rtol=1e-4, atol=1e-5)
    assert t.scale.shape == (1, 3, 1, 1) and t.shift.shape == (1, 3, 1, 1)
    # Without the student's normalisation there is no conversion at all.
    t2 = build_teacher("resnet10t", path, num_classes=5)
    with torch.no_grad():
        torch.testing.assert_close(t2(x), model(x), rtol=1e-5, atol=1e-6)


def test_build_teacher_plain_state_dict_and_mismatches(tmp_path):
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    t = build_teacher("resnet10t", plain, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t(x), model(x))
    with pytest.raises(CheckpointError) as err:
        build_teacher("resnet18", plain, num_classes=5)
    # one sentence: counts, three examples, what the file holds, the flag that fixes it
    assert str(err.value) == (
        f"Teacher checkpoint {str(plain)!r} does not fit this model: shape mismatch in 3 "
        "tensors (e.g. layer2.0.downsample.1.weight: checkpoint (128, 64, 1, 1) vs model "
        "(128,)), 64 missing keys (e.g. conv1.weight), 28 unexpected keys (e.g. "
        "conv1.0.weight); it looks like a resnet10t, judging by its keys, not the resnet18 "
        "asked for: pass --teacher-model resnet10t."
    )
    with pytest.raises(ValueError, match="has 5 classes .* student has 7"):
        build_teacher("resnet10t", plain, num_classes=7)
    meta = _project_checkpoint(tmp_path, model, "resnet10t", 5, 32, *IMNET)
    with pytest.raises(ValueError, match="trained with 5 classes but the student has 7"):
        build_teacher(None, meta, num_classes=7)
    with pytest.raises(ValueError, match="no model name|No teacher model name"):
        build_teacher(None, plain, num_classes=5)


def test_build_teacher_missing_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_teacher("resnet10t", tmp_path / "nope.pth", num_classes=5)


def test_build_teacher_needs_a_class_count():
    with pytest.raises(ValueError, match="pass num_classes"):
        build_teacher("resnet10t")


def test_teacher_channels_last_matches():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    ref = copy.deepcopy(model)
    t = Teacher(model, channels_last=True)
    assert t.model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t(x), ref(x), rtol=1e-4, atol=1e-5)


def test_teacher_averages_a_pair_output():
    class Pair(nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 4.0]]), torch.tensor([[3.0, 0.0]])

    torch.testing.assert_close(Teacher(Pair())(torch.zeros(1, 3, 2, 2)), torch.tensor([[2.0, 2.0]]))


def test_grayscale_teacher_uses_one_channel_normalisation():
    t = _quiet_build(
        "resnet10t", num_classes=3, in_chans=1, student_mean=(0.1307,), student_std=(0.3081,)
    )
    assert len(t.mean) == 1 and t.scale.shape == (1, 1, 1, 1)
    assert t(torch.randn(2, 1, 28, 28)).shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def test_prepare_student_rejects_non_distilled_model():
    model = create_model("deit_pico_patch4_28", num_classes=3, depth=1)
    with pytest.raises(ValueError) as e:
        prepare_student(model, "hard")
    assert str(e.value) == (
        "Distillation (hard) needs a student with a distillation token and head, but "
        "deit_pico_patch4_28 has none; train its distilled twin deit_pico_distilled_patch4_28 "
        "(--model deit_pico_distilled_patch4_28), or pass --distillation-type none."
    )
    cnn = timm.create_model("test_resnet", num_classes=3)
    with pytest.raises(ValueError, match="test_resnet has none; train a distilled DeiT such as"):
        prepare_student(cnn, "soft")
    prepare_student(model, "none")  # fine without distillation


def test_plain_deit_student_asked_to_distil_is_refused_before_anything_is_built(
    tmp_path, capsys, monkeypatch
):
    """``deit train`` of a plain 28 px DeiT with soft distillation: one line naming its 28 px
    distilled twin, before the data, the teacher or its calibration (none is built)."""
    from deit.cli import main
    from deit.teacher import for_run

    def never(*args, **kwargs):
        raise AssertionError("the teacher was built")

    monkeypatch.setattr(for_run, "build_teacher", never)
    argv = ["train", "--preset", "small", "--model", "deit_nano_patch7_28"]
    argv += ["--distillation-type", "soft", "--teacher-model", "test_resnet"]
    argv += ["--teacher-path", str(tmp_path / "t.pth"), "--output_dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "deit train: error: Distillation (soft) needs a student with a distillation token and "
        "head, but deit_nano_patch7_28 has none; train its distilled twin "
        "deit_nano_distilled_patch7_28 (--model deit_nano_distilled_patch7_28), or pass "
        "--distillation-type none.\n"
    )
    assert not (tmp_path / "run").exists()


def test_demo_student_preset_without_its_teacher_names_the_teacher_preset(tmp_path, capsys):
    from deit.cli import main

    assert main(["train", "--preset", "demo_student", "--output_dir", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == (
        "deit train: error: --distillation-type soft needs a trained teacher: pass "
        "--teacher-path with its weights (train one with `deit train --preset demo_teacher`) or "
        "--teacher-labels with a store of its labels.\n"
    )


def test_prepare_student_enables_pair_output_and_checks_classes():
    model = create_model("deit_pico_distilled_patch4_28", num_classes=3, depth=1).train()
    assert isinstance(model(torch.randn(1, 3, 28, 28)), torch.Tensor)
    prepare_student(model, "soft", Teacher(FixedLogits([[0.0, 1.0, 2.0]])))
    out = model(torch.randn(1, 3, 28, 28))
    assert isinstance(out, tuple) and out[0].shape == out[1].shape == (1, 3)
    with pytest.raises(ValueError, match="teacher predicts 4 classes but the student 3"):
        prepare_student(model, "hard", Teacher(FixedLogits([[0.0, 1.0, 2.0, 3.0]])))
    with pytest.raises(ValueError, match="Unknown distillation type 'medium'"):
        prepare_student(model, "medium")


def test_single_tensor_output_while_distilling_is_an_error():
    fn = DistillationLoss(nn.CrossEntropyLoss(), FixedLogits(TEACH), "hard")
    with pytest.raises(
        ValueError, match=r"\(cls_logits, dist_logits\) pair.*set_distilled_training"
    ):
        fn(IMAGES, torch.tensor(CLS), torch.tensor(LABELS))


def test_teacher_class_count_mismatch_in_forward():
    fn = DistillationLoss(nn.CrossEntropyLoss(), FixedLogits([[0.0] * 4, [1.0] * 4]), "soft")
    with pytest.raises(ValueError, match=r"teacher's logits have shape \(2, 4\).*\(2, 3\)"):
        fn(IMAGES, (torch.tensor(CLS), torch.tensor(DIST)), torch.tensor(LABELS))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"distillation_type": "medium"}, "Unknown distillation type"),
        ({"alpha": -0.1}, r"alpha .* must be in \[0, 1\]"),
        ({"alpha": 1.5}, r"alpha .* must be in \[0, 1\]"),
        ({"alpha": float("nan")}, r"alpha .* must be in \[0, 1\]"),
        ({"tau": 0.0}, "tau .* must be a positive number"),
        ({"tau": -2.0}, "tau .* must be a positive number"),
        ({"kl_reduction": "sum"}, "Unknown kl_reduction 'sum'"),
    ],
)
def test_constructor_validation(kwargs, match):
    args = {
        "base_criterion": nn.CrossEntropyLoss(),
        "teacher": FixedLogits(TEACH),
        "distillation_type": "soft",
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        DistillationLoss(**args)


def test_alpha_bounds_are_accepted():
    for alpha in (0.0, 1.0):
        fn = DistillationLoss(nn.CrossEntropyLoss(), FixedLogits(TEACH), "hard", alpha=alpha)
        loss = fn(IMAGES, (torch.tensor(CLS), torch.tensor(DIST)), torch.tensor(LABELS))
        expected = py_hard(DIST, TEACH) if alpha == 1.0 else py_base(CLS, LABELS, "ce")
        assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_teacher_disagreement_counts_views_by_hand():
    # teacher top-1 per row: 1, 0, 2, 2
    teach = [[0.0, 5.0, 1.0], [3.0, 1.0, 0.0], [0.0, 0.0, 9.0], [1.0, 0.0, 2.0]]
    out = (torch.zeros(4, 3), torch.zeros(4, 3))
    images = torch.zeros(4, 3, 2, 2)
    fn = DistillationLoss(nn.CrossEntropyLoss(), FixedLogits(teach), "hard")
    parts = fn.compute(images, out, torch.tensor([1, 0, 0, 1]))  # rows 2 and 3 differ
    assert parts.teacher_disagreement.item() == pytest.approx(0.5)
    # mixed targets: the dominant label counts (row 0: 0.6 on class 0 -> differs from 1)
    mixed = torch.tensor([[0.6, 0.4, 0.0], [0.7, 0.3, 0.0], [0.0, 0.2, 0.8], [0.0, 0.1, 0.9]])
    soft = DistillationLoss(SoftTargetCrossEntropy(), FixedLogits(teach), "soft", 0.5, 2.0)
    assert soft.compute(images, out, mixed).teacher_disagreement.item() == pytest.approx(0.25)
    none = DistillationLoss(nn.CrossEntropyLoss(), None, "none")
    assert none.compute(images, out[0], torch.tensor([1, 0, 0, 1])).teacher_disagreement is None


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_given_teacher_outputs_replace_the_teacher(kind):
    """Stored logits or top-1 classes give exactly the loss of the online teacher."""
    pair = (torch.tensor(CLS), torch.tensor(DIST))
    online = DistillationLoss(_criterion(kind), FixedLogits(TEACH), "hard").compute(
        IMAGES, pair, _targets(kind)
    )
    stored = DistillationLoss(_criterion(kind), None, "hard")  # a label store needs no teacher
    with pytest.raises(ValueError, match="needs a teacher or the teacher's outputs"):
        stored.compute(IMAGES, pair, _targets(kind))
    for given in (torch.tensor(TEACH), torch.tensor(TEACH).argmax(dim=1)):
        out = stored.compute(IMAGES, pair, _targets(kind), teacher_outputs=given)
        assert out.total.item() == pytest.approx(online.total.item(), abs=1e-7)
        assert out.teacher_disagreement.item() == online.teacher_disagreement.item()
    soft = DistillationLoss(_criterion(kind), FixedLogits(TEACH), "soft", 0.5, 2.0)
    with pytest.raises(ValueError, match="only drive hard distillation"):
        soft.compute(IMAGES, pair, _targets(kind), teacher_outputs=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one teacher class per view"):
        stored.compute(IMAGES, pair, _targets(kind), teacher_outputs=torch.tensor([0]))
