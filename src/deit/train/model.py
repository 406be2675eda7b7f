"""The run's student step: :func:`build_student`."""

from __future__ import annotations

import warnings

import torch
from timm.data import Mixup
from torch import nn

from ..checkpoints import fit_weights, read_weights
from ..config import Config
from ..distillation import DistillationTask, TeacherSource, prepare_student
from ..models import build_classifier, is_deit_model
from ..teacher.for_run import build_run_teacher
from ..teacher.store import TeacherLabelStore
from .distributed import DistEnv, wrap_ddp
from .state import RunData, Student

__all__ = ["build_student"]


def build_student(cfg: Config, data: RunData, env: DistEnv, device: torch.device) -> Student:
    """The student (fine-tuned from ``--finetune`` when given) on ``device``, its training and
    evaluation wrappers, the run's teacher and the distillation task (paper section 4). The
    student's initial weights are drawn from the global RNG as it stands (the run seeds it).

    Raises:
        ValueError / CheckpointError: a student that cannot distil, a teacher or label store
            that does not fit the run, an unreadable ``--finetune`` file.
    """
    model = build_classifier(
        cfg.model,
        data.num_classes,
        img_size=cfg.input_size if is_deit_model(cfg.model) else None,
        drop_rate=cfg.drop,
        drop_path_rate=cfg.drop_path,
    )
    if cfg.finetune:
        _load_finetune(model, cfg)
    model = model.to(device)
    prepare_student(model, cfg.distillation_type)  # before the teacher is built and DDP
    store, frozen = None, None
    if cfg.distillation_type != "none" and cfg.teacher_labels:
        store = TeacherLabelStore(cfg.teacher_labels)  # the teacher is not built
        store.check_run(cfg, data.num_classes, data.train_images, env.world_size)
    elif cfg.distillation_type != "none":
        frozen = build_run_teacher(
            cfg,
            device,
            data.num_classes,
            data.mean,
            data.std,
            data.loader_train,
            data.mixup_fn,
            verbose=env.is_main,
        )
    teacher: TeacherSource | None = store if store is not None else frozen
    train_model, eval_model = _wrappers(model, cfg, env.distributed, device)
    task = DistillationTask(
        train_model,
        _base_criterion(cfg, data.mixup_fn),
        teacher,
        cfg.distillation_type,
        alpha=cfg.distillation_alpha,
        tau=cfg.distillation_tau,
        kl_reduction=cfg.kl_reduction,
    )
    return Student(model, train_model, eval_model, task, frozen)


def _wrappers(
    model: nn.Module, cfg: Config, distributed: bool, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """``(train_model, eval_model)``: the student (already on ``device``) DDP-wrapped when
    ``distributed``, then compiled when ``cfg.compile`` -- in that order, as timm's
    ``train.py`` does, so that TorchDynamo's DDP optimiser splits the graph at the gradient
    buckets and the all-reduces overlap the backward pass; evaluation compiles the bare
    student (no collectives)."""
    train_model = wrap_ddp(model, device, cfg.distillation_type) if distributed else model
    if not cfg.compile:
        return train_model, model
    eval_model = torch.compile(model)
    return (torch.compile(train_model) if distributed else eval_model), eval_model


def _load_finetune(model: nn.Module, cfg: Config) -> list[str]:
    """Initialise from ``cfg.finetune`` (any file :func:`deit.checkpoints.read_weights` reads, the
    same rules for each): heads of another class count are left fresh, position embeddings
    resampled (DeiT, paper section 6), a distillation token and head added from the class
    token's or dropped; a recorded architecture other than ``cfg.model`` is fine when its
    weights fit. Returns the adaptation notes (each also warned).

    Raises:
        CheckpointError: unreadable file, or weights that do not fit (one sentence naming the
            architecture the file holds and the ``--model`` to pass).
    """
    weights = read_weights(cfg.finetune)
    weights.meta.pop("class_names", None)  # the new data set's classes, not the old ones
    if cfg.finetune_img_size:  # the size the file does not record (its grid is ambiguous)
        size = cfg.finetune_img_size
        weights.meta["image_size"] = (size[0], size[-1])
    notes = fit_weights(model, weights, finetune=True)
    recorded = weights.run.model_name if weights.run else None
    if recorded and recorded != cfg.model:
        note = f"--finetune {cfg.finetune!r} holds a {recorded}, adapted to {cfg.model}."
        warnings.warn(note, stacklevel=2)
        notes.insert(0, note)
    return notes


def _base_criterion(cfg: Config, mixup: Mixup | None) -> nn.Module:
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.bce_loss:  # DeiT III: official `targets.gt(0.0)` then BCEWithLogitsLoss
        mixed = mixup is not None
        return BinaryCrossEntropy(
            smoothing=0.0 if mixed else cfg.smoothing, target_threshold=0.0 if mixed else None
        )
    if mixup is not None:  # smoothing is folded into the mixed targets
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()
