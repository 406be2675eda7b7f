"""``deit export --format hf`` (a transformers ``save_pretrained`` folder) and Hub names in
(``hf-hub:ORG/NAME`` through ``huggingface_hub``'s cache), offline, with folders and a cache the
tests make."""

from __future__ import annotations

import hashlib
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import deit
from deit.checkpoints import CheckpointError, RunCheckpoint
from deit.cli import main
from deit.config import Config
from deit.data.transforms import build_transform
from deit.hf_export import export_hf

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [f"digit {i}" for i in range(10)]


def _run_checkpoint(path: Path, name: str, seed: int = 0) -> torch.nn.Module:
    """A checkpoint as ``deit train`` writes it (weights, names, configuration, two evaluated
    epochs); its LayerScale, if any, moved away from 1e-6 so that folding it counts."""
    torch.manual_seed(seed)
    model = deit.create_model(name, num_classes=10).eval()
    for n, p in model.named_parameters():
        if n.endswith("gamma"):
            p.data.uniform_(0.5, 1.5)
    history = [
        {"epoch": 0, "train_loss": 2.0, "test_acc1": 61.25, "test_acc5": 90.5},
        {"epoch": 1, "train_loss": 1.5, "test_acc1": 73.75, "test_acc5": 97.0},
    ]
    cfg = Config(model=name, data_set="mnist5k", epochs=2, drop_path=0.05).to_dict()
    RunCheckpoint(
        model.state_dict(),
        name,
        num_classes=10,
        img_size=28,
        in_chans=3,
        class_names=CLASSES,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        crop_pct=1.0,
        data_set="mnist5k",
        config=cfg,
        history=history,
        best_acc1=73.75,
        epoch=2,
    ).save(path)
    return model


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("deit_pico_distilled_patch4_28", "DeiTForImageClassificationWithTeacher"),
        ("deit_pico_patch7_28", "ViTForImageClassification"),
        ("deit3_nano_patch7_28", "ViTForImageClassification"),
    ],
)
def test_hf_folder_loads_in_transformers_with_deits_logits(tmp_path, name, kind):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = _run_checkpoint(tmp_path / "checkpoint.pth", name)
    out = tmp_path / "hf"
    result = export_hf(tmp_path / "checkpoint.pth", out)
    assert result.architecture == kind and result.max_abs_diff <= 1e-5
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(
        result.files
    )
    hf = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == kind and hf.config.id2label[3] == "digit 3"
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        diff = (hf(pixel_values=x).logits - model(x)).abs().max().item()
    assert diff <= 1e-5
    # the image processor is deit's evaluation transform: same pixels for a square image
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), np.uint8))
    pixels = AutoImageProcessor.from_pretrained(out)(img, return_tensors="pt")["pixel_values"]
    ours = build_transform(False, 28, mean=[0.5] * 3, std=[0.25] * 3, crop_pct=1.0)(img)
    assert pixels.shape == (1, 3, 28, 28) and (pixels[0] - ours).abs().max() < 1e-5
    # the folder reads back into deit (a plain DeiT III folder as a ViT of the same logits)
    back, info = deit.load_model(out, model_name=name.replace("deit3_nano", "deit_nano"))
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max().item() <= 1e-5
    assert info.class_names == CLASSES


def test_export_hf_command_of_the_docs_and_model_card(tmp_path, capsys, monkeypatch):
    """The command of docs/recipe.md ("Hugging Face folders and Hub names"), run in a folder
    holding a run's checkpoint at its path; ``deit export --help`` names the format."""
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "{onnx,torchscript,hf}" in capsys.readouterr().out
    recipe = (ROOT / "docs" / "recipe.md").read_text()
    block = recipe.split("### Hugging Face folders and Hub names", 1)[1]
    (command,) = block.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    argv = shlex.split(command)[1:]
    assert argv[:4] == ["export", "runs/student/checkpoint.pth", "--format", "hf"]
    (tmp_path / "runs" / "student").mkdir(parents=True)
    _run_checkpoint(tmp_path / "runs/student/checkpoint.pth", "deit_pico_distilled_patch4_28")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "student_hf"
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "DeiTForImageClassificationWithTeacher" in said and "max abs difference" in said
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "| mnist5k (its evaluation split) | 2 | 73.75 | 97.00 | 73.75 | both |" in card
    assert "drop_path: 0.05" in card and "model: deit_pico_distilled_patch4_28" in card
    # a folder with files in it is refused in one sentence, before anything is loaded
    assert main(argv) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


