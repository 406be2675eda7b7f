"""Issue 19, the command line and its outputs: every help screen and ``--version`` (1), weights
with NaN/inf and valid, rounded JSON (5), ``deit benchmark --batch-size`` below 1 (7), and the
smaller things of 8 (predict's progress bar and natural order, the fine-tuning note, analyze's
panel titles, ``export --output`` onto a folder, ``--num_workers`` spellings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deit.benchmark import benchmark_model
from deit.cli import build_parser, main

ROOT = Path(__file__).parents[1]
PICO = "deit_pico_patch7_28"


def _subcommands() -> list[str]:
    parser = build_parser()
    return list(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_every_help_screen_prints_and_version_comes_from_metadata(capsys):
    commands = _subcommands()
    assert {"train", "eval", "demo", "predict", "analyze", "benchmark", "export"} <= set(commands)
    for argv in [["--help"], *([c, "--help"] for c in commands)]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr().out
        assert e.value.code == 0, argv
        assert out.startswith(f"usage: deit {argv[0] if len(argv) == 2 else ''}".rstrip()), argv
    # the "95 % CI" of deit demo's one-line help, which argparse once read as a format code
    main_help = build_parser().format_help()
    assert "distillation gain, 95 % CI" in " ".join(main_help.split())
    # a bare `deit`: the same help, exit status 2
    assert main([]) == 2
    assert capsys.readouterr().out == main_help
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert e.value.code == 0 and capsys.readouterr().out == f"deit {version}\n"


@pytest.mark.parametrize("size", [0, -1])
def test_benchmark_batch_size_below_one_is_one_sentence(size, capsys):
    assert main(["benchmark", "--models", PICO, "--batch-size", str(size), "--no-plot"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before anything is measured
    assert captured.err == (
        f"deit benchmark: error: 'batch_size' is {size} but must be at least 1; pass a positive "
        "batch size, or leave it out for the default (the largest power of two that fits on "
        "CUDA, 32 on CPU).\n"
    )
    with pytest.raises(ValueError, match=f"'batch_size' is {size} but must be at least 1"):
        benchmark_model(PICO, batch_size=size, device="cpu")
