"""Typed configs: recipe files, _base_ inheritance, dotted overrides, typo protection, round trip."""

from __future__ import annotations

import textwrap

import pytest

from semiseg.config import Config, ConfigError, config_to_dict, dump_config, load_config


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_follow_advsemiseg():
    cfg = Config()
    assert cfg.optim.lr == 2.5e-4 and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 5e-4
    assert cfg.optim.power == 0.9 and cfg.train.iterations == 20000
    assert cfg.data.batch_size == 10 and cfg.data.crop_size == [321, 321] and cfg.data.scale_range == [0.5, 1.5]
    assert cfg.model.name == "deeplabv2_resnet101" and cfg.method.name == "supervised"


def test_recipe_file_and_overrides(tmp_path):
    recipe = write(tmp_path / "camvid_fcn.yaml", """
        model: {name: fcn_resnet18, options: {learn_upsampling: false}}
        data:
          kind: camvid
          root: /data/camvid
          crop_size: [360, 480]
          labeled: {fraction: 0.25, seed: 3}
        optim: {lr: 1e-3, lr_mult: {head: 5}}
        loss: {name: ce+dice, class_weights: [1, 2, 3]}
        train: {iterations: 2e4, precision: bf16, channels_last: true}
        """)
    cfg = load_config(recipe, ["optim.lr=0.01", "data.scale_range=null", "model.options.head_lr_mult=20",
                               "train.eval_interval=500", "data.options={split_file: x.txt}"])
    assert cfg.name == "camvid_fcn"  # from the file name
    assert cfg.run_dir.endswith("runs/camvid_fcn")
    assert cfg.model.options == {"learn_upsampling": False, "head_lr_mult": 20}
    assert cfg.data.crop_size == [360, 480] and cfg.data.scale_range is None
    assert cfg.data.labeled.fraction == 0.25 and cfg.data.labeled.seed == 3
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.lr_mult == {"head": 5}
    assert cfg.loss.class_weights == [1.0, 2.0, 3.0]
    assert cfg.train.iterations == 20000 and isinstance(cfg.train.iterations, int)  # "2e4" is a YAML string
    assert cfg.train.channels_last is True and cfg.train.precision == "bf16"
    assert cfg.data.options == {"split_file": "x.txt"}


def test_base_recipe_is_merged(tmp_path):
    write(tmp_path / "base.yaml", """
        model: {name: fcn_resnet18, options: {head_lr_mult: 10}}
        optim: {lr: 0.01}
        """)
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.yaml", """
        _base_: ../base.yaml
        model: {options: {learn_upsampling: false}}
        train: {iterations: 100}
        """)
    cfg = load_config(child)
    assert cfg.model.name == "fcn_resnet18"
    assert cfg.model.options == {"head_lr_mult": 10, "learn_upsampling": False}
    assert cfg.optim.lr == 0.01 and cfg.train.iterations == 100


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=0.1", ["'lrr'", "valid keys", "lr,", "momentum"]),
    ("trian.iterations=5", ["'trian'", "model, data, optim"]),
    ("train.iterations=many", ["train.iterations", "integer"]),
    ("train.precision=half", ["train.precision", "fp32, bf16"]),
    ("data.crop_size=[1,2,3]", ["crop_size"]),
    ("data.crop_size.height=3", ["is a value, not a section"]),
    ("optim.lr", ["key=value"]),
    ("optim.lr_mult={head:1}", ["space after each colon"]),
    ("data.labeled.fraction=0.5", None),  # valid: nested section
])
def test_bad_overrides_name_the_key(override, words):
    if words is None:
        assert load_config(None, [override]).data.labeled.fraction == 0.5
        return
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for word in words:
        assert word in str(e.value)


def test_unknown_key_in_recipe_lists_valid_keys(tmp_path):
    recipe = write(tmp_path / "typo.yaml", """
        data: {kind: synthetic, batchsize: 8}
        """)
    with pytest.raises(ConfigError, match=r"'batchsize' in data; valid keys: kind, root, .*batch_size"):
        load_config(recipe)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="divisible"):
        load_config(None, ["data.batch_size=10", "train.accum_steps=3"])
    with pytest.raises(ConfigError, match="at most one"):
        load_config(None, ["data.labeled.fraction=0.5", "data.labeled.count=10"])


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["name=x", "data.labeled.count=7", "model.options={output_stride: 8}",
                             "train.channels_last=auto", "model.pretrained_backbone=/weights/r18.pth"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.model.pretrained_backbone == "/weights/r18.pth"
