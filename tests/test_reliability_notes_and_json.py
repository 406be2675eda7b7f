"""Notes in one form, ``deit train --eval``'s JSON, and resume's refusal of NaN weights.

Notes began ``note:`` in some commands and ``deit predict: note:`` in others; ``deit train
--eval`` printed plain ``json.dumps`` (``NaN``, ``70.89999999999999``) where every ``--json`` is
strict and rounded; :meth:`RunCheckpoint.load` (resume) read NaN/inf weights that every other
reader refuses.
"""

from __future__ import annotations

import json
import math
import tokenize
from pathlib import Path

import pytest
import torch

import deit
import deit.train.runner as runner
from conftest import abcd_tree, tiny_train_argv, write_image_tree
from deit._notes import notes_as_lines, print_note
from deit.checkpoints import CheckpointError, RunCheckpoint
from deit.cli import main

MODEL = "deit_pico_patch7_28"
SRC = Path(__file__).parents[1] / "src" / "deit"
#: Python 3.12 splits an f-string into tokens; its start holds the first characters.
FSTRING_START = getattr(tokenize, "FSTRING_START", -1)
FSTRING_MIDDLE = getattr(tokenize, "FSTRING_MIDDLE", -2)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return abcd_tree(tmp_path_factory, train=2, val=1)


