"""Data inputs: unreadable images under workers, --skip-corrupt, every PIL mode as a
viewer shows it, input defaults from the model, the normalisation of plain state dicts, and a
checkpoint evaluated on another data set."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

import deit
from conftest import write_image_tree
from deit.checkpoints import RunCheckpoint
from deit.cli import build_parser, main
from deit.config import Config, config_from_args
from deit.data.datasets import build_dataset
from deit.data.files import CorruptImageError
from deit.data.images import load_rgb, to_display_mode
from deit.data.info import DIGITS_MEAN, DIGITS_STD
from deit.data.inputs import model_input_defaults, resolve_inputs
from deit.evaluate import evaluate_checkpoint
from deit.predict import load_image

PICO = "deit_pico_patch7_28"


def _truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # verify() does not see it
    return path


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """28 px folder tree (train: a 3, b 3; val: a 2, b 2) with one truncated JPEG in train."""
    counts = {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}}
    root = write_image_tree(tmp_path / "data", counts, size=(28, 28))
    return root, _truncated_jpeg(root / "train" / "a" / "trunc.jpg")


def _pil_reason(path: Path) -> str:
    """What PIL itself says when it decodes ``path``."""
    with pytest.raises(OSError) as e, Image.open(path) as im:
        im.load()
    return f"OSError: {e.value}"


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str], bad: Path) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err, err
    assert "Traceback" not in err and "worker" not in err
    return err


# ------------------------------------------------------------------ 1. unreadable images


def test_worker_error_is_the_one_sentence_naming_the_file(tree) -> None:
    root, bad = tree
    ds = build_dataset("folder", root, transform=transforms.ToTensor())
    messages = []
    for workers in (0, 2):
        with pytest.raises(CorruptImageError) as e:
            list(DataLoader(ds, batch_size=7, num_workers=workers))
        messages.append(str(e.value))
    assert messages[0] == messages[1]  # the same sentence whatever the worker count
    assert messages[0] == (
        f"cannot read image file {bad} ({_pil_reason(bad)}); replace or remove it, or skip "
        "unreadable files with --skip-corrupt (skip_corrupt=True)"
    )


def test_unreadable_image_one_line_in_train_eval_predict_analyze(tree, tmp_path, capsys) -> None:
    root, bad = tree
    err = _one_line_error(
        capsys,
        ["train", "--model", PICO, "--data-set", "folder", "--data-path", str(root)]
        + ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "7", "--num_workers", "2"]
        + ["--no-progress"]
        + ["--no-repeated-aug", "--mixup", "0", "--cutmix", "0"],  # one batch: all 7 files
        bad,
    )
    assert err.startswith(f"deit train: error: cannot read image file {bad} ")
    weights = tmp_path / "w.pth"
    torch.save(deit.create_model(PICO, num_classes=2).state_dict(), weights)
    shutil_val = root / "val" / "a" / "trunc.jpg"
    shutil_val.write_bytes(bad.read_bytes())
    _one_line_error(
        capsys,
        ["eval", str(weights), "--model", PICO, "--data-set", "folder", "--data-path", str(root)]
        + ["--num-workers", "2"],
        shutil_val,
    )
    _one_line_error(capsys, ["predict", str(weights), "--model", PICO, str(bad)], bad)
    argv = ["analyze", str(weights), "--model", PICO, str(bad), "--output-dir", str(tmp_path)]
    _one_line_error(capsys, argv, bad)


def test_skip_corrupt_under_workers_warns_once_and_counts(tree, tmp_path) -> None:
    root, bad = tree
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset("folder", root, transform=transforms.ToTensor(), skip_corrupt=True)
        batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    texts = [str(w.message) for w in caught]
    assert texts == [
        f"skipping 1 unreadable image file(s), using the other 6: {bad} ({_pil_reason(bad)})"
    ]
    assert len(ds) == 6 and ds.skipped[0][0] == str(bad)
    assert sum(len(b[1]) for b in batches) == 6
    # a training run logs the images it used
    out = tmp_path / "run"
    argv = ["train", "--model", PICO, "--data-set", "folder", "--data-path", str(root)]
    argv += ["--epochs", "1", "--batch-size", "2", "--num_workers", "2", "--skip-corrupt"]
    argv += ["--no-repeated-aug", "--no-progress", "--output_dir", str(out)]
    assert main(argv) == 0
    log = json.loads((out / "log.txt").read_text().splitlines()[-1])
    assert log["train_images"] == 6 and log["test_n"] == 4


# ------------------------------------------------------------------ also: every PIL mode


def _modes() -> list[tuple[str, Image.Image, list]]:
    """(name, image, expected 8-bit RGB pixels of the first row, computed by hand)."""
    one = Image.fromarray(np.array([[0, 1]], bool))
    la = Image.fromarray(np.array([[[0, 51], [100, 255]]], np.uint8), "LA")
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1  # blue is transparent: white shows through
    i16 = Image.fromarray(np.array([[0, 257, 65535, 1000]], np.uint16))  # I;16
    i32 = Image.fromarray(np.array([[70000, -5, 32896]], np.int32), "I")
    f32 = Image.fromarray(np.array([[0.5, 2.0, -1.0, 0.2]], np.float32), "F")
    rgba = Image.fromarray(
        np.array([[[10, 20, 30, 255], [200, 100, 0, 0], [0, 0, 0, 51]]], np.uint8)
    )
    cmyk = Image.new("CMYK", (1, 1), (100, 50, 0, 30))
    rgb = Image.fromarray(np.array([[[1, 2, 3], [250, 128, 0]]], np.uint8))
    g = lambda *v: [[x, x, x] for x in v]  # noqa: E731
    return [
        ("1", one, g(0, 255)),
        ("L", Image.fromarray(np.array([[77, 200]], np.uint8)), g(77, 200)),
        ("LA", la, g(204, 100)),  # 0 at alpha 0.2 over white: 0.2*0 + 0.8*255 = 204
        ("P", pal, [[255, 0, 0], [255, 255, 255]]),
        ("I;16", i16, g(0, 1, 255, 4)),  # round(v / 257): 1000 -> 3.89 -> 4, not clipped to 255
        ("I", i32, g(255, 0, 128)),  # 16-bit range: 70000 clipped, 32896 / 257 = 128
        ("F", f32, g(128, 255, 0, 51)),  # [0, 1] range: 0.5 -> 127.5 -> 128, 0.2 -> 51
        ("RGBA", rgba, [[10, 20, 30], [255, 255, 255], [204, 204, 204]]),
        ("CMYK", cmyk, [[137, 181, 225]]),  # (255-C)(255-K)/255: 155*225/255 = 136.8 -> 137
        ("RGB", rgb, [[1, 2, 3], [250, 128, 0]]),
    ]


@pytest.mark.parametrize("mode,image,expected", _modes(), ids=[m[0] for m in _modes()])
def test_every_pil_mode_reaches_the_model_as_seen(mode, image, expected, tmp_path) -> None:
    assert image.mode == mode
    path = tmp_path / f"img.{'tiff' if mode in ('I', 'F', 'CMYK') else 'png'}"
    image.save(path)
    assert Image.open(path).mode == mode  # the file really holds that mode
    folder = np.asarray(load_rgb(path))  # folder data sets' loader
    assert folder[0].tolist() == expected
    assert np.asarray(load_image(path, 3))[0].tolist() == expected  # deit predict / analyze
    grey = np.asarray(load_image(path, 1))[0]
    if all(len(set(px)) == 1 for px in expected):  # grey sources stay exact in 1 channel
        assert grey.tolist() == [px[0] for px in expected]
    assert np.asarray(to_display_mode(image))[0].tolist() == expected  # PIL images passed in


def test_folder_data_set_reads_16_bit_grey_scaled(tmp_path) -> None:
    d = tmp_path / "train" / "x"
    d.mkdir(parents=True)
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(d / "a.png")  # half of 16 bits
    img, _ = build_dataset("folder", tmp_path)[0]
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [128, 128, 128]


# ------------------------------------------------------------------ 12. the model's defaults


def test_input_size_and_normalisation_default_to_the_model() -> None:
    assert model_input_defaults("deit_tiny_patch4_28").input_size == 28
    assert model_input_defaults("deit_base_patch16_384").input_size == 384
    res = model_input_defaults("test_resnet")  # timm pretrained_cfg
    assert (res.input_size, res.in_chans, res.mean) == (160, 3, (0.5, 0.5, 0.5))
    digits = deit.data.dataset_info("digits")
    r = resolve_inputs(Config(model="deit_tiny_patch4_28", data_set="digits"), digits)
    assert (r.input_size, r.mean, r.std, r.notes) == (28, DIGITS_MEAN, DIGITS_STD, [])
    over = Config(model="deit_tiny_patch4_28", data_set="digits", input_size=32, mean=[0.5] * 3)
    r = resolve_inputs(over, digits)
    assert (r.input_size, r.mean, r.std) == (32, (0.5,) * 3, DIGITS_STD)
    assert r.notes == [
        "input size 32 px as set in the configuration (input_size) instead of the 28 px of the "
        "deit_tiny_patch4_28 registry entry.",
        "normalising with mean (0.5, 0.5, 0.5), std (0.3764, 0.3764, 0.3764) as set in the "
        "configuration (mean) instead of the digits statistics: mean (0.3058, 0.3058, 0.3058), "
        "std (0.3764, 0.3764, 0.3764).",
    ]


def test_notes_name_who_set_the_value_and_follow_the_model_check(capsys) -> None:
    """A value from a preset is named as the preset's, one typed as the flag; an unknown model
    name is the one line, before any note."""
    digits = deit.data.dataset_info("digits")
    parser = build_parser()
    argv = ["train", "--preset", "small", "--model", "test_resnet", "--mean", "0.5", "0.5", "0.5"]
    cfg = config_from_args(parser.parse_args(argv))
    assert resolve_inputs(cfg, digits).notes[0] == (
        "input size 28 px as set by --preset small instead of the 160 px of timm's "
        "pretrained_cfg of test_resnet."
    )
    assert (
        "as set by --mean instead of the digits statistics" in resolve_inputs(cfg, digits).notes[1]
    )
    cfg = config_from_args(
        parser.parse_args(["train", "--model", "test_resnet", "--input-size", "32"])
    )
    assert (
        resolve_inputs(cfg, digits).notes[0].startswith("input size 32 px as set by --input-size ")
    )
    argv = ["train", "--preset", "small", "--model", "nosuch", "--output_dir", "unused"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deit train: error: Unknown model name 'nosuch'") and "note" not in err


def test_finetuning_defaults_to_the_weights_normalisation(tmp_path) -> None:
    ck = tmp_path / "ck.pth"
    sd = deit.create_model(PICO, num_classes=10).state_dict()
    RunCheckpoint(sd, PICO, 10, 28, 3, mean=[0.1] * 3, std=[0.2] * 3).save(ck)
    digits = deit.data.dataset_info("digits")
    r = resolve_inputs(Config(model=PICO, data_set="digits", finetune=str(ck)), digits)
    assert (r.mean, r.std) == ((0.1,) * 3, (0.2,) * 3)
    plain = tmp_path / "plain.pth"
    torch.save(sd, plain)  # records nothing: the registry entry's (ImageNet) statistics
    r = resolve_inputs(Config(model=PICO, data_set="digits", finetune=str(plain)), digits)
    assert (r.mean, r.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_train_and_eval_default_to_the_same_data_set(tmp_path, capsys) -> None:
    weights = tmp_path / "w.pth"
    torch.save(deit.create_model(PICO, num_classes=10).state_dict(), weights)
    assert main(["eval", str(weights), "--model", PICO]) == 2  # no recorded set: imagenet
    err = capsys.readouterr().err
    assert (
        Config().data_set == "imagenet"
        and "deit eval: error: The imagenet data set needs its folder: pass --data-path" in err
    )
    # a deit train checkpoint: the data set it records
    ck = tmp_path / "ck.pth"
    sd = deit.create_model(PICO, num_classes=10).state_dict()
    names = [str(i) for i in range(10)]
    RunCheckpoint(sd, PICO, 10, 28, 3, names, DIGITS_MEAN, DIGITS_STD, 1.0, "digits").save(ck)
    stats = evaluate_checkpoint(ck)
    assert (stats["data_set"], stats["n"], stats["notes"]) == ("digits", 359, [])


# ------------------------------------------------------------------ 8. and 11. in deit eval


def test_plain_state_dict_names_its_normalisation_and_takes_mean_std(tmp_path) -> None:
    torch.manual_seed(0)
    sd = deit.create_model(PICO, num_classes=10).state_dict()
    plain = tmp_path / "plain.pth"
    torch.save(sd, plain)
    stats = evaluate_checkpoint(plain, "digits", model_name=PICO)
    assert (
        f"The file records no input normalisation: the {PICO} defaults are used (mean "
        "(0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)); set others if it was trained with "
        "others." in stats["notes"]
    )
    given = evaluate_checkpoint(plain, "digits", model_name=PICO, mean=DIGITS_MEAN, std=DIGITS_STD)
    assert (tuple(given["mean"]), tuple(given["std"])) == (DIGITS_MEAN, DIGITS_STD)
    assert given["notes"][-1].startswith(f"Normalising with mean {DIGITS_MEAN}, std {DIGITS_STD}")
    # the same weights recording that normalisation give exactly the same numbers
    ck = tmp_path / "ck.pth"
    RunCheckpoint(sd, PICO, 10, 28, 3, None, list(DIGITS_MEAN), list(DIGITS_STD), 0.875).save(ck)
    recorded = evaluate_checkpoint(ck, "digits")
    assert (recorded["loss"], recorded["acc1"]) == (given["loss"], given["acc1"])
    assert recorded["loss"] != stats["loss"]


def test_checkpoint_on_another_data_set_is_named(tmp_path) -> None:
    sd = deit.create_model(PICO, num_classes=10).state_dict()
    names = [str(i) for i in range(10)]
    ck = tmp_path / "ck.pth"
    RunCheckpoint(sd, PICO, 10, 28, 3, names, DIGITS_MEAN, DIGITS_STD, 1.0, "digits").save(ck)
    stats = evaluate_checkpoint(ck, "mnist5k", batch_size=500)
    assert stats["notes"] == [
        "The checkpoint was trained on digits but is evaluated on mnist5k: its class indices "
        "are taken to mean the same classes there."
    ]
    # a folder data set whose class names differ from the recorded ones
    root = write_image_tree(tmp_path / "d", {"val": {"x": 1, "y": 1}}, size=(28, 28))
    sd2 = deit.create_model(PICO, num_classes=2).state_dict()
    RunCheckpoint(sd2, PICO, 2, 28, 3, ["cat", "y"], None, None, 1.0, "folder").save(ck)
    with pytest.raises(ValueError, match="has class 'x' that checkpoint .* lacks"):
        evaluate_checkpoint(ck, data_path=str(root))  # folders are matched by name (issue 28)
    # a built-in data set with other names than the recorded ones: matched by index, named
    RunCheckpoint(sd, PICO, 10, 28, 3, list("abcdefghij"), None, None, 1.0, "mnist5k").save(ck)
    notes = evaluate_checkpoint(ck, "mnist5k", batch_size=500)["notes"]
    assert notes[-1] == (
        "10 class names differ from the checkpoint's (e.g. class 0: '0' here, 'a' in the "
        "checkpoint): its class indices are taken to mean the same classes."
    )
