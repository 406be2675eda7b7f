"""The teacher-label pass, `deit teacher-labels`: the teacher once over every view of a run.

A job above both the run (:mod:`deit.train`, whose data step builds the views) and the teacher
(:mod:`deit.teacher`: the run's teacher and the store's layout), as :mod:`deit.demo` is, so that
neither imports the other back. :func:`compute_teacher_labels` writes a
:class:`deit.teacher.TeacherLabelStore` that ``deit train --teacher-labels DIR`` reads; the
store's format is described in :mod:`deit.teacher.store`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ._checks import check_batch_size
from ._notes import print_note
from .config import Config, config_from_args
from .data.transforms import mix_batch
from .precision import resolve_precision
from .teacher.for_run import build_run_teacher
from .teacher.frozen import Teacher
from .teacher.store import StoreWriter, run_manifest
from .train.data import batches_loader, label_pass_state
from .train.distributed import DistEnv, init_distributed
from .train.output import lock_folder
from .train.state import RunData

__all__ = ["compute_teacher_labels"]


def _teacher_pass(
    state: RunData,
    teacher: Teacher,
    writer: StoreWriter,
    chunk: int,
    epoch: int,
    batches: Sequence[int],
) -> float:
    """One epoch's views through the teacher: the training batches ``batches`` (their indices
    in the epoch, ascending: :func:`_own_batches`), which ``state.loader_train`` yields, each
    mixed with its own key first as in training, the batches of one chunk of ``chunk`` per
    forward. Batch ``batches[j]`` goes to rows ``j * B ...`` of ``writer``. Returns the
    teacher's seconds."""
    state.sampler_train.set_epoch(epoch)
    size = state.cfg.batch_size
    precision = resolve_precision(state.cfg.amp, state.device)
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    written, seconds = 0, 0.0

    def flush() -> float:
        nonlocal pending, written
        if not pending:
            return 0.0
        t0 = time.perf_counter()
        mixed = [mix_batch(state.mixup_fn, x, y, (epoch, i))[0] for i, x, y in pending]
        with torch.inference_mode(), precision.autocast():
            logits = teacher(torch.cat(mixed).to(state.device, non_blocking=True))
        writer.write(epoch, written * size, logits)
        written, pending = written + len(pending), []
        return time.perf_counter() - t0

    for i, (x, y) in zip(batches, state.loader_train):
        if pending and i // chunk != pending[-1][0] // chunk:
            seconds += flush()
        pending.append((i, x, y))
    return seconds + flush()


