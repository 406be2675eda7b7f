#!/usr/bin/env python
"""What the frozen teacher costs a hard-distillation training step, and how much of it the fast
teacher (:func:`deit.teacher.optimize_teacher`) and stored teacher labels win back.

Step = forward, backward and AdamW of the student at one batch (default DeiT-Ti⚗ with
RegNetY-16GF, random weights, batch 32, 224 px). Timed in the same rounds, alternating order
(``compare_timm.alternate``), each against timm's ``TokenDistillationTask`` on the same student
and teacher:

- (a) ours, fp32 teacher: :class:`deit.distillation.DistillationLoss` with the teacher as built;
- (b) ours, fast teacher online: the same with ``optimize_teacher(..., --teacher-precision)``
  (timed whatever its agreement on the random-weight teacher); (b') with ``auto``, the path a
  run on this machine takes;
- (c) stored-label step: the student step given precomputed ``(B,)`` teacher classes;
- (d) the label pass: the fast teacher's forward over ``--label-batch`` images, per image;
  amortised over n students the stored-label step costs (c) + B * (d) / n (n = 1 and 3);
- (e) the same student without distillation (``--plain-student``, cross-entropy only).

Printed: per-round ratio timm / variant (> 1: faster than timm), median and IQR, and the fast
teacher's top-1 agreement with fp32 on RegNetY with real images (mnist5k digits resized to the
teacher's input) and on a small teacher trained a few hundred steps on mnist5k at 28 px.
``--quick`` runs the same on pico models at 28 px (a smoke test). Figures: ``README.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import deit  # noqa: E402
from compare_timm import _quartiles, alternate  # noqa: E402  (sets OMP_WAIT_POLICY first)
from deit.distillation import DistillationLoss  # noqa: E402
from deit.teacher import Teacher, optimize_teacher  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="deit_tiny_distilled_patch16_224")
    p.add_argument("--plain-student", default="deit_tiny_patch16_224")
    p.add_argument("--teacher", default="regnety_160")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--label-batch", type=int, default=128)
    p.add_argument("--teacher-precision", default="int8")
    p.add_argument("--views", type=int, default=64, help="views for the agreement check")
    p.add_argument("--budget", type=float, default=400.0, help="seconds of timed rounds")
    p.add_argument("--min-rounds", type=int, default=5)
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument("--small-steps", type=int, default=300, help="steps of the mnist5k teacher")
    p.add_argument("--quick", action="store_true", help="pico models at 28 px, a few seconds")
    a = p.parse_args(argv)
    if a.quick:
        a.student, a.plain_student = "deit_pico_distilled_patch7_28", "deit_pico_patch7_28"
        a.teacher, a.size, a.batch_size, a.label_batch = "test_resnet", 28, 8, 16
        a.views, a.budget, a.min_rounds, a.max_rounds, a.small_steps = 16, 1.0, 2, 3, 20
    return a


def digits(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` mnist5k digits (a fixed random draw), 3 channels, resized to ``size`` px and ImageNet-normalised, and
    their labels (real images: the teacher sees shapes and flat backgrounds, not noise)."""
    from deit.data.digits import _mnist5k_arrays

    images, labels = _mnist5k_arrays()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:n].numpy()
    images, labels = images[order], labels[order]  # the file is sorted by class
    x = torch.from_numpy(images.copy()).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(deit.models.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(deit.models.IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels.copy())


def _agreement(fast: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor) -> tuple[float, int]:
    """Top-1 agreement of two teachers on ``x`` and how many classes the fp32 one predicts."""
    a, b = fast(x).argmax(1), ref(x).argmax(1)
    return float((a == b).float().mean()), int(b.unique().numel())


def small_teacher_agreement(args: argparse.Namespace) -> str:
    """Train ``test_resnet`` on 4,000 mnist5k digits at 28 px for ``--small-steps`` steps, then
    compare its fast path with fp32 on the 1,000 others."""
    torch.manual_seed(0)
    x, y = digits(5000, 28)
    model = timm.create_model("test_resnet", num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for _ in range(args.small_steps):
        idx = torch.randint(0, 4000, (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    teacher = Teacher(model)
    fast, report = optimize_teacher(teacher, args.teacher_precision, x[4000:4064],
                                    calibration=x[:32], max_distance=1.0)  # fmt: skip
    agree, _ = _agreement(fast, teacher, x[4000:])
    acc = float((teacher(x[4000:]).argmax(1) == y[4000:]).float().mean())
    return (f"small teacher (test_resnet, {args.small_steps} steps in {train_s:.0f} s, top-1 "
            f"{100 * acc:.1f} % on 1,000 held-out digits): {report.path}, {100 * agree:.2f} % "
            "top-1 agreement with fp32 on those 1,000")  # fmt: skip


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn) -> None:
    loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def build_steps(args: argparse.Namespace) -> tuple[dict, torch.nn.Module, Teacher, torch.Tensor]:
    """The timed functions (timm, a-e and the label pass), the fast and fp32 teachers, and the
    batch; prints the fast teacher's report line."""
    from timm.task import DistillationTeacher, TokenDistillationTask

    torch.manual_seed(0)
    ours = deit.create_model(args.student).train()
    quick = args.student not in timm.list_models()
    ref = (deit.create_model if quick else timm.create_model)(args.student).train()
    ref.load_state_dict(ours.state_dict())
    ours.set_distilled_training(True)
    if quick:  # timm's task reads the student's normalisation from pretrained_cfg
        ref.set_distilled_training(True)
        ref.pretrained_cfg = dict(ref.default_cfg)
    plain = deit.create_model(args.plain_student).train()
    net = timm.create_model(args.teacher, num_classes=ours.num_classes).eval()
    task = TokenDistillationTask(ref, DistillationTeacher(net, ours.num_classes),
                                 criterion=torch.nn.CrossEntropyLoss(), distill_type="hard",
                                 task_loss_weight=0.5, verbose=False)  # fmt: skip
    teacher = Teacher(net)
    x, y = digits(args.batch_size, args.size)
    views, _ = digits(max(args.views, 32) + 32, args.size)
    # timed whatever its agreement (random weights give near-tied logits; the agreement that
    # decides is measured on trained teachers below); auto is what a run here would pick
    fast, report = optimize_teacher(teacher, args.teacher_precision, views[32:],
                                    calibration=views[:32], max_distance=1.0)  # fmt: skip
    auto, auto_report = optimize_teacher(teacher, "auto", views[32:], calibration=views[:32])
    print(report.line(), flush=True)
    print(f"auto on this machine: {auto_report.line()}", flush=True)
    labels = fast(x).argmax(1)
    x_label, _ = digits(args.label_batch, args.size)
    crit_fp32 = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "hard", alpha=0.5)
    crit_fast = DistillationLoss(torch.nn.CrossEntropyLoss(), fast, "hard", alpha=0.5)
    crit_auto = DistillationLoss(torch.nn.CrossEntropyLoss(), auto, "hard", alpha=0.5)
    adamw = dict(lr=5e-4, weight_decay=0.05)
    opt_t = torch.optim.AdamW(ref.parameters(), **adamw)
    opt_o = torch.optim.AdamW(ours.parameters(), **adamw)
    opt_p = torch.optim.AdamW(plain.parameters(), **adamw)
    steps = {
        "timm": lambda: _step(ref, opt_t, lambda: task(x, y)["loss"]),
        "a_fp32": lambda: _step(ours, opt_o, lambda: crit_fp32(x, ours(x), y)),
        "b_fast": lambda: _step(ours, opt_o, lambda: crit_fast(x, ours(x), y)),
        "b_auto": lambda: _step(ours, opt_o, lambda: crit_auto(x, ours(x), y)),
        "c_stored": lambda: _step(
            ours, opt_o, lambda: crit_fast.compute(x, ours(x), y, teacher_outputs=labels).total
        ),
        "e_plain": lambda: _step(plain, opt_p, lambda: F.cross_entropy(plain(x), y)),
        "d_labels": lambda: fast(x_label),
    }
    return steps, fast, teacher, views


def ratios(args: argparse.Namespace, times: dict[str, list[float]]) -> list[tuple[str, list]]:
    """Per-round ratios timm / variant (> 1: faster than timm), and stored / plain."""
    t = times["timm"]
    per_image = [d / args.label_batch for d in times["d_labels"]]
    stored = [c + args.batch_size * d for c, d in zip(times["c_stored"], per_image)]
    stored3 = [c + args.batch_size * d / 3 for c, d in zip(times["c_stored"], per_image)]
    return [
        ("(a) ours, fp32 teacher / timm", [a / b for a, b in zip(t, times["a_fp32"])]),
        ("(b) ours, fast teacher online / timm", [a / b for a, b in zip(t, times["b_fast"])]),
        ("(b') ours, auto teacher online / timm", [a / b for a, b in zip(t, times["b_auto"])]),
        ("(c) stored-label step alone / timm", [a / b for a, b in zip(t, times["c_stored"])]),
        ("(c)+(d)/1 stored, 1 student / timm", [a / b for a, b in zip(t, stored)]),
        ("(c)+(d)/3 stored, 3 students / timm", [a / b for a, b in zip(t, stored3)]),
        ("(e) no distillation / timm", [a / b for a, b in zip(t, times["e_plain"])]),
        ("(c) stored step vs (e): e_time / c_time",
         [e / c for e, c in zip(times["e_plain"], times["c_stored"])]),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the report line, agreement and the median [IQR] ratios."""
    args = _args(argv)
    print(f"{args.student} + {args.teacher}, batch {args.batch_size}, {args.size} px, torch "
          f"{torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads",
          flush=True)  # fmt: skip
    steps, fast, teacher, views = build_steps(args)
    agree, classes = _agreement(fast, teacher, views[32:])
    print(f"{args.teacher} (random weights) on {len(views) - 32} mnist5k digits at {args.size} "
          f"px: {100 * agree:.2f} % top-1 agreement with fp32 ({classes} distinct fp32 classes)",
          flush=True)  # fmt: skip
    print(small_teacher_agreement(args), flush=True)
    times = alternate(steps, args.budget, args.min_rounds, args.max_rounds, mm=None)
    for name, values in times.items():
        q1, med, q3 = _quartiles(values)
        print(f"  {name:9s} {med:8.3f} s/call [{q1:.3f}-{q3:.3f}], {len(values)} rounds")
    for label, xs in ratios(args, times):
        if xs:
            q1, med, q3 = _quartiles(xs)
            print(f"{label:42s} {med:6.3f} [{q1:.3f}-{q3:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
