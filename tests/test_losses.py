"""Losses against PyTorch references, explicit loops and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semiseg.losses import DiceLoss, bce_with_logits_2d, build_loss, cross_entropy, ohem_cross_entropy

IGN = 255


def _batch(n=3, c=4, h=5, w=6, ignore_frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, requires_grad=True)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < ignore_frac] = IGN
    return logits, target


# ---------------------------------------------------------------------- cross-entropy
def test_ce_equals_torch_mean_over_valid_pixels():
    logits, target = _batch()
    ref = F.cross_entropy(logits, target, ignore_index=IGN)
    assert torch.allclose(cross_entropy(logits, target), ref, atol=1e-6)
    # Explicitly: the mean of -log softmax at the target class over the non-ignored pixels.
    logp = logits.log_softmax(1)
    valid = target != IGN
    picked = logp.gather(1, target.clamp(max=3).unsqueeze(1)).squeeze(1)
    assert torch.allclose(cross_entropy(logits, target), -picked[valid].mean(), atol=1e-6)


def test_ce_with_class_weights_and_label_smoothing_equals_torch():
    logits, target = _batch()
    weight = torch.tensor([0.2, 1.0, 3.0, 0.5])
    for ls in (0.0, 0.1):
        ref = F.cross_entropy(logits, target, weight=weight, ignore_index=IGN, label_smoothing=ls)
        got = cross_entropy(logits, target, weight=weight, label_smoothing=ls)
        assert torch.allclose(got, ref, atol=1e-6), ls
    # A plain list is accepted too.
    got = cross_entropy(logits, target, weight=weight.tolist())
    assert torch.allclose(got, F.cross_entropy(logits, target, weight=weight, ignore_index=IGN), atol=1e-6)


def test_ce_gradient_equals_torch():
    logits, target = _batch()
    weight = torch.tensor([0.2, 1.0, 3.0, 0.5])
    (g_ours,) = torch.autograd.grad(cross_entropy(logits, target, weight=weight), logits)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(logits, target, weight=weight, ignore_index=IGN), logits)
    assert torch.allclose(g_ours, g_ref, atol=1e-7)
    assert torch.all(g_ours.permute(0, 2, 3, 1)[target == IGN] == 0)  # no gradient through ignored pixels


def test_ce_per_image_equals_explicit_loop():
    logits, target = _batch(n=4, ignore_frac=0.3)
    target[2] = IGN  # an image without any label drops out of the batch mean
    weight = torch.tensor([0.2, 1.0, 3.0, 0.5])
    for w in (None, weight):
        per_image = [
            F.cross_entropy(logits[i : i + 1], target[i : i + 1], weight=w, ignore_index=IGN)
            for i in range(4)
            if i != 2
        ]
        ref = torch.stack(per_image).mean()
        got = cross_entropy(logits, target, weight=w, per_image=True)
        assert torch.allclose(got, ref, atol=1e-6)
    # It really differs from the pixel mean when images have different numbers of valid pixels.
    assert not torch.allclose(cross_entropy(logits, target, per_image=True), cross_entropy(logits, target))


def test_ce_per_image_without_ignore_is_the_d2l_loss():
    logits, target = _batch(ignore_frac=0.0)
    d2l = F.cross_entropy(logits, target, reduction="none").mean(1).mean(1)  # one value per image
    assert torch.allclose(cross_entropy(logits, target, per_image=True), d2l.mean(), atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_all_ignored_is_zero_with_gradient(per_image, weighted):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGN)
    w = torch.tensor([1.0, 2.0, 3.0]) if weighted else None
    assert math.isnan(F.cross_entropy(logits, target, ignore_index=IGN).item())  # what we avoid
    loss = cross_entropy(logits, target, weight=w, per_image=per_image)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_ce_errors():
    logits = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="Upsample"):
        cross_entropy(logits, torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[3, 9\]"):
        cross_entropy(logits, torch.tensor([[[0, 3, 9, IGN]] * 4]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long), weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="integer"):
        cross_entropy(logits, torch.zeros(1, 4, 4))


# ---------------------------------------------------------------------- Dice
def test_dice_matches_hand_formula():
    # 2 classes, 1x1x2 image; pixel 0 is class 0, pixel 1 is class 1, one more pixel ignored.
    logits = torch.tensor([[[[0.0, 0.0, 5.0]], [[math.log(3.0), 0.0, -5.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[0, 1, IGN]]])
    # softmax: pixel 0 -> (1/4, 3/4), pixel 1 -> (1/2, 1/2); the ignored pixel is dropped.
    p0, p1 = [0.25, 0.5], [0.75, 0.5]
    dice0 = (2 * 0.25 + 1) / (sum(p0) + 1 + 1)
    dice1 = (2 * 0.5 + 1) / (sum(p1) + 1 + 1)
    got = DiceLoss(smooth=1.0)(logits, target)
    assert got.item() == pytest.approx(1 - (dice0 + dice1) / 2, abs=1e-6)
    got_w = DiceLoss(smooth=1.0, weight=[1.0, 3.0])(logits, target)
    assert got_w.item() == pytest.approx(1 - (dice0 + 3 * dice1) / 4, abs=1e-6)


def test_dice_perfect_prediction_is_near_zero():
    target = torch.randint(0, 3, (2, 6, 6))
    target[:, 0] = IGN
    logits = 50.0 * F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    logits[:, :, 0] = torch.randn(2, 3, 6)  # garbage under the ignored row must not matter
    assert DiceLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert DiceLoss(smooth=0.0)(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    # An absent class (3) with no probability on it scores dice 1: still ~0 loss.
    logits4 = torch.cat([logits, torch.full((2, 1, 6, 6), -50.0)], 1)
    assert DiceLoss()(logits4, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_gradient_flows_and_ignores_ignored_pixels():
    logits, target = _batch()
    loss = DiceLoss()(logits, target)
    assert 0 < loss.item() < 1
    loss.backward()
    grad = logits.grad.permute(0, 2, 3, 1)
    assert torch.all(torch.isfinite(grad))
    assert grad[target != IGN].abs().sum() > 0
    assert torch.all(grad[target == IGN] == 0)
    # Changing logits under ignored pixels does not change the loss.
    other = logits.detach().clone()
    other.permute(0, 2, 3, 1)[target == IGN] = 100.0
    assert torch.allclose(DiceLoss()(other, target), loss)
    # Gradient descent lowers it.
    with torch.no_grad():
        stepped = logits - 10.0 * logits.grad
    assert DiceLoss()(stepped, target) < loss


def test_dice_all_ignored_is_zero_with_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGN)
    for smooth in (1.0, 0.0):
        loss = DiceLoss(smooth=smooth)(logits, target)
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, logits)
        assert torch.all(g == 0)


# ---------------------------------------------------------------------- BCE for the discriminator
def test_bce_constant_label_equals_torch():
    d_out = torch.randn(2, 1, 5, 5, requires_grad=True)
    for label in (0, 1, 1.0):
        ref = F.binary_cross_entropy_with_logits(d_out, torch.full_like(d_out, float(label)))
        assert torch.allclose(bce_with_logits_2d(d_out, label), ref, atol=1e-6)


def test_bce_ignores_marked_pixels():
    torch.manual_seed(0)
    d_out = torch.randn(2, 1, 5, 5, requires_grad=True)
    ignore_mask = torch.rand(2, 5, 5) < 0.4
    # AdvSemiSeg's make_D_label: label everywhere, 255 where ignored; (N, H, W) and (N, 1, H, W) both work.
    d_label = torch.where(ignore_mask, 255.0, 1.0)
    keep = ~ignore_mask.unsqueeze(1)
    ref = F.binary_cross_entropy_with_logits(d_out[keep], torch.ones(int(keep.sum())))
    assert torch.allclose(bce_with_logits_2d(d_out, d_label), ref, atol=1e-6)
    assert torch.allclose(bce_with_logits_2d(d_out, d_label.unsqueeze(1)), ref, atol=1e-6)
    (g,) = torch.autograd.grad(bce_with_logits_2d(d_out, d_label), d_out)
    assert torch.all(g[~keep] == 0) and torch.all(g[keep] != 0)
    for marker in (-1, 11):  # any marker outside [0, 1]
        marked = torch.where(ignore_mask, float(marker), 1.0)
        assert torch.allclose(bce_with_logits_2d(d_out, marked, ignore_index=marker), ref, atol=1e-6)


def test_bce_all_ignored_and_errors():
    d_out = torch.randn(1, 1, 3, 3, requires_grad=True)
    loss = bce_with_logits_2d(d_out, torch.full((1, 1, 3, 3), 255.0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(d_out.grad == 0)
    with pytest.raises(ValueError, match=r"\[2.0\]"):
        bce_with_logits_2d(d_out, torch.tensor([[[[0.0, 2.0, 1.0]] * 3]]))
    with pytest.raises(ValueError, match="broadcast"):
        bce_with_logits_2d(d_out, torch.zeros(1, 1, 4, 4))
    for marker in (0, 1, 0.5):  # a marker that is also a label would silently drop (or keep) labelled pixels
        with pytest.raises(ValueError, match=f"ignore_index={marker} is also a BCE label"):
            bce_with_logits_2d(d_out, torch.zeros(1, 1, 3, 3), ignore_index=marker)


# ---------------------------------------------------------------------- factory
def test_build_loss():
    logits, target = _batch()
    weight = [0.2, 1.0, 3.0, 0.5]
    ce = build_loss("ce", weight=weight)
    assert torch.allclose(ce(logits, target), cross_entropy(logits, target, weight=weight))
    dice = build_loss("dice", weight=weight)
    assert torch.allclose(dice(logits, target), DiceLoss(weight=weight)(logits, target))
    combo = build_loss("CE + Dice", weight=weight, dice_factor=0.5)
    expected = cross_entropy(logits, target, weight=weight) + 0.5 * DiceLoss(weight=weight)(logits, target)
    assert torch.allclose(combo(logits, target), expected)
    combo(logits, target).backward()
    assert logits.grad is not None
    assert [name for name, _ in combo.named_buffers()] == ["losses.ce.weight", "losses.dice.weight"]
    ohem = build_loss("ohem", weight=weight, ohem_thresh=0.6, ohem_min_kept=5)
    assert torch.allclose(ohem(logits, target), ohem_cross_entropy(logits, target, thresh=0.6, min_kept=5,
                                                                   weight=weight))
    with pytest.raises(ValueError, match="ce, dice, ce\\+dice, ohem"):
        build_loss("focal")
    with pytest.raises(ValueError, match="min_kept"):
        build_loss("ohem", ohem_min_kept=-1)


# ---------------------------------------------------------------------- OHEM
def _true_class_prob(logits, target):
    return logits.detach().softmax(1).gather(1, target.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)


def test_ohem_keeps_the_pixels_at_or_under_the_threshold():
    logits, target = _batch(n=2, c=4, h=6, w=7, seed=3)
    valid = target != IGN
    prob = _true_class_prob(logits, target)
    kept = valid & (prob <= 0.4)
    assert 5 < int(kept.sum()) < int(valid.sum())  # the example mines something and leaves something
    expected = cross_entropy(logits, target.masked_fill(~kept, IGN))
    assert torch.allclose(ohem_cross_entropy(logits, target, thresh=0.4, min_kept=5), expected)
    # the same by hand: the mean of -log p over the kept pixels
    assert math.isclose(float(ohem_cross_entropy(logits, target, thresh=0.4, min_kept=5).detach()),
                        float(-prob[kept].log().mean()), rel_tol=1e-5)


def test_ohem_keeps_at_least_min_kept_hardest_pixels():
    logits, target = _batch(n=2, c=4, h=6, w=7, seed=3)
    valid = target != IGN
    prob = _true_class_prob(logits, target)
    k = int(valid.sum()) - 3  # more than the threshold alone keeps
    hardest = prob[valid].sort().values
    kept = valid & (prob <= hardest[k - 1])
    assert int(kept.sum()) == k
    expected = cross_entropy(logits, target.masked_fill(~kept, IGN))
    assert torch.allclose(ohem_cross_entropy(logits, target, thresh=0.1, min_kept=k), expected)
    loss = ohem_cross_entropy(logits, target, thresh=0.1, min_kept=k)
    loss.backward()
    assert (logits.grad.abs().sum(1)[~kept] == 0).all() and (logits.grad.abs().sum(1)[kept] > 0).all()


def test_ohem_is_plain_ce_without_enough_labelled_pixels_or_min_kept_zero():
    logits, target = _batch(seed=4)
    n_valid = int((target != IGN).sum())
    ce = cross_entropy(logits, target)
    assert torch.equal(ohem_cross_entropy(logits, target, thresh=0.0, min_kept=n_valid + 1), ce)
    assert torch.equal(ohem_cross_entropy(logits, target, thresh=0.0, min_kept=0), ce)
    everything = torch.full_like(target, IGN)
    assert float(ohem_cross_entropy(logits, everything, min_kept=1).detach()) == 0.0
