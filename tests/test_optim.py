"""Optimiser groups, learning-rate scaling and schedule values, EMA."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn

from deit.config import Config
from deit.optim import (
    build_ema,
    build_optimizer,
    build_scheduler,
    effective_lr,
    optimizer_impl,
    optimizer_param_names,
    scale_lr,
    weight_decay_param_names,
)


class StandIn(nn.Module):
    """Parameters named like a distilled DeiT's, a few of each kind."""

    def __init__(self, with_nwd: bool = True) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)
        self.patch_embed = nn.Conv2d(3, 4, 2, 2)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.head_dist = nn.Linear(4, 2)
        self.with_nwd = with_nwd

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"} if self.with_nwd else set()


DECAY = ["patch_embed.weight", "fc.weight", "head.weight", "head_dist.weight"]
NO_DECAY = ["cls_token", "dist_token", "pos_embed", "patch_embed.bias", "norm.weight"]
NO_DECAY += ["norm.bias", "fc.bias", "head.bias", "head_dist.bias"]


def test_scale_lr() -> None:
    assert scale_lr(5e-4, 1024) == pytest.approx(1e-3)  # the paper's global batch
    assert scale_lr(5e-4, 64) == pytest.approx(6.25e-5)
    cfg = Config(lr=5e-4, batch_size=128)
    assert effective_lr(cfg, world_size=8) == pytest.approx(1e-3)
    assert effective_lr(Config(lr=5e-4, batch_size=128, unscale_lr=True), 8) == 5e-4
    with pytest.raises(ValueError, match="global_batch_size"):
        scale_lr(1e-3, 0)


def test_weight_decay_groups_exact_names() -> None:
    groups = weight_decay_param_names(StandIn(), 0.05)
    assert groups == {"decay": DECAY, "no_decay": NO_DECAY}  # frozen parameter left out
    # without no_weight_decay() the 3-d tokens would be decayed
    plain = weight_decay_param_names(StandIn(with_nwd=False), 0.05)
    assert plain["decay"] == ["cls_token", "dist_token", "pos_embed"] + DECAY


def test_build_optimizer_adamw_groups() -> None:
    model = StandIn()
    cfg = Config(lr=5e-4, batch_size=256)  # one process: 5e-4 * 256 / 512 = 2.5e-4
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert optimizer_param_names(opt, model) == [(0.0, NO_DECAY), (0.05, DECAY)]
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(2.5e-4) and g["eps"] == 1e-8
        assert g["betas"] == (0.9, 0.999)
    opt4 = build_optimizer(Config(opt_betas=[0.9, 0.95]), model, world_size=4)
    assert opt4.param_groups[0]["lr"] == pytest.approx(5e-4 * 64 * 4 / 512)
    assert opt4.param_groups[0]["betas"] == (0.9, 0.95)


def test_timm_distilled_deit_groups() -> None:
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    groups = weight_decay_param_names(model, 0.05)
    expected = {"patch_embed.proj.weight", "head.weight", "head_dist.weight"}
    for i in range(12):
        expected |= {f"blocks.{i}.{n}.weight" for n in ("attn.qkv", "attn.proj", "mlp.fc1")}
        expected.add(f"blocks.{i}.mlp.fc2.weight")
    assert set(groups["decay"]) == expected and len(groups["decay"]) == 51
    assert {"cls_token", "dist_token", "pos_embed", "norm.weight"} <= set(groups["no_decay"])
    n_params = len(list(model.named_parameters()))
    assert len(groups["no_decay"]) == n_params - 51


def _lr(opt: torch.optim.Optimizer) -> float:
    return opt.param_groups[0]["lr"]


