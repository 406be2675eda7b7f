"""Several students of one architecture trained as one batched computation: the opt-in seam.

The model classes stay plain; this module stacks ``K`` students' weights along a new leading
dimension (``torch.func.stack_module_state``) and runs them with ``torch.func.vmap`` over
``functional_call`` — PyTorch's "model ensembling" pattern — so that each operation is
dispatched once for the ``K`` students instead of ``K`` times. Each student keeps its own
images, targets, loss and optimiser state: the stacked optimiser is the single-student one
(same class and settings, :func:`deit.optim.build_optimizer`) over the stacked parameters, and
an element-wise optimiser such as AdamW updates each slice exactly as it would update that
student alone. Gradient clipping is per student (its own norm), as in a single run.

``tests/test_batched.py`` checks the seam against ``K`` single runs on the same views: every
student's loss, gradients and weights agree to 1e-5 after a few steps. What it buys on a given
machine is measured by ``benchmarks/batched_students.py`` (dated figures in
``benchmarks/README.md``).

Shapes: images ``(K, B, C, H, W)``, targets ``(K, B)`` or ``(K, B, num_classes)``, logits
``(K, B, num_classes)`` (a distilled student in training mode: a pair of them).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from .distillation import DistillationLoss

__all__ = ["BatchedStudents", "batched_train_step"]


class BatchedStudents:
    """``K`` students of one architecture as stacked weights, run as one computation.

    Args:
        models: the students (same class, parameter names and shapes; same training flags such
            as ``set_distilled_training``). Their weights are copied into the stack; call
            :meth:`write_back` to copy the trained weights into them. Stochastic depth and
            dropout masks are drawn for each student independently.

    Raises:
        ValueError: fewer than one model, or models whose classes or parameters differ.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        models = list(models)
        if not models:
            raise ValueError("BatchedStudents needs at least one model.")
        first = models[0]
        shapes = {n: tuple(p.shape) for n, p in first.named_parameters()}
        for i, m in enumerate(models[1:], start=1):
            other = {n: tuple(p.shape) for n, p in m.named_parameters()}
            if type(m) is not type(first) or other != shapes:
                raise ValueError(
                    f"Student {i} ({type(m).__name__}) differs from student 0 "
                    f"({type(first).__name__}) in its class or parameters; batch only students "
                    "of one architecture."
                )
        params, buffers = stack_module_state(models)
        self.params: dict[str, nn.Parameter] = {k: nn.Parameter(v) for k, v in params.items()}
        self.buffers: dict[str, torch.Tensor] = buffers
        self.models = models
        # the module whose code runs; its own tensors are never read (meta device)
        self._base = copy.deepcopy(models[0]).to("meta")
        self._call = vmap(self._one, randomness="different")

    def __len__(self) -> int:
        return len(self.models)

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: Any):
        return functional_call(self._base, (params, buffers), (x,))

    def train(self, mode: bool = True) -> BatchedStudents:
        """Training (or evaluation) mode for the stacked students, as ``nn.Module.train``."""
        self._base.train(mode)
        return self

    def eval(self) -> BatchedStudents:
        """Evaluation mode (no stochastic depth or dropout)."""
        return self.train(False)

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, stacked parameter (K, ...))`` in the students' ``named_parameters`` order."""
        return list(self.params.items())

    def parameters(self) -> list[nn.Parameter]:
        """The stacked parameters, each ``(K, *shape)``."""
        return list(self.params.values())

    def __call__(self, images: torch.Tensor) -> Any:
        """Logits of every student on its own images: ``(K, B, C, H, W)`` -> ``(K, B,
        num_classes)`` (or a pair of them for a distilled student in training mode)."""
        if images.shape[0] != len(self):
            raise ValueError(
                f"Expected images of shape (K={len(self)}, B, C, H, W), one batch per student, "
                f"but got {tuple(images.shape)}."
            )
        # the fused attention kernels have no vmap rule (each student would run alone); the
        # math kernel is plain matmuls and softmax, which batch over the students
        with sdpa_kernel(SDPBackend.MATH):
            return self._call(self.params, self.buffers, images)

    def optimizer(self, single: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimiser ``single`` (built for ``models[0]``, e.g. by
        :func:`deit.optim.build_optimizer`) rebuilt over the stacked parameters: same class,
        groups (weight decay by parameter name) and settings.

        Raises:
            ValueError: ``single`` holds parameters that are not ``models[0]``'s.
        """
        names = {id(p): n for n, p in self.models[0].named_parameters()}
        groups = []
        for g in single.param_groups:
            if any(id(p) not in names for p in g["params"]):
                raise ValueError("The optimiser holds parameters that are not the first student's.")
            stacked = [self.params[names[id(p)]] for p in g["params"]]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": stacked})
        # every setting travels in the groups; the constructor takes only the keywords it names
        accepted = inspect.signature(type(single)).parameters
        return type(single)(groups, **{k: v for k, v in single.defaults.items() if k in accepted})

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each student's gradient to total 2-norm ``max_norm`` (as
        ``torch.nn.utils.clip_grad_norm_`` does for one model: scale ``max_norm / (norm +
        1e-6)``, at most 1). Returns the norms before clipping, shape ``(K,)``."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.ndim - 1))))
        return norms

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each student's slice of the stacked weights and buffers into ``models[k]``."""
        for k, model in enumerate(self.models):
            for name, t in model.named_parameters():
                t.copy_(self.params[name][k])
            for name, t in model.named_buffers():
                t.copy_(self.buffers[name][k])


def batched_train_step(
    students: BatchedStudents,
    criteria: Sequence[DistillationLoss],
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    clip_grad: float | None = None,
    teacher_outputs: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """One optimiser step of every student on its own batch.

    Student ``k``'s loss is ``criteria[k]`` (a :class:`deit.distillation.DistillationLoss`)
    on its images, outputs and targets, the ``total`` of its ``compute``; the losses are summed
    for one backward pass, which gives each student exactly its own gradient (the students share
    no weight).

    Args:
        images: ``(K, B, C, H, W)``, already mixed (Mixup/CutMix) per student.
        targets: ``(K, B)`` labels or ``(K, B, num_classes)`` soft targets.
        optimizer: from :meth:`BatchedStudents.optimizer`.
        clip_grad: per-student gradient-norm threshold, or ``None``.
        teacher_outputs: per student, stored teacher logits for its batch (or ``None``).

    Returns:
        The students' losses, shape ``(K,)``, detached.

    Raises:
        ValueError: ``criteria`` or ``teacher_outputs`` not one per student.
    """
    k = len(students)
    if len(criteria) != k or (teacher_outputs is not None and len(teacher_outputs) != k):
        raise ValueError(f"Expected one criterion (and teacher output) per student, K={k}.")
    outputs = students(images)
    losses = []
    for i, criterion in enumerate(criteria):
        out = tuple(o[i] for o in outputs) if isinstance(outputs, tuple) else outputs[i]
        stored = teacher_outputs[i] if teacher_outputs is not None else None
        losses.append(criterion.compute(images[i], out, targets[i], teacher_outputs=stored).total)
    loss_k = torch.stack(losses)
    optimizer.zero_grad(set_to_none=True)
    loss_k.sum().backward()
    if clip_grad:
        students.clip_grad_norm_(clip_grad)
    optimizer.step()
    return loss_k.detach()
