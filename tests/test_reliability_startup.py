"""The command line starts without torch, and a run that cannot start prints
its error alone.

``deit --help`` took 4.7 s and 860 MB when every command imported torch and timm to build its
flags; the parser is now built from modules that import neither (:mod:`deit.commands`), and each
command's own module is imported when it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_image_tree
from deit.cli import build_parser, main

SRC = Path(__file__).parents[1] / "src"
#: What building the parser must not import (torch and what sits on it, or is as heavy).
HEAVY = ("torch", "timm", "torchvision", "numpy", "safetensors", "matplotlib", "sklearn")

# Runs each argv through `python -m deit.cli` (runpy, as the console script does) in one fresh
# interpreter and prints, per argv, its exit status and the heavy modules imported by then.
_PROBE = """
import json, runpy, sys
heavy = {heavy!r}
for argv in {argvs!r}:
    sys.argv = ["deit", *argv]
    try:
        runpy.run_module("deit.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code
    loaded = sorted(m for m in heavy if m in sys.modules)
    print(json.dumps({{"argv": argv, "code": code, "loaded": loaded}}), file=sys.__stdout__)
"""


def _subcommands() -> list[str]:
    return list(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_help_version_and_argument_errors_import_no_torch():
    commands = _subcommands()
    assert len(commands) == 10  # list-models, list-datasets, train, teacher-labels, ... export
    argvs = [["--help"], ["--version"], *([c, "--help"] for c in commands)]
    errors = [
        ["train", "--epochs", "two"],  # a bad value
        ["train", "--learning-rate", "1e-3"],  # an unknown flag, with its suggestion
        ["eval"],  # a missing argument
        ["export", "ok.pth", "--output", "x.onnx", "--input-size", "0"],  # a bad size
        ["no-such-command"],
    ]
    code = _PROBE.format(heavy=HEAVY, argvs=argvs + errors)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["argv"] for r in rows] == argvs + errors
    for r in rows:
        assert r["loaded"] == [], r  # cumulative: nothing before it imported them either
        assert r["code"] == (0 if r["argv"] in argvs else 2), r
    # each error is one line naming the fix
    assert "deit train: error: argument --epochs: invalid int value: 'two'" in proc.stderr
    assert "did you mean --lr?" in proc.stderr
    assert "expected SIZE or HxW in pixels, got '0'" in proc.stderr


def test_run_that_cannot_start_prints_its_error_alone(tmp_path, capsys):
    """The warm-up note (warm-up as long as the run) used to come before the real error."""
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["train", "--data-set", "folder", "--data-path", str(empty), "--model"]
    argv += ["deit_pico_patch7_28", "--input-size", "28", "--epochs", "1", "--warmup-epochs", "1"]
    argv += ["--output_dir", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deit train: error: "), err
    assert "warm-up" not in err
    assert not (tmp_path / "run").exists()
    # the same run on real images still gets the note, once, before training
    tree = write_image_tree(tmp_path / "imgs", {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    argv[argv.index(str(empty))] = str(tree)
    argv += ["--batch-size", "2", "--smoothing", "0", "--mixup", "0", "--cutmix", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert err.count("note: the warm-up (1 of 1 epochs) is not shorter than the run") == 1
