"""The demo's runs: one ``deit train`` run per model and seed, and one teacher-label pass per
seed, scheduled on worker processes so that each waits for what it reads."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ..config import Config, get_preset
from .settings import TEACHER, DemoSettings, Variant
from .stats import _r

__all__: list[str] = []


@dataclass
class _Job:
    variant: Variant
    n: int
    seed: int
    run_dir: Path
    cfg: dict[str, Any] = field(default_factory=dict)
    needs: Path | None = None  # what this job waits for: the teacher checkpoint or label store
    labels: Path | None = None  # a label-pass job: the store it writes

    @property
    def produces(self) -> Path:
        """What the job leaves for the jobs that need it."""
        return self.labels / "manifest.json" if self.labels else self.run_dir / "checkpoint.pth"


def _config(s: DemoSettings, job: _Job) -> dict[str, Any]:
    """The ``deit train`` configuration of one run: the ``small`` preset with the study's
    budget, subset and held-out evaluation."""
    v = job.variant
    teacher = v.variant == "teacher"
    budget = s.teacher_images if teacher else s.student_images
    epochs = s.epochs(budget, job.n)
    cfg = get_preset("small").to_dict()
    cfg.update(
        epochs=epochs,
        warmup_epochs=0
        if epochs <= 1
        else max(1, round((0.1 if teacher else s.student_warmup) * epochs)),
        batch_size=min(s.teacher_batch_size if teacher else s.batch_size, job.n),
        lr=s.teacher_lr if teacher else s.lr,
        seed=job.seed,
        train_subset=job.n,
        eval_unused=True,
        val_images=s.val_images,
        eval_interval=max(1, epochs // s.curve_points),
        num_workers=0,
        device="cpu",
        output_dir=str(job.run_dir),
        # digits stay in place: with the official 4 px padded crop a patch-7 DeiT reached 25%
        # top-1 after 3 epochs on mnist5k, without it 61% (measured on this CPU)
        crop_padding=0,
    )
    if teacher:
        cfg.update(model=s.teacher, drop_path=0.0)
        return cfg
    cfg.update(
        model=s.student if v.variant == "none" else s.distilled_student,
        cutmix=s.student_cutmix,
        mixup_prob=s.student_mixup_prob,
        distillation_type=v.variant,
        distillation_alpha=v.alpha,
        distillation_tau=v.tau,
        kl_reduction=v.kl_reduction,
        teacher_model=s.teacher,
        teacher_path=str(_teacher_ckpt(job.run_dir)) if v.variant != "none" else "",
        teacher_labels=str(_store(job.run_dir)) if v.variant != "none" else "",
        # the same teacher outputs on every machine (auto picks bf16 or int8 where the CPU
        # has them; this teacher is too small for that to pay)
        teacher_precision="fp32",
    )
    return cfg


def _teacher_ckpt(run_dir: Path) -> Path:
    """The teacher checkpoint of the seed of the run in ``run_dir``."""
    return run_dir.parent / "teacher" / "checkpoint.pth"


def _store(run_dir: Path) -> Path:
    """The teacher-label store shared by the distilled students of the seed of ``run_dir``."""
    return run_dir.parent / "teacher_labels"


def _jobs(s: DemoSettings, out: Path) -> list[_Job]:
    jobs: list[_Job] = []
    for n in s.train_images:
        for seed in s.seeds:
            base = out / f"n{n}" / f"seed{seed}"
            jobs.append(_Job(TEACHER, n, seed, base / TEACHER.key))
            jobs[-1].cfg = _config(s, jobs[-1])
            distilled = [v for v in s.variants if v.variant not in ("teacher", "none")]
            # one label pass per seed over the views its distilled students share pays only
            # for several students: it re-creates every view (~4 times the tiny teacher's
            # forward), so a single distilled student runs its teacher online
            shared = len(distilled) > 1
            if shared:
                job = _Job(distilled[0], n, seed, base / distilled[0].key)
                job.labels = _store(job.run_dir)
                job.cfg, job.needs = _config(s, job), _teacher_ckpt(job.run_dir)
                jobs.append(job)
            for v in s.variants:
                job = _Job(v, n, seed, base / v.key)
                job.cfg = _config(s, job)
                job.needs = _store(job.run_dir) / "manifest.json" if v in distilled else None
                if v in distilled and not shared:
                    job.cfg["teacher_labels"], job.needs = "", _teacher_ckpt(job.run_dir)
                jobs.append(job)
    return jobs


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train(cfg: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process; returns what the study records of it."""
    from ..train import run

    start = time.time()
    Path(cfg["output_dir"]).mkdir(parents=True, exist_ok=True)
    # the run's per-epoch lines go to its folder: several runs share the console
    with open(Path(cfg["output_dir"]) / "train.log", "w") as log, redirect_stderr(log):
        # a demo rerun replaces its runs (deit train refuses that without --overwrite)
        result = run(Config.from_dict({**cfg, "overwrite": True}), progress=False)
    final = result["final"]
    seen = [h.get("train_teacher_disagreement", 0.0) for h in result["history"]]
    steps = (cfg["train_subset"] // cfg["batch_size"]) * cfg["batch_size"]  # last batch dropped
    return {
        # held-out top-1 at each evaluation of the schedule: [epoch, image-steps, top-1]
        "curve": [
            [h["epoch"] + 1, (h["epoch"] + 1) * steps, round(h["test_acc1"], 2)]
            for h in result["history"]
            if "test_acc1" in h
        ],
        "top1": final["acc1"],
        "top1_cls": final.get("acc1_cls"),
        "top1_dist": final.get("acc1_dist"),
        "test_images": int(final["n"]),
        "teacher_disagreement": statistics.fmean(seen) if seen else 0.0,
        "epochs": cfg["epochs"],
        "seconds": time.time() - start,
    }


def _label_pass(cfg: dict[str, Any], store: str) -> dict[str, Any]:
    """The teacher's full logits on every view of a seed's students, in a worker process."""
    from ..label_pass import compute_teacher_labels

    start = time.time()
    m = compute_teacher_labels(Config.from_dict(cfg), store, top_k=10**6, progress=False)
    return {"teacher_seconds": m["teacher_seconds"], "seconds": time.time() - start}


def _processes(s: DemoSettings, jobs: int) -> tuple[int, int]:
    cores = os.cpu_count() or 1
    procs = max(1, min(s.processes or cores, jobs))
    return procs, max(1, cores // procs)


def _execute(
    s: DemoSettings, jobs: list[_Job], say: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every job on worker processes, a teacher before its label pass and the label pass
    before the students that read it. Returns the runs' and the label passes' records."""
    procs, threads = _processes(s, len(jobs))
    say(f"{len(jobs)} runs on {procs} process(es) x {threads} thread(s)")
    pending = list(enumerate(jobs))
    running: dict[Future, tuple[int, _Job]] = {}
    done: set[Path] = set()
    records: list[tuple[int, dict[str, Any]]] = []
    passes: list[dict[str, Any]] = []
    ctx = get_context("spawn")  # a fresh interpreter per worker: no state from the caller
    with ProcessPoolExecutor(
        procs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
    ) as pool:
        while pending or running:
            for item in [x for x in pending if x[1].needs is None or x[1].needs in done]:
                if len(running) >= procs:
                    break
                pending.remove(item)
                job = item[1]
                args = (_label_pass, job.cfg, str(job.labels)) if job.labels else (_train, job.cfg)
                running[pool.submit(*args)] = item
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                i, job = running.pop(fut)
                done.add(job.produces)
                if job.labels:
                    passes.append(_label_record(job, fut.result(), jobs))
                    say(f"N={job.n} seed {job.seed} teacher labels ({passes[-1]['seconds']} s)")
                    continue
                rec = _record(job, fut.result())  # a run's error is raised here
                records.append((i, rec))
                say(
                    f"N={job.n} seed {job.seed} {job.variant.label}: top-1 {rec['top1']:.2f}% "
                    f"({rec['seconds']:.0f} s)"
                )
    return [rec for _, rec in sorted(records, key=lambda x: x[0])], passes


def _label_record(job: _Job, stats: dict[str, Any], jobs: list[_Job]) -> dict[str, Any]:
    """A label pass's record: its seconds, how many students read the store, and the seconds
    of teacher forward avoided, estimated as (students - 1) x the pass's teacher seconds (each
    student would have run the teacher over the same views, at its own smaller batch)."""
    students = sum(1 for j in jobs if j.needs == job.produces)
    return {
        "seed": job.seed,
        "train_images": job.n,
        "students": students,
        "teacher_seconds": _r(stats["teacher_seconds"]),
        "seconds": _r(stats["seconds"]),
        "teacher_seconds_saved": _r((students - 1) * stats["teacher_seconds"]),
    }


def _record(job: _Job, stats: dict[str, Any]) -> dict[str, Any]:
    rec = {**job.variant.record(), "seed": job.seed, "train_images": job.n, **stats}
    for key in ("top1", "top1_cls", "top1_dist", "teacher_disagreement", "seconds"):
        rec[key] = _r(rec[key])
    if job.variant.variant in ("teacher", "none"):
        for key in ("top1_cls", "top1_dist", "teacher_disagreement"):
            rec.pop(key, None)
    rec["run_dir"] = str(job.run_dir)
    return rec


def _prune(s: DemoSettings, runs: list[dict[str, Any]]) -> None:
    """Keep ``checkpoint.pth`` (the weights at the end, which the demo reports) only where
    asked (the first seed's runs by default); ``best_checkpoint.pth`` is always removed: the
    demo reports the end of each schedule, not its best evaluation."""
    for r in runs:
        folder = Path(r["run_dir"])
        (folder / "best_checkpoint.pth").unlink(missing_ok=True)
        keep = s.keep_checkpoints == "all" or (
            s.keep_checkpoints == "first" and r["seed"] == s.seeds[0]
        )
        if not keep:
            (folder / "checkpoint.pth").unlink(missing_ok=True)
        shutil.rmtree(folder / "tensorboard", ignore_errors=True)
