"""The package as a whole: importing it changes nothing global; optional extras are named."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import deit
from deit._optional import MissingExtraError, require
from deit.cli import main

ONNX_SENTENCE = "deit export --format onnx needs the onnx extra: pip install 'deit[onnx]'."


def test_import_deit_changes_no_environment_and_the_command_sets_omp_policy(tmp_path):
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import deit\n"
        "assert 'torch' not in sys.modules, 'import deit loaded torch'\n"
        "deit.create_model\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "import deit.cli\n"
        "assert dict(os.environ) == before\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    # torch's own import of torch._dynamo (through timm) records its cache folder in the
    # environment when none is set: give it one, so the check sees only what deit does
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path.resolve() / "inductor")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    code = (
        "import os, sys\n"
        "from deit.cli import main\n"
        "main(['list-models', '--names', 'deit_tiny_patch16_224'])\n"
        "assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, env=env, timeout=120, capture_output=True
    )
    assert out.stdout.decode().split() == ["deit_tiny_patch16_224"]


def test_require_names_the_extra_in_one_sentence(monkeypatch):
    assert require("json", "x", "y").__name__ == "json"
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(MissingExtraError) as e:
        require("onnx", "onnx", "deit export --format onnx")
    assert str(e.value) == ONNX_SENTENCE


def test_export_and_analysis_without_their_extras(monkeypatch, tmp_path, capsys):
    from deit import benchmark
    from deit.analysis import figures

    model = deit.create_model("deit_pico_patch4_28", num_classes=10)
    monkeypatch.setitem(sys.modules, "onnx", None)
    from deit.export import export_model

    with pytest.raises(MissingExtraError, match=r"pip install 'deit\[onnx\]'"):
        export_model(model, tmp_path / "m.onnx")
    ckpt = tmp_path / "m.safetensors"
    deit.save_weights(model, ckpt)
    argv = ["export", str(ckpt), "--model", "deit_pico_patch4_28", "--output", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"deit export: error: {ONNX_SENTENCE}"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingExtraError, match=r"deit analyze needs the analysis extra"):
        figures._figure(2, 2)
    with pytest.raises(MissingExtraError, match=r"--no-plot"):
        benchmark.plot_throughput_accuracy([], tmp_path / "fig.png")


EXTRAS = ("matplotlib", "mlxtend", "sklearn", "scipy", "tensorboard", "onnx", "onnxruntime")


def test_train_eval_predict_without_any_extra(tmp_path):
    """`pip install deit` without extras: train, eval and predict work on an image folder (the
    extras' modules are made unimportable in a fresh interpreter)."""
    from conftest import write_image_tree

    root = write_image_tree(
        tmp_path / "data", {"train": {"a": 8, "b": 8}, "val": {"a": 2, "b": 2}}, (28, 28)
    )
    run = tmp_path / "run"
    train = (
        "train --model deit_pico_patch7_28 --data-set folder --input-size 28 --epochs 1 "
        f"--batch-size 8 --num_workers 0 --no-model-ema --data-path {root} --output_dir {run}"
    )
    image = next((root / "val" / "a").iterdir())
    commands = [
        train.split(),
        ["eval", str(run / "checkpoint.pth"), "--data-set", "folder", "--data-path", str(root)],
        ["predict", str(run / "checkpoint.pth"), str(image)],
    ]
    for argv in commands:
        code = (
            "import sys\n"
            f"for m in {EXTRAS!r}: sys.modules[m] = None\n"
            "from deit.cli import main\n"
            f"sys.exit(main({argv!r}))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, (argv[0], out.stderr[-2000:])
        if argv[0] == "train":
            assert "TensorBoard logging is off" in out.stderr
    assert (run / "log.txt").is_file() and not (run / "tensorboard").exists()
