"""Checkpoint formats: official/timm/safetensors/HF loading, pos-embed resampling, bad files."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import timm
import torch
from PIL import Image
from timm.layers import resample_abs_pos_embed

import deit
from conftest import tiny_hf_kwargs
from deit.checkpoints import CheckpointError, load_checkpoint, resample_pos_embed, save_weights


def _pico(distilled=True, **kw):
    name = "deit_pico_distilled_patch4_28" if distilled else "deit_pico_patch4_28"
    return deit.create_model(name, num_classes=10, **kw).eval()


def _same_output(a, b, x, atol=1e-6):
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item() <= atol


@pytest.mark.parametrize("fmt", ["official.pth", "plain.pth", "weights.safetensors"])
def test_formats_round_trip(fmt, tmp_path):
    torch.manual_seed(0)
    src = _pico()
    path = tmp_path / fmt
    if fmt == "official.pth":
        torch.save({"model": src.state_dict(), "epoch": 3}, path)
    elif fmt == "plain.pth":  # a DDP-wrapped state dict
        torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    else:
        save_weights(src, path)
    dst = deit.create_model("deit_pico_distilled_patch4_28", num_classes=10, checkpoint_path=path)
    assert _same_output(src, dst.eval(), torch.randn(2, 3, 28, 28), atol=0)


def test_save_weights_pth_is_official_layout(tmp_path):
    src = _pico()
    save_weights(src, tmp_path / "w.pth")
    obj = torch.load(tmp_path / "w.pth", weights_only=True)
    assert set(obj) == {"model", "img_size"} and set(obj["model"]) == set(src.state_dict())
    assert obj["img_size"] == [28, 28]  # recorded beside the official "model" key
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_pos_embed_resample_matches_timm_and_official_rule():
    torch.manual_seed(0)
    pe = torch.randn(1, 2 + 14 * 14, 32)
    new = resample_pos_embed(pe, (24, 24), num_prefix_tokens=2)
    assert new.shape == (1, 2 + 576, 32)
    assert torch.equal(new[:, :2], pe[:, :2])  # prefix rows untouched
    ref = resample_abs_pos_embed(
        pe, new_size=(24, 24), num_prefix_tokens=2, interpolation="bicubic", antialias=False
    )
    torch.testing.assert_close(new, ref, atol=1e-6, rtol=0)
    # the official rule written out: bicubic, align_corners=False on the (D, H, W) grid
    grid = pe[:, 2:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    off = torch.nn.functional.interpolate(grid, size=(24, 24), mode="bicubic", align_corners=False)
    torch.testing.assert_close(new[:, 2:], off.permute(0, 2, 3, 1).reshape(1, 576, 32))
    # a constant embedding stays constant; rectangular grids work
    const = torch.full((1, 1 + 4 * 6, 3), 0.5)
    rect = resample_pos_embed(const, (8, 3), 1, old_grid=(4, 6))
    assert rect.shape == (1, 25, 3)
    torch.testing.assert_close(rect, torch.full_like(rect, 0.5))


def test_load_224_into_384_interpolates(tmp_path):
    torch.manual_seed(0)
    src = deit.create_model("deit_tiny_distilled_patch16_224", depth=1, num_classes=5)
    save_weights(src, tmp_path / "w.pth")
    with pytest.warns(UserWarning, match="pos_embed interpolated"):
        dst = deit.create_model(
            "deit_tiny_distilled_patch16_224",
            depth=1,
            num_classes=5,
            img_size=384,
            checkpoint_path=tmp_path / "w.pth",
        )
    expected = resample_pos_embed(src.pos_embed.detach(), (24, 24), 2)
    assert torch.equal(dst.pos_embed.detach(), expected)
    assert torch.equal(dst.head_dist.weight, src.head_dist.weight)


def test_non_distilled_into_distilled(tmp_path):
    torch.manual_seed(0)
    src = _pico(distilled=False)
    save_weights(src, tmp_path / "w.safetensors")
    dst = _pico()
    report = load_checkpoint(dst, tmp_path / "w.safetensors")
    assert any("not distilled" in n for n in report.notes)
    assert torch.equal(dst.dist_token, src.cls_token)
    assert torch.equal(dst.head_dist.weight, src.head.weight)
    assert torch.equal(dst.pos_embed[:, 1], src.pos_embed[:, 0])
    assert torch.equal(dst.pos_embed[:, 2:], src.pos_embed[:, 1:])


def test_distilled_into_non_distilled(tmp_path):
    src = _pico()
    save_weights(src, tmp_path / "w.pth")
    dst = _pico(distilled=False)
    with pytest.warns(UserWarning, match="dist_token and head_dist were dropped"):
        load_checkpoint(dst, tmp_path / "w.pth")
    assert torch.equal(dst.pos_embed[:, 1:], src.pos_embed[:, 2:])


def test_class_count_mismatch_needs_finetune(tmp_path):
    save_weights(_pico(), tmp_path / "w.pth")
    dst = deit.create_model("deit_pico_distilled_patch4_28", num_classes=3)
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(10, 128\) vs model"):
        load_checkpoint(dst, tmp_path / "w.pth")
    head_before = dst.head.weight.detach().clone()
    report = load_checkpoint(dst, tmp_path / "w.pth", finetune=True)
    assert sum("Dropped head" in n for n in report.notes) == 4
    assert torch.equal(dst.head.weight, head_before)
    assert torch.equal(dst.cls_token, _load_sd(tmp_path / "w.pth")["cls_token"])


def _load_sd(path):
    return torch.load(path, weights_only=True)["model"]


def test_wrong_architecture_is_clear(tmp_path):
    save_weights(deit.create_model("deit_tiny_patch4_32", num_classes=10), tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as err:
        deit.create_model("deit_pico_patch4_28", num_classes=10, checkpoint_path=tmp_path / "w.pth")
    # one sentence: counts, 3 examples, what the file holds and the flag that fixes it
    assert str(err.value).endswith(
        "does not fit this model: shape mismatch in 79 tensors (e.g. cls_token: checkpoint "
        "(1, 1, 192) vs model (1, 1, 128); pos_embed: checkpoint (1, 65, 192) vs model "
        "(1, 50, 128)), 72 unexpected keys (e.g. blocks.10.attn.proj.bias); it looks like a "
        "deit_tiny_patch4_32, judging by its keys, not the deit_pico_patch4_28 asked for: "
        "pass --model deit_tiny_patch4_32."
    )


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(_pico(), tmp_path / "nope.pth")
    save_weights(_pico(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"Could not read .*truncated or corrupt\); check"):
        load_checkpoint(_pico(), tmp_path / "cut.pth")
    (tmp_path / "notes.txt").write_text("hello, not weights")
    Image.new("L", (8, 8)).save(tmp_path / "digit.png")
    for name in ("notes.txt", "digit.png"):  # e.g. an image passed where a checkpoint goes
        with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint .*; pass a"):
            load_checkpoint(_pico(), tmp_path / name)
    torch.save({"epoch": 1, "lr": torch.tensor(0.1), "other": [1, 2]}, tmp_path / "nosd.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_checkpoint(_pico(), tmp_path / "nosd.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(_pico(), tmp_path / "bad.safetensors")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": _Evil(marker)}, f)
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Evil(marker)}, tmp_path / "evil2.pth")
    for name in ("evil.pth", "evil2.pth"):
        with pytest.raises(CheckpointError, match="Refused to load"):
            load_checkpoint(_pico(), tmp_path / name)
    assert not marker.exists()


def test_pretrained_without_network_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError) as e:
        deit.create_model("deit_tiny_patch16_224", pretrained=True)
    cache = tmp_path / "hub" / "checkpoints"
    assert str(e.value) == (
        "Could not download the official weights of deit_tiny_patch16_224 "
        "https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth (OSError: Name "
        "or service not known); download deit_tiny_patch16_224-a1311bcf.pth where a network is "
        f"available and place it in {cache} (the same URL then reads it from there), or pass "
        "the file's local path."
    )
    assert "--checkpoint" not in str(e.value)  # no command has that flag
    with pytest.raises(CheckpointError, match="no official pretrained weights"):
        deit.create_model("deit_pico_patch4_28", pretrained=True)


def test_finetune_from_a_url_goes_through_the_hub_cache(tmp_path, monkeypatch, capsys):
    """As the official code: ``--finetune https://...`` is fetched once into torch.hub's cache
    (hash-checked) and read from there; offline it is one sentence with the URL intact."""
    from deit.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = tmp_path / "pico.pth"
    torch.save(deit.create_model("deit_pico_patch4_28", num_classes=10).state_dict(), source)
    url = "https://example.org/weights/pico-0123abcd.pth"
    fetched = []

    def download(got_url, dst, hash_prefix=None, progress=True):
        fetched.append((got_url, hash_prefix))
        shutil.copyfile(source, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    argv = ["train", "--model", "deit_pico_patch4_28", "--data-set", "digits", "--epochs", "1"]
    argv += ["--train-subset", "64", "--batch-size", "32", "--warmup-epochs", "0"]
    argv += ["--num_workers", "0", "--no-progress", "--finetune", url]
    assert main([*argv, "--output_dir", str(tmp_path / "a")]) == 0
    assert deit.checkpoints.read_weights(url).state_dict.keys() == torch.load(source).keys()
    assert fetched == [(url, "0123abcd")]  # once: the second read takes the cached copy
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "pico-0123abcd.pth").is_file()

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    other = "https://example.org/weights/other.pth"
    capsys.readouterr()
    assert main([*argv, "--finetune", other, "--output_dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"deit train: error: Could not download the checkpoint {other} (")
    assert len(err.strip().splitlines()) == 1 and "https:/e" not in err


def test_pretrained_uses_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"model": ref.state_dict()}, cache / "deit_tiny_patch16_224-a1311bcf.pth")
    model = deit.create_model("deit_tiny_patch16_224", pretrained=True).eval()
    assert _same_output(model, ref, torch.randn(1, 3, 224, 224), atol=1e-5)


def test_huggingface_conversion_parity(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.DeiTConfig(**tiny_hf_kwargs("class"))
    torch.manual_seed(0)
    hf = transformers.DeiTForImageClassificationWithTeacher(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = deit.create_model(
        "deit_tiny_distilled_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=2,
        num_classes=5,
        checkpoint_path=tmp_path / "hf",
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        assert (model(x) - expected).abs().max().item() <= 1e-4
    assert model.class_names == [f"class{i}" for i in range(5)]
    assert model.norm.eps == cfg.layer_norm_eps
    # a folder without weights names the expected layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json and model.safetensors"):
        deit.create_model("deit_pico_patch4_28", checkpoint_path=tmp_path / "empty")


def test_load_model_from_training_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = _pico()
    ema = {k: v + 1 for k, v in src.state_dict().items()}
    ckpt = {
        "model": src.state_dict(),
        "model_ema": ema,
        "model_name": "deit_pico_distilled_patch4_28",
        "num_classes": 10,
        "img_size": 28,
        "in_chans": 3,
        "class_names": [f"digit {i}" for i in range(10)],
        "mean": [0.13, 0.13, 0.13],
        "std": [0.3, 0.3, 0.3],
        "epoch": 4,
    }
    torch.save(ckpt, tmp_path / "last.pth")
    model, info = deit.load_model(tmp_path / "last.pth")
    assert not model.training
    assert info.class_names[3] == "digit 3" and info.img_size == (28, 28)
    assert info.mean == (0.13, 0.13, 0.13) and info.num_classes == 10
    assert _same_output(model, src, torch.randn(2, 3, 28, 28), atol=0)
    ema_model, _ = deit.load_model(tmp_path / "last.pth", use_ema=True)
    assert torch.equal(ema_model.cls_token, src.cls_token + 1)


def test_load_model_needs_name_and_falls_back_to_indices(tmp_path):
    save_weights(_pico(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="does not record its architecture"):
        deit.load_model(tmp_path / "w.safetensors")
    model, info = deit.load_model(tmp_path / "w.safetensors", "deit_pico_distilled_patch4_28")
    assert info.num_classes == 10 and info.class_names == [str(i) for i in range(10)]
    assert any("no class names" in n for n in info.notes)
    cnn = timm.create_model("resnet10t", num_classes=4)
    torch.save(
        {"model": cnn.state_dict(), "model_name": "resnet10t", "num_classes": 4}, tmp_path / "c.pth"
    )
    loaded, info = deit.load_model(tmp_path / "c.pth")
    assert info.model_name == "resnet10t" and torch.equal(loaded.fc.weight, cnn.fc.weight)
    with pytest.raises(
        CheckpointError, match="holds a resnet10t but the model asked for is resnet18"
    ):
        deit.load_model(tmp_path / "c.pth", model_name="resnet18")


def test_load_model_refuses_another_architecture_than_recorded(tmp_path):
    from deit.checkpoints import load_model

    model = deit.create_model("deit_pico_distilled_patch7_28", num_classes=10)
    run = {"model": model.state_dict(), "model_name": "deit_pico_distilled_patch7_28"}
    torch.save({**run, "num_classes": 10, "img_size": 28}, tmp_path / "run.pth")
    with pytest.raises(CheckpointError, match="holds a deit_pico_distilled_patch7_28 but the"):
        load_model(tmp_path / "run.pth", model_name="deit_tiny_patch16_224")
    loaded, info = load_model(tmp_path / "run.pth", model_name="deit_pico_distilled_patch7_28")
    assert info.num_classes == 10


def test_run_checkpoint_round_trip_versions_and_old_files(tmp_path):
    from deit.checkpoints import RUN_CHECKPOINT_VERSION, RunCheckpoint

    src = _pico()
    ck = RunCheckpoint(src.state_dict(), "deit_pico_distilled_patch4_28", num_classes=10, epoch=3)
    ck.save(tmp_path / "run.pth")
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left
    raw = torch.load(tmp_path / "run.pth", weights_only=True)
    assert raw["version"] == RUN_CHECKPOINT_VERSION == 1 and raw["epoch"] == 3
    back = RunCheckpoint.load(tmp_path / "run.pth")
    assert back.epoch == 3 and back.num_classes == 10 and back.optimizer is None
    assert all(torch.equal(back.model[k], v) for k, v in src.state_dict().items())
    # a file written before the version key (deit train's old dict) reads as version 0
    old = {k: v for k, v in raw.items() if k != "version"}
    torch.save({**old, "unknown_future_key": 1}, tmp_path / "old.pth")
    assert RunCheckpoint.load(tmp_path / "old.pth").version == 0
    model, info = deit.load_model(tmp_path / "old.pth")
    assert info.num_classes == 10 and _same_output(model, src, torch.randn(1, 3, 28, 28), atol=0)
    torch.save({**raw, "version": 99}, tmp_path / "new.pth")
    with pytest.raises(CheckpointError, match="version 99, newer than this deit reads"):
        RunCheckpoint.load(tmp_path / "new.pth")
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a training checkpoint of `deit train`"):
        RunCheckpoint.load(tmp_path / "plain.pth")


def test_read_weights_strips_ddp_prefix_and_takes_ema(tmp_path):
    from deit.checkpoints import read_weights

    src = _pico()
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "ddp.pth")
    w = read_weights(tmp_path / "ddp.pth")
    assert w.run is None and set(w.state_dict) == set(src.state_dict())
    ema = {k: v + 1 for k, v in src.state_dict().items()}
    torch.save({"model": src.state_dict(), "model_name": "x", "model_ema": ema}, tmp_path / "r.pth")
    assert torch.equal(
        read_weights(tmp_path / "r.pth", use_ema=True).state_dict["cls_token"], ema["cls_token"]
    )
    torch.save({"model": src.state_dict(), "model_name": "x"}, tmp_path / "noema.pth")
    assert read_weights(tmp_path / "noema.pth", use_ema=True).notes == [
        "No EMA weights in the checkpoint: the model weights are used."
    ]


def _deit_imports(path, module):
    """The ``deit`` modules that ``module`` (file ``path``) imports, at the top or inside a
    function, with the packages each import runs (``deit.models`` for ``deit.models.x``)."""
    import ast

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            names = [stem, *(f"{stem}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    # a module's own packages are already being imported when it runs: not an edge
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return {m for m in found if m.startswith("deit.") and m not in own and m != module}


def test_models_and_checkpoints_import_no_circle():
    from pathlib import Path

    root = Path(deit.__file__).parent
    graph = {}
    for pkg in ("models", "checkpoints"):
        for path in sorted((root / pkg).glob("*.py")):
            stem = "" if path.name == "__init__.py" else f".{path.stem}"
            module = f"deit.{pkg}{stem}"
            graph[module] = _deit_imports(path, module)
    # the layer rule: the models know nothing of checkpoint files
    assert [
        m for m in graph if m.startswith("deit.models") and "deit.checkpoints" in graph[m]
    ] == []
    done, path = set(), []

    def visit(m):
        assert m not in path, f"import circle: {' -> '.join([*path[path.index(m) :], m])}"
        if m in done or m not in graph:
            return
        path.append(m)
        for n in sorted(graph[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in graph:
        visit(m)
