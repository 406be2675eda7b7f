"""deit predict: same answers as a direct forward, heads, folders, JSON/table output, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import deit
from deit import predict as predict_mod
from deit.checkpoints import CheckpointError, save_weights
from deit.cli import main
from deit.predict import NotAnImageError, find_images, predict

NAME = "deit_pico_distilled_patch4_28"
CLASSES = [f"digit-{i}" for i in range(10)]
MEAN, STD = (0.13, 0.13, 0.13), (0.31, 0.31, 0.31)


def write_run_checkpoint(path: Path, model: torch.nn.Module, name: str = NAME, **over) -> Path:
    """A checkpoint laid out as `deit train` writes it."""
    ck = {
        "model": model.state_dict(),
        "model_name": name,
        "num_classes": 10,
        "img_size": 28,
        "in_chans": 3,
        "class_names": CLASSES,
        "mean": MEAN,
        "std": STD,
        "crop_pct": 1.0,
        "config": {},
        "model_ema": None,
        "epoch": 1,
    }
    ck.update(over)
    torch.save(ck, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained-looking distilled pico checkpoint and 7 PNGs: 28 px greyscale (MNIST-like) in
    a nested folder, larger RGB ones that must be resized, and a text file to be skipped."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = deit.create_model(NAME, num_classes=10).eval()
    with torch.no_grad():  # make the answer depend clearly on the image
        model.patch_embed.proj.weight.mul_(20)
        model.cls_token.zero_()
        model.dist_token.zero_()
        model.head.weight.mul_(50)
        model.head_dist.weight.mul_(50)
    ckpt = write_run_checkpoint(root / "run.pth", model)
    rng = np.random.default_rng(0)
    imgs = root / "images"
    (imgs / "grey" / "deeper").mkdir(parents=True)
    for i in range(4):  # grey levels 0, 80, 160, 240 plus noise
        sub = imgs / "grey" / ("deeper" if i % 2 else "")
        arr = np.clip(80 * i + rng.normal(0, 20, (28, 28)), 0, 255).astype(np.uint8)
        Image.fromarray(arr, "L").save(sub / f"g{i}.png")
    for i in range(3):  # a red, a green and a blue tint
        arr = rng.integers(0, 100, (36, 44, 3)).astype(np.uint8)
        arr[..., i] += 150
        Image.fromarray(arr).save(imgs / f"rgb{i}.png")
    (imgs / "notes.txt").write_text("not an image")
    return ckpt, imgs, model


def _reference(model, files, head="both"):
    """Direct forward with the transform written out: bicubic resize to 28, centre crop,
    ToTensor, Normalize(checkpoint mean/std)."""
    t = transforms.Compose(
        [
            transforms.Resize(28, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(28),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    x = torch.stack([t(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        c, d = model.forward_heads(x)
    logits = {"both": (c + d) / 2, "cls": c, "dist": d}[head]
    return logits.softmax(-1)


def test_predict_matches_direct_forward(setup):
    ckpt, imgs, model = setup
    preds = predict(ckpt, [imgs], topk=10, batch_size=3)
    files = [Path(p.path) for p in preds]
    assert len(files) == 7  # 4 grey (two nested) + 3 RGB; notes.txt skipped
    assert {f.name for f in files} == {f"g{i}.png" for i in range(4)} | {
        f"rgb{i}.png" for i in range(3)
    }
    ref = _reference(model, files)
    for p, r in zip(preds, ref, strict=True):
        assert p.index == int(r.argmax())
        assert p.label == CLASSES[p.index]
        assert p.labels == [CLASSES[i] for i in p.indices]
        assert sum(p.probs) == pytest.approx(1.0, abs=1e-5)  # topk = all 10 classes
        assert p.probs == sorted(p.probs, reverse=True)
        np.testing.assert_allclose(p.probs, r[p.indices].numpy(), atol=1e-5)
    assert len({p.index for p in preds}) > 1  # not a constant answer
    # batching does not change anything
    again = predict(ckpt, [imgs], topk=10, batch_size=64)
    assert [p.indices for p in again] == [p.indices for p in preds]


@pytest.mark.parametrize("head", ["cls", "dist"])
def test_head_choice(setup, head):
    ckpt, imgs, model = setup
    loaded, info = deit.load_model(ckpt)
    preds = predict((loaded, info), [imgs / "grey"], topk=2, head=head)
    ref = _reference(model, [Path(p.path) for p in preds], head)
    assert [p.index for p in preds] == ref.argmax(-1).tolist()
    np.testing.assert_allclose([p.prob for p in preds], ref.max(-1).values.numpy(), atol=1e-5)
    assert loaded.head_choice == "both"  # restored


def test_folder_search_order_and_duplicates(setup):
    _, imgs, _ = setup
    files = find_images([imgs / "grey", imgs / "grey" / "g0.png", imgs / "rgb1.png"])
    names = [f.relative_to(imgs).as_posix() for f in files]
    assert names == ["grey/g0.png", "grey/g2.png", "grey/deeper/g1.png", "grey/deeper/g3.png"] + [
        "rgb1.png"
    ]


def test_weights_file_needs_model_name(setup, tmp_path):
    ckpt, imgs, model = setup
    w = tmp_path / "weights.safetensors"
    save_weights(model, w)
    with pytest.raises(CheckpointError, match="does not record its architecture"):
        predict(w, [imgs / "rgb0.png"])
    with pytest.warns(UserWarning, match="no class names: class indices"):
        (p,) = predict(w, [imgs / "rgb0.png"], model_name=NAME, topk=1)
    assert p.label == str(p.index)


def test_checkpoint_without_class_names_falls_back_and_says_so(setup, tmp_path, capsys):
    _, imgs, model = setup
    ck = write_run_checkpoint(tmp_path / "nonames.pth", model, class_names=None)
    assert main(["predict", str(ck), str(imgs / "grey"), "--topk", "2"]) == 0
    out, err = capsys.readouterr()
    assert "note: The checkpoint has no class names: class indices are used" in err
    lines = out.splitlines()
    assert lines[0].split() == ["image", "top-1", "top-2"]
    assert len(lines) == 2 + 4
    label = lines[2].split()[1]
    assert label.isdigit() and 0 <= int(label) < 10


def test_cli_json_lines(setup, capsys):
    ckpt, imgs, _ = setup
    assert main(["predict", str(ckpt), str(imgs / "rgb0.png"), "--json", "--topk", "3"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    rec = json.loads(line)
    assert rec["path"].endswith("rgb0.png")
    assert [t["label"] for t in rec["topk"]] == [CLASSES[t["index"]] for t in rec["topk"]]
    assert rec["topk"][0]["prob"] >= rec["topk"][1]["prob"] >= rec["topk"][2]["prob"]


def test_not_an_image_is_named(setup, capsys):
    ckpt, imgs, _ = setup
    with pytest.raises(NotAnImageError, match=r"notes\.txt' is not a readable image"):
        predict(ckpt, [imgs / "notes.txt"])
    assert main(["predict", str(ckpt), str(imgs / "notes.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deit predict: error: ") and "notes.txt" in err
    assert len(err.splitlines()) == 1


def test_corrupt_png_in_folder_is_named(setup, tmp_path):
    ckpt, _, _ = setup
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(NotAnImageError, match=r"bad\.png' is not a readable image"):
        predict(ckpt, [tmp_path])


def test_missing_empty_and_unreadable_folders(setup, tmp_path, monkeypatch):
    ckpt, _, _ = setup
    with pytest.raises(FileNotFoundError, match=r"'.*nowhere' does not exist"):
        predict(ckpt, [tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No image files"):
        find_images([tmp_path / "empty"])
    # root can read any folder, so simulate missing permissions
    monkeypatch.setattr(predict_mod.os, "access", lambda *a, **k: False)
    with pytest.raises(PermissionError, match="cannot be read"):
        find_images([tmp_path / "empty"])


@pytest.mark.filterwarnings("ignore:The model has no class names")
def test_bad_arguments(setup):
    ckpt, imgs, _ = setup
    plain = deit.create_model("deit_pico_patch4_28", num_classes=10)
    with pytest.raises(ValueError, match="head 'dist' needs a distilled model"):
        predict(plain, [imgs / "rgb0.png"], head="dist")
    with pytest.raises(ValueError, match="topk must be at least 1"):
        predict(ckpt, [imgs / "rgb0.png"], topk=0)


def test_agreement_with_deit_eval_and_pil_images(setup, tmp_path):
    """predict's top-1 over an image folder equals `deit eval`'s accuracy on the same folder
    (20 images, 2 per class, in an ImageNet-style val/<class>/ tree), for both heads."""
    evaluate = pytest.importorskip("deit.evaluate")
    _, imgs, model = setup
    rng = np.random.default_rng(5)
    for name in CLASSES:  # the checkpoint's class names: eval matches folders by name
        (tmp_path / "val" / name).mkdir(parents=True)
        for j in range(2):
            arr = rng.integers(0, 60, (30, 30, 3)).astype(np.uint8) + rng.integers(0, 190, 3)
            Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "val" / name / f"{j}.png")
    ck = write_run_checkpoint(tmp_path / "run.pth", model)
    stats = evaluate.evaluate_checkpoint(
        ck, data_set="folder", data_path=str(tmp_path), split="val"
    )  # every head at once
    loaded = deit.load_model(ck)  # load once (model, info), as in a notebook
    for head, key in (("both", "acc1"), ("cls", "acc1_cls"), ("dist", "acc1_dist")):
        preds = predict(loaded, [tmp_path / "val"], head=head, topk=1)
        assert len(preds) == 20
        acc1 = 100 * np.mean([p.index == CLASSES.index(Path(p.path).parent.name) for p in preds])
        assert acc1 == pytest.approx(stats[key], abs=1e-9)
    # a PIL image and its file give the same answer
    files = sorted(imgs.glob("rgb*.png"))
    by_file = predict(loaded, files, topk=3)
    by_pil = predict(loaded, [Image.open(f) for f in files], topk=3)
    assert [p.path for p in by_pil] == ["<image 0>", "<image 1>", "<image 2>"]
    assert [p.indices for p in by_pil] == [p.indices for p in by_file]
