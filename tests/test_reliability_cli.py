"""The command line and its outputs: every help screen and ``--version`` (1), weights
with NaN/inf and valid, rounded JSON (5), ``deit benchmark --batch-size`` below 1 (7), and the
smaller things of 8 (predict's progress bar and natural order, the fine-tuning note, analyze's
panel titles, ``export --output`` onto a folder, ``--num_workers`` spellings)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import deit
import deit.evaluate
import deit.predict
from conftest import abcd_tree
from deit.benchmark import benchmark_model
from deit.checkpoints import CheckpointError, RunCheckpoint
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
    assert "the paper's claims, 95 % CI" in " ".join(main_help.split())
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


# ------------------------------------------------------------------ 5: non-finite weights, JSON


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return abcd_tree(tmp_path_factory, train=3, val=2)


def _pico_state_dict(num_classes: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return deit.create_model(PICO, num_classes=num_classes).state_dict()


def test_non_finite_weights_are_refused_naming_the_first_tensor(tree, tmp_path, capsys):
    sd = _pico_state_dict()
    qkv = "blocks.0.attn.qkv.weight"  # (384, 128): 49,152 values
    sd[qkv][0, :2] = float("nan")
    sd["blocks.3.mlp.fc1.bias"][5] = float("inf")  # later in the state dict: not the one named
    run = tmp_path / "nan.pth"
    RunCheckpoint(sd, PICO, num_classes=4, img_size=28, in_chans=3).save(run)
    sentence = (
        f"{str(run)!r} holds non-finite weights: tensor {qkv!r} has 2 NaN of its 49,152 "
        "values; use a checkpoint saved before the values diverged, or copy or download the "
        "file again."
    )
    for argv in (
        ["eval", str(run), "--data-set", "folder", "--data-path", str(tree), "--json"],
        ["predict", str(run), str(tree / "val" / "a"), "--json"],
    ):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == f"deit {argv[0]}: error: {sentence}\n"
    # any file kind; NaN and inf in one tensor
    sd[qkv][0, :2] = torch.tensor([float("nan"), float("-inf")])
    st = tmp_path / "w.safetensors"
    deit.save_weights(sd, st)
    with pytest.raises(CheckpointError) as e:
        deit.load_model(st, PICO)
    assert f"tensor {qkv!r} has 1 NaN and 1 infinite of its 49,152 values" in str(e.value)
    assert str(e.value).startswith(f"{str(st)!r} holds non-finite weights")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A pico run checkpoint of 4 classes a-d with its normalisation (no notes when loaded)."""
    path = tmp_path_factory.mktemp("ckpt") / "ok.pth"
    sd = _pico_state_dict()
    RunCheckpoint(sd, PICO, 4, 28, 3, class_names=list("abcd"), mean=[0.5] * 3, std=[0.5] * 3).save(
        path
    )
    return path


def test_json_outputs_are_strict_and_rounded(tree, ckpt, monkeypatch, capsys):
    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    stats = {"loss": math.inf, "acc1": 2 / 3 * 100, "acc1_dist": 70.89999999999999, "n": 3.0}
    stats |= {"mean": [0.485, float("nan")], "notes": []}
    monkeypatch.setattr(deit.evaluate, "evaluate_checkpoint", lambda *a, **k: dict(stats))
    assert main(["eval", "any.pth", "--json"]) == 0
    out = capsys.readouterr().out
    assert strict(out) == {
        "loss": None,
        "acc1": 66.6667,
        "acc1_dist": 70.9,
        "n": 3.0,
        "mean": [0.485, None],
        "notes": [],
    }
    monkeypatch.undo()
    # predict --json: the probabilities of predict(), to 6 significant digits
    images = tree / "val" / "b"
    assert main(["predict", str(ckpt), str(images), "--json", "--topk", "2"]) == 0
    lines = [strict(x) for x in capsys.readouterr().out.splitlines()]
    expected = deit.predict.predict(ckpt, images, topk=2)
    assert [x["path"] for x in lines] == [p.path for p in expected] and len(lines) == 2
    for got, want in zip(lines, expected, strict=True):
        assert [t["prob"] for t in got["topk"]] == [float(f"{p:.6g}") for p in want.probs]


