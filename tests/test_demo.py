"""`deit demo --quick`: the main job end to end, its outputs accepted by eval and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from deit.cli import main
from deit.data import build_dataset
from deit.demo import bars_figure, curves_figure
from deit.evaluate import evaluate_checkpoint
from deit.predict import predict


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--quick", "--output-dir", str(out), "--no-progress", "--train-subset", "256"]
    assert main(argv) == 0
    return out


def test_quick_demo_outputs(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    rows = {r["model"]: r for r in results["table"]}
    assert list(rows) == [
        "teacher resnet18",
        "DeiT, no distillation",
        "DeiT, hard distillation",
        "DeiT, soft distillation",
    ]
    hard = rows["DeiT, hard distillation"]
    assert hard["top1_cls"] is not None and hard["top1_dist"] is not None
    assert rows["DeiT, no distillation"]["top1_dist"] is None
    for r in rows.values():
        assert 0.0 <= r["top1"] <= 100.0
    table = (demo_dir / "results.md").read_text()
    assert table.count("\n") == 6 and "| DeiT, hard distillation |" in table
    for name in ("curves.png", "final_top1.png"):
        with Image.open(demo_dir / name) as im:
            assert im.size[0] > 500 and im.size[1] > 300
    for run in ("teacher", "student_none", "student_hard", "student_soft"):
        assert (demo_dir / run / "checkpoint.pth").is_file()
        assert (demo_dir / run / "log.txt").is_file()
        # the students add CutMix to the preset on every batch; the teacher keeps the preset
        cfg = yaml.safe_load((demo_dir / run / "config.yaml").read_text())
        expected = (0.0, 0.5) if run == "teacher" else (1.0, 1.0)
        assert (cfg["cutmix"], cfg["mixup_prob"]) == expected


def test_demo_figures_are_labelled(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    ax = curves_figure(results["runs"]).axes[0]
    assert "per epoch" in ax.get_title() and ax.get_xlabel() == "epoch"
    assert "top-1" in ax.get_ylabel()
    assert len(ax.get_legend().get_texts()) == 4
    ax = bars_figure(results["table"]).axes[0]
    assert "distillation" in ax.get_title() and "top-1" in ax.get_ylabel()
    assert len(ax.patches) == 4


def test_demo_checkpoint_in_eval_and_predict(demo_dir, capsys):
    ckpt = demo_dir / "student_hard" / "checkpoint.pth"
    assert main(["eval", str(ckpt), "--data-set", "mnist5k", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["n"] == 1000
    # predict on the same 1,000 held-out images gives the same top-1 as eval
    ds = build_dataset("mnist5k", split="val")
    images, labels = zip(*(ds[i] for i in range(len(ds))))
    preds = predict(ckpt, list(images), topk=1)
    acc1 = 100 * np.mean([p.index == y for p, y in zip(preds, labels)])
    assert acc1 == pytest.approx(stats["acc1"], abs=1e-6)
    assert acc1 == pytest.approx(evaluate_checkpoint(ckpt, "mnist5k")["acc1"], abs=1e-6)
