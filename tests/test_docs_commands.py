"""Every command in the README and docs/*.md runs, so the documentation cannot drift from the
code (issue 33): the ```bash blocks are read, each `deit` line runs in-process at a small budget
(fewer epochs, a short benchmark) in a folder holding the files it names, and the README's
teacher and student learn well above chance. A line that is not run is in :data:`SKIP` with its
reason; a skipped `deit train` is still parsed into its configuration (``--print-config``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from deit.cli import build_parser, main
from deit.data import build_dataset

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Lines of the bash blocks that are not run here, by how they begin, and why.
SKIP = {
    "make ": "the set-up and the whole suite: CI runs them from a fresh clone (.ci/run)",
    "python benchmarks/": "benchmark scripts of tens of minutes, whose runs docs/demo.md records",
    "torchrun ": "8 GPUs and ImageNet (its deit arguments are parsed: --print-config)",
    "deit train --preset finetune384": "ImageNet and the 8-GPU run's checkpoint (parsed too)",
    "deit train --model deit3_base_patch16_224 --finetune": "ImageNet and the DeiT III 8-GPU "
    "run's checkpoint (parsed too; tests/test_deit3_recipe.py runs it on digits)",
}
#: The skipped lines that are `deit train` commands: parsed into their configuration.
PARSED = (
    "torchrun ",
    "deit train --preset finetune384",
    "deit train --model deit3_base_patch16_224 --finetune",
)

#: Epochs of the README's `deit train` commands here (teacher, student): enough to show that
#: its pair learns (test below); every other `deit train` runs one epoch.
README_EPOCHS = (16, 12)
#: `deit benchmark` at a small budget: one image per call, the shortest timing, no latency.
BENCHMARK = ["--batch-size", "1", "--warmup", "0", "--min-time", "0.01", "--no-latency"]


def _lines(path: Path) -> list[list[str]]:
    """The commands of the ```bash blocks of ``path``, as words (continuations joined, comments
    and the ``...`` that stands for more flags dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = [w for w in shlex.split(line, comments=True) if w != "..."]
            if words:
                out.append(words)
    return out


def _skipped(words: list[str]) -> str | None:
    line = " ".join(words)
    return next((why for start, why in SKIP.items() if line.startswith(start)), None)


def _small(path: Path, argv: list[str], trained: int) -> list[str]:
    """``argv`` (after ``deit``) at the budget of this test; ``trained``: the `deit train`
    commands of the file run before this one."""
    if argv[0] == "train":
        epochs = README_EPOCHS[min(trained, 1)] if path.name == "README.md" else 1
        budget = ["--epochs", str(epochs), "--warmup-epochs", "1", "--eval-interval", "0"]
        return [*argv, *budget, "--no-progress"]
    if argv[0] == "benchmark":
        return [*argv, *BENCHMARK]
    if argv[0] == "demo":
        # every demo command is parsed as written; the pipeline runs once as its smoke run
        # (tests/test_demo.py runs --quick --full, stopped and started again)
        build_parser().parse_args(argv)
        return ["demo", "--quick", "--no-progress"]
    return argv


def _inputs(folder: Path) -> None:
    """The files the docs name as the user's own: a folder of digits, img1.png and img2.png
    (mnist5k test digits)."""
    digits = build_dataset("mnist5k", split="val")
    (folder / "digits").mkdir(parents=True, exist_ok=True)
    for i in range(6):
        digits[i][0].save(folder / "digits" / f"{i}.png")
    digits[6][0].save(folder / "img1.png")
    digits[7][0].save(folder / "img2.png")


def _run(argv: list[str], folder: Path) -> tuple[int, str]:
    """``deit <argv>`` in ``folder``: the exit status and what it printed."""
    printed = io.StringIO()
    cwd, threads = os.getcwd(), torch.get_num_threads()
    # one thread: these models are tiny, and this process's OpenMP threads spin while they
    # wait (the command's OMP_WAIT_POLICY=PASSIVE comes too late once torch is loaded)
    torch.set_num_threads(1)
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            try:
                code = main(argv)
            except SystemExit as e:  # an argument error
                code = int(e.code or 0)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return code, printed.getvalue()


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the README's commands run in."""
    return tmp_path_factory.mktemp("README")


@pytest.fixture(scope="module")
def ran(
    readme: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[tuple[list[str], int, str]]]:
    """Every `deit` command of the docs, run: ``{file name: [(argv, exit status, output)]}``.
    The README runs first; a file that trains nothing runs where the README's runs are."""
    results: dict[str, list[tuple[list[str], int, str]]] = {}
    done: dict[tuple[str, ...], tuple[int, str]] = {}  # the same command twice runs once
    for path in DOCS:
        commands = [w[1:] for w in _lines(path) if w[0] == "deit" and not _skipped(w)]
        if not commands:
            continue
        folder = readme if path.name == "README.md" else tmp_path_factory.mktemp(path.stem)
        # the README's runs are the teacher and student a page's commands name, unless the
        # page trains its own there
        own = {c[c.index("--output_dir") + 1] for c in commands if "--output_dir" in c}
        if folder != readme and not own & {"runs/teacher", "runs/student"}:
            shutil.copytree(readme / "runs", folder / "runs")
        _inputs(folder)
        results[path.name] = []
        trained = 0
        for argv in commands:
            small = _small(path, argv, trained)
            trained += argv[0] == "train"
            key = tuple(small) if argv[0] != "train" else (path.name, *small)
            if key not in done:
                done[key] = _run(small, folder)
            results[path.name].append((small, *done[key]))
    return results


def test_every_line_of_the_bash_blocks_is_run_or_skipped_for_a_reason():
    lines = [w for path in DOCS for w in _lines(path)]
    unknown = [" ".join(w) for w in lines if w[0] != "deit" and not _skipped(w)]
    assert unknown == []
    used = {start for start in SKIP if any(" ".join(w).startswith(start) for w in lines)}
    assert used == set(SKIP)  # a skip no line needs any more goes
    runs = [w for w in lines if w[0] == "deit" and not _skipped(w)]
    assert len(runs) >= 15 and {w[1] for w in runs} >= {"train", "eval", "predict", "export"}


def test_every_deit_command_of_the_docs_runs_at_a_small_budget(ran, readme):
    failed = [
        (name, " ".join(argv), out[-600:])
        for name, rows in ran.items()
        for argv, code, out in rows
        if code != 0
    ]
    assert failed == []
    assert set(ran) >= {"README.md", "demo.md", "jobs.md"}
    assert (readme / "student.onnx").is_file() and (readme / "runs" / "analysis").is_dir()


def test_readme_teacher_and_student_learn_at_a_reduced_budget(ran, readme):
    """The README's two `deit train` commands (the demo's seed-0 recipe) at 16 and 12 epochs of
    the 500 digits: far above the 10 % of chance on the 3,500 held-out digits."""
    assert [argv[:3] for argv, _, _ in ran["README.md"][:2]] == [
        ["train", "--preset", "demo_teacher"],
        ["train", "--preset", "demo_student"],
    ]
    final = {}
    for run in ("teacher", "student"):
        log = (readme / "runs" / run / "log.txt").read_text().splitlines()
        final[run] = json.loads(log[-1])
        assert final[run]["test_n"] == 3500
    assert final["teacher"]["epoch"] + 1 == README_EPOCHS[0]
    assert final["teacher"]["test_acc1"] > 60, final["teacher"]["test_acc1"]
    assert final["student"]["test_acc1"] > 30, final["student"]["test_acc1"]


@pytest.mark.parametrize("start", PARSED)
def test_skipped_deit_commands_still_parse_into_a_configuration(start, capsys):
    lines = [w for path in DOCS for w in _lines(path) if " ".join(w).startswith(start)]
    assert lines
    for words in lines:
        argv = words[words.index("deit.cli") + 1 :] if "deit.cli" in words else words[1:]
        assert main([*argv, "--print-config"]) == 0, " ".join(words)
        assert "model: deit" in capsys.readouterr().out  # deit_base..., deit3_base...
