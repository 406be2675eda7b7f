"""deit analyze: attention rollout, token/head similarity against hand computations, figures."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deit
from deit.analysis import (
    TOKEN_NAMES,
    analyze,
    attention_figure,
    attention_maps,
    attention_rollout,
    collect_attention,
    head_agreement,
    head_weight_similarity,
    similarity_figure,
    token_report,
    token_similarity,
)
from deit.checkpoints import ModelInfo
from deit.cli import main
from deit.predict import eval_transform, load_image

DIST, PLAIN = "deit_pico_distilled_patch4_28", "deit_pico_patch4_28"
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@functools.cache
def _cached_model(name, seed):
    torch.manual_seed(seed)
    m = deit.create_model(name, num_classes=10).eval()
    with torch.no_grad():  # stronger image dependence than the 0.02-std initialisation
        m.patch_embed.proj.weight.mul_(10)
    return m


def _model(name=DIST, seed=0):
    """A fresh copy of a pico model (built once per name/seed: initialisation is the slow part)."""
    return copy.deepcopy(_cached_model(name, seed))


def _checkpoint(path: Path, model, name=DIST) -> Path:
    torch.save(
        {
            "model": model.state_dict(),
            "model_name": name,
            "num_classes": 10,
            "img_size": 28,
            "in_chans": 3,
            "class_names": [f"c{i}" for i in range(10)],
            "mean": MEAN,
            "std": STD,
            "crop_pct": 1.0,
            "config": {},
            "model_ema": None,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three 28 px PNGs (two RGB, one greyscale)."""
    root = tmp_path_factory.mktemp("analysis_images")
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(root / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(root / "grey.png")
    return sorted(root.glob("*.png"))


def _batch(files, info_mean=MEAN, info_std=STD):
    info = ModelInfo(DIST, 10, (28, 28), mean=info_mean, std=info_std, crop_pct=1.0)
    t = eval_transform(info)
    return torch.stack([t(load_image(f)) for f in files])


def _manual_block_outputs(model, x):
    """The residual stream after each block, written out without hooks."""
    t = model.patch_embed(x)
    prefix = [model.cls_token, model.dist_token][: model.num_prefix_tokens]
    t = torch.cat([torch.cat(prefix, 1).expand(len(x), -1, -1), t], 1) + model.pos_embed
    outs = []
    for blk in model.blocks:
        t = blk(t)
        outs.append(t)
    return outs


# -- rollout --------------------------------------------------------------------------------
def test_rollout_rows_sum_to_one_and_one_layer_is_half_identity():
    torch.manual_seed(0)
    att = [torch.rand(2, 3, 5, 5).softmax(-1) for _ in range(4)]
    r = attention_rollout(att)
    assert r.shape == (2, 5, 5)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 5))
    a = att[0].mean(1)  # one layer: (A + I) / 2 for a row-stochastic A
    torch.testing.assert_close(attention_rollout(att[:1]), (a + torch.eye(5)) / 2)
    # two layers: last layer on the left
    b = att[1].mean(1)
    expected = ((b + torch.eye(5)) / 2) @ ((a + torch.eye(5)) / 2)
    torch.testing.assert_close(attention_rollout(att[:2]), expected)
    # already head-averaged (B, N, N) input is the same
    torch.testing.assert_close(attention_rollout([x.mean(1) for x in att]), r)
    with pytest.raises(ValueError, match="at least one layer"):
        attention_rollout([])