# ------------------------------------------------------------------ 8: smaller things


def test_predict_shows_progress_on_a_terminal_and_sorts_naturally(
    ckpt, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "imgs"
    names = [f"{i}.png" for i in range(12)] + ["d9/0.png", "d10/0.png"]
    for name in reversed(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (28, 28), (20 * len(name), 0, 0)).save(folder / name)
    argv = ["predict", str(ckpt), str(folder), "--topk", "1", "--batch-size", "5"]
    assert main(argv) == 0  # stderr is no terminal: no bar
    captured = capsys.readouterr()
    rows = [line.split()[0] for line in captured.out.splitlines()[2:]]
    assert rows == [str(folder / n) for n in names]  # 0, 1, 2, ..., 10, 11; d9 before d10
    assert captured.err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("\rpredict:   0%|") and "| 0/14 [" in err
    assert main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_finetune_to_another_class_count_prints_one_line_notes(tree, tmp_path, capsys):
    ten = tmp_path / "ten.pth"
    deit.save_weights(_pico_state_dict(num_classes=10), ten)
    argv = ["train", "--model", PICO, "--data-set", "folder", "--data-path", str(tree)]
    argv += ["--finetune", str(ten), "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4"]
    argv += ["--num_workers", "0", "--no-progress", "--output_dir", str(tmp_path / "run")]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        "note: Dropped head.weight (10, 128): the model's class count differs (finetune).",
        "note: Dropped head.bias (10,): the model's class count differs (finetune).",
    ]
    assert len(err) == 3 and err[2].startswith("epoch 1/1: loss ")  # no source line
    # deit eval: a loader's note, also among the notes eval prints, is printed once
    plain = tmp_path / "plain.pth"
    deit.save_weights(_pico_state_dict(), plain)
    argv = ["eval", str(plain), "--model", PICO.replace("pico", "pico_distilled")]
    assert main([*argv, "--data-set", "folder", "--data-path", str(tree)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "note: The checkpoint is not distilled: dist_token, its position embedding and "
        "head_dist were initialised from the class token's."
    )
    assert len(err) == len(set(err)) == 3 and all(line.startswith("note: ") for line in err)


def test_attention_figure_panel_titles_do_not_overlap():
    pytest.importorskip("matplotlib")
    from deit.analysis import TOKEN_NAMES, attention_figure

    g = torch.rand(4, 4)
    maps = {t: {"last": g, "rollout": g / 2} for t in TOKEN_NAMES}  # a distilled model's
    fig = attention_figure(torch.rand(3, 28, 28), maps, title="0.png", num_heads=3)
    fig.canvas.draw()  # constrained layout places the titles
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes[:5]]
    page = fig.bbox
    for i, box in enumerate(boxes):
        assert page.x0 <= box.x0 and box.x1 <= page.x1, (i, box, page)  # inside the figure
        for j, other in enumerate(boxes[i + 1 :], i + 1):
            assert box.x1 <= other.x0, (i, j, box, other)  # left to right, apart


def test_export_onto_a_folder_is_one_sentence(ckpt, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    argv = ["export", str(ckpt), "--format", "torchscript", "--output", str(folder)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"deit export: error: The output {str(folder)!r} is a folder; name the file to write, "
        f"e.g. {str(folder / 'ok.pt')!r}.\n"
    )
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]  # nothing written or lost


def test_num_workers_takes_both_spellings_in_every_command():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    spellings = {
        name: {o for a in sub._actions if a.dest == "num_workers" for o in a.option_strings}
        for name, sub in commands.items()
    }
    taking = {name: s for name, s in spellings.items() if s}
    assert taking == dict.fromkeys(
        ["train", "teacher-labels", "eval"], {"--num_workers", "--num-workers"}
    )
    needed = {"teacher-labels": ["--output", "x"], "eval": ["ckpt.pth"]}
    for name in taking:
        for flag in ("--num_workers", "--num-workers"):
            args = parser.parse_args([name, *needed.get(name, []), flag, "3"])
            assert args.num_workers == 3, (name, flag)
