"""The teacher-label pass, `deit teacher-labels`: the teacher once over every view of a run.

A job above both the run (:mod:`deit.train`, whose data step builds the views) and the teacher
(:mod:`deit.teacher`: the run's teacher and the store's layout), as :mod:`deit.demo` is, so that
neither imports the other back. :func:`compute_teacher_labels` writes a
:class:`deit.teacher.TeacherLabelStore` that ``deit train --teacher-labels DIR`` reads; the
store's format is described in :mod:`deit.teacher.store`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ._notes import print_note
from .config import Config, config_from_args
from .data.transforms import mix_batch
from .teacher.for_run import build_run_teacher
from .teacher.frozen import Teacher
from .teacher.store import StoreWriter, run_manifest
from .train.data import label_pass_state
from .train.distributed import DistEnv, init_distributed
from .train.state import RunState

__all__ = ["compute_teacher_labels"]


def _teacher_pass(
    state: RunState, teacher: Teacher, writer: StoreWriter, chunk: int, epoch: int
) -> float:
    """One epoch's views through the teacher, ``chunk`` training batches per forward (each
    batch mixed with its own key first, as in training). Under a process group of ``W`` ranks,
    rank ``r`` mixes and runs the teacher on chunks ``r, r + W, ...`` only (every rank reads
    the same views in the same order, so the store's rows do not depend on ``W``). Returns the
    teacher's seconds on this rank."""
    state.sampler_train.set_epoch(epoch)
    rank, world = _rank_world()
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    start, seconds, chunks = 0, 0.0, 0

    def flush() -> float:
        nonlocal start, pending, chunks
        if not pending:
            return 0.0
        mine, chunks, t0 = chunks % world == rank, chunks + 1, time.perf_counter()
        if mine:  # as the training step mixes each batch
            mixed = [mix_batch(state.mixup_fn, x, y, (epoch, i))[0] for i, x, y in pending]
            with torch.inference_mode(), state.precision.autocast():
                logits = teacher(torch.cat(mixed).to(state.device, non_blocking=True))
            writer.write(epoch, start, logits)
        start += sum(x.shape[0] for _, x, _ in pending)
        pending = []
        return time.perf_counter() - t0 if mine else 0.0

    for i, (x, y) in enumerate(state.loader_train):
        pending.append((i, x, y))
        if len(pending) >= chunk:
            seconds += flush()
    return seconds + flush()


def _open_writer(
    env: DistEnv, out: Path, shape: tuple[int, int], num_classes: int, top_k: int
) -> StoreWriter:
    """Rank 0 creates the store's (partial) arrays, their disk space allocated; the other ranks
    open them, once they exist, to write their own rows."""
    if env.is_main:
        writer = StoreWriter(out, shape, num_classes, top_k)
    _barrier(env.distributed)
    if not env.is_main:
        writer = StoreWriter(out, shape, num_classes, top_k, mode="r+")
    return writer


def _barrier(distributed: bool) -> None:
    if distributed:
        dist.barrier()


def _max_over_ranks(value: float, distributed: bool) -> float:
    """The largest of the ranks' ``value`` (the pass's wall time is the slowest rank's)."""
    if not distributed:
        return value
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return float(max(out))


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_pass(cfg: Config, top_k: int | None, teacher_batch_size: int) -> None:
    """Refuse, in one sentence, a bad ``top_k`` or batch size or a configuration without the
    teacher's weights; note that a top-1 store made with soft flags serves hard runs only."""
    if (top_k is not None and top_k < 0) or teacher_batch_size < 1:
        raise ValueError(
            f"top_k ({top_k}) must be >= 0 and teacher_batch_size ({teacher_batch_size}) >= 1."
        )
    if top_k == 0 and cfg.distillation_type == "soft" and os.environ.get("RANK", "0") == "0":
        print_note(
            "top-k 0 stores the teacher's top-1 classes only: hard-distillation runs read it, "
            "the soft run these flags describe refuses it; leave --top-k out for full logits."
        )
    if not cfg.teacher_path:
        raise ValueError(
            "`deit teacher-labels` needs the trained teacher's weights: pass --teacher-path "
            "(and --teacher-model when the file does not record it)."
        )


def _all_epochs(
    state: RunState, teacher: Teacher, writer: StoreWriter, chunk: int, env: DistEnv, progress: bool
) -> float:
    """Label every epoch's views into ``writer``; return the seconds of teacher forward. An
    interrupted or failed pass discards the partial files (rank 0), so an older store stays."""
    seconds = 0.0
    try:
        for epoch in range(state.cfg.epochs):
            seconds += _teacher_pass(state, teacher, writer, chunk, epoch)
            if progress and env.is_main:
                print(f"teacher labels: epoch {epoch + 1}/{state.cfg.epochs}", file=sys.stderr)
        writer.close()
    except BaseException:
        if env.is_main:
            writer.discard()
        raise
    return seconds


def compute_teacher_labels(
    cfg: Config,
    output: str | Path,
    *,
    top_k: int | None = None,
    teacher_batch_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the teacher of ``cfg`` once over every training view of every epoch of the run that
    ``cfg`` describes and store its answers in ``output`` (see the module docstring).

    The views are those :func:`deit.train.run` trains on (same data, transforms, sampler,
    Mixup/CutMix, seed): the training loader is built by :func:`deit.train.build_data`. The
    teacher runs in inference mode under the run's autocast (``cfg.amp``), on
    ``teacher_batch_size`` images per forward (rounded to whole training batches). Under
    ``torchrun``/``srun`` the teacher's forwards are split over the ranks (each on its own
    device; rank 0 creates the store and writes the manifest); the store is the same.

    Args:
        cfg: the students' run configuration (teacher fields included).
        output: folder of the store (created; an older store there is replaced once the new
            one is complete, and kept when the pass fails).
        top_k: 0 stores top-1 classes only (hard distillation); ``k`` < class count also the
            top-k probabilities; ``k`` >= class count the full logits (soft distillation);
            ``None``: what the run ``cfg`` describes reads, the full logits for
            ``distillation_type='soft'``, top-1 classes otherwise.
        teacher_batch_size: images per teacher forward.
        progress: print one line per epoch on stderr.

    Returns:
        The manifest (also written to ``output/manifest.json``), with ``teacher_seconds``
        (seconds of teacher forward) and ``seconds`` (the whole pass).

    Raises:
        ValueError: ``top_k < 0``, no teacher, or what building the data
            and teacher raise (bad paths, class counts).
        deit._write.WriteError: the disk cannot hold the store, or the folder cannot be
            written (one sentence with the bytes needed and free; an older store is intact).
    """
    _check_pass(cfg, top_k, teacher_batch_size)
    t_start = time.perf_counter()
    env, device = init_distributed(cfg.device)  # torchrun/srun: the teacher's work is split
    state = label_pass_state(cfg, device)
    cfg = state.cfg  # with the model's defaults filled in, as the students' runs will have
    if top_k is None:  # what the run reads: soft needs the teacher's distribution
        top_k = state.num_classes if cfg.distillation_type == "soft" else 0
    teacher = build_run_teacher(
        cfg,
        state.device,
        state.num_classes,
        state.mean,
        state.std,
        state.loader_train,
        state.mixup_fn,
    )
    out = Path(output)
    views = len(state.loader_train) * cfg.batch_size
    writer = _open_writer(env, out, (cfg.epochs, views), state.num_classes, top_k)
    chunk = max(1, math.ceil(teacher_batch_size / cfg.batch_size))
    seconds = _max_over_ranks(
        _all_epochs(state, teacher, writer, chunk, env, progress), env.distributed
    )
    _barrier(env.distributed)  # every rank's rows are on disk before the store is installed
    manifest = run_manifest(cfg, state.num_classes, len(state.loader_train.dataset))
    manifest.update(
        kind=writer.kind,
        arrays=list(writer.arrays),
        top_k=top_k,
        views_per_epoch=views,
        teacher=teacher.model_name,
        teacher_model=cfg.teacher_model or teacher.model_name,
        amp=state.precision.name,
        teacher_path=getattr(teacher, "name", "fp32"),  # the fast path --teacher-precision chose
        teacher_seconds=seconds,
        seconds=time.perf_counter() - t_start,
        processes=env.world_size,
    )
    if env.is_main:
        writer.install(manifest)
    return manifest


# ----------------------------------------------------------------------------- CLI
def _labels_cmd(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    m = compute_teacher_labels(
        cfg, args.output, top_k=args.top_k, teacher_batch_size=args.teacher_batch_size
    )
    print(
        f"{m['epochs']} epochs x {m['views_per_epoch']} views of teacher {m['teacher']} in "
        f"{m['teacher_seconds']:.1f} s of teacher forward; store in {args.output}"
    )
    return 0
