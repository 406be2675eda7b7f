"""The frozen teacher's fast path (paper section 4): :func:`optimize_teacher`, checked against
the fp32 teacher on real training views (:func:`draw_views`). Figures, dates and the command that
measures them: ``benchmarks/README.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import TEACHER_PRECISIONS, fast_bf16_available, fast_int8_available
from .frozen import Teacher, fp32_region

__all__ = [
    "MAX_TARGET_DISTANCE",
    "FastTeacher",
    "TeacherReport",
    "draw_views",
    "optimize_teacher",
    "seconds_per_call",
    "teacher_candidates",
    "target_distance",
]

#: Largest mean total-variation distance between the fast and the fp32 teacher's distillation
#: targets that :func:`optimize_teacher` accepts: for hard distillation the targets are one-hot,
#: so this is the top-1 disagreement rate (0.5 % = 99.5 % agreement).
MAX_TARGET_DISTANCE = 0.005
_X86_ENGINES = ("x86", "fbgemm")


def _int8_engine() -> str | None:
    """PyTorch's quantised engine for x86 CPUs, when this build has one."""
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine in _X86_ENGINES:
        return torch.backends.quantized.engine
    return next((e for e in _X86_ENGINES if e in engines), None)


def teacher_candidates(precision: str, device: torch.device | str) -> list[str]:
    """The reduced precisions :func:`optimize_teacher` tries for ``precision`` on ``device``.

    ``fp32``: none. ``auto``: on CUDA bf16 where supported, else fp16; on a CPU bf16 where
    :func:`deit.precision.fast_bf16_available` (AMX or AVX-512 BF16) and int8 where
    :func:`deit.precision.fast_int8_available` (AVX2, VNNI, AMX-INT8) and PyTorch has its x86
    quantised engine; elsewhere none. Decided by the hardware, never by a timing, so that a
    run's teacher path depends on its configuration and machine only. ``bf16``, ``fp16``,
    ``int8``: that one.

    Raises:
        ValueError: an unknown value, or one the device cannot run natively (fp16 or int8 off
            their devices, bf16 without hardware support).
    """
    dev = torch.device(device)
    if precision not in TEACHER_PRECISIONS:
        raise ValueError(
            f"teacher_precision must be one of {', '.join(TEACHER_PRECISIONS)}; got {precision!r}."
        )
    if precision == "fp32":
        return []
    if precision == "auto":
        if dev.type == "cuda":
            return ["bf16" if fast_bf16_available(dev) else "fp16"]
        if dev.type != "cpu":
            return []
        native_int8 = fast_int8_available() and _int8_engine() is not None
        return ["bf16"] * fast_bf16_available(dev) + ["int8"] * native_int8
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(
            f"teacher_precision 'fp16' needs a CUDA device, not {dev.type}; use 'auto' or 'fp32'."
        )
    if precision == "bf16" and not fast_bf16_available(dev):
        raise ValueError(
            f"teacher_precision 'bf16' is not native on this {dev.type} (no AMX or AVX-512 BF16 "
            "on a CPU; emulated bf16 is many times slower than fp32); use 'auto' or 'fp32'."
        )
    if precision == "int8" and (dev.type != "cpu" or _int8_engine() is None):
        raise ValueError(
            "teacher_precision 'int8' runs on x86 CPUs only (PyTorch's x86/fbgemm engine); "
            "use 'auto', 'bf16' or 'fp16' on this device."
        )
    return [precision]


def target_distance(
    fast: torch.Tensor, ref: torch.Tensor, distillation_type: str = "hard", tau: float = 1.0
) -> float:
    """Mean total-variation distance between the distillation targets of two teachers' logits
    ``(B, C)``: ``mean_b 1/2 sum_c |p_fast - p_ref|``, in [0, 1].

    ``"hard"`` (paper eq. 3): targets are one-hot top-1 classes, so this is the top-1
    disagreement rate. ``"soft"`` (eq. 2): targets are ``softmax(logits / tau)``; the same
    distance generalises the disagreement rate, and bounds how far the teacher term's target
    moves on average.
    """
    if distillation_type == "soft":
        p, q = F.softmax(fast.float() / tau, dim=1), F.softmax(ref.float() / tau, dim=1)
        return float((p - q).abs().sum(dim=1).mean() / 2)
    return float((fast.argmax(dim=1) != ref.argmax(dim=1)).float().mean())


