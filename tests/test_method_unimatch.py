"""UniMatch / FixMatch (engine/methods/unimatch.py): a real training run with resume, the confidence threshold,
CutMix alignment of images and pseudo labels, strong views that keep geometry, the feature-perturbation switch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, Subset
from torchvision import tv_tensors

from semiseg.config import ConfigError, load_config
from semiseg.data.synthetic import SyntheticShapes
from semiseg.data.transforms import build_train_transform, crop_can_pad, denormalize, normalize
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.context import TrainContext
from semiseg.engine.logger import read_metrics
from semiseg.engine.methods import unimatch
from semiseg.engine.methods.perturbations import FeaturePerturbation, cutmix_boxes, make_strong_views, padding_mask
from semiseg.engine.methods.pseudo_labels import consistency_loss, mask_ratio, pseudo_labels
from semiseg.engine.methods.unimatch import UniMatch
from semiseg.engine.trainer import Trainer
from semiseg.models import build_model

from conftest import TinyNet, tiny_overrides

METHOD = "semiseg.engine.methods.unimatch:UniMatch"
FIXMATCH = {"strong_views": 1, "feature_perturbation": False}
REPO = Path(__file__).resolve().parents[1]


class FpNet(nn.Module):
    """A small segmentation net with a ``backbone`` (what the fp stream hooks) and BatchNorm in both parts."""

    normalization = "imagenet"

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        return F.interpolate(self.head(self.backbone(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


def fp_model(num_classes, *, pretrained_backbone=False, **options):
    return FpNet(num_classes, **options)


class CodedNet(nn.Module):
    """Per-pixel 2-class net: class 1 for bright pixels, class 0 for dark ones, with confidence ~1.
    Records every input batch and the batch size its head (the decoder) sees."""

    normalization = "imagenet"

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 3, 1)
        self.head = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.backbone.bias.zero_()
            # logit_1 - logit_0 = 2 * 10 * (mean channel + 1): black (-2) -> class 0, white (>= 0) -> class 1
            self.head.weight.copy_(torch.tensor([[-10 / 3] * 3, [10 / 3] * 3]).view(2, 3, 1, 1))
            self.head.bias.copy_(torch.tensor([-10.0, 10.0]))
        self.inputs, self.decoder_batches = [], []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        features = self.backbone(x)
        self.decoder_batches.append(features.shape[0])
        return self.head(features)


class Constant(Dataset):
    """``length`` copies of one uint8 colour as normalised crops (the unlabeled images CutMix pastes in)."""

    def __init__(self, value: int, size: int = 32, length: int = 8):
        self.image = normalize(torch.full((3, size, size), value, dtype=torch.uint8))
        self.size, self.length = size, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        mask = torch.zeros(self.size, self.size, dtype=torch.long)
        return {"image": self.image.clone(), "mask": mask, "name": str(i)}


def direct_context(tmp_path, model, unlabeled_dataset, batch=2, **overrides):
    """A real TrainContext around ``model`` without a Trainer, for calling training_step with chosen batches."""
    cfg = load_config(None, tiny_overrides(output_dir=str(tmp_path), **{"data.batch_size": batch, **overrides}))
    return TrainContext(cfg=cfg, model=model, raw_model=model, criterion=nn.CrossEntropyLoss(ignore_index=255),
                        device=torch.device("cpu"), precision="fp32", channels_last=False, scaler=None, rank=0,
                        world_size=1, per_rank_batch=batch, num_classes=2, ignore_index=255,
                        normalization="imagenet", labeled_dataset=unlabeled_dataset,
                        unlabeled_dataset=unlabeled_dataset)


def coded_step(tmp_path, monkeypatch, options):
    """One training step of CodedNet: labeled noise, black unlabeled crops, white images to paste.
    Returns the model, the step's logged losses and the (logits, targets) of every consistency loss."""
    torch.manual_seed(0)
    model = CodedNet()
    method = UniMatch(options)
    method.setup(direct_context(tmp_path, model, Constant(255)))
    calls = []

    def recording_loss(logits, targets, conf_thresh, class_weight=None):
        calls.append((logits.detach(), targets))
        return consistency_loss(logits, targets, conf_thresh, class_weight)

    monkeypatch.setattr(unimatch, "consistency_loss", recording_loss)
    labeled = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
    black = Constant(0)
    out = method.training_step(labeled, {"image": torch.stack([black[0]["image"]] * 2)}, 0)
    return model, out, calls


