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


def test_import_deit_changes_no_environment_and_the_command_sets_omp_policy():
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
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    code = (
        "import os, sys\n"
        "from deit.cli import main\n"
        "main(['list-models', 'deit_tiny_patch16_224'])\n"
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
    from deit import analysis, benchmark

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
        analysis._figure(2, 2)
    with pytest.raises(MissingExtraError, match=r"--no-plot"):
        benchmark.plot_throughput_accuracy([], tmp_path / "fig.png")