class FastTeacher(Teacher):
    """A :class:`~deit.teacher.Teacher` running an optimised copy of the frozen model (built
    by :func:`optimize_teacher`): inference mode, optional autocast ``dtype``, channels-last
    input, the original teacher's normalisation conversion and metadata.

    Shapes: ``(B, C, H, W)`` student-normalised images -> ``(B, num_classes)`` float32 logits,
    an ordinary tensor (usable by the soft term's autograd graph).
    """

    def __init__(
        self,
        teacher: Teacher,
        run: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        dtype: torch.dtype | None = None,
        channels_last: bool = True,
        name: str = "fp32",
    ) -> None:
        module = run if isinstance(run, nn.Module) else teacher.model
        super().__init__(
            module,
            num_classes=teacher.num_classes,
            mean=teacher.mean,
            std=teacher.std,
            student_mean=teacher.student_mean,
            student_std=teacher.student_std,
            model_name=teacher.model_name,
            class_names=teacher.class_names,
        )
        self.channels_last = channels_last
        self._run = run
        self.dtype = dtype
        self.name = name
        self.to(_device_of(teacher))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``(B, num_classes)`` in float32 for student-normalised images,
        computed in this path's precision whatever autocast region it is called in (the fp32
        and int8 paths with autocast off)."""
        cast = (
            torch.autocast(x.device.type, dtype=self.dtype)
            if self.dtype is not None
            else fp32_region(x.device.type)
        )
        with torch.inference_mode(), cast:
            out = self._logits(x, self._run).float()
        return out.clone()  # outside inference mode: an ordinary tensor

    def extra_repr(self) -> str:
        return f"path={self.name!r}, " + super().extra_repr()


def _device_of(teacher: Teacher) -> torch.device:
    if teacher.scale is not None:
        return teacher.scale.device
    p = next(iter(teacher.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _fold_bn(model: nn.Module) -> tuple[nn.Module, bool]:
    """A copy of ``model`` with every BatchNorm folded into the convolution before it
    (``torch.fx.experimental.optimization.fuse``); the model itself when it has no BatchNorm or
    cannot be traced by torch.fx. Returns ``(model, folded)``."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model, False
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model), True
    except Exception:  # not traceable (data-dependent control flow): keep it as it is
        return model, False