# ------------------------------------------------------------------------------------------------ (a) engine run


def run_config(tmp_path, name, **extra):
    values = {"model.name": "test_method_unimatch:fp_model", "method.name": METHOD, "data.labeled.fraction": 0.5,
              "data.scale_range": "[0.5,1.0]",  # crops of images scaled below 24 px are padded
              "method.options": "{conf_thresh: 0.0}", "train.iterations": 6, "train.log_interval": 1,
              "train.eval_interval": 0, "train.checkpoint_interval": 0, **extra}
    return load_config(None, tiny_overrides(output_dir=str(tmp_path), name=name, **values))


def test_training_run_logs_loss_terms_and_resumes_exactly(tmp_path):
    straight = run_config(tmp_path, "straight")
    Trainer(straight, straight.run_dir, progress=False).fit()
    chunked = run_config(tmp_path, "chunked")
    Trainer(chunked, chunked.run_dir, progress=False).fit(stop_at=3)
    Trainer(chunked, chunked.run_dir, resume=True, progress=False).fit()

    logged = [e for e in read_metrics(straight.run_dir) if e["kind"] == "train"]
    assert len(logged) == 6
    for e in logged:
        assert {"loss", "loss_x", "loss_s", "loss_fp", "mask_ratio"} <= set(e)
        # conf_thresh 0: every valid pixel is pseudo-labeled, so both unsupervised terms are active
        assert e["mask_ratio"] == 1.0 and e["loss_s"] > 0 and e["loss_fp"] > 0
        assert e["loss"] == pytest.approx((e["loss_x"] + 0.5 * e["loss_s"] + 0.5 * e["loss_fp"]) / 2, rel=1e-5)
    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    assert set(a["streams"]) == {"labeled", "unlabeled", "unlabeled_mix"}
    assert a["streams"] == b["streams"]
    # strong augmentation, CutMix boxes and feature dropout all draw from the checkpointed RNG
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_summed_losses_keep_the_labeled_loss_at_full_weight(tmp_path):
    # average_losses: false is the FixMatch paper's l_x + w l_u: the labeled term is not halved
    cfg = run_config(tmp_path, "summed", **{"method.options": "{conf_thresh: 0.0, average_losses: false}",
                                            "train.iterations": 2})
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    logged = [e for e in read_metrics(cfg.run_dir) if e["kind"] == "train"]
    assert len(logged) == 2
    for e in logged:
        assert e["loss_s"] > 0 and e["loss_fp"] > 0
        assert e["loss"] == pytest.approx(e["loss_x"] + 0.5 * e["loss_s"] + 0.5 * e["loss_fp"], rel=1e-5)


# ------------------------------------------------------------------------------------------------ (b) threshold


def test_pixels_below_the_confidence_threshold_contribute_nothing():
    # 1 image, 4 pixels, 3 classes: confident (class 0), unsure (class 1), confident (class 2), padding
    weak = torch.tensor([[10.0, 0.0, -5.0, 9.0], [0.0, 0.4, -5.0, 0.0], [0.0, 0.0, 5.0, 0.0]]).view(1, 3, 1, 4)
    valid = torch.tensor([[[True, True, True, False]]])
    targets = pseudo_labels(weak, valid)
    assert targets.label.tolist() == [[[0, 1, 2, 0]]]
    assert targets.conf[0, 0, 1] < 0.95 < targets.conf[0, 0, 0]

    strong = torch.randn(1, 3, 1, 4, requires_grad=True)
    loss = consistency_loss(strong, targets, 0.95)
    ce = F.cross_entropy(strong, targets.label, reduction="none")[0, 0]
    # confident valid pixels summed, divided by all three valid pixels (the unsure one counts below the line)
    torch.testing.assert_close(loss, (ce[0] + ce[2]) / 3)
    loss.backward()
    assert strong.grad[..., 1].abs().max() == 0 and strong.grad[..., 3].abs().max() == 0
    assert strong.grad[..., 0].abs().max() > 0 and strong.grad[..., 2].abs().max() > 0
    torch.testing.assert_close(mask_ratio(targets, 0.95), torch.tensor(2 / 3))
    # the threshold is inclusive (the official ">="): at exactly the unsure pixel's confidence it counts
    at = float(targets.conf[0, 0, 1])
    torch.testing.assert_close(consistency_loss(strong, targets, at), (ce[0] + ce[1] + ce[2]) / 3)