def test_uniform_attention_rollout_equals_hand_computed_matrix():
    """Zeroed qkv weights give q = k = 0, so every attention row is uniform (1/N); per layer
    (U + I)/2 and, as U @ U = U, L layers give I / 2^L + (1 - 1/2^L) U."""
    model = _model()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.zero_()
            blk.attn.qkv.bias.zero_()
    x = torch.randn(2, 3, 28, 28)
    attentions, tokens = collect_attention(model, x)
    n, layers = 2 + 7 * 7, len(model.blocks)
    assert len(attentions) == len(tokens) == layers == 6
    assert attentions[0].shape == (2, 2, n, n)
    torch.testing.assert_close(attentions[3], torch.full((2, 2, n, n), 1 / n))
    expected = torch.eye(n) / 2**layers + (1 - 1 / 2**layers) * torch.full((n, n), 1 / n)
    torch.testing.assert_close(attention_rollout(attentions), expected.expand(2, n, n))
    maps = attention_maps(model, x, attentions)
    assert list(maps) == list(TOKEN_NAMES)
    assert maps["class token"]["last"].shape == (2, 7, 7)
    torch.testing.assert_close(maps["class token"]["last"], torch.full((2, 7, 7), 1 / n))
    # the class token's rollout over patches: off-diagonal entries only
    torch.testing.assert_close(
        maps["distillation token"]["rollout"], torch.full((2, 7, 7), (1 - 2**-layers) / n)
    )


def test_collect_attention_matches_forward_and_softmax():
    model = _model()
    x = torch.randn(2, 3, 28, 28)
    attentions, tokens = collect_attention(model, x)
    with torch.no_grad():
        torch.testing.assert_close(model.norm(tokens[-1]), model.forward_features(x))
        ref = _manual_block_outputs(model, x)
        blk = model.blocks[0]
        tok0 = torch.cat([model.cls_token, model.dist_token], 1).expand(2, -1, -1)
        inp = torch.cat([tok0, model.patch_embed(x)], 1) + model.pos_embed
        q, k, _ = blk.attn.qkv(blk.norm1(inp)).reshape(2, -1, 3, 2, 64).permute(2, 0, 3, 1, 4)
        hand = (q @ k.transpose(-2, -1) / 8.0).softmax(-1)  # head dim 64 -> scale 1/8
    torch.testing.assert_close(attentions[0], hand)
    for a, b in zip(tokens, ref, strict=True):
        torch.testing.assert_close(a, b)


# -- similarity -----------------------------------------------------------------------------
def test_identical_tokens_have_similarity_one_everywhere():
    model = _model()
    with torch.no_grad():
        model.dist_token.copy_(model.cls_token)
        model.pos_embed[:, 1] = model.pos_embed[:, 0]
        model.head_dist.weight.copy_(model.head.weight)
        model.head_dist.bias.copy_(model.head.bias)
    x = torch.randn(3, 3, 28, 28)
    sims = token_similarity(model, x)
    assert len(sims) == 6
    np.testing.assert_allclose(sims, 1.0, atol=1e-5)
    hs = head_weight_similarity(model)
    assert hs["flattened"] == pytest.approx(1.0, abs=1e-6)
    assert hs["per_class_mean"] == pytest.approx(1.0, abs=1e-6)
    assert head_agreement(model, x) == {"cls_vs_dist": 1.0}


def test_token_similarity_matches_hand_computation():
    model = _model()
    x = torch.randn(5, 3, 28, 28)
    with torch.no_grad():
        outs = _manual_block_outputs(model, x)
    hand = []
    for t in outs:
        a, b = t[:, 0], t[:, 1]
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        hand.append(cos.mean().item())
    np.testing.assert_allclose(token_similarity(model, x, batch_size=2), hand, atol=1e-5)
    assert len(set(np.round(hand, 4))) > 1  # a real curve, not a constant


