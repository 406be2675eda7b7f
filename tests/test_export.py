"""deit export: ONNX (onnxruntime) and TorchScript parity with PyTorch, dynamic batch, errors."""

from __future__ import annotations

import copy
import functools
import warnings

import onnx
import onnxruntime as ort
import pytest
import torch

import deit
import deit.export as export_mod
from deit.checkpoints import ModelInfo, save_weights
from deit.cli import main
from deit.export import ExportError, export_model

NAME = "deit_pico_distilled_patch4_28"


@functools.cache
def _cached(name):
    torch.manual_seed(0)
    return deit.create_model(name, num_classes=10).eval()


def _pico(name=NAME):
    """A fresh copy of a pico model (built once: initialisation is the slow part)."""
    return copy.deepcopy(_cached(name))


def _checkpoint(path, model, name=NAME):
    torch.save(
        {
            "model": model.state_dict(),
            "model_name": name,
            "num_classes": 10,
            "img_size": 28,
            "in_chans": 3,
            "class_names": [str(i) for i in range(10)],
            "mean": (0.5,) * 3,
            "std": (0.25,) * 3,
            "crop_pct": 1.0,
            "config": {},
            "model_ema": None,
        },
        path,
    )
    return path


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])


@pytest.mark.parametrize("head", ["both", "cls"])
def test_onnx_parity_tiny_distilled(tmp_path, head):
    model = _pico()
    res = export_model(model, tmp_path / "m.onnx", head=head)
    assert res.max_abs_diff <= 1e-4 and res.exporter == "torchscript-onnx"
    assert res.input_shape == (2, 3, 28, 28) and res.check_shape == (3, 3, 28, 28)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert graph.input[0].name == "images" and dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, 28, 28]
    # our own check, on a third batch size: the exported output is the chosen head
    x = torch.randn(5, 3, 28, 28)
    with torch.no_grad():
        c, d = model.forward_heads(x)
    ref = (c + d) / 2 if head == "both" else c
    assert (_ort(tmp_path / "m.onnx", x) - ref).abs().max().item() <= 1e-4
    assert model.head_choice == "both"  # the caller's model is left as it was


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_parity_from_checkpoint_cli(tmp_path, capsys):
    model = _pico()
    ck = _checkpoint(tmp_path / "run.pth", model)
    out = tmp_path / "m.pt"
    args = ["export", str(ck), "--format", "torchscript", "--output", str(out), "--head", "dist"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "torch.jit.load vs PyTorch on a random batch of 3: max abs difference" in printed
    loaded = torch.jit.load(str(out))
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        _, d = model.forward_heads(x)
        assert (loaded(x) - d).abs().max().item() <= 1e-4


def test_onnx_parity_non_deit_model_with_input_size(tmp_path):
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()  # fmt: skip
    with pytest.raises(ValueError, match="input size of this Sequential is unknown"):
        export_model(cnn, tmp_path / "c.onnx")
    res = export_model(cnn, tmp_path / "c.onnx", input_size=16, check_batch=2)
    assert res.input_shape == (2, 3, 16, 16) and res.max_abs_diff <= 1e-4


def test_onnx_parity_deit_base_patch16_224_slow(tmp_path):
    """SLOW (~20-40 s on 2 CPU cores): the full-size DeiT-B (86.6 M parameters, random
    weights) through the ONNX exporter and onnxruntime, traced and checked at batch 1."""
    torch.manual_seed(0)
    model = deit.create_model("deit_base_patch16_224").eval()
    info = ModelInfo("deit_base_patch16_224", 1000, (224, 224), class_names=["x"] * 1000)
    res = export_model((model, info), tmp_path / "b.onnx", trace_batch=1, check_batch=1)
    assert res.max_abs_diff <= 1e-4
    assert res.check_shape == (1, 3, 224, 224)


def test_unknown_input_size_is_an_error(tmp_path, capsys):
    w = tmp_path / "weights.pth"
    save_weights(_pico(), w)  # official layout: weights only, no architecture
    with pytest.raises(ValueError, match=r"input size of '.*weights\.pth' is unknown"):
        export_model(w, tmp_path / "m.onnx")
    assert main(["export", str(w), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deit export: error: The input size of") and "--model NAME" in err
    assert len(err.strip().splitlines()) == 1
    # with the model name the configuration gives the size
    res = export_model(w, tmp_path / "m.pt", format="torchscript", model_name=NAME)
    assert res.input_shape[1:] == (3, 28, 28)
    with pytest.raises(ValueError, match="takes 28x28 inputs, not 32x32"):
        export_model(_pico(), tmp_path / "m.pt", input_size=32)


def test_failed_parity_check_is_reported_and_file_removed(tmp_path, monkeypatch):
    real = export_mod._run_onnx
    monkeypatch.setattr(export_mod, "_run_onnx", lambda p, x: real(p, x) + 1e-2)
    with pytest.raises(ExportError, match=r"max abs difference 0\.01 > 0\.0001"):
        export_model(_pico(), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ValueError, match="Unknown export format"):
        export_model(_pico(), tmp_path / "m.x", format="tflite")


def test_exported_files_carry_normalisation_size_and_class_names(tmp_path, capsys):
    """ONNX metadata_props and TorchScript's metadata.json hold what feeding the file needs
    (the values the checkpoint records), and `deit export` prints them."""
    import json

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    path = tmp_path / "run.pth"
    _checkpoint(path, _pico())
    ck = torch.load(path, weights_only=True)
    torch.save({**ck, "class_names": names, "mean": (0.13114,) * 3, "std": (0.30835,) * 3}, path)
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert props == {
        "input_size": [3, 28, 28],
        "head": "both",
        "model_name": NAME,
        "mean": [0.13114] * 3,
        "std": [0.30835] * 3,
        "crop_pct": 1.0,
        "class_names": names,
    }
    assert "metadata (metadata_props, JSON values):\n" in printed
    assert "  mean: [0.13114, 0.13114, 0.13114]\n" in printed
    assert f"  class_names: {json.dumps(names)}\n" in printed
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert json.loads(sess.get_modelmeta().custom_metadata_map["std"]) == [0.30835] * 3
    pt = tmp_path / "m.pt"
    assert main(["export", str(path), "--format", "torchscript", "--output", str(pt)]) == 0
    extra = {"metadata.json": ""}
    with warnings.catch_warnings():  # newer torch deprecates TorchScript; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(pt), _extra_files=extra)
    assert {k: json.loads(v) for k, v in json.loads(extra["metadata.json"]).items()} == props