def test_padding_of_the_train_transform_is_recognised():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    transform = build_train_transform([32, 40], scale_range=None, normalization="imagenet")
    crop, mask = transform(tv_tensors.Image(image), tv_tensors.Mask(torch.zeros(20, 30, dtype=torch.long)))
    padded = mask == 255  # the transform pads a zero mask with the ignore label exactly where it pads the image
    assert padded.float().mean() > 0.4
    assert torch.equal(padding_mask(crop.unsqueeze(0), "imagenet")[0], padded)


def test_crop_can_pad_agrees_with_the_transform():
    # a 20x30 image at the smallest scale of the range, against crops it just covers or just misses
    for crop, low, pads in [((16, 24), 0.8, False), ((16, 24), 0.75, True), ((17, 24), 0.8, True)]:
        transform = build_train_transform(list(crop), scale_range=(low, low), hflip=False)
        _, mask = transform(tv_tensors.Image(torch.zeros(3, 20, 30, dtype=torch.uint8)),
                            tv_tensors.Mask(torch.zeros(20, 30, dtype=torch.long)))
        assert bool((mask == 255).any()) == pads
        assert crop_can_pad((20, 30), crop, (low, 2.0)) == pads


@pytest.mark.parametrize("low_scale, warns", [(0.75, False), (0.5, True)])
def test_photometric_warning_only_where_unlabeled_crops_can_be_padded(tmp_path, low_scale, warns):
    # 32x32 unlabeled images, 24x24 crops: at 0.75x they still cover the crop; at 0.5x (16 px) they are padded,
    # and photometric augmentation would recolour that padding
    unlabeled = Subset(SyntheticShapes(length=4, size=32), [0, 2])
    ctx = direct_context(tmp_path, CodedNet(), unlabeled, **{"data.photometric": "true",
                                                              "data.scale_range": f"[{low_scale},1.0]"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        UniMatch({}).setup(ctx)
    assert any("recolours the padding" in str(w.message) for w in caught) == warns


# ------------------------------------------------------------------------------------------------ (c) CutMix


def test_cutmix_pastes_image_and_pseudo_labels_with_the_same_box(tmp_path, monkeypatch):
    model, out, calls = coded_step(tmp_path, monkeypatch, {"cutmix_prob": 1.0})
    strong_inputs = model.inputs[2].chunk(2)  # forwards: teacher on the pasted images, weak, strong views
    assert len(calls) == 3  # two strong views, then the fp stream
    for view, (_, targets) in zip(strong_inputs, calls[:2]):
        from_white = view.mean(dim=1) > -1  # black crops stay black under colour jitter; white ones stay bright
        assert from_white.any() and not from_white.all()
        assert torch.equal(targets.label == 1, from_white)  # pixel by pixel
        assert targets.valid.all() and (targets.conf > 0.99).all()
    assert not torch.equal(strong_inputs[0], strong_inputs[1])  # each view has its own box and colours
    # the fp stream is supervised by the weak view's own (un-mixed, all black) pseudo labels
    assert (calls[2][1].label == 0).all()
    assert out["mask_ratio"] == 1.0


def test_cutmix_boxes():
    torch.manual_seed(0)
    assert not cutmix_boxes(16, 32, 48, prob=0.0).any()
    boxes = cutmix_boxes(64, 32, 48, prob=1.0, area=(0.02, 0.4))
    for box in boxes:
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        assert box.sum() == h * w  # one filled rectangle
        assert 0.3 * 0.02 * 32 * 48 <= h * w <= 0.4 * 32 * 48
    half = cutmix_boxes(400, 8, 8, prob=0.5).flatten(1).any(1).float().mean()
    assert 0.4 < half < 0.6


# ------------------------------------------------------------------------------------------------ (d) strong views


def test_strong_views_change_colours_but_not_geometry():
    torch.manual_seed(0)
    scene = torch.full((8, 3, 32, 32), 50, dtype=torch.uint8)
    scene[:, :, 4:20, 10:28] = 200  # an off-centre bright rectangle: a flip, shift or crop would move it
    images = normalize(scene)
    (view, box), = make_strong_views(images, images, views=1, cutmix_prob=0.0, cutmix_area=(0.02, 0.4),
                                     normalization="imagenet")
    assert view.shape == images.shape and not box.any()
    out = denormalize(view).int()
    # away from the edge (the blur kernel is 9 px), every inside pixel stays brighter than every outside pixel
    inside = out[:, :, 8:16, 14:24]
    outside = torch.cat([out[:, :, 24:, :].flatten(2), out[:, :, :, :6].flatten(2)], dim=2)
    assert (inside.flatten(2).amin(2) > outside.amax(2)).all()
    changed = (out - scene.int()).abs().flatten(1).amax(1) > 10
    assert changed.sum() >= 4  # colour jitter (p=0.8) recoloured most of the 8 images


# ------------------------------------------------------------------------------------------------ (e) variants


@pytest.mark.parametrize("variant", ["unimatch", "fixmatch"])
def test_fixmatch_settings_do_not_run_the_fp_stream(tmp_path, monkeypatch, variant):
    options = {"cutmix_prob": 0.5} if variant == "unimatch" else {"cutmix_prob": 0.5, **FIXMATCH}
    model, out, calls = coded_step(tmp_path, monkeypatch, options)
    # decoder batches of the three forwards: teacher (2 pasted images), labeled + weak (2 + 2), strong views
    if variant == "unimatch":
        assert model.decoder_batches == [2, 8, 4]  # weak batch doubled by the perturbed copies; two views
        assert set(out) == {"loss", "loss_x", "loss_s", "loss_fp", "mask_ratio"} and len(calls) == 3
    else:
        assert model.decoder_batches == [2, 4, 2]  # nothing perturbed; one view
        assert set(out) == {"loss", "loss_x", "loss_s", "mask_ratio"} and len(calls) == 1
        torch.testing.assert_close(out["loss"], (out["loss_x"] + out["loss_s"]) / 2)  # fixmatch.py's total


def test_feature_perturbation_on_deeplabv3plus():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_mobilenetv2", 3).eval()
    fp = FeaturePerturbation(model, 0.5)
    decoder_inputs = []  # the low-level (shortcut_conv) and high-level (aspp) features the decoder receives
    for module in (model.shortcut_conv, model.aspp):
        module.register_forward_pre_hook(lambda m, args: decoder_inputs.append(args[0]))
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        plain = model(x)
        decoder_inputs.clear()
        with fp.active():
            both = model(x)
        perturbed_inputs = list(decoder_inputs)
        after = model(x)
    assert both.shape == (4, 3, 33, 33)
    torch.testing.assert_close(both[:2], plain)  # eval-mode BatchNorm: the clean half is the plain prediction
    torch.testing.assert_close(after, plain)  # inactive outside the block
    for features in perturbed_inputs:  # Dropout2d(0.5): each channel of the copy zeroed or scaled by 2
        clean, copy = features.chunk(2)
        dropped = copy.flatten(2).abs().amax(2) == 0
        assert 0.3 < dropped.float().mean() < 0.7
        torch.testing.assert_close(copy[~dropped], 2 * clean[~dropped])


def test_class_weighted_loss_is_the_weighted_mean_with_unconfident_pixels_below_the_line():
    # 1 image, 4 pixels, 3 classes: confident 0, unsure 1, confident 2, padding (the previous test's pixels)
    weak = torch.tensor([[10.0, 0.0, -5.0, 9.0], [0.0, 0.4, -5.0, 0.0], [0.0, 0.0, 5.0, 0.0]]).view(1, 3, 1, 4)
    targets = pseudo_labels(weak, torch.tensor([[[True, True, True, False]]]))
    strong = torch.randn(1, 3, 1, 4)
    ce = F.cross_entropy(strong, targets.label, reduction="none")[0, 0]
    w = torch.tensor([0.5, 2.0, 3.0])
    # confident pixels weighted by their pseudo label's class; divisor: the weights of all valid pixels (0.5 + 2 + 3)
    torch.testing.assert_close(consistency_loss(strong, targets, 0.95, w), (0.5 * ce[0] + 3.0 * ce[2]) / 5.5)
    # at threshold 0 every valid pixel counts: exactly F.cross_entropy's weighted mean, padding ignored
    label = targets.label.masked_fill(~targets.valid, 255)
    torch.testing.assert_close(consistency_loss(strong, targets, 0.0, w),
                               F.cross_entropy(strong, label, weight=w, ignore_index=255))
    # equal weights change nothing
    torch.testing.assert_close(consistency_loss(strong, targets, 0.95, torch.full((3,), 7.0)),
                               consistency_loss(strong, targets, 0.95))


def test_class_weighted_step_uses_the_recipes_class_weights(tmp_path, monkeypatch):
    # the step hands the recipe's loss.class_weights to the unlabeled loss (whose arithmetic the test above checks)
    seen = []
    real = unimatch.consistency_loss

    def spy(logits, targets, conf_thresh, class_weight=None):
        seen.append(class_weight)
        return real(logits, targets, conf_thresh, class_weight)

    monkeypatch.setattr(unimatch, "consistency_loss", spy)
    ctx = direct_context(tmp_path, CodedNet(), Constant(255))
    ctx.cfg.loss.class_weights = [0.25, 4.0]
    method = UniMatch({**FIXMATCH, "class_weighted": True})
    method.setup(ctx)
    labeled = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
    method.training_step(labeled, {"image": torch.stack([Constant(0)[0]["image"]] * 2)}, 0)
    assert len(seen) == 1 and seen[0].tolist() == [0.25, 4.0]

    plain = direct_context(tmp_path, CodedNet(), Constant(255))  # class_weights null in the tiny recipe
    with pytest.raises(ConfigError, match="loss.class_weights.*class_weighted=false"):
        UniMatch({**FIXMATCH, "class_weighted": True}).setup(plain)
    plain = direct_context(tmp_path, CodedNet(), Constant(255))
    plain.cfg.loss.class_weights = [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="3 values but the dataset has 2 classes"):
        UniMatch({**FIXMATCH, "class_weighted": True}).setup(plain)


# ------------------------------------------------------------------------------------------------ errors, recipes


def test_bad_options_and_unsupported_models_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="strong_views must be 1"):
        UniMatch({"strong_views": 3})
    with pytest.raises(ConfigError, match="conf_thresh must be in"):
        UniMatch({"conf_thresh": 95})
    with pytest.raises(ConfigError, match="feature_perturbation=false instead"):
        UniMatch({"weight_fp": 0})
    ctx = direct_context(tmp_path, TinyNet(2), Constant(0))
    with pytest.raises(ConfigError, match="TinyNet has none.*feature_perturbation=false"):
        UniMatch({}).setup(ctx)
    UniMatch(FIXMATCH).setup(ctx)  # image perturbations need nothing from the model


@pytest.mark.parametrize("recipe", ["synthetic", "voc"])
def test_recipes_use_unimatch_with_valid_options(recipe):
    cfg = load_config(str(REPO / "configs" / recipe / "unimatch_deeplabv3plus_mobilenetv2_1-8.yaml"))
    assert cfg.method.name == "unimatch" and cfg.data.labeled.fraction == 0.125
    options = UniMatch(cfg.method.options).options
    assert options.conf_thresh == 0.95 and options.strong_views == 2 and options.strong_weight == 0.5
    with torch.device("meta"):
        model = build_model(cfg.model.name, 8, **cfg.model.options)
    assert isinstance(model.backbone, nn.Module)  # the fp stream's hook point


def test_unlabeled_ratio_streams_that_many_unlabeled_images_per_labeled_one_and_resumes_exactly(tmp_path, monkeypatch):
    # 16 images, half labeled, batch 4: ratio 2 gives 8 unlabeled images (and 8 to paste) per step
    seen = []
    step = UniMatch.training_step
    monkeypatch.setattr(UniMatch, "training_step", lambda self, batch, unlabeled, it: seen.append(
        (len(batch["image"]), len(unlabeled["image"]))) or step(self, batch, unlabeled, it))
    options = "{conf_thresh: 0.0, unlabeled_ratio: 2}"
    straight = run_config(tmp_path, "straight", **{"method.options": options})
    Trainer(straight, straight.run_dir, progress=False).fit()
    assert seen == [(4, 8)] * 6
    chunked = run_config(tmp_path, "chunked", **{"method.options": options})
    Trainer(chunked, chunked.run_dir, progress=False).fit(stop_at=3)
    Trainer(chunked, chunked.run_dir, resume=True, progress=False).fit()
    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    assert a["streams"] == b["streams"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # 6 steps of 8 over 8 unlabeled images: 6 epochs of the unlabeled stream (1 batch each) and of the paste stream
    assert a["streams"]["unlabeled"]["epoch"] == a["streams"]["unlabeled_mix"]["epoch"] == 5

    with pytest.raises(ConfigError, match="unlabeled_ratio must be a whole number >= 1"):
        UniMatch({"unlabeled_ratio": 0})


# ------------------------------------------------------------------------------------------------ (f) BCP


def test_paste_labeled_mixes_true_labels_into_unlabeled_views_and_pseudo_labels_into_labeled(tmp_path, monkeypatch):
    # Labeled crops are white with true label 0 (CodedNet would say 1) and an ignored top band; unlabeled ones black
    # (pseudo label 0). Boxes always on, one strong view (FixMatch), the model as teacher.
    torch.manual_seed(0)
    model = CodedNet()
    method = UniMatch({"cutmix_prob": 1.0, "paste_labeled": True, **FIXMATCH})
    method.setup(direct_context(tmp_path, model, Constant(255)))
    assert method.mix_stream is None  # no second unlabeled stream is read
    calls = []
    monkeypatch.setattr(unimatch, "consistency_loss", lambda logits, targets, thresh, weight=None: calls.append(
        targets) or consistency_loss(logits, targets, thresh, weight))
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, :4] = 255
    labeled = {"image": torch.stack([Constant(255)[0]["image"]] * 2), "mask": masks}
    out = method.training_step(labeled, {"image": torch.stack([Constant(0)[0]["image"]] * 2)}, 0)

    assert model.decoder_batches == [4, 4]  # weak pass (2 labeled + 2 unlabeled), strong pass (2 + 2 views)
    view_u, view_x = model.inputs[1].chunk(2)
    targets_u, targets_x = calls
    ignored = torch.zeros(2, 32, 32, dtype=torch.bool)
    ignored[:, :4] = True
    # the unlabeled view: a white box from a labeled image, its target the true label 0, not the pseudo label 1
    box = view_u.mean(dim=1) > -1
    assert box.any() and not box.all()
    assert (targets_u.label == 0).all()
    assert torch.equal(targets_u.valid, ~(box & ignored))
    # the labeled view: a black box from an unlabeled image, pseudo-labeled (valid in the ignored band too)
    box = view_x.mean(dim=1) < -1
    assert box.any() and not box.all()
    assert torch.equal(targets_x.valid, ~(~box & ignored))
    assert {"loss_x", "loss_s", "loss_p"} <= set(out)
    torch.testing.assert_close(out["loss"], (out["loss_x"] + out["loss_s"] + out["loss_p"]) / 2)


def test_paste_labeled_run_with_an_ema_teacher_and_two_unlabeled_per_labeled_resumes_exactly(tmp_path):
    options = "{conf_thresh: 0.0, paste_labeled: true, teacher: ema, unlabeled_ratio: 2, cutmix_prob: 1.0}"
    straight = run_config(tmp_path, "straight", **{"method.options": options})
    Trainer(straight, straight.run_dir, progress=False).fit()
    chunked = run_config(tmp_path, "chunked", **{"method.options": options})
    Trainer(chunked, chunked.run_dir, progress=False).fit(stop_at=3)
    Trainer(chunked, chunked.run_dir, resume=True, progress=False).fit()
    logged = [e for e in read_metrics(straight.run_dir) if e["kind"] == "train"]
    assert len(logged) == 6 and all(e["loss_p"] > 0 and e["loss_s"] > 0 for e in logged)
    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    assert set(a["streams"]) == {"labeled", "unlabeled"} and a["streams"] == b["streams"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_fewer_labeled_images_than_a_batch_train_with_repeats(tmp_path, capsys):
    # 2 labeled images, batch 4: the labeled batches repeat them (a note says so) instead of refusing the run
    cfg = run_config(tmp_path, "few", **{"data.labeled.fraction": "null", "data.labeled.count": 2,
                                         "train.iterations": 3})
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    out = capsys.readouterr().out
    assert "the labeled images (2) are fewer than one batch (4): each batch repeats them" in out
    assert "unlabeled images" not in out  # the unlabeled stream has enough for its batches
    assert [r["iteration"] for r in read_metrics(cfg.run_dir) if r.get("kind") == "train"][-1] == 3