def _int8(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """Post-training static int8 quantisation with PyTorch's FX graph mode for x86 (fbgemm/x86
    engine; conv + BN + ReLU fused by ``prepare_fx``), calibrated on ``calibration`` views
    (already in the teacher's normalisation). Raises whatever FX tracing raises."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine, before = _int8_engine(), torch.backends.quantized.engine
    torch.backends.quantized.engine = engine  # global in PyTorch: restored below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mapping = get_default_qconfig_mapping(engine)
            prepared = prepare_fx(copy.deepcopy(model).cpu().eval(), mapping, (calibration[:1],))
            for chunk in calibration.split(32):
                prepared(chunk)
            quantised = convert_fx(prepared)
    finally:
        torch.backends.quantized.engine = before
    return _WithEngine(quantised, engine)


class _WithEngine(nn.Module):
    """A quantised model run with its quantised engine selected (PyTorch keeps the engine in a
    global; it is set for the call and restored after)."""

    def __init__(self, model: nn.Module, engine: str) -> None:
        super().__init__()
        self.model, self.engine = model, engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The quantised model's output for ``x``."""
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine
        try:
            return self.model(x)
        finally:
            torch.backends.quantized.engine = before


def _build(teacher: Teacher, precision: str, calibration: torch.Tensor | None, compile: bool):
    """The fast teacher for one precision (``fp32`` = fold + channels-last only)."""
    model = teacher.model
    tags: list[str] = []
    if precision == "int8":
        if calibration is None:
            raise ValueError(
                "teacher_precision 'int8' needs calibration views; pass sample= (a batch of "
                "training views)."
            )
        with torch.no_grad():
            run = _int8(model, teacher.normalize_input(calibration))
        tags.append("bn-fold")  # prepare_fx folds BN into the quantised convolutions
    else:
        run, folded = _fold_bn(model)
        tags += ["bn-fold"] * folded
        run = run.to(memory_format=torch.channels_last)
    tags.append("channels-last")
    if compile:
        run = torch.compile(run, dynamic=False, options={"freezing": True})
        tags.append("compiled")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    return FastTeacher(teacher, run, dtypes.get(precision), True, "+".join([precision, *tags]))


def seconds_per_call(
    fns: dict[str, Callable[[torch.Tensor], object]], views: torch.Tensor, rounds: int = 3
) -> dict[str, float]:
    """Wall seconds of one call ``fn(views)`` for each function: the minimum over ``rounds``
    rounds in alternating order (A B C, C B A, ...), after one warm-up call each, so that load
    from other jobs on a shared machine weighs on every function alike."""
    sync = torch.cuda.synchronize if views.device.type == "cuda" else (lambda: None)
    best = {}
    for name, fn in fns.items():
        fn(views)
        best[name] = float("inf")
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync()
            t0 = time.perf_counter()
            fns[name](views)
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


@dataclass(frozen=True)
class TeacherReport:
    """What :func:`optimize_teacher` chose and measured.

    Attributes:
        path: the teacher path in use, e.g. ``"int8+bn-fold+channels-last"``, or ``"fp32"``
            (the teacher as built).
        agreement: top-1 agreement of the chosen (or rejected) fast path with fp32, in [0, 1]
            (``None``: not measured).
        distance: mean total-variation distance of its distillation targets from fp32's
            (:func:`target_distance`; ``None``: not measured).
        speedup: fp32 teacher time / fast teacher time on the sample (``None``: not measured).
        n_views: views measured on.
        fell_back: a fast path was asked or tried and rejected for its targets.
        note: why the fp32 teacher was kept, or what else was tried.
    """

    path: str
    agreement: float | None = None
    distance: float | None = None
    speedup: float | None = None
    n_views: int = 0
    fell_back: bool = False
    note: str = ""

    def line(self) -> str:
        """One line for the run's log, e.g. ``teacher: int8+bn-fold+channels-last, 99.6 % top-1
        agreement with fp32 on 256 training views``."""
        text = f"teacher: {self.path}"
        if self.agreement is not None:
            text += (
                f", {100 * self.agreement:.1f} % top-1 agreement with fp32 on "
                f"{self.n_views} training views"
            )
        if self.speedup is not None:
            text += f", {self.speedup:.2f}x the fp32 teacher's speed"
        return text + (f" ({self.note})" if self.note else "")


def _check(
    teacher: Teacher,
    fasts: dict[str, FastTeacher],
    sample: torch.Tensor,
    kind: str,
    tau: float,
    timed: bool,
) -> list[tuple[FastTeacher, TeacherReport]]:
    """Each fast path's agreement and target distance from ``teacher`` on ``sample``, and (when
    ``timed``) its speed-up, timed on up to 16 of the views."""
    ref = teacher(sample)
    seconds = seconds_per_call({"fp32": teacher, **fasts}, sample[:16]) if timed else {}
    checked = []
    for fast in fasts.values():
        out = fast(sample)
        agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
        dist = target_distance(out, ref, kind, tau)
        speed = seconds["fp32"] / max(seconds[fast.name], 1e-9) if timed else None
        checked.append((fast, TeacherReport(fast.name, agree, dist, speed, len(sample))))
    return checked


def _choose(
    teacher: Teacher,
    tried: list[tuple[FastTeacher, TeacherReport]],
    max_distance: float,
    n_views: int,
) -> tuple[Teacher, TeacherReport]:
    """The first path in ``tried`` (in order of preference) whose targets pass, else
    ``teacher`` with a report saying why."""
    rejected = [r for _, r in tried if not r.distance <= max_distance]  # NaN: rejected
    why = "; ".join(
        f"{r.path} rejected: {100 * r.agreement:.1f} % top-1 agreement, target distance "
        f"{r.distance:.4f} > {max_distance}"
        for r in rejected
    )
    passing = [(f, r) for f, r in tried if r.distance <= max_distance]
    if not passing:
        note = f"kept the fp32 teacher: {why}" if why else "kept the fp32 teacher"
        return teacher, TeacherReport("fp32", n_views=n_views, fell_back=True, note=note)
    fast, report = passing[0]
    return fast, TeacherReport(**{**report.__dict__, "note": why})


def optimize_teacher(
    teacher: Teacher,
    precision: str = "auto",
    sample: torch.Tensor | None = None,
    *,
    calibration: torch.Tensor | None = None,
    distillation_type: str = "hard",
    tau: float = 1.0,
    compile: bool = False,
    max_distance: float = MAX_TARGET_DISTANCE,
    timed: bool = False,
) -> tuple[Teacher, TeacherReport]:
    """A faster frozen teacher with the same distillation targets, and what was measured.

    Every fast path runs in inference mode with batch norm folded into the convolutions (for
    torch.fx-traceable models), channels-last, optionally compiled with Inductor weight freezing
    (``compile``), in the precision asked (:func:`teacher_candidates`): ``fp32`` returns
    ``teacher`` itself; ``bf16``/``fp16`` run under autocast; ``int8`` is PyTorch's post-training
    static quantisation for x86 (FX graph mode, calibrated on ``calibration``). ``auto`` builds
    the hardware's native reduced precisions (:func:`teacher_candidates`) and the fp32 fast path,
    and keeps the first of them, in that order, whose targets pass; without a sample it takes the
    fp32 fast path (exact up to float round-off). The choice never depends on a timing, so a run
    is reproducible on its machine.

    The check: on ``sample`` (real training views, student-normalised, on the teacher's device)
    the mean total-variation distance between the fast and the fp32 teacher's targets
    (:func:`target_distance`: the top-1 disagreement rate for hard distillation, the tempered
    softmax for soft) must be at most ``max_distance`` (0.005: 99.5 % top-1 agreement for hard).
    Otherwise ``teacher`` is returned and the report says so (``fell_back``).

    Args:
        teacher: the frozen :class:`~deit.teacher.Teacher` (fp32).
        precision: one of :data:`deit.precision.TEACHER_PRECISIONS`.
        sample: ``(N, C, H, W)`` training views for the check (and the timing); needed for
            ``auto``'s reduced precisions and to check an explicit choice.
        calibration: views for int8 calibration; ``sample`` when omitted.
        distillation_type: ``"hard"`` or ``"soft"``: which targets the check compares.
        tau: the soft term's temperature.
        compile: also ``torch.compile`` the fast path (``dynamic=False``, freezing); compiles
            again for every new batch size.
        max_distance: the check's threshold.
        timed: also time each path against ``teacher`` on 16 views (the report's ``speedup``;
            it does not change the choice).

    Returns:
        ``(teacher to use, TeacherReport)``.

    Raises:
        ValueError: an unknown or impossible ``precision`` for the teacher's device (one
            sentence, before any work), or ``int8`` without views to calibrate on.
    """
    candidates = teacher_candidates(precision, _device_of(teacher))
    if precision == "fp32":
        return teacher, TeacherReport("fp32", note="as asked")
    calibration = sample if calibration is None else calibration
    paths = candidates + (["fp32"] if precision == "auto" else [])
    if sample is None:
        auto = precision == "auto"
        fast = _build(teacher, "fp32" if auto else precision, calibration, compile)
        note = "fp32 numerics: no sample views to check" if auto else "not checked: no sample views"
        return fast, TeacherReport(fast.name, note=note)
    fasts, failed = _build_paths(teacher, paths, calibration, compile, precision != "auto")
    tried = _check(teacher, fasts, sample, distillation_type, tau, timed) if fasts else []
    fast, report = _choose(teacher, _agreed_across_processes(tried), max_distance, len(sample))
    note = "; ".join([*failed, report.note] if report.note else failed)
    return fast, dataclasses.replace(report, note=note)


def _build_paths(
    teacher: Teacher,
    paths: list[str],
    calibration: torch.Tensor | None,
    compile: bool,
    strict: bool,
) -> tuple[dict[str, FastTeacher], list[str]]:
    """The fast teachers of ``paths`` by name, and a note for each that could not be built (a
    model torch.fx cannot trace, for instance), skipped unless ``strict``.

    Raises:
        ValueError: with ``strict``, a path that cannot be built (one sentence).
    """
    fasts, failed = {}, []
    for path in paths:
        try:
            fast = _build(teacher, path, calibration, compile)
        except Exception as e:
            if strict:
                first = str(e).splitlines()[0] if str(e) else ""
                raise ValueError(
                    f"teacher_precision {path!r} cannot be built for this teacher "
                    f"({type(e).__name__}: {first}); use 'auto' or 'fp32'."
                ) from e
            failed.append(f"{path} not buildable ({type(e).__name__})")
            continue
        fasts[fast.name] = fast
    return fasts, failed


def _agreed_across_processes(
    tried: list[tuple[FastTeacher, TeacherReport]],
) -> list[tuple[FastTeacher, TeacherReport]]:
    """Under ``torch.distributed``, each path's worst distance over the processes (each checked
    its own views), so that every process keeps the same teacher path."""
    import torch.distributed as dist

    if not (tried and dist.is_available() and dist.is_initialized()):
        return tried
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    worst = torch.tensor([r.distance for _, r in tried], dtype=torch.float64, device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return [(f, dataclasses.replace(r, distance=float(d))) for (f, r), d in zip(tried, worst)]


def draw_views(
    batches: Iterable, n: int, device: torch.device | str = "cpu", mixup_fn: Callable | None = None
) -> torch.Tensor:
    """The first ``n`` training views (fewer if ``batches`` runs out) of a loader yielding
    ``(images, targets)``, after ``mixup_fn`` when given (the views the teacher will see):
    ``(n, C, H, W)`` on ``device``. Draws from the global RNGs; the trainer restores them.
    """
    views: list[torch.Tensor] = []
    got = 0
    for images, targets in batches:
        images, targets = images.to(device), targets.to(device)
        if mixup_fn is not None and len(images) % 2 == 0:
            images, _ = mixup_fn(images, targets)
        views.append(images[: n - got])
        got += len(views[-1])
        if got >= n:
            break
    if not views:
        raise ValueError("No training views to check the teacher on; the training set is empty.")
    return torch.cat(views)
