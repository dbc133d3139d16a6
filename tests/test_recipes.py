"""Every recipe in configs/ loads, names a registered model and dataset kind, and builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semiseg.config import load_config
from semiseg.data.palettes import CAMVID_CLASSES, VOC_CLASSES
from semiseg.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from semiseg.data import DATASETS
from semiseg.models import MODELS, build_model

# study_*.yaml are `semiseg study` files, not recipes (tests/test_study.py loads them)
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")
                 if not p.name.startswith("study_"))
# class counts of the recipes' dataset kinds, from the datasets' own class lists
NUM_CLASSES = {"voc": len(VOC_CLASSES), "voc_aug": len(VOC_CLASSES), "camvid": len(CAMVID_CLASSES),
               "synthetic": len(SYNTHETIC_CLASSES)}


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
