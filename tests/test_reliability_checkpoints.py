"""Checkpoints as inputs: fine-tuning across the plain/distilled variants from every file
kind (5), Hugging Face ViT-format folders (6), the position grid of non-square files (8) and
one-sentence misfit messages for teachers and students (11)."""

from __future__ import annotations

import json
import warnings

import pytest
import timm
import torch

import deit
from conftest import tiny_hf_kwargs
from deit.checkpoints import (
    CheckpointError,
    RunCheckpoint,
    load_checkpoint,
    read_weights,
    resample_pos_embed,
    save_weights,
)
from deit.config import Config
from deit.teacher import build_teacher
from deit.train.model import _load_finetune

PLAIN, DISTILLED = "deit_pico_patch7_28", "deit_pico_distilled_patch7_28"
# deit_pico_*_patch7_28 in transformers' terms (D 128, 6 blocks, 2 heads, MLP 512)
_HF_PICO = dict(
    image_size=28,
    patch_size=7,
    hidden_size=128,
    num_hidden_layers=6,
    num_attention_heads=2,
    intermediate_size=512,
    num_labels=10,
)


def _hf_folder(tmp_path, distilled: bool):
    """A transformers folder of the pico architecture: DeiT with teacher, or ViT (hub form)."""
    transformers = pytest.importorskip("transformers")
    if distilled:
        hf = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**_HF_PICO))
    else:
        hf = transformers.ViTForImageClassification(transformers.ViTConfig(**_HF_PICO))
    hf.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _source_file(kind: str, name: str, tmp_path):
    """``(path, state dict in DeiT names)`` of a random ``name`` saved as file kind ``kind``."""
    if kind == "hf":
        path = _hf_folder(tmp_path, "distilled" in name)
        return path, read_weights(path).state_dict
    torch.manual_seed(0)
    sd = deit.create_model(name, num_classes=10).state_dict()
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pth")
    if kind == "run":  # what deit train writes
        RunCheckpoint(sd, name, num_classes=10, img_size=28, in_chans=3).save(path)
    elif kind == "official":  # the bare {'model': state_dict} of the official releases
        torch.save({"model": sd}, path)
    elif kind == "timm":  # a plain state dict
        torch.save(sd, path)
    else:
        save_weights(sd, path)
    return path, sd


KINDS = ["run", "official", "timm", "safetensors", "hf"]


@pytest.mark.parametrize("kind", KINDS)
def test_finetune_plain_into_distilled_from_every_file_kind(kind, tmp_path):
    path, src = _source_file(kind, PLAIN, tmp_path)
    model = deit.create_model(DISTILLED, num_classes=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notes = _load_finetune(model, Config(model=DISTILLED, finetune=str(path)))
    assert any("dist_token, its position embedding and head_dist were init" in n for n in notes)
    assert len(caught) >= len(notes)  # every note is also a warning
    assert torch.equal(model.cls_token, src["cls_token"])
    assert torch.equal(model.dist_token, src["cls_token"])  # initialised from the class token
    assert torch.equal(model.pos_embed[:, :2], src["pos_embed"][:, [0, 0]])
    assert torch.equal(model.pos_embed[:, 2:], src["pos_embed"][:, 1:])
    assert torch.equal(model.head_dist.weight, src["head.weight"])
    assert torch.equal(model.blocks[5].attn.qkv.weight, src["blocks.5.attn.qkv.weight"])
    if kind == "run":  # the recorded name differs and is said, not refused
        assert notes[0].endswith(f"holds a {PLAIN}, adapted to {DISTILLED}.")


@pytest.mark.parametrize("kind", KINDS)
def test_finetune_distilled_into_plain_from_every_file_kind(kind, tmp_path):
    path, src = _source_file(kind, DISTILLED, tmp_path)
    model = deit.create_model(PLAIN, num_classes=10)
    with pytest.warns(UserWarning, match="dist_token and head_dist were dropped"):
        _load_finetune(model, Config(model=PLAIN, finetune=str(path)))
    assert torch.equal(model.cls_token, src["cls_token"])
    assert torch.equal(model.pos_embed, src["pos_embed"][:, [0, *range(2, 18)]])
    assert torch.equal(model.head.weight, src["head.weight"])
    assert not hasattr(model, "dist_token")


def test_hf_vit_folder_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(**tiny_hf_kwargs("c"))
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "vit")
    assert json.loads((tmp_path / "vit" / "config.json").read_text())["model_type"] == "vit"
    assert (tmp_path / "vit" / "model.safetensors").is_file()
    kw = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5)
    model = deit.create_model("deit_tiny_patch16_224", checkpoint_path=tmp_path / "vit", **kw)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        diff = (model.eval()(x) - hf(pixel_values=x).logits).abs().max().item()
    assert diff <= 1e-4
    assert model.class_names == [f"c{i}" for i in range(5)] and model.norm.eps == 1e-12
    # the bare ViTModel: no classifier (one sentence says so), its pooler left out
    base = transformers.ViTModel(cfg).eval()
    base.save_pretrained(tmp_path / "base")
    fresh = deit.create_model("deit_tiny_patch16_224", **kw).eval()
    with pytest.raises(CheckpointError, match=r"2 missing keys \(e.g. head.bias; head.weight\); "):
        load_checkpoint(fresh, tmp_path / "base")
    report = load_checkpoint(fresh, tmp_path / "base", finetune=True)
    assert report.notes[-1] == (
        "The Hugging Face pooler (pooler.dense) has no DeiT counterpart and was left out."
    )
    with torch.no_grad():
        expected = base(pixel_values=x).last_hidden_state
        assert (fresh.forward_features(x) - expected).abs().max().item() <= 1e-4


