"""Config: official names and defaults, YAML round trip, errors, presets, command line."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from deit.config import (
    PRESETS,
    RETIRED,
    Config,
    ConfigError,
    add_config_args,
    config_from_args,
    get_preset,
    list_presets,
    preset_overrides,
    save_run_config,
    write_preset_yaml,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SRC = Path(__file__).resolve().parents[1] / "src" / "deit"

OFFICIAL_DESTS = """model input_size drop drop_path opt opt_eps opt_betas momentum weight_decay
clip_grad sched lr unscale_lr warmup_lr min_lr epochs warmup_epochs cooldown_epochs smoothing
color_jitter aa train_interpolation repeated_aug reprob remode recount mixup cutmix
cutmix_minmax mixup_prob mixup_switch_prob mixup_mode teacher_model teacher_path
distillation_type distillation_alpha distillation_tau finetune data_set data_path inat_category
batch_size output_dir device seed resume eval num_workers pin_mem model_ema
model_ema_decay dist_eval decay_epochs decay_rate patience_epochs lr_noise
eval_crop_ratio model_ema_force_cpu""".split()
OURS = """sched_per_step num_repeats kl_reduction auto_resume amp compile channels_last_teacher
log_interval eval_head""".split()


def _parser() -> argparse.ArgumentParser:
    return add_config_args(argparse.ArgumentParser())


def test_field_names_and_official_defaults() -> None:
    assert set(OFFICIAL_DESTS + OURS) <= set(Config.field_names())
    assert set(RETIRED) == {"start_epoch", "world_size", "dist_url", "resplit"}
    assert not set(RETIRED) & set(Config.field_names())
    c = Config()
    # input_size None: the model's own (224 px for the default model; issue 13 item 12)
    assert (c.model, c.input_size, c.drop, c.drop_path) == ("deit_base_patch16_224", None, 0.0, 0.1)
    assert (c.opt, c.opt_eps, c.weight_decay, c.momentum) == ("adamw", 1e-8, 0.05, 0.9)
    assert (c.sched, c.lr, c.warmup_lr, c.min_lr) == ("cosine", 5e-4, 1e-6, 1e-5)
    assert (c.epochs, c.warmup_epochs, c.cooldown_epochs, c.batch_size) == (300, 5, 10, 64)
    assert (c.smoothing, c.aa, c.color_jitter) == (0.1, "rand-m9-mstd0.5-inc1", 0.3)
    assert (c.reprob, c.remode, c.recount, c.train_interpolation) == (0.25, "pixel", 1, "bicubic")
    assert (c.mixup, c.cutmix, c.mixup_prob, c.mixup_switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert (c.mixup_mode, c.repeated_aug, c.num_repeats) == ("batch", True, 3)
    assert (c.teacher_model, c.distillation_type) == ("regnety_160", "none")
    assert (c.distillation_alpha, c.distillation_tau, c.kl_reduction) == (0.5, 1.0, "mean")
    assert (c.data_set, c.device, c.amp, c.eval_head) == ("imagenet", "auto", "auto", "both")
    assert (c.model_ema, c.model_ema_decay, c.sched_per_step) == (True, 0.99996, True)
    assert c.validate() is c


def test_yaml_round_trip_loses_nothing(tmp_path: Path) -> None:
    c = Config(
        model="deit_tiny_distilled_patch16_224",
        lr=3.7e-4,
        opt_eps=None,
        opt_betas=[0.9, 0.95],
        clip_grad=1.5,
        cutmix_minmax=[0.2, 0.8],
        aa=None,
        distillation_type="hard",
        distillation_tau=3.0,
        output_dir="runs/x y",
        data_path="",
        batch_size=32,
        model_ema=False,
        sched_per_step=False,
        amp="bf16",
    )
    p = c.to_yaml(tmp_path / "sub" / "c.yaml")
    back = Config.from_yaml(p)
    assert back == c and back.to_dict() == c.to_dict()
    assert Config.from_dict(c.to_dict()) == c
    assert type(back.lr) is float and type(back.batch_size) is int
    assert save_run_config(c, tmp_path / "run") == tmp_path / "run" / "config.yaml"
    assert Config.from_yaml(tmp_path / "run" / "config.yaml") == c


def test_hand_written_yaml_floats_and_partial(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("lr: 5e-4\nwarmup_lr: 1e-7\nepochs: 3\nmin_lr: 0\n")
    c = Config.from_yaml(p)
    assert (c.lr, c.warmup_lr, c.epochs, c.min_lr) == (5e-4, 1e-7, 3, 0.0)
    assert c.model == "deit_base_patch16_224"  # untouched keys keep the defaults
    (tmp_path / "empty.yaml").write_text("")
    assert Config.from_yaml(tmp_path / "empty.yaml") == Config()


def test_unknown_key_and_wrong_type_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'learning_rate' \(did you mean 'lr'\?\)"):
        Config.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"did you mean 'drop_path'"):
        Config.from_dict({"drop_pth": 0.1})
    p = tmp_path / "bad.yaml"
    p.write_text("lr: fast\n")
    with pytest.raises(ConfigError, match=r"'lr' must be a number") as e:
        Config.from_yaml(p)
    assert "fast" in str(e.value)
    with pytest.raises(ConfigError, match=r"'epochs' must be an integer"):
        Config.from_dict({"epochs": 3.5})
    with pytest.raises(ConfigError, match=r"'batch_size' must be an integer"):
        Config.from_dict({"batch_size": True})
    with pytest.raises(ConfigError, match=r"'model_ema' must be true or false"):
        Config.from_dict({"model_ema": "yes"})
    with pytest.raises(ConfigError, match=r"'opt_betas' must be a list of numbers or null"):
        Config.from_dict({"opt_betas": 0.9})
    with pytest.raises(ConfigError, match=r"'model' must be a string"):
        Config.from_dict({"model": None})
    p.write_text("- lr\n- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        Config.from_yaml(p)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"lr": -1e-3}, "'lr'"),
        ({"distillation_alpha": 1.5}, "'distillation_alpha'"),
        ({"distillation_tau": 0.0}, "'distillation_tau'"),
        ({"distillation_type": "medium"}, "'distillation_type'"),
        ({"batch_size": 0}, "'batch_size'"),
        ({"kl_reduction": "sum"}, "'kl_reduction'"),
        ({"amp": "int8"}, "'amp'"),
        ({"eval_head": "avg"}, "'eval_head'"),
        ({"drop_path": 1.0}, "'drop_path'"),
        ({"min_lr": -1e-2}, "'min_lr'"),
        ({"warmup_epochs": -1}, "'warmup_epochs'"),
        ({"data_set": "svhn"}, "'data_set'"),
        ({"opt": "adamz"}, "'opt'"),
        ({"device": "gpu"}, "'device'"),
        ({"cutmix_minmax": [0.8, 0.2]}, "'cutmix_minmax'"),
        ({"mixup_mode": "elem", "batch_size": 7}, "'batch_size'"),
        ({"batch_size": 7}, "Mixup/CutMix needs an even batch"),  # every timm mode pairs
    ],
)
def test_validate_names_key_and_fix(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_dict(changes)
    msg = str(e.value)
    assert key in msg and msg.endswith(".")
    assert msg.count(".") >= 1 and len(msg) < 300  # one short sentence
    Config.from_dict(changes, validate=False)  # types are fine, only the value is impossible


def test_validate_reports_all_problems() -> None:
    with pytest.raises(ConfigError) as e:
        Config(lr=-1.0, batch_size=0).validate()
    assert "'lr'" in str(e.value) and "'batch_size'" in str(e.value)


def test_presets_and_their_yaml_files() -> None:
    assert list_presets() == [*PRESETS, "demo_teacher", "demo_student"]
    assert list(PRESETS) == ["imagenet", "finetune384", "cifar", "deit3", "small"]
    for name in PRESETS:  # the demo's presets follow its settings: no file to go stale
        from_file = Config.from_yaml(CONFIGS / f"{name}.yaml")
        assert from_file == get_preset(name), name
    ft = get_preset("finetune384")
    assert (ft.model, ft.input_size, ft.lr, ft.weight_decay, ft.epochs) == (
        "deit_base_patch16_384",
        384,
        5e-6,
        1e-8,
        30,
    )
    im = get_preset("imagenet")
    assert (im.epochs, im.batch_size, im.lr, im.model) == (300, 128, 5e-4, "deit_base_patch16_224")
    small = get_preset("small")
    assert small.input_size <= 32 and small.hflip == 0.0 and small.epochs < 300
    assert small.mixup < 0.8 and small.cutmix < 1.0
    assert (get_preset("cifar").data_set, get_preset("cifar").input_size) == ("cifar10", 224)
    with pytest.raises(ConfigError, match="small"):
        preset_overrides("huge")


def test_cli_precedence_flags_over_yaml_over_preset(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 7\nlr: 2e-3\nbatch_size: 32\n")
    args = _parser().parse_args(
        ["--preset", "small", "--config", str(p), "--lr", "3e-3", "--no-model-ema"]
    )
    cfg = config_from_args(args)
    assert cfg.model == "deit_tiny_patch4_28"  # preset over default
    assert cfg.epochs == 7 and cfg.batch_size == 32  # YAML over preset (preset: 30, 128)
    assert cfg.lr == 3e-3  # flag over YAML
    assert cfg.model_ema is False
    assert cfg.warmup_epochs == 3 and cfg.weight_decay == 0.05  # preset, default
    # nothing given: plain defaults
    assert config_from_args(_parser().parse_args([])) == Config()


def test_cli_flag_spellings(capsys: pytest.CaptureFixture) -> None:
    args = _parser().parse_args(
        "--model deit_small_patch16_224 --input-size 96 --drop-path 0.2 --opt sgd "
        "--weight-decay 0.01 --sched step --warmup-epochs 1 --smoothing 0.0 --aa none "
        "--reprob 0 --mixup 0 --cutmix 0 --no-repeated-aug --teacher-model resnet50 "
        "--teacher-path t.pth --distillation-type hard --distillation-alpha 0.3 "
        "--distillation-tau 2 --finetune w.pth --data-set cifar10 --data-path /d "
        "--batch-size 16 --epochs 2 --clip-grad 1.0 --seed 5 --output_dir out "
        "--opt-betas 0.9 0.95 --num_workers 0 --start_epoch 1 --dr 0.5 --world_size 8 "
        "--dist-url env:// --resplit".split()
    )
    c = config_from_args(args)
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 4 and notes[0].startswith("note: --start_epoch is not used: ")
    assert (c.model, c.input_size, c.drop_path, c.opt) == ("deit_small_patch16_224", 96, 0.2, "sgd")
    assert (c.weight_decay, c.sched, c.warmup_epochs, c.smoothing, c.aa) == (
        0.01,
        "step",
        1,
        0.0,
        None,
    )
    assert (c.reprob, c.mixup, c.cutmix, c.repeated_aug) == (0.0, 0.0, 0.0, False)
    assert (c.teacher_model, c.teacher_path, c.distillation_type) == ("resnet50", "t.pth", "hard")
    assert (c.distillation_alpha, c.distillation_tau, c.finetune) == (0.3, 2.0, "w.pth")
    assert (c.data_set, c.data_path, c.batch_size, c.epochs) == ("cifar10", "/d", 16, 2)
    assert (c.clip_grad, c.seed, c.output_dir, c.opt_betas) == (1.0, 5, "out", [0.9, 0.95])
    assert (c.num_workers, c.decay_rate) == (0, 0.5)
    dashed = config_from_args(_parser().parse_args(["--output-dir", "o2", "--clip-grad", "none"]))
    assert dashed.output_dir == "o2" and dashed.clip_grad is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["--distillation-type", "medium"])
    bad = _parser().parse_args(["--distillation-alpha", "2"])
    with pytest.raises(ConfigError, match="distillation_alpha"):
        config_from_args(bad)


def test_every_field_is_read_outside_config() -> None:
    code = "\n".join(p.read_text() for p in SRC.rglob("*.py") if p.parent != SRC / "config")
    unread = [
        name
        for name in Config.field_names()
        if not re.search(rf'\bcfg\.{name}\b|getattr\(cfg, "{name}"', code)
    ]
    assert unread == []


def test_preset_files_are_generated_from_presets(tmp_path: Path) -> None:
    for name in PRESETS:
        generated = write_preset_yaml(name, tmp_path / f"{name}.yaml").read_text()
        assert (CONFIGS / f"{name}.yaml").read_text() == generated, f"regenerate {name}.yaml"


def test_old_run_config_with_retired_keys_still_reads(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("start_epoch: 0\nworld_size: 1\ndist_url: env://\nresplit: false\nepochs: 3\n")
    assert Config.from_yaml(p) == Config(epochs=3)


def test_data_set_specific_options_are_refused_elsewhere() -> None:
    with pytest.raises(ConfigError, match="'skip_corrupt' applies to image files"):
        Config(data_set="mnist5k", skip_corrupt=True).validate()
    with pytest.raises(ConfigError, match="'inat_category' applies to inat18/inat19 only"):
        Config(data_set="cifar10", inat_category="genus").validate()
    Config(data_set="folder", skip_corrupt=True).validate()
    Config(data_set="inat19", inat_category="genus", skip_corrupt=True).validate()


def test_eval_unused_needs_a_training_subset():
    with pytest.raises(ConfigError, match=r"'eval_unused' is on but 'train_subset' is 0"):
        Config(eval_unused=True).validate()
    Config(eval_unused=True, train_subset=100).validate()


def test_merged_problems_name_the_flag_or_file_that_set_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_args(_parser().parse_args(["--distillation-alpha", "2"]))
    assert str(e.value) == (
        "With --distillation-alpha, 'distillation_alpha' is 2.0 but must lie in [0, 1]; set it "
        "inside that range."
    )
    p = tmp_path / "c.yaml"
    p.write_text("eval_unused: true\n")
    with pytest.raises(ConfigError, match=rf"^In {re.escape(str(p))}, 'eval_unused' is on but"):
        config_from_args(_parser().parse_args(["--config", str(p)]))
    with pytest.raises(ConfigError, match=r"^With --batch-size, 'batch_size' is 7 but Mixup"):
        config_from_args(_parser().parse_args(["--preset", "small", "--batch-size", "7"]))


def test_help_under_a_preset_shows_its_values_and_print_config_prints_the_run(capsys) -> None:
    import yaml

    from deit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--preset", "small", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    assert "(default: 'deit_tiny_patch4_28', from --preset small)" in text
    assert "(default: 30, from --preset small)" in text  # --epochs
    assert "(default: 0.05, from --preset small)" in text  # --drop-path
    assert "(default: 0.05)" in text  # --weight-decay: the preset leaves it
    assert "--print-config prints every value a run would use" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 'deit_base_patch16_224')" in text and "from --preset" not in text
    argv = ["train", "--preset", "demo_student", "--seed", "3", "--print-config"]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == get_preset("demo_student").replace(seed=3).to_dict()