def _strict(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


# ---------------------------------------------------------------------------- notes, one form


def test_every_note_has_one_form_in_every_command(tree, tmp_path, capsys):
    # every string of src that prints `note:` begins with it (no `deit predict: note:`)
    for path in SRC.rglob("*.py"):
        with path.open("rb") as f:
            prev = None
            for tok in tokenize.tokenize(f.readline):
                text = tok.string.lstrip("rbfuRBFU")
                if "note:" in tok.string and not text.startswith(('"""', "'''")):
                    if tok.type == tokenize.STRING:  # Python 3.11: f-strings too
                        text = text.lstrip("\"'")
                    else:  # 3.12: an f-string's text, right after its start
                        assert tok.type == FSTRING_MIDDLE and prev == FSTRING_START, tok
                    assert text.startswith("note: "), f"{path}:{tok.start[0]}: {tok.line}"
                prev = tok.type
    # train (a retired flag, a warm-up as long as the run) and predict (no class names)
    argv = tiny_train_argv(tree, tmp_path / "run", "--warmup-epochs", "1", "--start_epoch", "3")
    assert main(argv) == 0
    train_err = capsys.readouterr().err.splitlines()
    torch.manual_seed(0)
    model = deit.create_model(MODEL, num_classes=4)
    ck = tmp_path / "nonames.pth"
    RunCheckpoint(model.state_dict(), MODEL, 4, 28, 3).save(ck)
    assert main(["predict", str(ck), str(tree / "val" / "a"), "--no-progress"]) == 0
    predict_err = capsys.readouterr().err.splitlines()
    notes = [x for x in train_err + predict_err if "note" in x.lower()]
    assert notes[:2] == [
        "note: --start_epoch is not used: the first epoch comes from the --resume checkpoint.",
        "note: the warm-up (1 of 1 epochs) is not shorter than the run, so the learning rate "
        "never reaches --lr; lower --warmup-epochs.",
    ]
    assert notes[2].startswith("note: The file records no input normalisation: the ")
    assert notes[3] == "note: The checkpoint has no class names: class indices are used instead."
    assert len(notes) == 4


def test_a_note_prints_once_per_command_and_every_time_for_python_callers(capsys):
    print_note("x")
    print_note("x")  # a Python caller (no command): each call prints
    with notes_as_lines():
        print_note("x")
        print_note("x")  # one command: once
        print_note("y")
    with notes_as_lines():
        print_note("x")  # the next command prints it again
    assert capsys.readouterr().err == "note: x\n" * 3 + "note: y\n" + "note: x\n"


# ------------------------------------------------------------------------- deit train --eval


@pytest.mark.parametrize(
    ("stats", "want"),
    [
        (
            {"acc1": 70.89999999999999, "acc5": 100.0, "loss": 1 / 3},
            {"test_acc1": 70.9, "test_acc5": 100.0, "test_loss": 0.333333},
        ),
        (
            {"acc1": 2 / 3 * 100, "acc5": math.inf, "loss": math.nan},
            {"test_acc1": 66.6667, "test_acc5": None, "test_loss": None},
        ),
    ],
    ids=["finite", "non-finite"],
)
def test_train_eval_prints_strict_rounded_json(tree, tmp_path, monkeypatch, capsys, stats, want):
    monkeypatch.setattr(runner, "_evaluate", lambda *a, **k: dict(stats))
    assert main(tiny_train_argv(tree, tmp_path / "run", "--eval")) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and _strict(out) == want
    assert "NaN" not in out and "Infinity" not in out


def test_train_eval_json_of_a_real_evaluation_is_rounded(tree, tmp_path, capsys):
    assert main(tiny_train_argv(tree, tmp_path / "run", "--eval")) == 0
    got = _strict(capsys.readouterr().out)
    assert set(got) >= {"test_acc1", "test_acc5", "test_loss"}
    for v in got.values():
        assert isinstance(v, (int, float)) and v == float(f"{v:.6g}")
    assert got["test_acc1"] in (0.0, 25.0, 50.0, 75.0, 100.0)  # 4 validation images


# ---------------------------------------------------------------- resume refuses NaN weights


@pytest.mark.parametrize("where", ["model", "model_ema"])
def test_resume_refuses_non_finite_weights_naming_the_first_tensor(tree, tmp_path, capsys, where):
    out = tmp_path / "run"
    ema = ("--model-ema",) if where == "model_ema" else ()
    assert main([*tiny_train_argv(tree, out, "--warmup-epochs", "0"), *ema]) == 0
    capsys.readouterr()
    path = out / "checkpoint.pth"
    raw = torch.load(path, weights_only=True)
    qkv = "blocks.0.attn.qkv.weight"
    raw[where][qkv][0, :3] = torch.tensor([math.nan, math.inf, math.nan])
    raw[where]["head.bias"][0] = math.nan  # later in the state dict: not the one named
    torch.save(raw, path)
    n = raw[where][qkv].numel()
    sentence = (
        f"{str(path)!r} holds non-finite weights: tensor {qkv!r} has 2 NaN and 1 infinite of "
        f"its {n:,} values; use a checkpoint saved before the values diverged, or copy or "
        "download the file again."
    )
    with pytest.raises(CheckpointError) as e:
        RunCheckpoint.load(path)
    assert str(e.value) == sentence
    again = tiny_train_argv(tree, tmp_path / "again", "--warmup-epochs", "0", "--resume", str(path))
    assert main([*again, *ema]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"deit train: error: {sentence}"


# ------------------------------------------------------------- deit eval: classes by name


def _always_predicts(path: Path, names: list[str], index: int) -> Path:
    """A ``deit train``-style checkpoint over ``names`` whose head always answers ``index``
    (zero weights, one large bias), so its top-1 is known by hand."""
    model = deit.create_model(MODEL, num_classes=len(names))
    sd = model.state_dict()
    sd["head.weight"].zero_()
    sd["head.bias"].zero_()
    sd["head.bias"][index] = 10.0
    half = [0.5, 0.5, 0.5]
    RunCheckpoint(sd, MODEL, len(names), 28, 3, names, half, half, 1.0, "folder").save(path)
    return path


def test_eval_matches_a_folder_subset_to_the_checkpoint_by_class_name(tmp_path):
    from deit.evaluate import evaluate_checkpoint

    ck = _always_predicts(tmp_path / "ck.pth", ["a", "b", "c"], index=2)  # always 'c'
    # val/ holds 'a' (1 image) and 'c' (3): its own sub-folder numbering is a=0, c=1, so a
    # match by index would score 0 %; by name 3 of the 4 images are right.
    root = write_image_tree(tmp_path / "d", {"val": {"a": 1, "c": 3}}, size=(28, 28))
    stats = evaluate_checkpoint(ck, data_path=str(root))
    assert (stats["n"], stats["acc1"], stats["notes"]) == (4, 75.0, [])
    # the same classes in another count than the checkpoint's are fine; unknown ones are not
    bad = write_image_tree(tmp_path / "e", {"val": {"a": 1, "x": 1}}, size=(28, 28))
    with pytest.raises(ValueError) as e:
        evaluate_checkpoint(ck, data_path=str(bad))
    assert str(e.value) == (
        f"The validation data {bad / 'val'} has class 'x' that checkpoint {str(ck)!r} lacks (it "
        "has classes 'b', 'c' instead); a model trained there cannot predict it, so give "
        "validation only classes the training data has."
    )


def test_eval_of_weights_without_names_still_needs_the_class_count(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    torch.save(deit.create_model(MODEL, num_classes=3).state_dict(), weights)
    root = write_image_tree(tmp_path / "d", {"val": {"a": 1, "c": 1}}, size=(28, 28))
    argv = ["eval", str(weights), "--model", MODEL, "--data-set", "folder"]
    assert main(argv + ["--data-path", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "deit eval: error: The checkpoint predicts 3 classes but folder has 2; evaluate on the "
        "data set it was trained on."
    )