def test_cosine_schedule_per_step_values() -> None:
    model = nn.Linear(2, 2)
    cfg = Config(lr=1e-3, unscale_lr=True, warmup_lr=1e-6, min_lr=1e-5, epochs=10)
    cfg = cfg.replace(warmup_epochs=2)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, steps_per_epoch=5)  # T = 50 updates, warm-up 10
    assert _lr(opt) == pytest.approx(1e-6)  # before the first update
    # warm-up: 1e-6 + 5 * (1e-3 - 1e-6) / 10
    sched.step_update(5)
    assert _lr(opt) == pytest.approx(5.005e-4, rel=1e-9)
    # cosine on t counted from 0: 1e-5 + 0.5 * 9.9e-4 * (1 + cos(pi * 10 / 50)), cos 36° = 0.809017
    sched.step_update(10)
    assert _lr(opt) == pytest.approx(9.0546341e-4, rel=1e-7)
    sched.step(3)  # per-epoch call is a no-op in per-step mode
    assert _lr(opt) == pytest.approx(9.0546341e-4, rel=1e-7)
    sched.step_update(25)  # half way: 1e-5 + 0.5 * 9.9e-4
    assert _lr(opt) == pytest.approx(5.05e-4, rel=1e-9)
    sched.step_update(40)  # cos 144° = -0.809017: 1e-5 + 0.5 * 9.9e-4 * 0.190983
    assert _lr(opt) == pytest.approx(1.0453659e-4, rel=1e-6)
    sched.step_update(50)
    assert _lr(opt) == pytest.approx(1e-5)


def test_cosine_schedule_per_epoch_values() -> None:
    model = nn.Linear(2, 2)
    cfg = Config(lr=1e-3, unscale_lr=True, epochs=10, warmup_epochs=2, sched_per_step=False)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, steps_per_epoch=5)
    assert _lr(opt) == pytest.approx(1e-6)
    sched.step_update(7)  # no-op per epoch
    assert _lr(opt) == pytest.approx(1e-6)
    sched.step(1)  # 1e-6 + 1 * (1e-3 - 1e-6) / 2
    assert _lr(opt) == pytest.approx(5.005e-4, rel=1e-9)
    sched.step(2)  # 1e-5 + 0.5 * 9.9e-4 * (1 + cos(pi * 2 / 10))
    assert _lr(opt) == pytest.approx(9.0546341e-4, rel=1e-7)
    sched.step(5)
    assert _lr(opt) == pytest.approx(5.05e-4, rel=1e-9)


def test_scheduler_errors_and_none() -> None:
    opt = build_optimizer(Config(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_scheduler(Config(), opt, steps_per_epoch=0)
    assert build_scheduler(Config(sched="none"), opt, 3) is None


def test_ema_values() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = build_ema(model, 0.9)
    assert isinstance(ema, ModelEmaV3)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)  # 0.9 * 1 + 0.1 * 2
    assert ema.module.weight.item() == pytest.approx(1.1)
    ema.update(model)  # 0.9 * 1.1 + 0.1 * 2
    assert ema.module.weight.item() == pytest.approx(1.19)
    assert build_ema(model, None) is None and build_ema(model, 0.0) is None
    with pytest.raises(ValueError, match="decay"):
        build_ema(model, 1.5)


def _five_steps(opt: str, loop_default: bool) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    cfg = Config(opt=opt, lr=0.5, unscale_lr=True, opt_eps=1e-8)
    if loop_default:  # torch's per-tensor loop, as timm builds it by default on CPU
        optimizer = create_optimizer_v2(model, opt=opt, lr=0.5, weight_decay=0.05, eps=1e-8)
    else:
        optimizer = build_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        model(torch.randn(4, 6, generator=gen)).square().mean().backward()
        optimizer.step()
    return optimizer, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_cpu_foreach_optimizer_is_bit_identical_to_the_default_loop(opt: str) -> None:
    """build_optimizer picks torch's multi-tensor path on CPU; the weights after a few steps
    are the per-tensor loop's, bit for bit (so runs, resumes and stored numbers are unchanged)."""
    fast, ours = _five_steps(opt, loop_default=False)
    default, theirs = _five_steps(opt, loop_default=True)
    assert fast.param_groups[0]["foreach"] is True and not default.param_groups[0]["foreach"]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_optimizer_impl_by_device_and_class() -> None:
    assert optimizer_impl("adamw", nn.Linear(2, 2)) == {"foreach": True}
    assert optimizer_impl("lamb", nn.Linear(2, 2)) == {}  # timm's own: its default
    assert optimizer_impl("no-such-optimizer", nn.Linear(2, 2)) == {}
    assert optimizer_impl("adamw", nn.Identity()) == {}
