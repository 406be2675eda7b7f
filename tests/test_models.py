"""Model tests: parity with timm, parameter counts, output convention, bad input."""

from __future__ import annotations

import pytest
import timm
import torch

import deit
from deit.models import DistilledVisionTransformer, get_model_spec

# Parameter counts of the official models (paper Table 1 rounds them: 5M, 22M, 86M; 1000 classes).
PARAMS = {
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_patch16_224": 22_050_664,
    "deit_base_patch16_224": 86_567_656,
    "deit_base_patch16_384": 86_859_496,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_distilled_patch16_224": 87_338_192,
    "deit_base_distilled_patch16_384": 87_630_032,
}


# DeiT III (timm's deit3_*): parameter counts with 1000 classes, equal to timm's (checked below).
DEIT3_PARAMS = {
    "deit3_small_patch16_224": 22_059_496,
    "deit3_small_patch16_384": 22_205_416,
    "deit3_medium_patch16_224": 38_849_512,
    "deit3_base_patch16_224": 86_585_320,
    "deit3_base_patch16_384": 86_877_160,
    "deit3_large_patch16_224": 304_374_760,
    "deit3_large_patch16_384": 304_763_880,
    "deit3_huge_patch14_224": 632_126_440,
}


def test_official_names_registered():
    assert set(deit.list_models("deit_*patch16*")) == set(PARAMS)
    assert set(deit.list_models(pretrained=True)) == set(PARAMS) | set(DEIT3_PARAMS)
    assert set(deit.list_models("deit3_*_patch1[46]_*")) == set(DEIT3_PARAMS)
    small = deit.list_models("*patch4*")
    assert "deit_tiny_patch4_32" in small and "deit_tiny_distilled_patch4_32" in small


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_timm_parity_and_param_count(name, tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval()
    path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), path)
    model = deit.create_model(name, checkpoint_path=path).eval()
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    side = get_model_spec(name).img_size
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5
        if "distilled" in name:
            model.train(), ref.train()
            model.set_distilled_training(True)
            ref.set_distilled_training(True)
            ours, theirs = model(x), ref(x)
            assert isinstance(ours, tuple) and len(ours) == 2
            for a, b in zip(ours, theirs):
                assert (a - b).abs().max().item() <= 1e-5


def _tiny(distilled: bool = True, **kw):
    name = "deit_pico_distilled_patch4_28" if distilled else "deit_pico_patch4_28"
    return deit.create_model(name, num_classes=10, **kw)


def test_distilled_output_convention():
    torch.manual_seed(0)
    model = _tiny()
    assert isinstance(model, DistilledVisionTransformer)
    x = torch.randn(3, 3, 28, 28)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (3, 2 + 49, 128)
    cls_logits, dist_logits = model.head(feats[:, 0]), model.head_dist(feats[:, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(x), (cls_logits + dist_logits) / 2)
        model.set_head("cls")
        torch.testing.assert_close(model(x), cls_logits)
        model.set_head("dist")
        torch.testing.assert_close(model(x), dist_logits)
        model.set_head("both")
        # training mode without distilled training still gives the average
        model.train()
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (3, 10)
        model.set_distilled_training(True)
        pair = model(x)
        torch.testing.assert_close(pair[0], cls_logits)
        torch.testing.assert_close(pair[1], dist_logits)
    with pytest.raises(ValueError, match="head must be one of"):
        model.set_head("mean")


def test_init_statistics():
    torch.manual_seed(0)
    model = deit.create_model("deit_small_distilled_patch16_224")
    for p in (model.cls_token, model.dist_token, model.pos_embed, model.blocks[0].mlp.fc1.weight):
        # trunc_normal_(std=0.02) truncates at +-2 absolute (as timm/official), i.e. not at all
        assert abs(p.std().item() - 0.02) < 0.004 and abs(p.mean().item()) < 0.004
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0
    assert torch.all(model.norm.weight == 1) and torch.all(model.norm.bias == 0)
    assert model.blocks[0].norm1.eps == 1e-6


def test_drop_path_schedule_and_no_weight_decay():
    model = _tiny(drop_path_rate=0.1)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.1])
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}
    assert _tiny(distilled=False).no_weight_decay() == {"pos_embed", "cls_token"}


def test_drop_path_training_and_eval():
    torch.manual_seed(0)
    dp = deit.models.DropPath(0.5)
    x = torch.ones(2000, 3)
    dp.train()
    y = dp(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.45 < kept < 0.55
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}
    dp.eval()
    assert torch.equal(dp(x), x)