def _own_batches(batches: int, chunk: int, rank: int, world: int) -> list[int]:
    """The training batches of an epoch that rank ``rank`` of ``world`` labels: chunks ``rank,
    rank + world, ...`` of ``chunk`` batches (every batch in one process)."""
    return [i for i in range(batches) if (i // chunk) % world == rank]


def _rows(batches: Sequence[int], size: int) -> np.ndarray:
    """The store rows (views of an epoch) of ``batches`` of ``size`` views."""
    return (np.asarray(batches, dtype=np.int64)[:, None] * size + np.arange(size)).ravel()


def _open_writers(
    env: DistEnv, out: Path, shape: tuple[int, int], rows: int, num_classes: int, top_k: int
) -> tuple[StoreWriter | None, StoreWriter | None]:
    """``(store, part)``: rank 0 creates the store's (partial) arrays, their disk space
    allocated before the pass; under a process group each rank also creates its own part of
    ``rows`` rows (:class:`deit.teacher.store.StoreWriter`). Every rank learns whether all of
    them could, and all stop with the first one's sentence otherwise."""
    store = part = None
    error: BaseException | None = None
    try:
        if env.is_main:
            store = StoreWriter(out, shape, num_classes, top_k)
        if env.distributed:
            part = StoreWriter(out, (shape[0], rows), num_classes, top_k, part=env.rank)
    except (OSError, ValueError) as e:
        error = e
    if env.distributed:  # a rank that stopped alone would leave the others in the pass
        said: list[Any] = [None] * env.world_size
        dist.all_gather_object(said, str(error) if error is not None else "")
        first = next((x for x in said if x), "")
        if first and error is None:
            error = ValueError(first)
    if error is not None:
        for writer in (part, store):
            if writer is not None:
                writer.discard()
        raise error
    return store, part


def _max_over_ranks(value: float, distributed: bool) -> float:
    """The largest of the ranks' ``value`` (the pass's wall time is the slowest rank's)."""
    if not distributed:
        return value
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return float(max(out))


def _check_pass(cfg: Config, top_k: int | None, teacher_batch_size: int) -> None:
    """Refuse, in one sentence, a bad ``top_k`` or batch size, or a configuration without the
    teacher's weights; note that a top-1 store made with soft flags serves hard runs only."""
    if top_k is not None and top_k < 0:
        raise ValueError(f"'top_k' is {top_k} but must be at least 0; pass 0 for top-1 labels.")
    check_batch_size(teacher_batch_size, "pass a positive batch size", "teacher_batch_size")
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


def _split_pass(
    state: RunData,
    env: DistEnv,
    teacher: Teacher,
    out: Path,
    chunk: int,
    top_k: int,
    progress: bool,
) -> tuple[StoreWriter | None, float]:
    """The pass, its work split over the ranks of a process group: each makes and labels its
    own batches' views only, into its own part; rank 0 merges the parts into the store.
    Returns rank 0's writer (``None`` elsewhere), ready to install, and the slowest rank's
    teacher seconds. A failed or interrupted pass discards the partial files, so an older
    store stays."""
    cfg = state.cfg
    n = len(state.loader_train)
    mine = _own_batches(n, chunk, env.rank, env.world_size)
    views = n * cfg.batch_size
    store, part = _open_writers(
        env, out, (cfg.epochs, views), len(mine) * cfg.batch_size, state.num_classes, top_k
    )
    try:
        if env.distributed:  # the views of this rank's batches only
            state = dataclasses.replace(state, loader_train=batches_loader(state, mine))
        writer, seconds = part or store, 0.0
        for epoch in range(cfg.epochs):
            seconds += _teacher_pass(state, teacher, writer, chunk, epoch, mine)
            if progress and env.is_main:
                print(f"teacher labels: epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr)
        writer.close()
        seconds = _max_over_ranks(seconds, env.distributed)
        if env.distributed:  # every rank's rows are on disk before they are merged
            dist.barrier()
            if store is not None:
                owned = (_own_batches(n, chunk, r, env.world_size) for r in range(env.world_size))
                store.merge([(r, _rows(b, cfg.batch_size)) for r, b in enumerate(owned)])
    except BaseException:
        for unfinished in (part, store):
            if unfinished is not None:
                unfinished.discard()
        raise
    return store, seconds


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
    teacher runs in inference mode under the run's autocast (``cfg.amp``; a teacher path in
    fp32 computes in fp32 all the same), on ``teacher_batch_size`` images per forward
    (rounded to whole training batches). Under
    ``torchrun``/``srun`` the work is split over the ranks, a chunk of batches each in turn:
    each rank makes only its own chunks' views and labels them on its own device into a part
    file of its own; rank 0 merges the parts and writes the manifest. The store is the same.

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
    out = Path(output)
    # one pass per store: a second one into it would write over the same partial files
    lock = lock_folder(out, env, lambda: _check_store_folder(out), "label pass", "--output")
    try:
        if lock is not None:
            _remove_leftovers(out)
        writer, manifest = _label_pass(cfg, out, env, device, top_k, teacher_batch_size, progress)
        manifest["seconds"] = time.perf_counter() - t_start
        if lock is not None and not lock.held():  # its partial files went with it
            raise lock.gone_error(user="label pass", flag="--output")
        if writer is not None:  # rank 0
            writer.install(manifest)
        return manifest
    finally:
        if lock is not None:
            lock.release(remove_created=True)


def _check_store_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"The store folder {str(out)!r} is a file; pass --output with a folder.")


def _remove_leftovers(out: Path) -> None:
    """Remove the partial files a killed pass left (no live pass holds the lock now)."""
    left = StoreWriter.leftovers(out)
    if not left:
        return
    size = sum(p.stat().st_size for p in left)
    for p in left:
        p.unlink(missing_ok=True)
    print_note(
        f"removed {len(left)} partial file(s) ({size:,} bytes) that an interrupted label pass "
        f"left in {str(out)!r}."
    )


def _label_pass(
    cfg: Config,
    out: Path,
    env: DistEnv,
    device: torch.device,
    top_k: int,
    teacher_batch_size: int,
    progress: bool,
) -> tuple[StoreWriter | None, dict[str, Any]]:
    """:func:`compute_teacher_labels` once the store's folder is locked: the pass, the store's
    writer (rank 0, every rank's rows merged; ``None`` on the other ranks) and the manifest to
    install."""
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
    views = len(state.loader_train) * cfg.batch_size
    chunk = max(1, math.ceil(teacher_batch_size / cfg.batch_size))
    store, seconds = _split_pass(state, env, teacher, out, chunk, top_k, progress)
    manifest = run_manifest(cfg, state.num_classes, len(state.loader_train.dataset))
    kind, arrays = StoreWriter.layout(state.num_classes, top_k)
    manifest.update(
        kind=kind,
        arrays=arrays,
        top_k=top_k,
        views_per_epoch=views,
        teacher=teacher.model_name,
        teacher_model=cfg.teacher_model or teacher.model_name,
        amp=resolve_precision(cfg.amp, state.device).name,
        teacher_path=teacher.name,  # the fast path --teacher-precision chose
        teacher_seconds=seconds,
        processes=env.world_size,
    )
    return store, manifest


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
