"""benchmarks/train_throughput.py: its ratios by hand and its --quick smoke run (all sides)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["train_throughput"]


def test_ratios_and_quartiles_by_hand(bench) -> None:
    res = bench.Result(bench.case_of("nano:16"))
    res.rates = {"bare": [100.0, 200.0, 100.0], "deit": [90.0, 100.0, 80.0], "timm": [45.0] * 3}
    assert res.ratio("bare") == [0.9, 0.5, 0.8]
    assert bench._quartiles(res.ratio("bare")) == pytest.approx((0.65, 0.8, 0.85))
    table = bench.report([res])
    assert "| nano:16 | deit_nano_patch7_28 | 100.0 | 90.0 | 45.0 | 0.800 [0.650, 0.850] |" in table
    assert bench.case_of("tiny:32").input_size == 224 and bench.case_of("tiny:32").timed == 1


def test_quick_runs_every_side(bench, capsys) -> None:
    """A few seconds: 48 digits, one round of bare / deit / timm, and the stored-label case."""
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark runs single-threaded
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| nano")]
    assert [r.split(" | ")[0] for r in rows] == ["| nano:16", "| nano-dist:16"]
    assert "–" not in rows[0] and rows[1].count("–") == 2  # no timm side for stored labels


def test_worker_cases_and_gpu_flags(bench, tmp_path) -> None:
    import argparse

    args = argparse.Namespace(
        cases=["nano:16"],
        quick=True,
        workers=[0, 2],
        device="cuda",
        amp="bf16",
        jpeg=0,
        prefetch=[0],
    )
    cases = bench._cases(args, tmp_path)
    assert [c.name for c in cases] == [
        "nano:16 w0",
        "nano:16 w2",
        "nano-dist:16 w0",
        "nano-dist:16 w2",
    ]
    assert {(c.device, c.amp, c.data_set, c.train_subset) for c in cases} == {
        ("cuda", "bf16", "digits", 48)
    }
    cfg = bench.deit_config(cases[1], tmp_path / "run")
    assert (cfg.num_workers, cfg.device, cfg.amp, cfg.pin_mem) == (2, "cuda", "bf16", True)


def test_prefetch_cases_reach_both_loaders(bench, tmp_path) -> None:
    """``--prefetch 2 4``: one case per factor for each worker count but 0; deit's loader is
    built with that ``prefetch_factor`` inside :func:`_prefetch` and as before outside it."""
    import argparse

    args = argparse.Namespace(
        cases=["nano:16"],
        quick=False,
        workers=[0, 1],
        device="cpu",
        amp="fp32",
        jpeg=0,
        prefetch=[2, 4],
    )
    cases = bench._cases(args, tmp_path)
    assert [(c.name, c.workers, c.prefetch) for c in cases] == [
        ("nano:16 w0", 0, 0),
        ("nano:16 w1 p2", 1, 2),
        ("nano:16 w1 p4", 1, 4),
    ]
    data = list(range(4))
    with bench._prefetch(4):
        inside = bench.training_module.DataLoader(data, num_workers=1)
        no_workers = bench.training_module.DataLoader(data, num_workers=0)
    outside = bench.training_module.DataLoader(data, num_workers=1)
    assert (inside.prefetch_factor, no_workers.prefetch_factor, outside.prefetch_factor) == (
        4,
        None,
        2,
    )


def test_gpu_check_script_parses_and_fits_in_8_minutes() -> None:
    """``benchmarks/gpu_check.sh``: valid bash; on a GPU its steps' limits add up to at most
    480 s, the CUDA tests first (issue 32, item 11); without one, the smoke steps only."""
    import re
    import subprocess

    script = PATH.parent / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    cpu, gpu = text.split("nvidia-smi -L", 1)
    steps = re.findall(r'^\s*step (\d+) "([^"]+)"', gpu, re.M)
    assert sum(int(limit) for limit, _ in steps) <= 480, steps
    assert [title.split(",")[0] for _, title in steps] == [
        "CUDA tests", "deit benchmark", "train throughput", "ours vs timm", "GPU memory"
    ]  # fmt: skip
    assert len(re.findall(r'^\s*step (\d+) "', cpu, re.M)) == 4


def test_threads_flag_sets_the_compute_threads(bench, monkeypatch) -> None:
    """``--threads 2`` reaches ``torch.set_num_threads`` (default 1) before any case runs."""
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.setattr(bench, "_cases", lambda args, root: [])
    for argv, expected in ((["--threads", "2"], [2]), ([], [1])):
        seen.clear()
        assert bench.main(argv) == 0
        assert seen == expected


def test_gpu_cases_run_with_deit_trains_cudnn_and_tf32_settings(bench, monkeypatch) -> None:
    """``--device cuda``: every side measured with the settings ``deit train`` applies
    (:func:`deit.precision.set_cuda_backends`), TF32 not switched on behind its back."""
    seen = []
    monkeypatch.setattr(bench, "set_cuda_backends", seen.append)
    monkeypatch.setattr(bench, "_cases", lambda args, root: [])
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    assert bench.main(["--device", "cuda"]) == 0
    assert seen == ["cuda"]
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32


def test_loader_handoff_times_both_loaders(capsys) -> None:
    """benchmarks/loader_handoff.py: one line per loader in ms and their ratio, all positive."""
    path = PATH.parent / "loader_handoff.py"
    spec = importlib.util.spec_from_file_location("loader_handoff", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        assert module.main(["--batch", "4", "--size", "8", "--batches", "5", "--rounds", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["shared", "by-value", "shared/by-value"]
    assert all(float(line.split()[1]) > 0 for line in lines)