def test_token_report_by_hand():
    """Depth 0 is the learned tokens' cosine; the head outputs' cosine and agreement by hand."""
    model = _model().eval()
    with torch.no_grad():
        model.cls_token.copy_(torch.arange(128.0).view(1, 1, 128))
        model.dist_token.copy_(-torch.arange(128.0).view(1, 1, 128))
    x = torch.randn(7, 3, 28, 28)
    report = token_report(model, x, batch_size=3)
    assert report["token_cosine"][0] == pytest.approx(-1.0, abs=1e-6)
    np.testing.assert_allclose(report["token_cosine"][1:], token_similarity(model, x), atol=1e-5)
    with torch.no_grad():
        c, d = model.forward_heads(x)
    cos = ((c * d).sum(-1) / (c.norm(dim=-1) * d.norm(dim=-1))).mean().item()
    assert report["head_output_cosine"] == pytest.approx(cos, abs=1e-5)
    assert report["head_agreement"] == pytest.approx((c.argmax(-1) == d.argmax(-1)).float().mean())


def test_head_weight_similarity_by_hand():
    model = _model()
    with torch.no_grad():
        model.head_dist.weight.copy_(-model.head.weight)
    assert head_weight_similarity(model)["flattened"] == pytest.approx(-1.0, abs=1e-6)
    model = _model(seed=3)
    w1, w2 = model.head.weight.detach(), model.head_dist.weight.detach()
    flat = float((w1 * w2).sum() / (w1.norm() * w2.norm()))
    per_class = float(((w1 * w2).sum(1) / (w1.norm(dim=1) * w2.norm(dim=1))).mean())
    hs = head_weight_similarity(model)
    assert hs["flattened"] == pytest.approx(flat, abs=1e-6)
    assert hs["per_class_mean"] == pytest.approx(per_class, abs=1e-6)
    plain = _model(PLAIN)
    with pytest.raises(ValueError, match="distilled"):
        head_weight_similarity(plain)
    with pytest.raises(ValueError, match="no distillation token"):
        token_similarity(plain, torch.randn(1, 3, 28, 28))


# -- figures --------------------------------------------------------------------------------
def test_attention_figure_has_titles_and_colour_bars():
    g = torch.rand(7, 7)
    maps = {t: {"last": g, "rollout": g / 2} for t in TOKEN_NAMES}
    fig = attention_figure(torch.rand(3, 28, 28), maps, title="x.png", num_heads=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == [
        "input\n(model's crop)",
        "class token\nlast layer, mean of 2 heads\n7x7 patches",
        "class token\nattention rollout\n7x7 patches",
        "distillation token\nlast layer, mean of 2 heads\n7x7 patches",
        "distillation token\nattention rollout\n7x7 patches",
    ]
    assert len(fig.axes) == 5 + 4  # four colour bars
    # the patch grid is drawn as flat cells on the image's own pixel edges
    image, grid = fig.axes[1].get_images()
    assert grid.get_interpolation() == "nearest"
    assert image.get_extent() == grid.get_extent() == [0, 28, 28, 0]
    assert all(ax.get_ylabel() == "attention weight" for ax in fig.axes[5:])
    assert fig.get_suptitle() == "x.png"


def test_similarity_figure_axes_legend_and_paper_points():
    fig = similarity_figure([0.2, 0.1, 0.4, 0.8])  # learned tokens, then 3 blocks
    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("relative depth (0: the learned tokens")
    assert "cosine similarity" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("this model") and legend[1].startswith("paper")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.2, 0.1, 0.4, 0.8])
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 1 / 3, 2 / 3, 1])
    # the paper's learned tokens at depth 0, DeiT-B's last block at depth 1
    paper = ax.collections[0].get_offsets()
    np.testing.assert_allclose(paper, [[0, 0.06], [1, 0.93]])


# -- the whole job --------------------------------------------------------------------------
def _png_ok(path: str, min_bytes: int = 5_000) -> tuple[int, int]:
    p = Path(path)
    assert p.is_file() and p.stat().st_size > min_bytes
    with Image.open(p) as im:
        im.load()
        return im.size


