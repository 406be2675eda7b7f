"""The run's model step: the student (fine-tuned from ``--finetune`` when given), the frozen
teacher or its stored labels, the DeiT loss (paper section 4), and the student's training and
evaluation wrappers.
"""

from __future__ import annotations

import warnings

import torch
from timm.data import Mixup
from torch import nn

from .._rng import seed_everything
from ..checkpoints import fit_weights, read_weights
from ..config import Config
from ..distillation import DistillationLoss, check_student
from ..models import build_classifier, is_deit_model
from ..teacher.for_run import build_run_teacher
from ..teacher.store import TeacherLabelStore
from .distributed import wrap_ddp
from .state import RunState

__all__ = ["build_model_and_teacher"]


def build_model_and_teacher(state: RunState) -> None:
    """The student (fine-tuned from ``--finetune`` when given), the frozen teacher and the
    DeiT loss (paper section 4); the training and evaluation wrappers of the student."""
    cfg, device = state.cfg, state.device
    # seeded here again, and before training in build_optimisation: lazy imports while the data
    # was built (scikit-learn's data sets draw from `random`) must not change the run
    seed_everything(cfg.seed)
    state.model = _build_model(cfg, state.num_classes).to(device)
    check_student(state.model, cfg.distillation_type)  # before the teacher is built
    if cfg.distillation_type != "none" and cfg.teacher_labels:
        _open_teacher_labels(state)  # the teacher is not built
    elif cfg.distillation_type != "none":
        state.teacher = build_run_teacher(
            cfg,
            device,
            state.num_classes,
            state.mean,
            state.std,
            state.loader_train,
            state.mixup_fn,
            verbose=state.env.is_main,
        )
    check_student(state.model, cfg.distillation_type, state.teacher)
    state.n_parameters = sum(p.numel() for p in state.model.parameters() if p.requires_grad)
    state.criterion = DistillationLoss(
        _base_criterion(cfg, state.mixup_fn),
        state.teacher,
        cfg.distillation_type,
        alpha=cfg.distillation_alpha,
        tau=cfg.distillation_tau,
        kl_reduction=cfg.kl_reduction,
    )
    state.train_model, state.eval_model = _wrappers(state.model, cfg, state.env.distributed, device)


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


def _open_teacher_labels(state: RunState) -> None:
    """``--teacher-labels DIR``: open the store and refuse it unless it matches the run."""
    store = TeacherLabelStore(state.cfg.teacher_labels)
    train_images = len(state.loader_train.dataset)
    store.check_run(state.cfg, state.num_classes, train_images, state.env.world_size)
    state.teacher_labels = store


def _build_model(cfg: Config, num_classes: int) -> nn.Module:
    model = build_classifier(
        cfg.model,
        num_classes,
        img_size=cfg.input_size if is_deit_model(cfg.model) else None,
        drop_rate=cfg.drop,
        drop_path_rate=cfg.drop_path,
    )
    if cfg.finetune:
        _load_finetune(model, cfg)
    return model


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