def _cache_repo(cache: Path, repo: str, folder: Path) -> None:
    """Put ``folder``'s files in ``huggingface_hub``'s cache layout as revision ``main`` of
    ``repo`` (``models--ORG--NAME/snapshots/<commit>/``, ``refs/main``)."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline ``huggingface_hub`` cache holding a transformers repository written by
    ``deit export --format hf`` (``org/pico-distilled``) and a timm one written by timm's
    ``save_for_hf`` (``timm/deit_tiny_patch16_224.test``); returns their models."""
    from huggingface_hub import constants
    from timm.models import save_for_hf

    cache = tmp_path / "cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    pico = _run_checkpoint(tmp_path / "checkpoint.pth", "deit_pico_distilled_patch4_28")
    export_hf(tmp_path / "checkpoint.pth", tmp_path / "pico_hf")
    _cache_repo(cache, "org/pico-distilled", tmp_path / "pico_hf")
    torch.manual_seed(1)
    tiny = timm.create_model("deit_tiny_patch16_224", num_classes=7).eval()
    save_for_hf(tiny, str(tmp_path / "tiny_timm"), safe_serialization=True)
    _cache_repo(cache, "timm/deit_tiny_patch16_224.test", tmp_path / "tiny_timm")
    return pico, tiny


def test_hub_names_are_read_from_the_cache_offline(hub_cache, tmp_path):
    from deit.teacher import build_teacher
    from deit.train.model import _load_finetune

    pico, tiny = hub_cache
    x = torch.randn(2, 3, 28, 28)
    model = deit.create_model("hf-hub:org/pico-distilled", pretrained=True).eval()
    assert type(model).__name__ == "DistilledVisionTransformer" and model.num_classes == 10
    with torch.no_grad():
        assert (model(x) - pico(x)).abs().max().item() <= 1e-5
    timm_model = deit.create_model("hf-hub:timm/deit_tiny_patch16_224.test", pretrained=True)
    x224 = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (timm_model.eval()(x224) - tiny(x224)).abs().max().item() <= 1e-5
    # every reader takes them: deit eval/predict/export without --model
    loaded, info = deit.load_model("hf-hub:org/pico-distilled")
    assert info.model_name == "deit_pico_distilled_patch4_28" and info.class_names == CLASSES
    with torch.no_grad():
        assert (loaded(x) - pico(x)).abs().max().item() <= 1e-5
    # --finetune and --teacher-path take the same names
    student = deit.create_model("deit_pico_distilled_patch4_28", num_classes=10)
    cfg = Config(model="deit_pico_distilled_patch4_28", finetune="hf-hub:org/pico-distilled")
    _load_finetune(student, cfg)
    assert torch.equal(student.blocks[2].attn.qkv.weight, pico.blocks[2].attn.qkv.weight)
    teacher = build_teacher(
        "deit_pico_distilled_patch4_28", "hf-hub:org/pico-distilled", num_classes=10
    )
    with torch.no_grad():
        assert (teacher.model(x) - pico(x)).abs().max().item() <= 1e-5


def test_hub_name_not_cached_says_what_to_run(hub_cache):
    with pytest.raises(CheckpointError) as e:
        deit.create_model("hf-hub:facebook/deit-tiny-patch16-224", pretrained=True)
    message = str(e.value)
    assert "is not in the Hugging Face cache" in message and "HF_HUB_OFFLINE is set" in message
    assert "run `hf download facebook/deit-tiny-patch16-224`" in message
    assert message.count(". ") == 0  # one sentence
    with pytest.raises(CheckpointError, match="is not a Hub name; write it as hf-hub:ORG/NAME"):
        deit.create_model("hf-hub:deit-tiny")