def test_analyze_distilled_checkpoint(tmp_path, images):
    model = _model()
    ck = _checkpoint(tmp_path / "run.pth", model)
    out = tmp_path / "out"
    summary = analyze(ck, images, out, max_figures=2)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["distilled"] and summary["num_images"] == 3
    assert summary["grid_size"] == [7, 7] and summary["depth"] == 6
    assert len(summary["figures"]["attention"]) == 2  # max_figures; the numbers use all 3
    for f in summary["figures"]["attention"]:
        w, h = _png_ok(f)
        assert w > 3 * h  # five panels side by side
    _png_ok(summary["figures"]["token_similarity"])
    x = _batch(images)
    ts = summary["token_similarity"]
    np.testing.assert_allclose(ts["per_layer"], token_similarity(model, x), atol=1e-5)
    assert ts["first_block"] == ts["per_layer"][0] and ts["paper"]["last_block"] == 0.93
    learned = torch.nn.functional.cosine_similarity(
        model.cls_token.flatten(), model.dist_token.flatten(), dim=0
    )
    assert ts["learned_tokens"] == pytest.approx(float(learned), abs=1e-6)
    assert (
        ts["paper"]["learned_tokens"] == 0.06 and "paper" not in summary["head_weight_similarity"]
    )
    hs = head_weight_similarity(model)
    assert summary["head_weight_similarity"]["flattened"] == pytest.approx(hs["flattened"])
    with torch.no_grad():
        c, d = model.forward_heads(x)
    agree = (c.argmax(-1) == d.argmax(-1)).float().mean().item()
    assert summary["agreement"] == {"cls_vs_dist": pytest.approx(agree)}
    assert summary["skipped"] == []


def test_analyze_plain_model_and_teacher_via_cli(tmp_path, images, capsys):
    student = _checkpoint(tmp_path / "plain.pth", _model(PLAIN), PLAIN)
    teacher_model = _model(PLAIN, seed=7)
    teacher = _checkpoint(tmp_path / "teacher.pth", teacher_model, PLAIN)
    out = tmp_path / "out"
    args = ["analyze", str(student), *map(str, images), "--output-dir", str(out)]
    assert main([*args, "--teacher-path", str(teacher), "--max-figures", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Token and head similarity were skipped: the model is not distilled" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["token_similarity"] is None and summary["head_weight_similarity"] is None
    assert summary["figures"]["token_similarity"] is None
    assert not (out / "token_similarity.png").exists()
    (fig,) = summary["figures"]["attention"]
    w, h = _png_ok(fig)
    assert 2 * h < w < 4 * h  # three panels: input, class token last layer, rollout
    x = _batch(images)
    s_model, _ = deit.load_model(student)
    with torch.no_grad():
        agree = (s_model(x).argmax(-1) == teacher_model(x).argmax(-1)).float().mean().item()
    assert summary["agreement"] == {"teacher_vs_model": pytest.approx(agree)}
    assert f"agreement teacher vs model: {100 * agree:.1f}%" in printed


def test_plain_model_maps_have_class_token_only():
    model = _model(PLAIN)
    maps = attention_maps(model, torch.randn(1, 3, 28, 28))
    assert list(maps) == ["class token"]
    fig = attention_figure(
        torch.rand(3, 28, 28), {k: {n: v[0] for n, v in m.items()} for k, m in maps.items()}
    )
    assert [ax.get_title() for ax in fig.axes[1:3]] == [
        "class token\nlast layer, mean over heads\n7x7 patches",
        "class token\nattention rollout\n7x7 patches",
    ]


def test_bad_inputs(tmp_path, images):
    ck = _checkpoint(tmp_path / "run.pth", _model())
    with pytest.raises(ValueError, match="--teacher-model needs --teacher-path"):
        analyze(ck, images, tmp_path / "o", teacher_model="resnet18")
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 10, 3), torch.nn.AdaptiveAvgPool2d(1))
    info = ModelInfo("cnn", 10, (28, 28))
    with pytest.raises(ValueError, match="needs a DeiT/ViT model of this package"):
        analyze((cnn, info), images, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        analyze(ck, [tmp_path / "missing"], tmp_path / "o")