def test_sdpa_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    attn = deit.models.Attention(64, num_heads=4).eval()
    x = torch.randn(2, 10, 64)
    probs = attn.attention_weights(x)  # (B, H, N, N)
    v = attn.qkv(x).view(2, 10, 3, 4, 16).permute(2, 0, 3, 1, 4)[2]
    expected = attn.proj((probs @ v).transpose(1, 2).reshape(2, 10, 64))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 10))


def test_rectangular_and_custom_sizes():
    model = deit.create_model("deit_tiny_patch16_224", img_size=(32, 64), depth=1, num_classes=3)
    assert model.grid_size == (2, 4) and model.pos_embed.shape == (1, 9, 192)
    assert model(torch.randn(1, 3, 32, 64)).shape == (1, 3)
    one_channel = deit.create_model("deit_pico_patch4_28", in_chans=1, num_classes=10)
    assert one_channel(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert one_channel.default_cfg["input_size"] == (1, 28, 28)


def test_reset_classifier():
    model = _tiny()
    model.reset_classifier(4)
    assert model.head.out_features == 4 and model.head_dist.out_features == 4
    assert model.eval()(torch.randn(1, 3, 28, 28)).shape == (1, 4)


def test_wrong_image_size_is_clear():
    model = _tiny()
    with pytest.raises(ValueError, match=r"Expected images of shape \(B, 3, 28, 28\)"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        deit.create_model("deit_tiny_patch16_224", img_size=100)


def test_unknown_model_name_lists_close_names():
    with pytest.raises(ValueError, match="deit_tiny_patch16_224") as e:
        deit.create_model("deit_tiny_patch16_244")
    assert "Did you mean" in str(e.value)


@pytest.mark.parametrize("bad", [{"drop_path_rate": 1.5}, {"drop_rate": -0.1}])
def test_impossible_rates(bad):
    with pytest.raises(ValueError, match="must be in"):
        _tiny(**bad)


def test_build_classifier_dispatch():
    assert isinstance(deit.build_classifier("deit_pico_patch4_28", 10), deit.VisionTransformer)
    cnn = deit.build_classifier("resnet10t", 7).eval()
    assert cnn(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    tv = deit.build_classifier("torchvision:resnet18", 5)
    assert tv.fc.out_features == 5
    with pytest.raises(ValueError, match="Unknown model name"):
        deit.build_classifier("no_such_net", 3)


def test_channel_mismatch_names_in_chans():
    model = deit.create_model("deit_pico_patch7_28", num_classes=10)
    with pytest.raises(ValueError, match=r"3 channels but got \(1, 1, 28, 28\).*in_chans=1"):
        model(torch.randn(1, 1, 28, 28))


def _expand(pattern: str) -> list[str]:
    """Names a documented pattern stands for: ``{a,b}`` is either, ``[x]`` is x or nothing."""
    import re

    m = re.search(r"\{([^{}]*)\}|\[([^\[\]]*)\]", pattern)
    if m is None:
        return [pattern]
    options = m[1].split(",") if m[1] is not None else [m[2], ""]
    return [n for o in options for n in _expand(pattern[: m.start()] + o + pattern[m.end() :])]


def test_every_model_name_the_docs_promise_exists():
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    patterns = {
        p
        for t in texts
        for p in re.findall(r"`(deit_[^`\s]+)`", t.read_text())
        if "*" not in p and "." not in p  # a glob or a file name, not a model name
    }
    names = {n for p in patterns for n in _expand(p)}
    assert _expand("deit_{tiny,small}[_distilled]_patch4_{28,32}") == [
        "deit_tiny_distilled_patch4_28",
        "deit_tiny_distilled_patch4_32",
        "deit_tiny_patch4_28",
        "deit_tiny_patch4_32",
        "deit_small_distilled_patch4_28",
        "deit_small_distilled_patch4_32",
        "deit_small_patch4_28",
        "deit_small_patch4_32",
    ]
    assert "deit_small_patch4_28" in names and len(names) == 24
    unknown = sorted(n for n in names if n not in deit.list_models())
    assert unknown == []
    for name in sorted(names):
        with torch.device("meta"):  # the architecture, without filling 87 M weights
            model = deit.create_model(name, num_classes=10)
        side = get_model_spec(name).img_size
        assert model.default_cfg["input_size"] == (3, side, side), name


def test_list_models_shows_kind_and_input_size_and_finds_teachers(capsys):
    from deit.cli import main

    assert main(["list-models"]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert out.split()[:4] == ["name", "kind", "input", "px"]
    assert rows["deit_nano_patch7_28"] == ["DeiT", "28"]
    assert rows["deit_small_distilled_patch4_28"] == ["DeiT", "distilled", "28"]
    assert rows["deit_base_distilled_patch16_384"] == ["DeiT", "distilled", "384", "official"]
    assert len(rows) == len(deit.list_models()) and "test_resnet" not in rows
    assert "deit list-models '*resnet*'" in err  # where the teachers are
    # a pattern searches timm and torchvision too: the README's teacher is found
    assert main(["list-models", "*resnet*"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["test_resnet"] == ["timm", "160"]
    assert rows["torchvision:resnet18"] == ["torchvision", "224"]
    assert main(["list-models", "--names", "--pretrained"]) == 0
    assert capsys.readouterr().out.split() == deit.list_models(pretrained=True)


def test_list_datasets_names_each_one_and_where_its_images_come_from(capsys):
    from deit.cli import main
    from deit.data import list_datasets

    assert main(["list-datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == list_datasets()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["mnist5k"].split()[1:3] == ["10", "28"] and "bundled" in rows["mnist5k"]
    assert "cifar-10-batches-py/" in rows["cifar10"] and "--data-path" in rows["imagenet"]


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
@pytest.mark.usefixtures("one_thread")
def test_dynamic_img_size_and_intermediates_equal_timms(name):
    """``dynamic_img_size=True`` and ``forward_intermediates`` against timm's model of the same
    weights at two sizes, larger and smaller than the built one (3 blocks keep it fast)."""
    torch.manual_seed(0)
    model = deit.create_model(name, depth=3, dynamic_img_size=True).eval()
    ref = timm.create_model(name, depth=3, dynamic_img_size=True).eval()
    ref.load_state_dict(model.state_dict())
    for h, w in ((256, 240), (160, 192)):
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            assert (model(x) - ref(x)).abs().max().item() <= 1e-5
            ours = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
            theirs = ref.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
            assert [tuple(y.shape) for y in ours] == [(2, 192, h // 16, w // 16)] * 2
            for a, b in zip(ours, theirs):
                assert (a - b).abs().max().item() <= 1e-5
            kw = dict(indices=2, norm=True, output_fmt="NLC", return_prefix_tokens=True)
            final, pairs = model.forward_intermediates(x, **kw)
            ref_final, ref_pairs = ref.forward_intermediates(x, **kw)
            assert (final - ref_final).abs().max().item() <= 1e-5
            assert pairs[0][1].shape == (2, model.num_prefix_tokens, 192)
            for (a, pa), (b, pb) in zip(pairs, ref_pairs):
                assert max((a - b).abs().max(), (pa - pb).abs().max()).item() <= 1e-5
    # the built size needs no interpolation: the same logits as a plain model of these weights
    plain = deit.create_model(name, depth=3).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    with pytest.raises(ValueError, match=r"not a multiple of the patch size.*resize or pad"):
        model(torch.randn(1, 3, 200, 224))
    with pytest.raises(ValueError, match=r"indices=5 do not fit a model of 3 blocks"):
        model.forward_intermediates(x, indices=5)
    with pytest.raises(ValueError, match="output_fmt must be"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.usefixtures("one_thread")
def test_deit3_parameter_counts_and_keys_equal_timms():
    # built on the meta device: no memory, no initialisation, all eight in about a second
    with torch.device("meta"):
        for name, count in DEIT3_PARAMS.items():
            ours, theirs = deit.create_model(name), timm.create_model(name)
            assert sum(p.numel() for p in ours.parameters()) == count, name
            assert sum(p.numel() for p in theirs.parameters()) == count, name
            assert ours.state_dict().keys() == theirs.state_dict().keys(), name
            assert ours.pos_embed.shape[1] == ours.patch_embed.num_patches  # no_embed_class


@pytest.mark.usefixtures("one_thread")
def test_deit3_logits_and_official_file_equal_timms(tmp_path):
    """A DeiT III model with timm's weights (LayerScale away from its 1e-6 start, so it counts)
    and the same weights in the official file layout (``gamma_1``/``gamma_2`` under ``model``)
    give timm's logits; the prefix-only inference seam gives them too."""
    torch.manual_seed(0)
    ref = timm.create_model("deit3_small_patch16_224", depth=2, num_classes=10).eval()
    for name, p in ref.named_parameters():
        if name.endswith("gamma"):
            p.data.uniform_(0.5, 1.5)
    official = {
        k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v
        for k, v in ref.state_dict().items()
    }
    torch.save({"model": official}, tmp_path / "deit_3_small_224_1k.pth")
    model = deit.create_model(
        "deit3_small_patch16_224",
        depth=2,
        num_classes=10,
        checkpoint_path=tmp_path / "deit_3_small_224_1k.pth",
    ).eval()
    assert model.blocks[1].ls2.gamma.min() >= 0.5
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = ref(x)
        assert (model(x) - expected).abs().max().item() <= 1e-5
        fast = deit.optimize_for_inference(model)
        assert (fast(x) - expected).abs().max().item() <= 1e-5
