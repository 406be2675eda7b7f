"""Benchmark tests: FLOP counts against the paper, result fields, files, CLI, precision rules.

Everything runs on the 6-block pico model at 28 px with a fraction of a second of timing, so
the module stays fast on a loaded 2-core machine.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import deit
from deit import benchmark as bm
from deit.cli import main
from deit.precision import fast_bf16_available

TINY = "deit_pico_patch4_28"
TINY_DISTILLED = "deit_pico_distilled_patch4_28"
FAST = dict(batch_size=2, warmup=1, min_time=0.05, device="cpu", precision="fp32")


@pytest.mark.parametrize(
    "name, gmacs",
    [
        ("deit_tiny_patch16_224", 1.26),
        ("deit_small_patch16_224", 4.61),
        ("deit_base_patch16_224", 17.58),
        ("deit_base_patch16_384", 55.5),
    ],
)
def test_gmacs_match_reference(name, gmacs):
    # The official models' GMACs (paper Table 1: 1.3, 4.6, 17.6, 55.5 "GFLOPs", i.e. MACs);
    # counted on the meta device (no memory, no compute).
    assert bm.count_gmacs(name) == pytest.approx(gmacs, rel=0.01)


def test_flops_on_real_cpu_tensors_include_attention():
    # CPU flash attention has no formula in torch's table; ours adds it, so real tensors and the
    # meta device agree, forward and backward.
    torch.manual_seed(0)
    model = deit.create_model(TINY).train()
    x = torch.randn(2, 3, 28, 28)
    with torch.device("meta"):
        meta = deit.create_model(TINY).train()
    fwd = bm.count_flops(model, x)
    assert fwd == bm.count_flops(meta, x.to("meta"))
    # 6 blocks x 2 attention matmuls x 2 FLOPs x B x N^2 x D (N = 50 tokens, D = 128)
    attn = 6 * 2 * 2 * 2 * 50 * 50 * 128
    assert fwd > attn
    assert bm.count_flops(model, x, backward=True) > 2.5 * fwd


def test_distilled_counts_both_heads():
    plain, distilled = bm.count_gmacs(TINY), bm.count_gmacs(TINY_DISTILLED)
    assert 1.0 < distilled / plain < 1.05  # one more token and one more head: under 5%


def test_precision_rules_follow_cpu_flags(monkeypatch):
    monkeypatch.delenv("DEIT_FAST_BF16", raising=False)
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    fast = bool({"amx_bf16", "avx512_bf16"} & flags)  # without them bf16 is emulated: slow
    assert fast_bf16_available("cpu") is fast
    assert bm.default_precision("cpu") == ("bf16" if fast else "fp32")
    assert bm.default_precision(torch.device("cpu")) in ("fp32", "bf16")
    monkeypatch.setenv("DEIT_FAST_BF16", "0")
    assert not fast_bf16_available("cpu") and bm.default_precision("cpu") == "fp32"
    monkeypatch.setenv("DEIT_FAST_BF16", "1")
    assert fast_bf16_available("cpu") and bm.default_precision("cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        bm.precision_context("cpu", "fp8")


def test_benchmark_model_fields():
    r = bm.benchmark_model(TINY, **FAST)
    assert r.model == TINY and r.batch_size == 2 and r.img_size == 28
    assert r.throughput > 0 and len(r.throughput_runs) >= 1 and r.latency_ms > 0
    assert r.params == sum(p.numel() for p in deit.create_model(TINY).parameters())
    assert r.gmacs == pytest.approx(bm.count_gmacs(TINY))
    assert r.peak_memory_mib is None  # CUDA only
    assert r.top1 is None and r.optimized and not r.compiled
    assert r.precision == "fp32" and r.threads == torch.get_num_threads()
    json.dumps(r.to_dict())
    plain = bm.benchmark_model(TINY, optimize=False, latency=False, **FAST)
    assert not plain.optimized and plain.latency_ms is None


def test_benchmark_leaves_a_given_model_untouched():
    model = deit.create_model(TINY_DISTILLED, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = bm.benchmark_model(model, name="student", latency=False, **FAST)
    assert r.model == "student" and r.throughput > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_run_benchmark_writes_csv_json_png(tmp_path, capsys):
    results = bm.run_benchmark([TINY], output_dir=tmp_path, latency=False, **FAST)
    out = capsys.readouterr().out
    assert TINY in out and "images/s" in out
    assert len(results) == 1
    rows = list(csv.DictReader((tmp_path / "benchmark.csv").open()))
    assert rows[0]["model"] == TINY and float(rows[0]["throughput"]) > 0
    data = json.loads((tmp_path / "benchmark.json").read_text())
    assert data["results"][0]["gmacs"] > 0 and data["meta"]["torch"] == torch.__version__
    assert (tmp_path / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_official_models(tmp_path):
    results = [
        bm.BenchmarkResult(
            model=name,
            device="cpu",
            device_name="test CPU",
            precision="fp32",
            optimized=True,
            compiled=False,
            batch_size=32,
            img_size=224,
            throughput=bm.PAPER_THROUGHPUT[name] / 150,
            top1=bm.PAPER_TOP1[name],
            paper_throughput=bm.PAPER_THROUGHPUT[name],
        )
        for name in bm.OFFICIAL_MODELS
    ]
    path = bm.plot_throughput_accuracy(results, tmp_path / "fig.png")
    assert path.stat().st_size > 10_000
    table = bm.format_table(results)
    assert "deit_base_distilled_patch16_384" in table and "84.5" in table


def test_paper_numbers():
    assert bm.PAPER_TOP1["deit_tiny_patch16_224"] == 72.2
    assert bm.PAPER_TOP1["deit_base_distilled_patch16_384"] == 84.5
    assert set(bm.OFFICIAL_MODELS) == set(deit.list_models("deit_*", pretrained=True))


def test_time_call_warms_up_then_times_blocks():
    calls = []
    times = bm.time_call(lambda: calls.append(1), warmup=2, min_time=0.01)
    assert len(times) >= 1 and all(t >= 0 for t in times) and len(calls) > 2 + len(times)


def test_cli_runs_on_tiny_model(tmp_path, capsys):
    argv = ["benchmark", "--models", TINY, "--device", "cpu", "--batch-size", "2"]
    argv += ["--warmup", "1", "--min-time", "0.05", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "GMACs" in out and TINY in out
    assert {p.name for p in tmp_path.iterdir()} >= {
        "benchmark.csv",
        "benchmark.json",
        "benchmark.png",
    }


def test_cli_unknown_model_is_one_line_error(capsys):
    assert main(["benchmark", "--models", "deit_tinny", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Unknown model name" in err and "Traceback" not in err


def test_benchmark_prints_no_stray_warning_where_a_cuda_toolkit_has_no_gpu(tmp_path):
    """torch logs "No CUDA runtime is found, using CUDA_HOME=..." when its benchmark timer is
    imported on a machine with a CUDA toolkit and no GPU; `deit benchmark` prints only its own
    lines."""
    import os
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    argv = ["benchmark", "--models", "deit_pico_patch4_28", "--device", "cpu"]
    argv += ["--batch-size", "2", "--warmup", "1", "--min-time", "0.05", "--no-latency"]
    code = f"import sys; from deit.cli import main; sys.exit(main({argv!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "deit_pico_patch4_28" in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if line.startswith("deit_pico")
    ]
