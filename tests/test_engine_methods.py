"""The Method interface carries what AdvSemiSeg-style methods need: an extra network with its own optimizer,
the unlabeled stream, method options and state, all checkpointed and resumed exactly."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from semiseg.config import ConfigError, load_config
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.logger import read_metrics
from semiseg.engine.methods.base import Method
from semiseg.engine.trainer import Trainer

from conftest import tiny_overrides


class ToyAdversarial(Method):
    """A miniature of AdvSemiSeg's step: segmentation + adversarial loss on unlabeled predictions for the
    generator, then a discriminator update on detached predictions vs one-hot labels."""

    name = "toy_adversarial"
    needs_unlabeled = True

    @dataclasses.dataclass
    class Options:
        lambda_adv: float = 0.01
        lr_d: float = 1e-3

    def setup(self, ctx):
        super().setup(ctx)
        self.disc = ctx.add_module("discriminator", nn.Conv2d(ctx.num_classes, 1, 3, padding=1))
        ctx.add_optimizer("discriminator", torch.optim.Adam(ctx.modules["discriminator"].parameters(),
                                                            lr=self.options.lr_d, betas=(0.9, 0.99)))
        self.d_updates = 0

    def training_step(self, batch, unlabeled_batch, iteration):
        ctx = self.ctx
        images, masks = ctx.to_device(batch)
        unlabeled, _ = ctx.to_device(unlabeled_batch)
        disc = ctx.modules["discriminator"]
        disc.requires_grad_(False)  # the generator's loss must not train the discriminator
        with ctx.autocast():
            logits, logits_u = ctx.model(images).float(), ctx.model(unlabeled).float()
        seg = ctx.criterion(logits, masks)
        d_on_u = self.disc(logits_u.softmax(1))
        adv = F.binary_cross_entropy_with_logits(d_on_u, torch.ones_like(d_on_u))
        ctx.backward(seg + self.options.lambda_adv * adv)
        disc.requires_grad_(True)
        fake = self.disc(logits_u.detach().softmax(1))
        real = self.disc(F.one_hot(masks.clamp(max=ctx.num_classes - 1), ctx.num_classes).movedim(-1, 1).float())
        d_loss = (F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
                  + F.binary_cross_entropy_with_logits(real, torch.ones_like(real)))
        ctx.backward(d_loss)
        self.d_updates += 1
        return {"loss": (seg + self.options.lambda_adv * adv).detach(), "loss_seg": seg.detach(), "loss_d": d_loss.detach()}

    def state_dict(self):
        return {"d_updates": self.d_updates}

    def load_state_dict(self, state):
        self.d_updates = state["d_updates"]


def config(tmp_path, name, **extra):
    values = {"method.name": "test_engine_methods:ToyAdversarial", "data.labeled.fraction": 0.5,
              "train.log_interval": 1, "method.options": "{lambda_adv: 0.05}", **extra}
    return load_config(None, tiny_overrides(output_dir=str(tmp_path), name=name, **values))


def test_extra_network_optimizer_unlabeled_stream_and_state_resume_exactly(tmp_path):
    straight = config(tmp_path, "straight")
    Trainer(straight, straight.run_dir, progress=False).fit()
    chunked = config(tmp_path, "chunked")
    Trainer(chunked, chunked.run_dir, progress=False).fit(stop_at=5)
    Trainer(chunked, chunked.run_dir, resume=True, progress=False).fit()

    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    assert a["method"] == b["method"] == {"d_updates": 12}
    assert set(a["optimizers"]) == {"model", "discriminator"} and set(a["schedulers"]) == {"model", "discriminator"}
    assert a["streams"]["unlabeled"]["batch"] + a["streams"]["unlabeled"]["epoch"] > 0
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    disc_a, disc_b = a["modules"]["discriminator"], b["modules"]["discriminator"]
    assert all(torch.equal(disc_a[k], disc_b[k]) for k in disc_a)
    assert not torch.equal(disc_a["weight"], nn.Conv2d(4, 1, 3, padding=1).weight)  # it did train
    logged = [e for e in read_metrics(straight.run_dir) if e["kind"] == "train"]
    assert {"loss", "loss_seg", "loss_d", "lr"} <= set(logged[0])
    # the split: 8 labeled + 8 unlabeled of the 16 tiny training samples
    with open(os.path.join(straight.run_dir, "split.txt")) as f:
        assert "# labeled: 8" in f.read()


def test_method_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="needs unlabeled images.*data.labeled.fraction"):
        Trainer(config(tmp_path, "all", **{"data.labeled.fraction": "null"}), str(tmp_path / "all"), progress=False)
    with pytest.raises(ConfigError, match=r"'lamda_adv' in method.options; valid keys: lambda_adv, lr_d"):
        Trainer(config(tmp_path, "typo", **{"method.options": "{lamda_adv: 1}"}), str(tmp_path / "typo"), progress=False)
    with pytest.raises(ConfigError, match="unknown method.name 'advsemi'; available: advsemiseg, supervised, unimatch"):
        Trainer(config(tmp_path, "m", **{"method.name": "advsemi"}), str(tmp_path / "m"), progress=False)
