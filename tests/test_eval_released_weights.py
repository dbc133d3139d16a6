"""`semiseg eval WEIGHTS --config RECIPE`: plain weights in a released layout, evaluated in a recipe's model."""

from __future__ import annotations

import pytest
import torch

from semiseg.cli import main
from semiseg.config import ConfigError, dump_config, load_config
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.evaluate import evaluate_checkpoint
from semiseg.engine.trainer import Trainer

from conftest import tiny_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained tiny run, its recipe as a YAML file, and its weights saved as DataParallel would ("module.")."""
    tmp = tmp_path_factory.mktemp("released")
    cfg = load_config(None, tiny_overrides(output_dir=str(tmp), name="run", **{"train.iterations": 6}))
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    recipe = str(tmp / "recipe.yaml")
    dump_config(cfg, recipe)
    state = load_checkpoint(f"{cfg.run_dir}/best.pt")["model"]
    weights = str(tmp / "released.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, weights)
    return cfg.run_dir, recipe, weights


def test_released_weights_score_as_the_run_itself(trained):
    run_dir, recipe, weights = trained
    from_run = evaluate_checkpoint(run_dir, device="cpu")
    released = evaluate_checkpoint(weights, device="cpu", recipe=recipe)
    assert released["metrics"] == from_run["metrics"]
    assert released["confusion_matrix"] == from_run["confusion_matrix"]
    assert released["checkpoint"].endswith("released.pth")
    # --set overrides reach the recipe (here its inference settings)
    flipped = evaluate_checkpoint(weights, device="cpu", recipe=recipe, recipe_overrides=["eval.flip=true"])
    assert flipped["inference"]["flip"] is True


def test_weights_that_do_not_fit_the_recipe_are_named(trained):
    _, recipe, weights = trained
    with pytest.raises(ConfigError, match=r"released\.pth does not fit the model of .*recipe\.yaml"):
        evaluate_checkpoint(weights, device="cpu", recipe=recipe, recipe_overrides=["model.options={width: 16}"])


def test_cli_eval_with_config_and_set(trained, tmp_path, capsys):
    run_dir, recipe, weights = trained
    out = tmp_path / "eval.json"
    assert main(["eval", weights, "--config", recipe, "--set", "eval.batch_size=2", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "copied" in printed and out.is_file()  # the load report, then the table
    assert "input normalization: imagenet (channels RGB" in printed  # the recipe's (here the model's) convention
    assert main(["eval", run_dir, "--set", "eval.flip=true"]) == 2  # --set belongs to --config
    assert "--set changes a recipe" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.pth"), "--config", recipe]) == 2
    assert "missing.pth" in capsys.readouterr().err
