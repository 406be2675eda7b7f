"""What the demo compares and how much it spends: the losses (:class:`Variant`), the runs of a
seed (:class:`RunSpec`), the paper's claims as paired comparisons (:class:`Claim`) and the
study's design and budget (:class:`DemoSettings`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CLAIMS",
    "HARD",
    "LEADING",
    "NONE",
    "PAPER_SOFT",
    "TEACHER",
    "Claim",
    "DemoSettings",
    "RunSpec",
    "Variant",
    "claims",
]


@dataclass(frozen=True)
class Variant:
    """One model of the study: the teacher, or a DeiT student with its distillation loss
    (``variant`` = ``distillation_type``; ``alpha`` weights the teacher term, ``tau`` is the soft
    temperature, ``kl_reduction`` divides the soft term's KL by ``B*C`` ('mean', the official
    code) or ``B`` ('batchmean', the per-sample KL of the paper's equation 2)."""

    variant: str
    alpha: float = 0.5
    tau: float = 1.0
    kl_reduction: str = "mean"

    @property
    def key(self) -> str:
        """Folder name, e.g. ``soft_a0.9_t4_batchmean``."""
        if self.variant != "soft":
            return self.variant
        return f"soft_a{self.alpha:g}_t{self.tau:g}_{self.kl_reduction}"

    @property
    def label(self) -> str:
        """What the figures and tables call it."""
        if self.variant == "teacher":
            return "CNN teacher"
        if self.variant == "none":
            return "DeiT, no distillation"
        if self.variant == "hard":
            return "DeiT, hard distillation"
        per = "per-sample KL" if self.kl_reduction == "batchmean" else "official KL"
        return f"DeiT, soft τ {self.tau:g} α {self.alpha:g} ({per})"

    def record(self) -> dict[str, Any]:
        """The variant's fields for ``results.json`` (soft variants name alpha, tau and the KL
        reduction)."""
        return asdict(self) if self.variant == "soft" else {"variant": self.variant}

    @classmethod
    def of(cls, record: dict[str, Any]) -> Variant:
        """The variant a ``results.json`` record (run or summary entry) names."""
        return cls(
            **{k: record[k] for k in ("variant", "alpha", "tau", "kl_reduction") if k in record}
        )


TEACHER = Variant("teacher")
NONE = Variant("none")
HARD = Variant("hard")
#: The paper's soft setting (Table 3: no gain on ImageNet either).
PAPER_SOFT = Variant("soft", alpha=0.1, tau=3.0)
#: The setting the demo leads with: the soft setting that gained most on the validation digits
#: and tuning seeds (docs/demo.md). The per-sample KL gives the teacher term the weight the
#: official B*C division takes away.
LEADING = Variant("soft", alpha=0.9, tau=4.0, kl_reduction="batchmean")


@dataclass(frozen=True)
class RunSpec:
    """One run of a seed: a teacher or a student, and how it departs from the headline recipe.

    Attributes:
        variant: the model and its loss.
        budget: multiple of the settings' teacher or student image-step budget (a fine-tuning
            run: of ``DemoSettings.finetune_images``).
        mix: students: Mixup/CutMix on every batch as in the headline; ``False`` trains on
            unmixed views.
        teacher: key of the seed's run whose checkpoint teaches a distilled student (the CNN
            teacher by default; a plain DeiT run makes a transformer teacher).
        finetune: key of the seed's run this one starts from (fine-tuning at ``input_size``);
            ``''`` trains from scratch.
        input_size: side of the training and evaluation images (px).
    """

    variant: Variant
    budget: float = 1.0
    mix: bool = True
    teacher: str = "teacher"
    finetune: str = ""
    input_size: int = 28

    @property
    def key(self) -> str:
        """Folder name: the variant's key and each departure, e.g. ``none_x2``,
        ``hard_nomix``, ``soft_a0.9_t4_batchmean_from_none_x2``, ``none_ft42``."""
        key = self.variant.key
        if self.finetune:
            return f"{key}_ft{self.input_size}"
        if self.input_size != 28:
            key += f"_{self.input_size}px"
        if self.budget != 1:
            key += f"_x{self.budget:g}"
        if not self.mix:
            key += "_nomix"
        if self.teacher != "teacher" and self.distilled:
            key += f"_from_{self.teacher}"
        return key

    @property
    def distilled(self) -> bool:
        """A student with a teacher term."""
        return self.variant.variant not in ("teacher", "none")

    def needs(self) -> tuple[str, ...]:
        """Keys of the seed's runs whose checkpoints this run reads."""
        return tuple(k for k in ((self.teacher if self.distilled else ""), self.finetune) if k)

    def record(self) -> dict[str, Any]:
        """The spec's fields for ``results.json``: the variant's, the key, and each departure
        from the defaults."""
        rec: dict[str, Any] = {**self.variant.record(), "key": self.key}
        for name, default in (("budget", 1.0), ("mix", True), ("input_size", 28)):
            if getattr(self, name) != default:
                rec[name] = getattr(self, name)
        if self.distilled and self.teacher != "teacher":
            rec["teacher"] = self.teacher
        if self.finetune:
            rec["finetune"] = self.finetune
        return rec


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims as paired comparisons over seeds.

    Attributes:
        name: what ``--claims`` calls it.
        title: the sentence the report heads its table with.
        pairs: ``(treatment, control)`` runs, compared per seed (paired difference of top-1).
        sizes: ``'headline'`` (the settings' headline training-set size) or ``'curve'`` (every
            size of ``DemoSettings.curve_images``).
        seeds: ``'all'`` (``DemoSettings.seeds``) or ``'claim'`` (``claim_seeds``).
        extra: runs reported beside the pairs (the teachers compared, for instance).
    """

    name: str
    title: str
    pairs: tuple[tuple[RunSpec, RunSpec], ...]
    sizes: str = "headline"
    seeds: str = "claim"
    extra: tuple[RunSpec, ...] = ()

    def runs(self) -> tuple[RunSpec, ...]:
        """Every run the claim reports, without duplicates, in order."""
        return tuple(dict.fromkeys((*(s for pair in self.pairs for s in pair), *self.extra)))


def claims(s: DemoSettings) -> dict[str, Claim]:
    """The study's claims, built from the settings (the matched CNN teacher's budget and the
    fine-tuning size are settings)."""
    plain, lead = RunSpec(NONE), RunSpec(LEADING)
    deit_teacher = RunSpec(NONE, budget=2.0)  # the plain DeiT trained twice as long
    cnn_matched = RunSpec(TEACHER, budget=s.matched_teacher_budget)
    up, same = s.finetune_size, 28
    # the 28 px CNN scores near chance on upscaled digits: the fine-tuned student's teacher is
    # the same CNN trained at the larger size (a teacher at the student's resolution)
    up_teacher = RunSpec(TEACHER, input_size=up)

    def tuned(v: Variant, size: int) -> RunSpec:
        teacher = up_teacher.key if size != 28 else "teacher"
        return RunSpec(v, finetune=v.key, input_size=size, teacher=teacher)

    return {
        "headline": Claim(
            "headline",
            "distillation through the token helps a data-starved DeiT",
            ((lead, plain),),
            seeds="all",
            extra=(RunSpec(TEACHER),),
        ),
        "losses": Claim(
            "losses",
            "hard vs soft distillation (the leading and the paper's setting) vs none",
            ((RunSpec(HARD), plain), (RunSpec(PAPER_SOFT), plain), (lead, plain)),
        ),
        "hard_unmixed": Claim(
            "hard_unmixed",
            "hard distillation on unmixed views (no Mixup/CutMix) vs none on the same views",
            ((RunSpec(HARD, mix=False), RunSpec(NONE, mix=False)),),
        ),
        "teacher": Claim(
            "teacher",
            "a CNN teacher vs a transformer teacher of about the same accuracy",
            (
                (RunSpec(LEADING, teacher=cnn_matched.key), RunSpec(LEADING, teacher="none_x2")),
                (RunSpec(LEADING, teacher=cnn_matched.key), plain),
                (RunSpec(LEADING, teacher="none_x2"), plain),
            ),
            extra=(cnn_matched, deit_teacher),
        ),
        "length": Claim(
            "length",
            "the gain at the default budget and at twice it",
            ((lead, plain), (RunSpec(LEADING, budget=2.0), deit_teacher), (deit_teacher, plain)),
        ),
        "data": Claim(
            "data",
            "data efficiency: the gain as the training set shrinks",
            ((lead, plain),),
            sizes="curve",
            extra=(RunSpec(TEACHER),),
        ),
        "finetune": Claim(
            "finetune",
            f"fine-tuning at {up} px vs the same students fine-tuned as long at {same} px",
            tuple((tuned(v, up), tuned(v, same)) for v in (NONE, LEADING))
            + tuple((tuned(v, up), RunSpec(v)) for v in (NONE, LEADING)),
            extra=(up_teacher,),
        ),
    }


#: The claims ``deit demo --full`` measures, in report order.
CLAIMS = ("headline", "losses", "hard_unmixed", "teacher", "length", "data", "finetune")


@dataclass
class DemoSettings:
    """Design and budget of the study. Budgets are image-steps (images seen in training), so a
    run's cost does not depend on ``N``: epochs = budget / N.

    The students add CutMix to the ``small`` preset on every batch (half CutMix, half its light
    Mixup), as DeiT's recipe adds Mixup and CutMix while its RegNetY teacher kept its own recipe.
    """

    output_dir: str = "runs/demo"
    #: which claims to measure (:data:`CLAIMS`); the default demo: the headline pair alone
    claims: tuple[str, ...] = ("headline",)
    train_images: int = 500  # the headline training-set size N
    # the headline pair over 5 paired seeds: with 3 the interval's width depended on which
    # seeds one picked (docs/demo.md)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    #: the other claims' seeds (``None``: the first three of ``seeds``)
    claim_seeds: tuple[int, ...] | None = None
    #: the data-efficiency claim's training-set sizes (the headline size among them)
    curve_images: tuple[int, ...] = (250, 500, 1000, 2000)
    teacher: str = "test_resnet"
    # D 64, 6 blocks, 7-px patches: on validation digits it learns faster per image-step
    # than the D 128 pico and takes half the time per step (docs/demo.md)
    student: str = "deit_nano_patch7_28"
    distilled_student: str = "deit_nano_distilled_patch7_28"
    teacher_images: int = 32_000
    # batch 32: on the validation digits of the tuning seeds it beat batch 16 and batch 64 at
    # budgets of about equal seconds; 110,000 image-steps fit 5 seeds into 15 minutes on 2
    # idle cores (120,000 took 15.2 minutes: docs/demo.md)
    student_images: int = 110_000
    student_warmup: float = 0.05  # warm-up share of the students' epochs (the teacher: 0.1)
    teacher_batch_size: int = 64
    teacher_lr: float = 8e-3  # x 64/512 -> 1e-3 applied
    batch_size: int = 32
    lr: float = 3.2e-2  # x 32/512 -> 2e-3 applied
    #: the CNN teacher cut to the transformer teacher's accuracy (x teacher_images): 20,000
    #: image-steps gave 92.55 on the tuning seeds' validation digits, and the plain DeiT at
    #: twice its budget 92.55 too (docs/demo.md)
    matched_teacher_budget: float = 0.625
    finetune_size: int = 42  # px: 6x6 patches of 7 px instead of 4x4
    finetune_images: int = 16_000  # image-steps of a fine-tuning run
    # the students' own lr (x 32/512 -> 2e-3 applied): on the tuning seeds' validation digits
    # plain students fine-tuned at 42 px kept 89.35 at it, 87.0 at 1e-2, 79.9 at 3.2e-3
    finetune_lr: float = 3.2e-2
    # unused training digits held out for choosing settings (benchmarks/demo_curves.py),
    # never scored here: the demo reports on the test split plus the unused digits after them
    val_images: int = 1000
    #: score on the unused training digits too (else the 1,000 test digits alone)
    eval_unused: bool = True
    curve_points: int = 4  # held-out evaluations along each run's schedule (results.json)
    student_cutmix: float = 1.0
    student_mixup_prob: float = 1.0
    processes: int = 0  # 0: one single-threaded process per core (tiny models scale poorly)
    keep_checkpoints: str = "first"  # 'first' seed's runs, 'all' or 'none'
    progress: bool = True
    quick_run: bool = field(default=False, repr=False)  # a smoke run: labelled as one

    @classmethod
    def quick(cls, **kw: Any) -> DemoSettings:
        """A smoke run of the same pipeline: 2 seeds, a few hundred image-steps (numbers near
        chance; the report says so)."""
        base: dict[str, Any] = dict(
            train_images=200,
            seeds=(0, 1),
            curve_images=(100, 200),
            teacher_images=400,
            student_images=400,
            finetune_images=200,
            curve_points=1,
            eval_unused=False,  # and no validation digits: the 1,000 test digits alone
            val_images=0,
            quick_run=True,
        )
        return cls(**{**base, **kw})

    @classmethod
    def full(cls, **kw: Any) -> DemoSettings:
        """Every claim of :data:`CLAIMS` (``deit demo --full``)."""
        return cls(**{"output_dir": "runs/demo_full", "claims": CLAIMS, **kw})

    @property
    def claim_seed_list(self) -> tuple[int, ...]:
        """The seeds of the claims other than the headline."""
        return self.claim_seeds if self.claim_seeds is not None else self.seeds[:3]

    def epochs(self, budget: float, n: int) -> int:
        """Epochs that spend ``budget`` image-steps on ``n`` images (at least one)."""
        return max(1, round(budget / n))