def test_hf_vit_without_qkv_bias_is_one_sentence(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(**{**_HF_PICO, "num_hidden_layers": 1, "qkv_bias": False})
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "nobias")
    with pytest.raises(CheckpointError, match=r"^The Hugging Face checkpoint has no "):
        read_weights(tmp_path / "nobias")


def test_hf_folder_of_another_model_type_is_one_sentence(tmp_path):
    folder = tmp_path / "swin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "swin"}))
    save_weights({"x": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        read_weights(folder)
    assert str(err.value) == (
        f"Folder {str(folder)!r} holds a Hugging Face 'swin' model; only DeiT and ViT "
        "(model_type 'deit' or 'vit') convert to DeiT weights."
    )


def _wide(img=(28, 56), **kw):
    return deit.create_model(PLAIN, num_classes=10, img_size=img, **kw).eval()


def test_non_square_file_into_transposed_model_is_resampled(tmp_path):
    # 28x56 px = a 4x8 patch grid; the 56x28 model's 8x4 grid has the same 32 rows
    torch.manual_seed(0)
    src = _wide((28, 56))
    save_weights(src, tmp_path / "w.pth")  # records img_size [28, 56]
    save_weights(src, tmp_path / "w.safetensors")
    expected = resample_pos_embed(src.pos_embed.detach(), (8, 4), 1, old_grid=(4, 8))
    for name in ("w.pth", "w.safetensors"):
        dst = _wide((56, 28))
        report = load_checkpoint(dst, tmp_path / name)
        assert "from a 4x8 to a 8x4 patch grid" in report.notes[0]
        assert torch.equal(dst.pos_embed.detach(), expected)
    # the same tensors with no recorded size: ambiguous, refused before anything is loaded
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    dst = _wide((56, 28))
    before = dst.pos_embed.detach().clone()
    with pytest.raises(CheckpointError, match=r"fit several patch grids \(the model's is 8x4\); "):
        load_checkpoint(dst, tmp_path / "bare.pth")
    assert torch.equal(dst.pos_embed, before)
    load_checkpoint(dst, tmp_path / "bare.pth", source_img_size=(28, 56))
    assert torch.equal(dst.pos_embed.detach(), expected)
    # deit train's route: --finetune-img-size 28 56
    from deit.config import Config
    from deit.train.model import _load_finetune

    cli = _wide((56, 28))
    cfg = Config(model=PLAIN, finetune=str(tmp_path / "bare.pth"), finetune_img_size=[28, 56])
    _load_finetune(cli, cfg)
    assert torch.equal(cli.pos_embed.detach(), expected)
    # into a model of the file's own shape: loaded unchanged
    same = _wide((28, 56))
    load_checkpoint(same, tmp_path / "w.pth")
    assert torch.equal(same.pos_embed, src.pos_embed)


def test_recorded_image_size_of_a_run_checkpoint_sets_the_grid(tmp_path):
    # deit train at 28 px: a 4x4 grid; a 14x56 model has 2x8 = 16 rows too
    torch.manual_seed(0)
    src = deit.create_model(PLAIN, num_classes=10)
    RunCheckpoint(src.state_dict(), PLAIN, num_classes=10, img_size=28).save(tmp_path / "run.pth")
    dst = _wide((14, 56))
    load_checkpoint(dst, tmp_path / "run.pth")
    expected = resample_pos_embed(src.pos_embed.detach(), (2, 8), 1, old_grid=(4, 4))
    assert torch.equal(dst.pos_embed.detach(), expected)
    # a recorded size that contradicts the rows is named
    RunCheckpoint(src.state_dict(), PLAIN, num_classes=10, img_size=56).save(tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"records image size 56x56 \(a 8x8 patch grid\) but"):
        load_checkpoint(_wide((14, 56)), tmp_path / "bad.pth")


def test_teacher_of_another_architecture_is_one_sentence(tmp_path):
    torch.manual_seed(0)
    cnn = timm.create_model("resnet10t", num_classes=5)
    run = RunCheckpoint(cnn.state_dict(), "resnet10t", num_classes=5, img_size=28)
    run.save(tmp_path / "teacher.pth")
    with pytest.raises(CheckpointError) as err:
        build_teacher("resnet18", tmp_path / "teacher.pth", num_classes=5)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 450
    assert msg == (
        f"Teacher checkpoint {str(tmp_path / 'teacher.pth')!r} does not fit this model: shape "
        "mismatch in 3 tensors (e.g. layer2.0.downsample.1.weight: checkpoint (128, 64, 1, 1) "
        "vs model (128,)), 64 missing keys (e.g. conv1.weight), 28 unexpected keys (e.g. "
        "conv1.0.weight); it holds a resnet10t (recorded in the file), not the resnet18 "
        "asked for: pass --teacher-model resnet10t."
    )
    # the same file as a student to fine-tune: the flag is --model
    model = deit.create_model(PLAIN, num_classes=5)
    with pytest.raises(CheckpointError) as err:
        _load_finetune(model, Config(model=PLAIN, finetune=str(tmp_path / "teacher.pth")))
    assert str(err.value).endswith(
        f"it holds a resnet10t (recorded in the file), not the {PLAIN} asked for: pass "
        "--model resnet10t."
    )
    assert str(err.value).count("e.g.") == 2  # missing and unexpected keys, one example each


def test_unrecorded_architecture_is_judged_by_its_keys(tmp_path):
    torch.save(deit.create_model(DISTILLED, num_classes=10).state_dict(), tmp_path / "d.pth")
    model = deit.create_model("deit_tiny_patch4_28", num_classes=10)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path / "d.pth")
    assert str(err.value).endswith(
        f"it looks like a {DISTILLED}, judging by its keys, not the deit_tiny_patch4_28 asked "
        f"for: pass --model {DISTILLED}."
    )
