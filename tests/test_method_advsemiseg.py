"""AdvSemiSeg through the real engine on the tiny model and data: losses, the confidence mask, the separation
of G's and D's gradients, checkpoint/resume, full-label mode, options and recipes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from semiseg.config import ConfigError, load_config
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.logger import read_metrics
from semiseg.engine.methods import advsemiseg
from semiseg.engine.methods.advsemiseg import AdvSemiSeg, d_target, one_hot_labels, pseudo_labels
from semiseg.engine.trainer import Trainer

from conftest import tiny_overrides

torch.set_num_threads(1)

METHOD = "semiseg.engine.methods.advsemiseg:AdvSemiSeg"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEMI_KEYS = {"loss_semi", "loss_semi_adv", "semi_ratio"}


def config(tmp_path, name, options="{semi_start: 3}", **extra):
    values = {"method.name": METHOD, "method.options": options, "data.labeled.fraction": 0.5,
              "data.crop_size": "[32,32]", "train.iterations": 8, "train.eval_interval": 4,
              "train.checkpoint_interval": 4, "train.log_interval": 1, **extra}
    return load_config(None, tiny_overrides(output_dir=str(tmp_path), name=name, **values))


def trainer(tmp_path, name="unit", **kwargs) -> Trainer:
    cfg = config(tmp_path, name, **kwargs)
    return Trainer(cfg, cfg.run_dir, progress=False)


def batches(t: Trainer) -> tuple[dict, dict]:
    return next(t.ctx.streams["labeled"]), next(t.ctx.streams["unlabeled"])


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------- engine runs


def test_run_checkpoints_discriminator_logs_terms_and_resumes_bitwise(tmp_path):
    straight = config(tmp_path, "straight")
    Trainer(straight, straight.run_dir, progress=False).fit()
    chunked = config(tmp_path, "chunked")
    Trainer(chunked, chunked.run_dir, progress=False).fit(stop_at=2)  # the resumed part crosses semi_start=3
    mid = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    torch.manual_seed(123)  # a new process starts from another RNG state; the checkpoint restores it
    Trainer(chunked, chunked.run_dir, resume=True, progress=False).fit()

    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    # (a) the discriminator, its optimizer, schedule and the second labeled stream are in the checkpoint
    disc = a["modules"]["discriminator"]
    layers = ("conv1", "conv2", "conv3", "conv4", "classifier")
    assert set(disc) == {f"{n}.{p}" for n in layers for p in ("weight", "bias")}
    assert set(a["optimizers"]) == set(a["schedulers"]) == {"model", "discriminator"}
    assert a["optimizers"]["discriminator"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert set(a["streams"]) == {"labeled", "unlabeled", "labeled_gt"}
    assert a["streams"]["labeled_gt"] == a["streams"]["labeled"]  # one ground-truth batch per step (trainloader_gt)
    assert not same_tensors(disc, mid["modules"]["discriminator"])  # D trained after iteration 2
    logged = [e for e in read_metrics(straight.run_dir) if e["kind"] == "train"]
    assert len(logged) == 8
    assert {"loss", "loss_seg", "loss_adv", "loss_d"} | SEMI_KEYS <= set(logged[0])
    assert all(e["loss_semi"] == 0.0 for e in logged[:3]) and all(e["loss_semi"] > 0 for e in logged[3:])
    assert all(e["loss_adv"] > 0 and e["loss_d"] > 0 and 0.0 <= e["semi_ratio"] <= 1.0 for e in logged)

    # (e) a run resumed at iteration 2 ends bitwise where the uninterrupted run ends
    assert b["iteration"] == a["iteration"] == 8
    assert same_tensors(a["model"], b["model"])
    assert same_tensors(disc, b["modules"]["discriminator"])
    adam_a, adam_b = a["optimizers"]["discriminator"]["state"], b["optimizers"]["discriminator"]["state"]
    assert all(same_tensors(adam_a[k], adam_b[k]) for k in adam_a)
    assert a["streams"] == b["streams"]
    strip = lambda run: [{k: v for k, v in e.items() if k not in ("img_per_s", "time", "threads")}
                         for e in read_metrics(run) if e["kind"] == "train"]
    assert strip(straight.run_dir) == strip(chunked.run_dir)


def test_full_labels_adversarial_only(tmp_path):
    options = "{lambda_semi: 0, lambda_semi_adv: 0}"
    cfg = config(tmp_path, "full", options=options, **{"data.labeled.fraction": "null", "train.iterations": 3,
                                                      "train.eval_interval": 0})
    t = Trainer(cfg, cfg.run_dir, progress=False)
    assert not t.method.needs_unlabeled and "unlabeled" not in t.ctx.streams
    t.fit()
    logged = [e for e in read_metrics(cfg.run_dir) if e["kind"] == "train"]
    assert {"loss", "loss_seg", "loss_adv", "loss_d"} <= set(logged[-1]) and not SEMI_KEYS & set(logged[-1])
    assert "discriminator" in load_checkpoint(os.path.join(cfg.run_dir, "last.pt"))["modules"]
    # with the unlabeled terms on (the defaults), full labels are refused with the engine's clear error
    with pytest.raises(ConfigError, match="needs unlabeled images"):
        trainer(tmp_path, "full_semi", **{"data.labeled.fraction": "null"})


# --------------------------------------------------------------------------------------------- unit level


# the recipe's loss applies to the labeled images only; the self-taught loss is train.py's plain CE (loss_calc)
RECIPE_LOSSES = [{}, {"loss.name": "ce+dice", "loss.class_weights": "[0.5,1,2,4]", "loss.label_smoothing": 0.1,
                      "loss.per_image": "true"}]


@pytest.mark.parametrize("loss", RECIPE_LOSSES, ids=["ce", "weighted_ce+dice"])
def test_semi_loss_is_zero_before_semi_start_and_the_plain_pseudo_label_ce_after(tmp_path, loss):
    t = trainer(tmp_path, options="{semi_start: 3, mask_T: 0.0}", **loss)  # mask_T 0: every pixel is confident
    batch, unlabeled = batches(t)
    before = t.method.training_step(batch, unlabeled, 2)
    after = t.method.training_step(batch, unlabeled, 3)
    assert before["loss_semi"].item() == 0.0
    with torch.no_grad():  # no optimizer step in between: G is unchanged
        logits = t.ctx.model(unlabeled["image"])
    expected = F.cross_entropy(logits, logits.argmax(1), ignore_index=255)  # no weights, no Dice, no smoothing
    if loss:  # (the recipe's criterion would give another value)
        assert abs(t.ctx.criterion(logits, logits.argmax(1)).item() - expected.item()) > 1e-2
    assert after["loss_semi"].item() > 0
    torch.testing.assert_close(after["loss_semi"], expected)
    assert after["semi_ratio"].item() == 1.0
    assert after["loss"] - before["loss"] == pytest.approx(0.1 * expected.item(), rel=1e-5)  # lambda_semi = 0.1


def test_pseudo_labels_ignore_pixels_at_or_below_mask_T():
    logits = torch.tensor([[[[2.0, 0.0, 0.0, 1.0]], [[0.0, 3.0, 0.0, 0.0]], [[0.0, 0.0, 4.0, 0.0]]]])  # (1, 3, 1, 4)
    # confidences sigmoid(.) = 0.88, 0.5 (a tie with mask_T), 0.27, 0.12
    d_logits = torch.tensor([[[[2.0, 0.0, -1.0, -2.0]]]])
    assert pseudo_labels(logits, d_logits, 0.5).tolist() == [[[0, 255, 255, 255]]]
    assert pseudo_labels(logits, d_logits, 0.2).tolist() == [[[0, 1, 2, 255]]]
    assert pseudo_labels(logits, d_logits, 0.0, ignore_index=9).tolist() == [[[0, 1, 2, 0]]]


class StubDiscriminator(nn.Module):
    """Returns fixed confidence logits (times a parameter that is 1, so D's update can backpropagate)."""

    def __init__(self, pattern: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.pattern = pattern

    def forward(self, x):
        return self.pattern.expand(x.shape[0], 1, *x.shape[-2:]) * self.scale


def test_confidence_mask_through_the_step_with_a_stub_discriminator(tmp_path, monkeypatch):
    # default mask_T = 0.2; ignore_border: the first row of every tiny mask is 255
    data = {"data.options": "{ignore_border: true}", "data.scale_range": "null"}
    t = trainer(tmp_path, options="{semi_start: 0}", **data)
    pattern = torch.full((1, 1, 32, 32), 3.0)  # confidence 0.95 on the left half ...
    pattern[..., 16:] = -3.0  # ... 0.05 on the right half
    pattern[..., 0, :] = -5.0  # ... and 0.007 on the first row
    stub = StubDiscriminator(pattern)
    t.method.discriminator = t.method.discriminator_train = stub
    targets, semi_targets = [], []  # what the recipe's criterion and the self-taught plain CE see
    criterion = t.ctx.criterion
    t.ctx.criterion = lambda logits, target: (targets.append(target.clone()), criterion(logits, target))[1]
    plain_ce = advsemiseg.cross_entropy

    def recording_ce(logits, target, **kw):
        semi_targets.append(target.clone())
        return plain_ce(logits, target, **kw)

    monkeypatch.setattr(advsemiseg, "cross_entropy", recording_ce)

    batch, unlabeled = batches(t)
    assert (batch["mask"][:, 0] == 255).all() and (batch["mask"][:, 1:] != 255).all()
    out = t.method.training_step(batch, unlabeled, 0)
    with torch.no_grad():
        argmax = t.ctx.model(unlabeled["image"]).argmax(1)
    (pseudo,) = semi_targets  # the unlabeled branch runs first, as in train.py; the criterion sees the labels only
    (labels,) = targets
    assert torch.equal(labels, batch["mask"])
    assert torch.equal(pseudo[:, 1:, :16], argmax[:, 1:, :16])
    assert (pseudo[:, 1:, 16:] == 255).all() and (pseudo[:, 0] == 255).all()
    assert out["semi_ratio"].item() == 31 * 16 / 32**2
    assert stub.scale.requires_grad  # unfrozen again for D's update
    # the adversarial loss on labeled predictions skips their unlabeled pixels (here: the first row)
    d_out = pattern.expand(len(batch["mask"]), 1, 32, 32)
    expected = F.binary_cross_entropy_with_logits(d_out[:, :, 1:], torch.ones_like(d_out[:, :, 1:]))
    torch.testing.assert_close(out["loss_adv"], expected)
    # ... and so does D's loss on predictions; its loss on ground truth too
    labeled_rows, unlabeled_all = d_out[:, :, 1:], d_out  # D's fake batch: labeled (first row ignored) + unlabeled
    fake_loss = (F.binary_cross_entropy_with_logits(labeled_rows, torch.zeros_like(labeled_rows), reduction="sum")
                 + F.binary_cross_entropy_with_logits(unlabeled_all, torch.zeros_like(unlabeled_all), reduction="sum")
                 ) / (labeled_rows.numel() + unlabeled_all.numel())
    real_loss = F.binary_cross_entropy_with_logits(d_out[:, :, 1:], torch.ones_like(d_out[:, :, 1:]))
    torch.testing.assert_close(out["loss_d"], (fake_loss + real_loss) / 2)


@pytest.mark.parametrize("ignore", [0, 11, -1])
def test_ignored_pixels_contribute_nothing_whatever_the_dataset_ignore_value(tmp_path, ignore):
    # the dataset marks its first row (and, with 0, every background pixel) with `ignore`; nothing is padded
    data = {"data.options": f"{{ignore_border: true, ignore_index: {ignore}}}", "data.scale_range": "null"}
    t = trainer(tmp_path, options="{semi_start: 0, mask_T: 0.0, gt_stream: false}", **data)
    assert t.ctx.ignore_index == ignore
    torch.manual_seed(0)
    # Pointwise G and D (1x1 convolutions): a pixel's outputs depend on that pixel of the input only, so noise
    # on the ignored pixels of the labeled images changes the predictions (and D's outputs) there and only there.
    t.ctx.model = nn.Conv2d(3, t.ctx.num_classes, 1)
    t.method.discriminator = t.method.discriminator_train = nn.Conv2d(t.ctx.num_classes, 1, 1)
    batch, unlabeled = batches(t)
    ignored = (batch["mask"] == ignore).unsqueeze(1)
    assert ignored[:, :, 0].all() and not ignored.all()

    def losses(images):
        out = t.method.training_step({**batch, "image": images}, unlabeled, 0)
        return {k: out[k] for k in ("loss", "loss_seg", "loss_adv", "loss_d", "loss_semi", "loss_semi_adv")}

    reference = losses(batch["image"])
    noise = 5 * torch.randn_like(batch["image"])
    torch.testing.assert_close(losses(batch["image"] + noise * ignored), reference, rtol=0, atol=0)
    # the same noise on the labelled pixels changes every term that sees the labeled images
    changed = losses(batch["image"] + noise * ~ignored)
    for key in ("loss_seg", "loss_adv", "loss_d"):
        assert (changed[key] - reference[key]).abs() > 1e-4, key


@pytest.mark.parametrize("gt_stream", [True, False])
def test_d_ground_truth_input_has_predictions_not_zeros_on_unlabeled_pixels(tmp_path, monkeypatch, gt_stream):
    # 40x40 crops of 32x32 images: every crop is padded (ignore value in the mask); the first rows are ignored too
    data = {"data.options": "{ignore_border: true}", "data.scale_range": "null", "data.crop_size": "[40,40]"}
    t = trainer(tmp_path, options=f"{{gt_stream: {str(gt_stream).lower()}}}", **data)
    d_io = []  # (input, output) of each call of D
    t.ctx.modules["discriminator"].register_forward_hook(lambda m, args, out: d_io.append((args[0], out.detach())))
    gt_masks = []
    get_masks = t.method._ground_truth_masks

    def recording_get_masks(batch):
        gt_masks.append(get_masks(batch))
        return gt_masks[-1]

    monkeypatch.setattr(t.method, "_ground_truth_masks", recording_get_masks)
    batch, unlabeled = batches(t)
    out = t.method.training_step(batch, unlabeled, 0)
    n = t.ctx.per_rank_batch
    (fake, d_fake), (real, d_real) = d_io[2], d_io[3]  # D's update: predictions, then ground truth
    (masks,) = gt_masks
    ignored = masks == 255
    assert ignored.sum() > 16 * 40 and (~ignored).sum() > 0  # padding and first rows
    assert not gt_stream or not torch.equal(masks, batch["mask"])  # another draw of the labeled set
    labeled_probs = fake[:n]
    # (a) no all-zero pixel: unlabeled pixels hold the labeled predictions at the same positions, ...
    assert (real.sum(1) - 1).abs().max() < 1e-5 and real.amax(1).min() > 0
    keep = ~ignored.unsqueeze(1).expand_as(real)
    torch.testing.assert_close(real[~keep], labeled_probs[~keep], rtol=0, atol=0)
    # ... labelled pixels the one-hot of their class
    torch.testing.assert_close(real[keep], one_hot_labels(masks, t.ctx.num_classes)[keep], rtol=0, atol=0)
    # (b) D's losses still skip the unlabeled pixels (of the ground truth and of the labeled predictions)
    real_loss = F.binary_cross_entropy_with_logits(d_real[~ignored.unsqueeze(1)], torch.ones(int((~ignored).sum())))
    fake_ignored = torch.cat([batch["mask"] == 255, torch.zeros_like(batch["mask"], dtype=torch.bool)]).unsqueeze(1)
    fake_loss = F.binary_cross_entropy_with_logits(d_fake[~fake_ignored], torch.zeros(int((~fake_ignored).sum())))
    torch.testing.assert_close(out["loss_d"], (fake_loss + real_loss) / 2)


def test_d_update_leaves_g_gradients_and_g_losses_leave_d_gradients(tmp_path):
    t = trainer(tmp_path, options="{semi_start: 0}")
    ctx = t.ctx
    g_params = dict(ctx.raw_model.named_parameters())
    d_params = dict(ctx.modules["discriminator"].named_parameters())
    grads = []  # after each backward: (G's grads, D's grads)
    backward = ctx.backward

    def recording_backward(loss):
        backward(loss)
        snap = lambda ps: {k: None if p.grad is None else p.grad.clone() for k, p in ps.items()}
        grads.append((snap(g_params), snap(d_params)))

    ctx.backward = recording_backward
    t.method.training_step(*batches(t), 0)
    assert len(grads) == 4  # unlabeled G loss, labeled G loss, D on predictions, D on ground truth
    for g, d in grads[:2]:  # G's losses went through D, but D is frozen
        assert all(v is None for v in d.values())
    g_after_g_losses = grads[1][0]
    assert all(v is not None and v.abs().sum() > 0 for v in g_after_g_losses.values())
    for g, d in grads[2:]:  # D's losses see detached predictions: G's gradients stay as they were
        assert same_tensors(g, g_after_g_losses)
    assert all(v is not None and v.abs().sum() > 0 for v in grads[3][1].values())
    assert all(p.requires_grad for p in d_params.values())


@pytest.mark.parametrize("d_remain", [True, False])
def test_d_sees_unlabeled_predictions_only_with_d_remain(tmp_path, d_remain):
    t = trainer(tmp_path, options=f"{{d_remain: {str(d_remain).lower()}}}")
    sizes = []
    t.ctx.modules["discriminator"].register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    t.method.training_step(*batches(t), 0)
    n = t.ctx.per_rank_batch
    # G on unlabeled, G on labeled, D on predictions (labeled [+ unlabeled]), D on ground truth
    assert sizes == [n, n, 2 * n if d_remain else n, n]


def test_unlabeled_branch_waits_for_semi_start_adv(tmp_path):
    t = trainer(tmp_path, options="{semi_start: 0, semi_start_adv: 2}")
    sizes = []
    t.ctx.modules["discriminator"].register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    n = t.ctx.per_rank_batch
    before = t.method.training_step(*batches(t), 1)
    assert sizes == [n, n, n]  # G on labeled, D on labeled predictions, D on ground truth
    assert all(before[k].item() == 0.0 for k in SEMI_KEYS)
    sizes.clear()
    after = t.method.training_step(*batches(t), 2)
    assert sizes == [n, n, 2 * n, n] and after["loss_semi_adv"] > 0 and after["semi_ratio"] > 0


def test_one_hot_and_d_targets_ignore_unlabeled_pixels():
    masks = torch.tensor([[[0, 2, 255], [1, 255, 0]]])
    one_hot = one_hot_labels(masks, 3)
    assert one_hot.shape == (1, 3, 2, 3) and one_hot.dtype == torch.float32
    assert one_hot.sum(1).tolist() == [[[1, 1, 0], [1, 0, 1]]]
    assert torch.equal(one_hot.argmax(1)[masks != 255], masks[masks != 255])
    assert d_target(1.0, masks == 255).tolist() == [[[1, 1, 255], [1, 255, 1]]]
    # D's label maps mark ignored pixels with their own 255, whatever the dataset's ignore value
    masks0 = masks.masked_fill(masks == 255, 0) + (masks != 255)  # classes 1..3, 0 = no label
    assert one_hot_labels(masks0, 4, ignore_index=0).sum(1).tolist() == [[[1, 1, 0], [1, 0, 1]]]
    assert d_target(0.0, masks0 == 0).tolist() == [[[0, 0, 255], [0, 255, 0]]]


# --------------------------------------------------------------------------------------------- options, recipes


@pytest.mark.parametrize("options, message", [
    ({"mask_T": 1.5}, r"mask_T must be in \[0, 1\]"),
    ({"lambda_semi": -0.1}, "lambda_semi must be >= 0"),
    ({"semi_start": -1}, "semi_start must be an iteration >= 0"),
    ({"betas_d": [0.9]}, "betas_d must be two numbers"),
    ({"mask_t": 0.2}, "'mask_t' in method.options; valid keys: lambda_adv_pred"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        AdvSemiSeg(options)


def test_needs_unlabeled_follows_the_unlabeled_terms():
    assert AdvSemiSeg().needs_unlabeled
    assert AdvSemiSeg({"lambda_semi": 0}).needs_unlabeled  # the adversarial term on unlabeled images remains
    assert not AdvSemiSeg({"lambda_semi": 0, "lambda_semi_adv": 0}).needs_unlabeled


def test_small_crops_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="at least 32x32.*data.crop_size"):
        trainer(tmp_path, "small", **{"data.crop_size": "[24,24]"})


@pytest.mark.parametrize("recipe", sorted(CONFIGS.rglob("advsemiseg_*.yaml")), ids=lambda p: p.stem)
def test_recipes_name_the_method_with_valid_options(recipe):
    cfg = load_config(str(recipe), [])
    assert cfg.method.name == "advsemiseg"
    method = AdvSemiSeg(cfg.method.options)
    assert min(cfg.data.crop_size) >= 32
    full = cfg.data.labeled.fraction is None and cfg.data.labeled.count is None and cfg.data.labeled.id_file is None
    assert method.needs_unlabeled != full
    if recipe.parent.name == "voc":  # the paper's numbers
        o = method.options
        assert (o.lambda_adv_pred, o.lr_d, o.betas_d, cfg.train.iterations) == (0.01, 1e-4, [0.9, 0.99], 20000)
        if not full:
            assert (o.lambda_semi_adv, o.lambda_semi, o.mask_T, o.semi_start) == (0.001, 0.1, 0.2, 5000)
