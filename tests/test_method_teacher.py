"""What the semi-supervised methods share (engine/methods/teacher.py) and how UniMatch uses it: the EMA teacher,
dropout-free pseudo labels, the supervised warm-up, and a resumable run with the EMA teacher."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.logger import read_metrics
from semiseg.engine.methods import unimatch
from semiseg.engine.methods.teacher import EMATeacher, dropout_off, ema_momentum, unsupervised_weight
from semiseg.engine.methods.pseudo_labels import DistributionAlignment, Targets, pseudo_label_accuracy
from semiseg.engine.methods.unimatch import UniMatch
from semiseg.engine.trainer import Trainer

from test_method_unimatch import Constant, direct_context, run_config


def test_ema_teacher_averages_parameters_and_float_buffers_and_copies_counters():
    student = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    teacher = EMATeacher(student, momentum=0.75)
    t0 = [p.clone() for p in teacher.model.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student[1].running_mean.fill_(4.0)
    student[1].num_batches_tracked.fill_(7)
    teacher.update(student)
    for t, before, s in zip(teacher.model.parameters(), t0, student.parameters()):
        assert torch.allclose(t, 0.75 * before + 0.25 * s)
    assert torch.allclose(teacher.model[1].running_mean, torch.full((4,), 1.0))  # 0.75 * 0 + 0.25 * 4
    assert int(teacher.model[1].num_batches_tracked) == 7
    assert not any(p.requires_grad for p in teacher.parameters())


def test_ema_teacher_stays_in_eval_mode_and_takes_no_gradient():
    student = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5))
    teacher = EMATeacher(student, momentum=0.9)
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    y = teacher(x)
    assert not y.requires_grad
    assert torch.equal(y, teacher(x))  # no dropout, running statistics: deterministic


def test_momentum_ramp_and_unsupervised_weight():
    assert ema_momentum(0, 0.99) == 0.0 and ema_momentum(1, 0.99) == 0.5 and ema_momentum(10_000, 0.99) == 0.99
    assert [unsupervised_weight(i, 3, 0) for i in range(5)] == [0, 0, 0, 1, 1]
    assert [unsupervised_weight(i, 2, 4) for i in range(8)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]


def test_dropout_off_switches_only_dropout_and_restores_it():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.9))
    model.train()
    x = torch.randn(8, 4)
    with dropout_off(model):
        assert model[1].training and not model[2].training
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert all(m.training for m in model.modules())


class DropoutNet(nn.Module):
    """Per-pixel 2-class net with a dropout layer before the classifier and a backbone (for the fp stream)."""

    normalization = "imagenet"

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Conv2d(8, 2, 1)
        self.dropout_active_in_unlabeled_pass: list[bool] = []

    def forward(self, x):
        self.dropout_active_in_unlabeled_pass.append(self.drop.training)
        return self.head(self.drop(self.backbone(x)))


@pytest.mark.parametrize("teacher_dropout", [False, True])
def test_model_teacher_pass_runs_without_dropout_unless_asked(tmp_path, teacher_dropout):
    torch.manual_seed(0)
    model = DropoutNet().train()
    method = UniMatch({"strong_views": 1, "feature_perturbation": False, "teacher_dropout": teacher_dropout})
    method.setup(direct_context(tmp_path, model, Constant(200)))
    labeled = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
    method.training_step(labeled, {"image": torch.randn(2, 3, 32, 32)}, 0)
    # calls: eval-mode pass on the pasted images, the weak pass (labeled + unlabeled), the strong views
    assert model.dropout_active_in_unlabeled_pass == [False, teacher_dropout, True]


def test_warm_up_steps_are_supervised_only(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = DropoutNet().train()
    method = UniMatch({"strong_views": 1, "feature_perturbation": False, "unsup_start": 2})
    method.setup(direct_context(tmp_path, model, Constant(200)))
    mixed = []
    monkeypatch.setattr(method.mix_stream, "__next__", lambda: mixed.append(1) or Constant(200)[0])
    labeled = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
    out = method.training_step(labeled, {"image": torch.randn(2, 3, 32, 32)}, 1)
    assert set(out) == {"loss", "loss_x"} and torch.equal(out["loss"], out["loss_x"])
    assert len(model.dropout_active_in_unlabeled_pass) == 1 and not mixed  # one labeled forward, nothing else


def test_ema_teacher_makes_the_pseudo_labels(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = DropoutNet().train()
    method = UniMatch({"strong_views": 1, "feature_perturbation": False, "teacher": "ema", "conf_thresh": 0.0,
                       "cutmix_prob": 0.0})
    method.setup(direct_context(tmp_path, model, Constant(200)))
    assert "teacher" in method.ctx.modules
    with torch.no_grad():  # a student that differs from its teacher: targets must follow the teacher
        model.head.weight.neg_()
    seen = []
    monkeypatch.setattr(unimatch, "consistency_loss",
                        lambda logits, targets, t, class_weight=None: seen.append(targets) or logits.sum() * 0)
    labeled = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
    unlabeled = torch.randn(2, 3, 32, 32)
    method.training_step(labeled, {"image": unlabeled}, 0)
    assert torch.equal(seen[0].label, method.teacher(unlabeled).argmax(1))
    assert not torch.equal(seen[0].label, model.eval()(unlabeled).argmax(1))


def test_ema_teacher_follows_the_model_once_per_iteration(tmp_path):
    torch.manual_seed(0)
    model = DropoutNet().train()
    method = UniMatch({"strong_views": 1, "feature_perturbation": False, "teacher": "ema", "ema_momentum": 0.5})
    method.setup(direct_context(tmp_path, model, Constant(200)))
    before = method.teacher.model.head.bias.clone()
    with torch.no_grad():
        model.head.bias.fill_(2.0)
    method._update_teacher(5)
    method._update_teacher(5)  # a second micro-step of the same iteration: no second update
    assert torch.allclose(method.teacher.model.head.bias, 0.5 * before + 0.5 * 2.0)
    assert method.state_dict() == {"ema_updated_at": 5}


def test_pseudo_label_accuracy_counts_confident_pixels_only():
    label = torch.tensor([[[0, 1, 2, 1]]])
    conf = torch.tensor([[[0.99, 0.99, 0.5, 0.99]]])
    valid = torch.tensor([[[True, True, True, True]]])
    truth = torch.tensor([[[0, 2, 2, 255]]])
    # confident and labeled: pixels 0 (right) and 1 (wrong); pixel 2 is unsure, pixel 3 ignored
    assert float(pseudo_label_accuracy(Targets(label, conf, valid), truth, 0.95, 255)) == 0.5


def train_straight_and_resumed(tmp_path, options: str):
    """Two runs with these method options: one straight through, one stopped after 3 iterations and resumed."""
    straight = run_config(tmp_path, "straight", **{"method.options": options})
    Trainer(straight, straight.run_dir, progress=False).fit()
    chunked = run_config(tmp_path, "chunked", **{"method.options": options})
    Trainer(chunked, chunked.run_dir, progress=False).fit(stop_at=3)
    Trainer(chunked, chunked.run_dir, resume=True, progress=False).fit()
    return straight, chunked


def test_run_with_ema_teacher_and_warm_up_resumes_exactly(tmp_path):
    options = "{conf_thresh: 0.0, teacher: ema, ema_momentum: 0.9, unsup_start: 2, unsup_rampup: 2, log_pseudo_accuracy: true}"
    straight, chunked = train_straight_and_resumed(tmp_path, options)
    logged = [e for e in read_metrics(straight.run_dir) if e["kind"] == "train"]
    assert [("loss_s" in e) for e in logged] == [False, False, True, True, True, True]
    assert all(0.0 <= e["pseudo_acc"] <= 1.0 for e in logged[2:])
    # iteration 3 (0-based 2) has weight 1/2: loss = (x + 0.5 * (0.5 s + 0.5 fp)) / 2
    e = logged[2]
    assert e["loss"] == pytest.approx((e["loss_x"] + 0.5 * (0.5 * e["loss_s"] + 0.5 * e["loss_fp"])) / 2, rel=1e-5)
    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    assert set(a["modules"]) == {"teacher"}
    for k in a["modules"]["teacher"]:
        assert torch.equal(a["modules"]["teacher"][k], b["modules"]["teacher"][k])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_bad_teacher_options_are_refused():
    from semiseg.config import ConfigError
    for bad in ({"teacher": "mean"}, {"ema_momentum": 1.0}, {"unsup_start": -1}):
        with pytest.raises(ConfigError, match="method.options"):
            UniMatch(bad)


def test_frozen_bn_statistics_normalise_by_batch_but_keep_running_averages():
    from semiseg.engine.methods.teacher import frozen_bn_statistics
    bn = nn.BatchNorm2d(3).train()
    bn(torch.randn(4, 3, 5, 5))
    mean, var, tracked = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    x = torch.randn(4, 3, 5, 5) * 7 + 3
    with frozen_bn_statistics(bn):
        y = bn(x)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert int(bn.num_batches_tracked) == tracked and bn.momentum == 0.1
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)  # still the batch's statistics


def test_strong_views_can_stay_out_of_the_running_statistics(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    method = UniMatch({"strong_views": 1, "feature_perturbation": False, "teacher": "ema",
                       "strong_bn_statistics": False})
    method.setup(direct_context(tmp_path, model, Constant(200)))
    labeled = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
    expected = nn.BatchNorm2d(2)
    expected.load_state_dict(model[1].state_dict())
    method.training_step(labeled, {"image": torch.randn(2, 3, 32, 32) * 5}, 0)
    with torch.no_grad():  # only the labeled pass (EMA teacher, no fp stream) updates the running mean
        expected.train()(model[0](labeled["image"]))
    assert torch.allclose(model[1].running_mean, expected.running_mean)


def test_class_thresholds_keep_the_same_share_of_every_class():
    from semiseg.engine.methods.teacher import class_thresholds
    torch.manual_seed(0)
    # 90% background at high confidence, 10% of class 1 at low confidence; class 2 never predicted
    label = (torch.rand(4, 50, 50) < 0.1).long()
    conf = torch.where(label == 0, 0.9 + 0.1 * torch.rand(4, 50, 50), 0.4 + 0.3 * torch.rand(4, 50, 50))
    valid = torch.ones(4, 50, 50, dtype=torch.bool)
    valid[:, :5] = False
    t = class_thresholds(conf, label, valid, 3, keep=0.5)
    assert t[2] == 1.0
    kept = valid & (conf >= t[label])
    for c in (0, 1):
        share = (kept & (label == c)).sum() / (valid & (label == c)).sum()
        assert 0.5 <= float(share) < 0.51
    # one global threshold of 0.8 would keep all background and no class-1 pixel
    assert float(((conf >= 0.8) & (label == 1)).sum()) == 0
    everything = class_thresholds(conf, label, valid, 3, keep=1.0)
    assert bool((valid <= (conf >= everything[label])).all())
    with pytest.raises(ValueError, match="keep"):
        class_thresholds(conf, label, valid, 3, keep=0.0)


def test_per_class_keep_selects_a_share_of_each_class_in_training(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = DropoutNet().train()
    method = UniMatch({"strong_views": 1, "feature_perturbation": False, "teacher": "ema", "per_class_keep": 0.25,
                       "conf_thresh": 0.0, "cutmix_prob": 0.0})
    method.setup(direct_context(tmp_path, model, Constant(200)))
    seen = []
    monkeypatch.setattr(unimatch, "consistency_loss",
                        lambda logits, targets, t, class_weight=None: seen.append((targets, t)) or logits.sum() * 0)
    labeled = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
    out = method.training_step(labeled, {"image": torch.randn(2, 3, 32, 32)}, 0)
    targets, threshold = seen[0]
    assert threshold.shape == targets.conf.shape  # one threshold per pixel, by its class
    kept = targets.valid & (targets.conf >= threshold)
    for c in torch.unique(targets.label[targets.valid]).tolist():
        share = (kept & (targets.label == c)).sum() / (targets.valid & (targets.label == c)).sum()
        assert 0.25 <= float(share) < 0.3
    assert 0.25 <= float(out["mask_ratio"]) < 0.3  # conf_thresh 0 alone would keep every pixel
    with pytest.raises(Exception, match="per_class_keep"):
        UniMatch({"per_class_keep": 1.5})


# ------------------------------------------------------------------------------------------------ distribution alignment


def _constant_probs(*rows: list[float]) -> torch.Tensor:
    """(N, C, 2, 2) probabilities, image i predicting rows[i] at every pixel."""
    return torch.tensor(rows).view(len(rows), -1, 1, 1).expand(-1, -1, 2, 2).clone()


def test_distribution_alignment_scales_by_labeled_over_running_prediction():
    align = DistributionAlignment(2, momentum=0.5, ignore_index=255)
    probs = _constant_probs([0.8, 0.2], [0.4, 0.6])  # mean prediction [0.6, 0.4]
    valid = torch.ones(2, 2, 2, dtype=torch.bool)
    assert torch.equal(align(probs, valid), probs)  # no labels seen yet: unchanged, but the mean is recorded
    align.observe_labels(torch.tensor([[0, 1], [1, 255]]))  # labeled frequency [1/3, 2/3]
    out = align(probs, valid)  # running mean stays [0.6, 0.4]; ratio [1/3 / 0.6, 2/3 / 0.4] = [5/9, 5/3]
    expected = probs * torch.tensor([5 / 9, 5 / 3]).view(1, 2, 1, 1)
    torch.testing.assert_close(out, expected / expected.sum(1, keepdim=True))
    # invalid (padding) pixels do not move the running mean
    valid[1] = False
    align(_constant_probs([0.8, 0.2], [0.0, 1.0]), valid)
    torch.testing.assert_close(align.predicted, torch.tensor([0.7, 0.3]))


def test_distribution_alignment_per_group_aligns_each_group_on_its_own():
    valid = torch.ones(3, 2, 2, dtype=torch.bool)
    probs = _constant_probs([0.9, 0.1], [0.3, 0.7], [0.9, 0.1])
    names = ["dusk_001", "day_001", "dusk_002"]
    grouped = DistributionAlignment(2, momentum=0.9, ignore_index=255, group_by="_")
    grouped.observe_labels(torch.tensor([[0, 1]]))  # labeled frequency [0.5, 0.5]
    out = grouped(probs, valid, names)
    # each group predicts one constant distribution, so dividing by its own mean gives exactly the labeled one
    torch.testing.assert_close(out, torch.full_like(out, 0.5))
    assert set(grouped.group_predicted) == {"dusk", "day"}
    # one running mean for all: the dusk images keep most of their lean towards class 0
    single = DistributionAlignment(2, momentum=0.9, ignore_index=255)
    single.observe_labels(torch.tensor([[0, 1]]))
    assert single(probs, valid)[0, 0, 0, 0] > 0.6
    # the running means are the method's state: saved, restored
    restored = DistributionAlignment(2, momentum=0.9, ignore_index=255, group_by="_")
    restored.load_state_dict(grouped.state_dict())
    later = _constant_probs([0.5, 0.5], [0.5, 0.5], [0.5, 0.5])
    torch.testing.assert_close(restored(later, valid, names), grouped(later, valid, names))
    with pytest.raises(ValueError, match="name of every image"):
        grouped(probs, valid)


def test_grouped_alignment_options_are_checked_and_a_run_resumes_exactly(tmp_path):
    from semiseg.config import ConfigError
    with pytest.raises(ConfigError, match="distribution_alignment=true or da_group_by=null"):
        UniMatch({"da_group_by": "_"})
    with pytest.raises(ConfigError, match="non-empty separator"):
        UniMatch({"distribution_alignment": True, "da_group_by": ""})
    wrong = run_config(tmp_path, "wrong", **{"method.options": "{distribution_alignment: true, da_group_by: '#'}"})
    with pytest.raises(ConfigError, match="no unlabeled image's name contains it .*'train_0"):
        Trainer(wrong, wrong.run_dir, progress=False).fit()
    # the tiny data's names train_000 ... : "1" as separator makes several groups (train_00, train_0, train_002, ...)
    options = "{conf_thresh: 0.0, teacher: ema, distribution_alignment: true, da_group_by: '1'}"
    straight, chunked = train_straight_and_resumed(tmp_path, options)
    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    groups_a = a["method"]["distribution_alignment"]["group_predicted"]
    assert len(groups_a) >= 2 and a["method"]["distribution_alignment"]["predicted"] is None
    assert groups_a.keys() == b["method"]["distribution_alignment"]["group_predicted"].keys()
    for g in groups_a:
        torch.testing.assert_close(groups_a[g], b["method"]["distribution_alignment"]["group_predicted"][g])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_alignment_alone_only_for_the_groups_named_the_others_share_one_mean():
    valid = torch.ones(3, 2, 2, dtype=torch.bool)
    probs = _constant_probs([0.9, 0.1], [0.3, 0.7], [0.9, 0.1])
    names = ["dusk_001", "day_001", "noon_001"]
    align = DistributionAlignment(2, momentum=0.9, ignore_index=255, group_by="_", alone={"dusk"})
    align.observe_labels(torch.tensor([[0, 1]]))  # labeled frequency [0.5, 0.5]
    out = align(probs, valid, names)
    assert set(align.group_predicted) == {"dusk", DistributionAlignment.SHARED}
    torch.testing.assert_close(out[0], torch.full_like(out[0], 0.5))  # dusk: divided by its own mean
    # day and noon share the mean [0.6, 0.4]: day [0.3, 0.7] -> [0.25, 0.875], renormalised
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor([0.25, 0.875]) / 1.125)


def test_da_groups_unlabeled_aligns_alone_the_groups_without_a_labeled_image(tmp_path):
    from types import SimpleNamespace

    from torch.utils.data import Subset

    from semiseg.config import ConfigError

    named = SimpleNamespace(names=["a_1", "a_2", "a_3", "b_1", "c_1"])  # only the names are read
    ctx = SimpleNamespace(labeled_dataset=Subset(named, [0, 1]), unlabeled_dataset=Subset(named, [2, 3, 4]))
    assert UniMatch._unlabeled_groups(ctx, "_", "da_groups=unlabeled") == {"b", "c"}
    with pytest.raises(ConfigError, match="'all' .* or 'unlabeled'"):
        UniMatch({"distribution_alignment": True, "da_group_by": "_", "da_groups": "some"})
    with pytest.raises(ConfigError, match="da_group_by is null"):
        UniMatch({"distribution_alignment": True, "da_groups": "unlabeled"})
    # in a run: the tiny data's names train_000 ...; with "1" as separator the labeled half covers some groups only
    options = "{conf_thresh: 0.0, teacher: ema, distribution_alignment: true, da_group_by: '1', da_groups: unlabeled}"
    straight, chunked = train_straight_and_resumed(tmp_path, options)
    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    groups_a = a["method"]["distribution_alignment"]["group_predicted"]
    from semiseg.data.splits import group_of, read_names

    split = os.path.join(straight.run_dir, "split.txt")
    labeled = {group_of(n, "1") for n in read_names(split, "labeled")}
    unlabeled_only = {group_of(n, "1") for n in read_names(split, "unlabeled")} - labeled
    assert DistributionAlignment.SHARED in groups_a and set(groups_a) - {DistributionAlignment.SHARED} <= unlabeled_only
    assert len(groups_a) >= 2
    assert groups_a.keys() == b["method"]["distribution_alignment"]["group_predicted"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ------------------------------------------------------------------------------------------------ group statistics


def test_group_statistics_move_towards_each_batch_and_leave_the_shared_ones_alone():
    from semiseg.engine.methods.teacher import GroupStatistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    model[1].running_mean.fill_(1.0)
    model[1].running_var.fill_(2.0)
    stats = GroupStatistics(model, {"dusk"}, momentum=0.25)
    x = torch.randn(3, 3, 5, 5) * 3 + 2
    with torch.no_grad():
        features = model[0](x).transpose(0, 1).flatten(1)
        mean = 1.0 + 0.25 * (features.mean(1) - 1.0)  # the group starts from the shared statistics
        var = 2.0 + 0.25 * (features.var(1, unbiased=True) - 2.0)
        with stats.use("dusk"):
            out = model(x)
    # the forward normalised with the group's statistics, already moved towards this batch
    expected = (model[0](x) - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + model[1].eps).sqrt() \
        * model[1].weight.view(1, -1, 1, 1) + model[1].bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected.detach())
    torch.testing.assert_close(stats.stats["dusk"][0][0], mean)
    torch.testing.assert_close(stats.stats["dusk"][0][1], var)
    assert torch.equal(model[1].running_mean, torch.full((4,), 1.0))  # the model's own are back
    assert torch.equal(model[1].running_var, torch.full((4,), 2.0))
    assert not model._forward_pre_hooks and not model[1]._forward_pre_hooks
    # the second batch starts from the group's statistics, not from the shared ones
    with torch.no_grad(), stats.use("dusk"):
        model(x)
    torch.testing.assert_close(stats.stats["dusk"][0][0], mean + 0.25 * (features.mean(1) - mean))
    # one value per channel (an image-pooling branch with one image) leaves the statistics where they are
    before = [t.clone() for t in stats.stats["dusk"][0]]
    with torch.no_grad(), stats.use("dusk"):
        model(torch.randn(1, 3, 1, 1))
    assert all(torch.equal(a, b) for a, b in zip(before, stats.stats["dusk"][0]))
    with pytest.raises(KeyError, match="'day' has no statistics"):
        with stats.use("day"):
            pass
    restored = GroupStatistics(model, {"dusk"}, momentum=0.25)
    restored.load_state_dict(stats.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.stats["dusk"][0], stats.stats["dusk"][0]))


def test_teacher_predicts_each_group_without_labels_with_its_own_statistics():
    import copy

    from semiseg.engine.methods.teacher import GroupStatistics

    torch.manual_seed(0)
    method = UniMatch({"teacher": "ema", "teacher_bn_group_by": "_"})
    method.teacher = EMATeacher(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)), 0.9)
    method.group_stats = GroupStatistics(method.teacher.model, {"dusk"}, momentum=0.5)
    images = torch.randn(4, 3, 6, 6)
    images[[1, 3]] = images[[1, 3]] * 0.2 - 1.5  # the dusk frames look different
    names = ["day_1", "dusk_1", "noon_1", "dusk_2"]
    reference = copy.deepcopy(method.group_stats), copy.deepcopy(method.teacher)

    logits = method._teacher_by_group(images, names)

    stats, teacher = reference
    stats.layers = [m for m in teacher.model.modules() if isinstance(m, nn.BatchNorm2d)]
    with stats.use("dusk"):
        dusk = teacher(images[[1, 3]])
    torch.testing.assert_close(logits[[1, 3]], dusk)  # both dusk frames in one pass with the dusk statistics
    torch.testing.assert_close(logits[[0, 2]], teacher(images[[0, 2]]))  # the others with the shared ones
    assert not torch.allclose(dusk, teacher(images[[1, 3]]))  # and the dusk statistics did change them
    with pytest.raises(ValueError, match="name of every unlabeled image"):
        method._teacher_by_group(images, names[:3])
    # no image of a group without labels: one pass, exactly the plain teacher (a split that covers every group)
    day = method._teacher_by_group(images, ["day_1", "noon_1", "day_2", "noon_2"])
    assert torch.equal(day, method.teacher(images))


def test_teacher_bn_group_by_options_are_checked_and_a_run_resumes_exactly(tmp_path):
    from semiseg.config import ConfigError
    from semiseg.data.splits import group_of, read_names

    with pytest.raises(ConfigError, match="teacher=ema or teacher_bn_group_by=null"):
        UniMatch({"teacher_bn_group_by": "_"})
    with pytest.raises(ConfigError, match="teacher_bn_group_by must be a non-empty separator"):
        UniMatch({"teacher": "ema", "teacher_bn_group_by": ""})
    with pytest.raises(ConfigError, match="teacher_bn_momentum must be in"):
        UniMatch({"teacher": "ema", "teacher_bn_group_by": "_", "teacher_bn_momentum": 0.0})
    wrong = run_config(tmp_path, "wrong", **{"method.options": "{teacher: ema, teacher_bn_group_by: '#'}"})
    with pytest.raises(ConfigError, match="teacher_bn_group_by='#': no unlabeled image's name contains it"):
        Trainer(wrong, wrong.run_dir, progress=False).fit()
    # the tiny data's names train_000 ...; with "1" as separator the labeled half covers some groups only
    options = "{conf_thresh: 0.0, teacher: ema, teacher_bn_group_by: '1'}"
    straight, chunked = train_straight_and_resumed(tmp_path, options)
    a = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))
    split = os.path.join(straight.run_dir, "split.txt")
    unlabeled_only = ({group_of(n, "1") for n in read_names(split, "unlabeled")}
                      - {group_of(n, "1") for n in read_names(split, "labeled")})
    own = a["method"]["teacher_group_statistics"]["stats"]
    assert own and set(own) <= unlabeled_only  # statistics of their own only for groups no label comes from
    assert own.keys() == b["method"]["teacher_group_statistics"]["stats"].keys()
    for g in own:
        for (m1, v1), (m2, v2) in zip(own[g], b["method"]["teacher_group_statistics"]["stats"][g]):
            assert torch.equal(m1, m2) and torch.equal(v1, v2)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_flip_averaged_log_probs_are_logits_of_the_mean_softmax():
    from semiseg.engine.methods.unimatch import flip_averaged_log_probs

    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    out = flip_averaged_log_probs(a.bfloat16(), b.bfloat16())
    assert out.dtype == torch.float32
    mean = (a.bfloat16().float().softmax(1) + b.bfloat16().float().flip(-1).softmax(1)) / 2
    torch.testing.assert_close(out.softmax(1), mean)


def test_flip_teacher_labels_the_mean_of_both_views_and_is_mirror_symmetric(tmp_path):
    torch.manual_seed(0)
    # no BatchNorm, no dropout: teacher == model; 5x5 kernels are not left-right symmetric
    model = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2), nn.ReLU(), nn.Conv2d(3, 2, 5, padding=2))

    def targets(flip, u, m):
        method = UniMatch({"strong_views": 1, "feature_perturbation": False, "teacher": "ema", "teacher_flip": flip})
        method.setup(direct_context(tmp_path, model, Constant(200)))
        valid = torch.ones(u.shape[0], *u.shape[2:], dtype=torch.bool)
        return method._ema_targets(u, valid, m, valid)

    u, m = torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)
    target_u, target_m = targets(True, u, m)
    with torch.no_grad():
        for images, target in ((u, target_u), (m, target_m)):
            probs = (model(images).softmax(1) + model(images.flip(-1)).flip(-1).softmax(1)) / 2
            assert torch.equal(target.label, probs.argmax(1))
            torch.testing.assert_close(target.conf, probs.amax(1))
    mirrored, _ = targets(True, u.flip(-1), m)
    assert torch.equal(mirrored.label, target_u.label.flip(-1))  # the mirror image gets the mirrored labels
    plain, _ = targets(False, u, m)
    plain_mirrored, _ = targets(False, u.flip(-1), m)
    assert not torch.equal(plain_mirrored.label, plain.label.flip(-1))  # which the plain teacher does not give


def test_flip_teacher_needs_the_ema_teacher_and_trains_with_group_statistics(tmp_path):
    from semiseg.config import ConfigError

    with pytest.raises(ConfigError, match="teacher=ema or teacher_flip=false"):
        UniMatch({"teacher_flip": True})
    options = "{conf_thresh: 0.0, teacher: ema, teacher_flip: true, teacher_bn_group_by: '1'}"
    cfg = run_config(tmp_path, "flip", **{"method.options": options})
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    logged = [e for e in read_metrics(cfg.run_dir) if e["kind"] == "train"]
    assert len(logged) == 6 and all(e["mask_ratio"] == 1.0 and e["loss_s"] > 0 for e in logged)
    assert load_checkpoint(os.path.join(cfg.run_dir, "last.pt"))["method"]["teacher_group_statistics"]["stats"]


def test_teacher_bn_group_by_trains_exactly_as_without_it_when_every_group_has_labels(tmp_path):
    """Why the study's cells whose labels cover every CamVid sequence keep their consistency_sum results under
    teacher_bn_group_by: the run is the same, weight for weight."""
    plain = run_config(tmp_path, "plain", **{"method.options": "{conf_thresh: 0.0, teacher: ema}"})
    Trainer(plain, plain.run_dir, progress=False).fit()
    # the tiny data's names are train_000 ...: with "_" every image is in group "train", which has labels
    options = "{conf_thresh: 0.0, teacher: ema, teacher_bn_group_by: _}"
    grouped = run_config(tmp_path, "grouped", **{"method.options": options})
    with pytest.warns(UserWarning, match="the option changes nothing here"):
        Trainer(grouped, grouped.run_dir, progress=False).fit()
    a = load_checkpoint(os.path.join(plain.run_dir, "last.pt"))
    b = load_checkpoint(os.path.join(grouped.run_dir, "last.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["modules"]["teacher"][k], b["modules"]["teacher"][k]) for k in a["modules"]["teacher"])
    assert b["method"]["teacher_group_statistics"]["stats"] == {}


def test_eval_and_predict_can_use_the_ema_teacher_of_a_run(tmp_path, capsys):
    import json

    from semiseg.engine.checkpoint import atomic_save
    from semiseg.cli import main
    from semiseg.engine.predict import load_trained_model
    from semiseg.export import checkpoint_metadata

    cfg = run_config(tmp_path, "ema", **{"method.options": "{conf_thresh: 0.0, teacher: ema, ema_momentum: 0.5}"})
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    last = os.path.join(cfg.run_dir, "last.pt")
    ckpt = load_checkpoint(last)
    teacher_state = {k[len("model."):]: v for k, v in ckpt["modules"]["teacher"].items()}
    assert any(not torch.equal(v, ckpt["model"][k]) for k, v in teacher_state.items())  # two different models

    loaded = load_trained_model(last, device=torch.device("cpu"), allow_code=True, teacher=True)
    assert loaded.weights == "teacher" and checkpoint_metadata(loaded)["semiseg.weights"] == "teacher"
    assert all(torch.equal(v, teacher_state[k]) for k, v in loaded.model.state_dict().items())

    # --teacher scores what a checkpoint whose model *is* the teacher scores, in its own file next to the model's
    assert main(["eval", last, "--teacher", "--allow-code", "--threads", "1"]) == 0
    assert main(["eval", last, "--allow-code", "--threads", "1"]) == 0
    swapped = os.path.join(tmp_path, "swapped.pt")
    atomic_save({**ckpt, "model": teacher_state}, swapped)
    assert main(["eval", swapped, "--allow-code", "--threads", "1", "--out", str(tmp_path / "swapped.json")]) == 0
    results = {name: json.load(open(os.path.join(path, f"{name}.json")))
               for name, path in [("eval_val_teacher", cfg.run_dir), ("eval_val", cfg.run_dir), ("swapped", tmp_path)]}
    assert results["eval_val_teacher"]["weights"] == "teacher" and results["eval_val"]["weights"] == "model"
    assert results["eval_val_teacher"]["confusion_matrix"] == results["swapped"]["confusion_matrix"]
    assert results["eval_val_teacher"]["confusion_matrix"] != results["eval_val"]["confusion_matrix"]
    assert main(["report", cfg.run_dir, "--samples", "0", "--allow-code"]) == 0  # both evaluations, told apart
    page = open(os.path.join(cfg.run_dir, "report", "index.html"), encoding="utf-8").read()
    assert "<h2>eval_val_teacher.json:" in page and ", the EMA teacher, iteration" in page
    assert "<h2>eval_val.json:" in page and page.count("the EMA teacher") == 1

    # a run without a teacher says so and how to go on
    plain = run_config(tmp_path, "plain", **{"method.options": "{conf_thresh: 0.0}"})
    Trainer(plain, plain.run_dir, progress=False).fit()
    capsys.readouterr()
    assert main(["eval", plain.run_dir, "--teacher", "--allow-code", "--threads", "1"]) == 2
    assert "has no EMA teacher" in capsys.readouterr().err
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(images / "a.png")
    assert main(["predict", plain.run_dir, str(images), str(tmp_path / "masks"), "--teacher", "--allow-code"]) == 2
    assert "Drop --teacher" in capsys.readouterr().err

    # predict --teacher writes the masks of the teacher
    for args, out in [([last, "--teacher"], "teacher"), ([swapped], "swapped"), ([last], "model")]:
        assert main(["predict", *args, str(images), str(tmp_path / out), "--allow-code"]) == 0
    masks = {out: np.asarray(Image.open(tmp_path / out / "a.png")) for out in ("teacher", "swapped", "model")}
    assert np.array_equal(masks["teacher"], masks["swapped"])


def test_export_teacher_writes_its_own_file_with_the_teacher_in_the_metadata(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from semiseg.cli import main

    cfg = run_config(tmp_path, "ema", **{"method.options": "{conf_thresh: 0.0, teacher: ema, ema_momentum: 0.5}",
                                         "train.iterations": 2})
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    last = os.path.join(cfg.run_dir, "last.pt")
    assert main(["export", last, "--allow-code", "--threads", "1"]) == 0
    assert main(["export", last, "--teacher", "--check", "--allow-code", "--threads", "1"]) == 0  # not over the model's
    meta = {f: {p.key: p.value for p in onnx.load(os.path.join(cfg.run_dir, f)).metadata_props}
            for f in ("last.onnx", "last_teacher.onnx")}
    assert meta["last.onnx"]["semiseg.weights"] == "model" and meta["last_teacher.onnx"]["semiseg.weights"] == "teacher"
