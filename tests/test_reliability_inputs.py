"""Issue 19, items 2, 3, 4 and 6: two runs into one folder, folder data sets whose classes do not
match, damaged teacher-label stores, bad configuration files; each with its expected value."""

from __future__ import annotations

from pathlib import Path

import pytest

from deit.cli import main
from deit.config import Config

PICO = "deit_pico_patch7_28"


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train", "--model", PICO, "--data-set", "folder", "--data-path", str(data)]
    argv += ["--input-size", "28", "--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0"]
    argv += ["--device", "cpu", "--num_workers", "0", "--no-model-ema", "--no-repeated-aug"]
    return [*argv, "--no-progress", "--output_dir", str(out), *extra]


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """The one error line of ``deit <argv>`` (exit status 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------ 6. configuration files


def test_config_file_problems_name_the_file_and_the_key(tmp_path, capsys):
    """Case 6: a bad value a flag overrides, a binary file, a folder, a missing file, a key set
    twice: one sentence each, naming the file (and the key)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text('epochs: "ten"\nlr: -1\nbatch_size: 8\n')
    err = _error(capsys, ["train", "--config", str(bad), "--epochs", "1", "--lr", "1e-3"])
    assert err == (
        f"deit train: error: In {bad}, config key 'epochs' must be an integer, not str 'ten'. "
        f"In {bad}, 'lr' is -1.0 but must be greater than 0; set a positive value."
    )
    png = tmp_path / "run.yaml"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert _error(capsys, ["train", "--config", str(png)]) == (
        f"deit train: error: The config file {png} is not text (byte 0 is 0x89, not UTF-8); "
        "pass a YAML file of config keys."
    )
    folder = tmp_path / "runs"
    (folder / "config.yaml").parent.mkdir()
    (folder / "config.yaml").write_text("epochs: 2\n")
    assert _error(capsys, ["train", "--config", str(folder)]) == (
        f"deit train: error: The config file {folder} is a folder; pass the YAML file itself "
        f"such as {folder / 'config.yaml'}."
    )
    assert _error(capsys, ["train", "--config", str(tmp_path / "nope.yaml")]) == (
        f"deit train: error: The config file {tmp_path / 'nope.yaml'} does not exist; check its "
        "path."
    )
    twice = tmp_path / "twice.yaml"
    twice.write_text("lr: 1e-3\nepochs: 2\nlr: 2e-3\n")
    assert _error(capsys, ["train", "--config", str(twice)]) == (
        f"deit train: error: {twice} sets 'lr' twice (lines 1 and 3), so one value would be "
        "lost; keep one of them."
    )
    with pytest.raises(Exception, match=r"sets 'lr' twice"):
        Config.from_yaml(twice)  # the library reads files the same way
