"""Every recipe in configs/ loads, names a registered model and dataset kind, and builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semiseg.config import load_config
from semiseg.data.palettes import CAMVID_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from semiseg.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from semiseg.data import DATASETS
from semiseg.models import MODELS, build_model

# study_*.yaml are `semiseg study` files, not recipes (tests/test_study.py loads them)
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")
                 if not p.name.startswith("study_"))
# class counts of the recipes' dataset kinds, from the datasets' own class lists
NUM_CLASSES = {"voc": len(VOC_CLASSES), "voc_aug": len(VOC_CLASSES), "camvid": len(CAMVID_CLASSES),
               "cityscapes": len(CITYSCAPES_CLASSES),
               "synthetic": len(SYNTHETIC_CLASSES), "synthetic_thin": 2,
               "folder": 2}  # the folder recipes take the user's classes; built here for a binary task


def test_there_are_recipes_for_every_seed_family():
    models = {load_config(str(p), []).model.name for p in RECIPES}
    assert {"fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "fcn_resnet18", "deeplabv2_resnet101",
            "deeplabv3plus_mobilenetv2"} <= models


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_loads_and_builds(path):
    cfg = load_config(str(path), [])
    assert cfg.model.name in MODELS
    assert cfg.data.kind in DATASETS
    assert len(cfg.data.crop_size) == 2 and cfg.data.batch_size >= 1
    if cfg.loss.class_weights is not None:
        assert len(cfg.loss.class_weights) == NUM_CLASSES[cfg.data.kind]
    # The builder must accept the recipe's options (a typo fails here, not after an hour of data loading).
    with torch.device("meta"):
        model = build_model(cfg.model.name, NUM_CLASSES[cfg.data.kind], pretrained_backbone=False, **cfg.model.options)
    names = {group["name"] for group in model.param_groups()}
    unknown = set(cfg.optim.lr_mult) - names
    assert not unknown, f"{path.name}: optim.lr_mult names groups {unknown} the model does not have ({names})"


# ---------------------------------------------------------------------------------------------------
# recipes are found by name from any folder, and ship with the package (issue 15 item 6)


def test_recipe_names_resolve_from_any_folder(tmp_path, monkeypatch):
    from semiseg.recipes import available_recipes, find_recipe

    monkeypatch.chdir(tmp_path)  # not the repository root: configs/ is not here
    names = available_recipes()
    assert "camvid/deeplabv3plus_mobilenetv2_scratch" in names and len(names) == len(RECIPES)
    by_name = load_config("camvid/deeplabv3plus_mobilenetv2_scratch")
    assert by_name.model.name == "deeplabv3plus_mobilenetv2" and by_name.name == "camvid_dlv3p_mnv2_scratch"
    # the spelling of the repository's commands and docs works from anywhere too
    assert load_config("configs/camvid/fcn_resnet18_scratch.yaml").model.name == "fcn_resnet18"  # _base_ resolved
    assert find_recipe("synthetic/deeplabv3plus_mobilenetv2.yaml").endswith("deeplabv3plus_mobilenetv2.yaml")
    # a file in the current folder wins over a shipped name
    (tmp_path / "mine.yaml").write_text("model: {name: fcn_resnet18}\n")
    assert load_config("mine.yaml").model.name == "fcn_resnet18"


def test_unknown_recipe_lists_the_shipped_ones(tmp_path, monkeypatch):
    from semiseg.config import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config("camvid/nope")
    text = str(e.value)
    assert "recipe not found: camvid/nope" in text and "fix:" in text and "camvid/fcn_resnet18_scratch" in text


def test_every_recipe_is_package_data():
    """The package sees configs/ as semiseg/configs (a symlink) and pyproject ships every YAML there."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    package = root / "semiseg" / "configs"
    assert package.is_dir() and package.resolve() == (root / "configs").resolve()
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["semiseg"]
    shipped = {p for pattern in patterns for p in (root / "semiseg").glob(pattern)}
    for recipe in RECIPES:
        assert package / recipe.relative_to(root / "configs") in shipped, recipe


def test_folder_recipes_need_only_a_root_and_classes(tmp_path):
    """The recipes for your own data stop with an error that names data.root when it is missing."""
    from semiseg.config import ConfigError
    from semiseg.engine.preflight import check_config

    for name in ("folder/large_objects", "folder/thin_structures", "folder/many_classes"):
        cfg = load_config(name)
        assert cfg.data.kind == "folder" and cfg.data.root is None
        with pytest.raises(ConfigError, match="data.root is not set"):
            check_config(cfg)
    thin = load_config("folder/thin_structures")
    assert thin.model.options["output_stride"] == 8 and thin.loss.name == "ce+dice"
    assert thin.data.scale_range[0] >= 0.8
