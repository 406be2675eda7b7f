"""The study's runs: one ``deit train`` run per model, seed and training-set size, each
identified by its full configuration, scheduled on worker processes so that each waits for the
checkpoints it reads, and never computed twice.

A finished run leaves its record in ``records/<key>.json`` under the study folder, where
``key`` hashes the run's configuration and the keys of the runs it reads. A study started
again (after Ctrl-C, a reboot, a full disk, or with more seeds) takes every run whose record
is there and runs the others; a changed setting changes the key, so it makes a new run. A run
stopped half-way is run again from its start.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .._notes import notes_as_lines
from .._workers import die_with_parent
from .._write import atomic_write_text
from ..config import Config, get_preset
from .settings import TEACHER, DemoSettings, RunSpec, claims
from .stats import _r

__all__ = ["StudyStopped"]

#: Increase when a change of the code makes earlier records wrong: they are not reused.
RECORD_VERSION = 2


class StudyStopped(Exception):
    """The study was stopped by a signal; ``signum`` says which (exit status 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@dataclass(eq=False)  # compared and hashed by identity: one object per run
class _Job:
    spec: RunSpec
    n: int
    seed: int
    run_dir: Path
    cfg: dict[str, Any] = field(default_factory=dict)
    deps: list[_Job] = field(default_factory=list)  # the runs whose checkpoints this one reads
    key: str = ""

    @property
    def checkpoint(self) -> Path:
        """What the job leaves for the jobs that read it."""
        return self.run_dir / "checkpoint.pth"

    @property
    def est(self) -> float:
        """Relative cost: image-steps x tokens per image x 1.25 with an online teacher."""
        steps = self.cfg["epochs"] * self.cfg["train_subset"]
        tokens = (self.spec.input_size / 28) ** 2
        return steps * tokens * (1.25 if self.spec.distilled else 1.0)


def _config(s: DemoSettings, job: _Job) -> dict[str, Any]:
    """The ``deit train`` configuration of one run: the ``small`` preset with the study's
    budget, subset and held-out evaluation, and the run's departures (:class:`RunSpec`)."""
    spec = job.spec
    teacher = spec.variant.variant == "teacher"
    if spec.finetune:
        budget = s.finetune_images * spec.budget
    else:
        budget = (s.teacher_images if teacher else s.student_images) * spec.budget
    epochs = s.epochs(budget, job.n)
    cfg = get_preset("small").to_dict()
    warmup = 0.1 if teacher else s.student_warmup
    cfg.update(
        epochs=epochs,
        warmup_epochs=0 if epochs <= 1 else max(1, round(warmup * epochs)),
        batch_size=min(s.teacher_batch_size if teacher else s.batch_size, job.n),
        lr=s.teacher_lr if teacher else (s.finetune_lr if spec.finetune else s.lr),
        seed=job.seed,
        train_subset=job.n,
        eval_unused=s.eval_unused,
        val_images=s.val_images,
        eval_interval=max(1, epochs // s.curve_points),
        input_size=spec.input_size,
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
    mixing = dict(cutmix=s.student_cutmix, mixup_prob=s.student_mixup_prob)
    if not spec.mix:
        mixing = dict(cutmix=0.0, mixup=0.0, mixup_prob=0.0)
    v = spec.variant
    cfg.update(
        model=s.student if v.variant == "none" else s.distilled_student,
        **mixing,
        distillation_type=v.variant,
        distillation_alpha=v.alpha,
        distillation_tau=v.tau,
        kl_reduction=v.kl_reduction,
        teacher_model=s.teacher,
        teacher_path="",
        # the same teacher outputs on every machine (auto picks bf16 or int8 where the CPU
        # has them; this teacher is too small for that to pay)
        teacher_precision="fp32",
    )
    return cfg


def _job_key(job: _Job, out: Path) -> str:
    """A hash of the run's configuration (the values that differ from :class:`Config`'s
    defaults, so that a new option left at its default keeps the key; paths relative to the
    study folder) and of the keys of the runs it reads."""
    defaults = _defaults()
    cfg = {
        k: (os.path.relpath(v, out) if k in ("output_dir", "teacher_path", "finetune") and v else v)
        for k, v in job.cfg.items()
        if k not in defaults or defaults[k] != v
    }
    blob = json.dumps(
        {"cfg": cfg, "deps": [d.key for d in job.deps], "version": RECORD_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@functools.cache
def _defaults() -> dict[str, Any]:
    return Config().to_dict()


def _seeds_and_sizes(s: DemoSettings, claim: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    seeds = s.seeds if claim.seeds == "all" else s.claim_seed_list
    sizes = tuple(s.curve_images) if claim.sizes == "curve" else (s.train_images,)
    return seeds, sizes


def _jobs(s: DemoSettings, out: Path) -> list[_Job]:
    """Every run the settings' claims need, each once, a run after the runs it reads."""
    known = claims(s)
    jobs: dict[tuple[int, int, str], _Job] = {}
    # the run each key names: the CNN teacher, or the first of the claims' runs called so
    named = {"teacher": RunSpec(TEACHER)}
    for claim in known.values():
        for spec in claim.runs():
            named.setdefault(spec.key, spec)

    def add(spec: RunSpec, n: int, seed: int) -> _Job:
        if (n, seed, spec.key) in jobs:
            return jobs[(n, seed, spec.key)]
        deps = [add(named[d], n, seed) for d in spec.needs()]
        job = _Job(spec, n, seed, out / f"n{n}" / f"seed{seed}" / spec.key, deps=deps)
        job.cfg = _config(s, job)
        for dep in deps:
            if dep.spec.key == spec.finetune:
                job.cfg["finetune"] = str(dep.checkpoint)
            else:
                job.cfg["teacher_path"] = str(dep.checkpoint)
                job.cfg["teacher_model"] = dep.cfg["model"]
        job.key = _job_key(job, out)
        jobs[(n, seed, spec.key)] = job
        return job

    for name in s.claims:
        claim = known[name]
        seeds, sizes = _seeds_and_sizes(s, claim)
        for n in sizes:
            for seed in seeds:
                for spec in claim.runs():
                    add(spec, n, seed)
    return list(jobs.values())


def _init_worker(threads: int, parent: int) -> None:
    die_with_parent(parent)  # Linux: killed by the kernel when the study dies (even kill -9)
    import torch

    torch.set_num_threads(threads)


def _train(cfg: dict[str, Any], tokens: bool = False) -> dict[str, Any]:
    """One run in a worker process; returns what the study records of it (with ``tokens``
    also the token cosines of a distilled student).

    Raises:
        StudyStopped: the run was stopped by a signal.
    """
    from ..train import run

    start, cpu = time.time(), time.process_time()
    Path(cfg["output_dir"]).mkdir(parents=True, exist_ok=True)
    # the run's per-epoch lines go to its folder: several runs share the console; its notes
    # are printed as `deit train` prints them, each run's own (a worker runs several)
    log_path = Path(cfg["output_dir"]) / "train.log"
    with open(log_path, "a") as log, redirect_stderr(log), notes_as_lines():
        result = run(Config.from_dict({**cfg, "overwrite": True}), progress=False)
    if result["status"] != "completed":
        raise StudyStopped(result.get("stop_signal") or signal.SIGTERM)
    final = result["final"]
    seen = [h.get("train_teacher_disagreement", 0.0) for h in result["history"]]
    steps = (cfg["train_subset"] // cfg["batch_size"]) * cfg["batch_size"]  # last batch dropped
    rec = {
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
    }
    if tokens:
        rec.update(_token_record(cfg))
    rec["seconds"] = time.time() - start
    # what the run would take alone on an idle core (its wall seconds include waiting for one)
    rec["cpu_seconds"] = time.process_time() - cpu
    return rec


def _token_record(cfg: dict[str, Any]) -> dict[str, Any]:
    """The class/distillation token cosines of a distilled student on its held-out digits."""
    import torch

    from ..analysis.similarity import token_report
    from ..checkpoints import load_model
    from ..train.data import label_pass_state

    model, _ = load_model(Path(cfg["output_dir"]) / "checkpoint.pth")
    state = label_pass_state(Config.from_dict({**cfg, "overwrite": True}))
    # 1,000 digits give each mean cosine to about 0.001, at a third of the held-out set's cost
    images = torch.cat([x for x, _ in state.loader_val])[:1000]
    report = token_report(model.eval(), images)
    return {
        "token_cosine": [round(x, 4) for x in report["token_cosine"]],
        "head_output_cosine": round(report["head_output_cosine"], 4),
        "head_agreement": round(100 * report["head_agreement"], 2),
    }


def _record_path(out: Path, job: _Job) -> Path:
    return out / "records" / f"{job.key}.json"


def _stored(out: Path, job: _Job) -> dict[str, Any] | None:
    """The job's record when a finished run with its key left one."""
    try:
        return json.loads(_record_path(out, job).read_text())
    except (OSError, ValueError):
        return None


def _to_run(out: Path, jobs: list[_Job], stored: dict[str, dict[str, Any]]) -> list[_Job]:
    """The jobs without a record, and the recorded ones whose checkpoint a job to run reads
    but that was removed (a run is deterministic: it gives the same record again)."""
    todo = [j for j in jobs if j.key not in stored]
    for job in todo:  # the loop also visits the jobs it appends
        for dep in job.deps:
            if dep not in todo and not dep.checkpoint.is_file():
                todo.append(dep)
    return [j for j in jobs if j in todo]


@contextmanager
def _signals() -> Iterator[None]:
    """While the study runs: SIGTERM and SIGHUP raise :class:`StudyStopped` in the main thread
    (Ctrl-C raises KeyboardInterrupt), so the workers are ended before the process exits."""

    def stop(signum: int, _frame: Any) -> None:
        raise StudyStopped(signum)

    sigs = (signal.SIGTERM, getattr(signal, "SIGHUP", None))
    old = {sig: signal.signal(sig, stop) for sig in sigs if sig is not None}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the pool now: SIGTERM (a run saves a checkpoint and stops), then SIGKILL after 5 s."""
    procs = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.time() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
        if p.is_alive():
            p.kill()
            p.join(1)


def _eta(jobs: list[_Job], done: list[tuple[_Job, float]], procs: int) -> str:
    """Time left: the cost of the jobs left at the seconds per unit of cost seen so far."""
    spent = sum(sec for _, sec in done)
    cost = sum(j.est for j, _ in done)
    left = sum(j.est for j in jobs)
    if not cost:
        return ""
    return f", about {left * spent / cost / procs / 60:.0f} min left"


def _execute(
    s: DemoSettings, jobs: list[_Job], out: Path, say: Callable[[str], None]
) -> tuple[list[dict[str, Any]], int]:
    """Run every job without a record on worker processes, a run after the runs it reads.

    Returns:
        Every job's record (in job order) and how many runs were computed now.

    Raises:
        StudyStopped / KeyboardInterrupt: a signal stopped the study (the workers are ended;
            the finished runs' records are kept).
    """
    stored = {j.key: r for j in jobs if (r := _stored(out, j)) is not None}
    todo = _to_run(out, jobs, stored)
    cores = os.cpu_count() or 1
    procs = max(1, min(s.processes or cores, len(todo)))
    threads = max(1, cores // procs)
    reused = len(jobs) - len(todo)
    say(f"{len(jobs)} runs: {reused} done earlier, {len(todo)} to run on {procs} process(es)")
    pending, running = _critical_first(todo), {}
    finished: list[tuple[_Job, float]] = []
    ctx = get_context("spawn")  # a fresh interpreter per worker: no state from the caller
    pool = ProcessPoolExecutor(
        procs, mp_context=ctx, initializer=_init_worker, initargs=(threads, os.getpid())
    )
    try:
        with _signals():
            while pending or running:
                _submit(pool, pending, running, procs, out)
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    job = running.pop(fut)
                    rec = _record(job, fut.result())  # a run's error is raised here
                    atomic_write_text(_record_path(out, job), json.dumps(rec, indent=1) + "\n")
                    stored[job.key] = rec
                    finished.append((job, rec["seconds"]))
                    left = pending + list(running.values())
                    say(
                        f"N={job.n} seed {job.seed} {job.spec.key}: top-1 {rec['top1']:.2f}% "
                        f"({rec['seconds']:.0f} s; {len(finished)}/{len(todo)} "
                        f"done{_eta(left, finished, procs)})"
                    )
    except BaseException:
        _end_workers(pool)
        raise
    pool.shutdown(wait=True)
    return [{**stored[j.key], "run_dir": str(j.run_dir)} for j in jobs], len(todo)


def _critical_first(todo: list[_Job]) -> list[_Job]:
    """``todo`` ordered by the longest chain of estimated cost (:attr:`_Job.est`) that starts
    at each job, longest first: the teachers before the students that read them, then the
    longer runs, so that the processes finish together (list scheduling on the critical path)."""
    readers: dict[_Job, list[_Job]] = {j: [] for j in todo}
    for job in todo:
        for dep in job.deps:
            if dep in readers:
                readers[dep].append(job)
    chain: dict[_Job, float] = {}

    def length(job: _Job) -> float:
        if job not in chain:
            chain[job] = job.est + max((length(r) for r in readers[job]), default=0.0)
        return chain[job]

    return sorted(todo, key=length, reverse=True)  # stable: ties keep the study's order


def _submit(
    pool: ProcessPoolExecutor,
    pending: list[_Job],
    running: dict[Future, _Job],
    procs: int,
    out: Path,
) -> None:
    """Start the pending jobs whose dependencies are done, while a process is free."""
    busy = {*pending, *running.values()}
    for job in [j for j in pending if not any(d in busy for d in j.deps)]:
        if len(running) >= procs:
            return
        pending.remove(job)
        # a run without a record is run from its start: one stopped half-way may have left a
        # checkpoint, but not its whole history of evaluations
        shutil.rmtree(job.run_dir, ignore_errors=True)
        tokens = job.spec.distilled and not job.spec.finetune
        running[pool.submit(_train, job.cfg, tokens)] = job


def _record(job: _Job, stats: dict[str, Any]) -> dict[str, Any]:
    rec = {**job.spec.record(), "seed": job.seed, "train_images": job.n, **stats}
    for key in ("top1", "top1_cls", "top1_dist", "teacher_disagreement", "seconds", "cpu_seconds"):
        rec[key] = _r(rec.get(key))
    if not job.spec.distilled:
        for key in ("top1_cls", "top1_dist", "teacher_disagreement"):
            rec.pop(key, None)
    rec["study_key"] = job.key
    return rec


def _prune(s: DemoSettings, jobs: list[_Job]) -> None:
    """Keep ``checkpoint.pth`` (the weights at the end, which the demo reports) only where
    asked (the first seed's runs by default); ``best_checkpoint.pth`` is always removed: the
    demo reports the end of each schedule, not its best evaluation."""
    for job in jobs:
        (job.run_dir / "best_checkpoint.pth").unlink(missing_ok=True)
        keep = s.keep_checkpoints == "all" or (
            s.keep_checkpoints == "first" and job.seed == s.seeds[0]
        )
        if not keep:
            job.checkpoint.unlink(missing_ok=True)
        shutil.rmtree(job.run_dir / "tensorboard", ignore_errors=True)
