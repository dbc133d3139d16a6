"""Supervised training's optional CutMix between labeled crops (engine/methods/supervised.py): the mixed view's
targets pixel by pixel, its loss schedule, a run that resumes exactly, and bad options refused."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from semiseg.config import ConfigError, load_config
from semiseg.data.transforms import normalize
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.context import TrainContext
from semiseg.engine.logger import read_metrics
from semiseg.engine.methods import supervised
from semiseg.engine.methods.pseudo_labels import consistency_loss
from semiseg.engine.methods.supervised import Supervised
from semiseg.engine.trainer import Trainer

from conftest import TinyNet, tiny_overrides


def context(tmp_path, model) -> TrainContext:
    cfg = load_config(None, tiny_overrides(output_dir=str(tmp_path), **{"data.batch_size": 2}))
    return TrainContext(cfg=cfg, model=model, raw_model=model, criterion=nn.CrossEntropyLoss(ignore_index=255),
                        device=torch.device("cpu"), precision="fp32", channels_last=False, scaler=None, rank=0,
                        world_size=1, per_rank_batch=2, num_classes=2, ignore_index=255, normalization="imagenet",
                        labeled_dataset=None, unlabeled_dataset=None)


def white_and_black_batch() -> dict:
    """Crop 0 white, all class 1; crop 1 black, class 0 with its top 4 rows ignored."""
    image = lambda value: normalize(torch.full((3, 32, 32), value, dtype=torch.uint8))  # noqa: E731
    masks = torch.stack([torch.ones(32, 32, dtype=torch.long), torch.zeros(32, 32, dtype=torch.long)])
    masks[1, :4] = 255
    return {"image": torch.stack([image(255), image(0)]), "mask": masks}


def test_labeled_cutmix_mixes_images_and_true_labels_with_the_same_box(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = TinyNet(2)
    method = Supervised({"labeled_cutmix": True, "cutmix_prob": 1.0, "cutmix_area": [0.3, 0.3]})
    method.setup(context(tmp_path, model))
    inputs, calls = [], []
    model.register_forward_hook(lambda module, args, output: inputs.append(args[0].detach().clone()))
    monkeypatch.setattr(supervised, "consistency_loss", lambda logits, targets, thresh: calls.append(
        targets) or consistency_loss(logits, targets, thresh))
    out = method.training_step(white_and_black_batch(), None, 0)

    assert len(inputs) == 2 and len(calls) == 1  # the plain pass, then the mixed views'
    view, (targets,) = inputs[1], calls
    bright = view.mean(dim=1) > -1  # colour jitter keeps black dark and white bright
    # crop 0 (white) has a black box from crop 1, crop 1 (black) a white box from crop 0: labels follow the pixels
    assert (~bright[0]).any() and bright[0].any() and bright[1].any() and (~bright[1]).any()
    assert torch.equal(targets.label, bright.long())
    ignored = torch.zeros(2, 32, 32, dtype=torch.bool)
    ignored[1, :4] = True  # crop 1's ignored rows, wherever they are still crop 1's pixels
    from_crop_1 = torch.stack([~bright[0], ~bright[1]])
    assert torch.equal(targets.valid, ~(from_crop_1 & torch.stack([ignored[1], ignored[1]])))
    torch.testing.assert_close(out["loss"], out["loss_x"] + out["loss_mix"])


def test_mixed_view_loss_starts_at_mix_start_and_ramps(tmp_path):
    torch.manual_seed(0)
    method = Supervised({"labeled_cutmix": True, "mix_start": 2, "mix_rampup": 4})
    method.setup(context(tmp_path, TinyNet(2)))
    batch = white_and_black_batch()
    assert set(method.training_step(batch, None, 1)) == {"loss"}  # before mix_start: the plain step
    out = method.training_step(batch, None, 2)  # first ramp step: weight 1/4
    torch.testing.assert_close(out["loss"], out["loss_x"] + 0.25 * out["loss_mix"])
    plain = Supervised()
    plain.setup(context(tmp_path, TinyNet(2)))
    assert set(plain.training_step(batch, None, 5)) == {"loss"}  # off by default


def test_labeled_cutmix_run_resumes_exactly(tmp_path):
    def config(name):
        values = {"method.options": "{labeled_cutmix: true, strong_bn_statistics: false}", "train.iterations": 6,
                  "train.log_interval": 1, "train.eval_interval": 0, "train.checkpoint_interval": 0}
        return load_config(None, tiny_overrides(output_dir=str(tmp_path), name=name, **values))
    straight = config("straight")
    Trainer(straight, straight.run_dir, progress=False).fit()
    chunked = config("chunked")
    Trainer(chunked, chunked.run_dir, progress=False).fit(stop_at=3)
    Trainer(chunked, chunked.run_dir, resume=True, progress=False).fit()
    logged = [e for e in read_metrics(straight.run_dir) if e["kind"] == "train"]
    assert len(logged) == 6 and all(e["loss_mix"] > 0 for e in logged)
    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("options, message", [
    ({"cutmix_prob": 1.5}, "cutmix_prob must be in"),
    ({"cutmix_area": [0.5, 0.2]}, "cutmix_area must be"),
    ({"mix_start": -1}, "mix_start and mix_rampup must be >= 0"),
    ({"mixup": True}, "mixup"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        Supervised(options)
