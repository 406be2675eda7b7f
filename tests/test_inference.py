"""The opt-in inference seam: parity with the plain model, what it computes, what it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deit
from deit.inference import InferenceModel, optimize_for_inference, prefix_tokens
from deit.models import get_model_spec


@pytest.mark.parametrize(
    "name",
    ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "deit_small_patch16_224"],
)
def test_optimized_logits_equal_the_plain_model(name):
    torch.manual_seed(0)
    model = deit.create_model(name).eval()
    side = get_model_spec(name).img_size
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        plain = model(x)
    fast = optimize_for_inference(model)
    out = fast(x)
    assert not out.requires_grad and out.shape == plain.shape
    assert (out - plain).abs().max().item() <= 1e-5
    if "distilled" in name:
        cls_logits, dist_logits = fast.forward_heads(x)
        ref_cls, ref_dist = model.forward_heads(x)
        assert (cls_logits - ref_cls).abs().max().item() <= 1e-5
        assert (dist_logits - ref_dist).abs().max().item() <= 1e-5
        model.set_head("dist")
        assert (fast(x) - ref_dist).abs().max().item() <= 1e-5


def test_last_block_computes_only_the_prefix_tokens():
    torch.manual_seed(0)
    model = deit.create_model("deit_pico_distilled_patch7_28", num_classes=10).eval()
    x = torch.randn(4, 3, 28, 28)
    rows = []
    for block in model.blocks[-2:]:
        block.mlp.fc1.register_forward_hook(lambda m, i, o: rows.append(tuple(o.shape[:-1])))
    fast = optimize_for_inference(model)
    fast(x)
    assert rows == [(4, 18), (4, 2)]  # 16 patches + 2 prefix tokens, then the prefix only
    tokens = prefix_tokens(model, x)
    with torch.no_grad():
        full = model.forward_features(x)[:, :2]
    assert tokens.shape == (4, 2, 128)
    torch.testing.assert_close(tokens, full, atol=1e-6, rtol=1e-6)


def test_plain_model_is_unaffected_and_other_classifiers_pass_through():
    torch.manual_seed(0)
    model = deit.create_model("deit_pico_patch4_28", num_classes=10)
    fast = optimize_for_inference(model)
    assert not model.training and isinstance(fast, InferenceModel)
    assert set(fast.state_dict()) == {f"model.{k}" for k in model.state_dict()}
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(optimize_for_inference(cnn)(x), cnn(x))
    assert not hasattr(fast, "forward_heads")


def test_refusals():
    model = deit.create_model("deit_pico_patch4_28", num_classes=10)
    fast = optimize_for_inference(model)
    with pytest.raises(ValueError, match="cannot be trained"):
        fast.train()
    model.train()
    with pytest.raises(ValueError, match="call model.eval"):
        prefix_tokens(model, torch.randn(1, 3, 28, 28))
    flat = deit.create_model("deit_pico_patch4_28", num_classes=10, depth=0).eval()
    with pytest.raises(ValueError, match="at least one block"):
        prefix_tokens(flat, torch.randn(1, 3, 28, 28))
    x = torch.randn(1, 3, 28, 28)  # without blocks the wrapper runs the model as it is
    torch.testing.assert_close(optimize_for_inference(flat)(x), flat(x).detach())


def test_compiled_and_frozen_equals_the_plain_model():
    torch.manual_seed(0)
    model = deit.create_model("deit_pico_distilled_patch7_28", num_classes=10, depth=2).eval()
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        plain = model(x)
    fast = optimize_for_inference(model, compile=True)
    with torch.inference_mode():
        out = fast(x)
    assert (out - plain).abs().max().item() <= 1e-5
