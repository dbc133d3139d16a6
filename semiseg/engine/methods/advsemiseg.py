"""AdvSemiSeg (Hung et al., BMVC 2018): adversarial learning for semi-supervised semantic segmentation.

A fully convolutional discriminator D (``models.discriminator.FCDiscriminator``) learns to tell the
segmentation network's class probabilities from one-hot ground truth, pixel by pixel. The segmentation
network G is trained with, per iteration (the order of the released ``train.py``):

1. unlabeled images (when ``lambda_semi`` or ``lambda_semi_adv`` is > 0, from ``semi_start_adv`` on):
   ``lambda_semi_adv * BCE(D(softmax(G(x_u))), 1)`` (fool D), plus from ``semi_start`` on
   ``lambda_semi * CE(G(x_u), pseudo)``, where ``pseudo`` is G's argmax on the pixels D is confident about
   (``sigmoid(D(.)) > mask_T``) and ignored elsewhere. This CE is the plain cross-entropy of train.py's
   ``loss_calc`` (mean over the pseudo-labelled pixels, no class weights), whatever loss the recipe sets
   (``loss.*``: class weights, Dice, label smoothing, per-image averaging apply to the labeled loss only);
2. labeled images: ``L_seg(G(x_l), y) + lambda_adv_pred * BCE(D(softmax(G(x_l))), 1)``, with the recipe's
   loss as ``L_seg`` (cross-entropy in the paper);
3. D: ``BCE(D(p), 0) / 2`` on the detached predictions of steps 1-2 and ``BCE(D(onehot(y')), 1) / 2`` on
   ground truth ``y'`` from a second pass over the labeled set (its unlabeled pixels filled, see below).

Pixels without a label (the dataset's ignore value, whatever it is: 255, 0, -1, ...) are ignored by every BCE
that has a label map; D's label maps mark them with their own value ``D_IGNORE`` (255), never with the
dataset's, which may be a BCE label.

While G's losses go through D, D's parameters do not require gradients (so G's step leaves D's
gradients untouched), and D learns from detached predictions (so D's step leaves G's gradients untouched).
Each part has its own ``ctx.backward``, as the original, which keeps one forward/backward pair per call of
a (DDP-wrapped) network. D's outputs are upsampled to the input size (``FCDiscriminator(upsample=True)``,
bilinear with ``align_corners=True`` as the original's ``interp``).

Differences from the released code, all on purpose:

* the adversarial loss on unlabeled images is always backpropagated; the original dropped it in the
  iterations where no unlabeled pixel passed the confidence mask (its ``semi_ratio == 0`` branch skipped
  ``backward``);
* a pixel is pseudo-labeled when its confidence is ``> mask_T`` (the paper's indicator); the code kept
  ``>= mask_T``. Only exact ties differ;
* with the unlabeled part inactive (``iteration < semi_start_adv``), D's fake batch holds the labeled
  predictions only; the original crashed there with ``D_remain`` on;
* D's ground-truth input is not all zero on pixels without a label: they hold the detached softmax of the
  step's labeled images at the same positions (with ``gt_stream`` the ground truth comes from other images;
  those pixels still get a real prediction) and stay ignored by D's loss. A one-hot with all-zero pixels is an
  input no softmax produces, so D can call everything near such pixels "ground truth" from the zeros in its
  receptive field alone, a cue unrelated to the label structure it should learn. In the released code the
  cue was limited to VOC's thin 255 bands around objects: its ground-truth loader (``VOCGTDataSet``)
  re-draws the scale until the image covers the crop (and resizes after 10 tries), so it never pads. Here the
  ground-truth stream shares the labeled transform, which pads with the ignore value, and whole padded
  areas (of small images, scales < 1) would be zero; filling removes the cue there and, unlike the released
  code, on the bands too.

Full labels (the paper's "adversarial only" rows): set ``lambda_semi=0`` and ``lambda_semi_adv=0``; the method
then needs no unlabeled images (``needs_unlabeled`` is False) and trains with L_seg + lambda_adv_pred * L_adv.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from semiseg.config import ConfigError
from semiseg.engine.methods.base import Method
from semiseg.losses import bce_with_logits_2d, cross_entropy
from semiseg.models.discriminator import FCDiscriminator

# D's labels, as in the original: 1 = "ground truth", 0 = "prediction".
GT_LABEL, PRED_LABEL = 1.0, 0.0
# The value on D's label maps where a pixel is ignored (make_D_label's 255). It marks D's own targets, so it is
# not the dataset's ignore value: that one may be 0 or 1, which a BCE label map could not tell from a label.
D_IGNORE = 255
# The smallest crop the discriminator's five stride-2 convolutions accept.
MIN_CROP = 32


@dataclasses.dataclass
class AdvSemiSegOptions:
    """Defaults: the paper's VOC setting (Sec. 4.2) = the README's training command (Table 5 of the paper);
    the remaining ones are train.py's defaults."""

    # Weight of the adversarial loss on labeled predictions. Paper: 0.01; README command: 0.01
    # (train.py's command-line default is 0.1, which the paper does not use).
    lambda_adv_pred: float = 0.01
    # Weight of the adversarial loss on unlabeled predictions. Paper: 0.001; train.py LAMBDA_SEMI_ADV.
    lambda_semi_adv: float = 0.001
    # Weight of the self-taught loss on confident unlabeled pixels. Paper and train.py: 0.1.
    lambda_semi: float = 0.1
    # Confidence threshold T_semi on sigmoid(D(.)) for pseudo labels. Paper and train.py: 0.2.
    mask_T: float = 0.2
    # First iteration (0-based) with the self-taught loss. Paper and train.py: 5000 (of 20000).
    semi_start: int = 5000
    # First iteration with the unlabeled branch (adversarial loss on unlabeled images). train.py: 0.
    semi_start_adv: int = 0
    # D also learns from the unlabeled predictions (as "prediction"). train.py D_REMAIN: True.
    d_remain: bool = True
    # D's ground-truth examples come from a second, independently shuffled and augmented pass over the
    # labeled set (train.py's trainloader_gt); false: the masks of the step's own labeled batch.
    gt_stream: bool = True
    # D's Adam optimizer, with the run's poly schedule (without the model's optim.min_lr floor, as in train.py, which
    # decays both to 0). train.py: lr 1e-4, betas (0.9, 0.99).
    lr_d: float = 1.0e-4
    betas_d: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.99])
    # D's base width (64-128-256-512-1 channels). train.py FCDiscriminator(ndf=64).
    ndf: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_T <= 1.0:
            raise ConfigError(f"method.options.mask_T must be in [0, 1] (a sigmoid confidence), got {self.mask_T}")
        for name in ("lambda_adv_pred", "lambda_semi_adv", "lambda_semi"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"method.options.{name} must be >= 0 (0 switches the term off), got {value}")
        for name in ("semi_start", "semi_start_adv"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"method.options.{name} must be an iteration >= 0, got {value}")
        if not self.lr_d > 0:
            raise ConfigError(f"method.options.lr_d must be > 0, got {self.lr_d}")
        if len(self.betas_d) != 2 or not all(0.0 <= b < 1.0 for b in self.betas_d):
            raise ConfigError(f"method.options.betas_d must be two numbers in [0, 1), got {self.betas_d}")
        if self.ndf < 1:
            raise ConfigError(f"method.options.ndf must be >= 1, got {self.ndf}")


# ------------------------------------------------------------------------------------------------ pure helpers


def pseudo_labels(logits: torch.Tensor, d_logits: torch.Tensor, mask_T: float, ignore_index: int = 255) -> torch.Tensor:
    """G's argmax where D's confidence ``sigmoid(d_logits) > mask_T``, ``ignore_index`` elsewhere.

    ``logits`` (N, C, H, W), ``d_logits`` (N, 1, H, W) at the same size; returns int64 (N, H, W).
    """
    if d_logits.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"D's output {tuple(d_logits.shape)} is not at the size of the logits {tuple(logits.shape)}")
    confident = torch.sigmoid(d_logits.float()).squeeze(1) > mask_T
    return logits.argmax(1).masked_fill(~confident, ignore_index)


def one_hot_labels(masks: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(N, C, H, W) float32 one-hot of class-index masks; pixels without a label are zero in every channel."""
    ignored = masks == ignore_index
    one_hot = F.one_hot(masks.masked_fill(ignored, 0).long(), num_classes).movedim(-1, 1)
    return one_hot.masked_fill(ignored.unsqueeze(1), 0).float()


def ground_truth_input(masks: torch.Tensor, fill: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """D's "ground truth" input (N, C, H, W): the one-hot of ``masks`` where they have a label, ``fill`` (class
    probabilities of the same shape, here the detached predictions of the step's labeled images) elsewhere.

    The plain one-hot is all zero on unlabeled pixels, an input no softmax produces: D would learn "zeros in my
    receptive field = ground truth" although its loss ignores those pixels. With predictions there, the unlabeled
    regions look the same in D's real and fake inputs.
    """
    if fill.shape != (masks.shape[0], fill.shape[1], *masks.shape[-2:]):
        raise ValueError(f"the predictions {tuple(fill.shape)} that fill the unlabeled pixels of the ground truth "
                         f"{tuple(masks.shape)} must have its batch size and spatial size")
    ignored = (masks == ignore_index).unsqueeze(1)
    return torch.where(ignored, fill.float(), one_hot_labels(masks, fill.shape[1], ignore_index))


def d_target(label: float, ignored: torch.Tensor) -> torch.Tensor:
    """D's label map (N, H, W): ``label`` everywhere but ``D_IGNORE`` on ``ignored`` (the original make_D_label).

    Give it to ``bce_with_logits_2d(..., ignore_index=D_IGNORE)``; ``ignored`` comes from the dataset's masks
    (``masks == ctx.ignore_index``), whatever their ignore value.
    """
    return torch.where(ignored, torch.tensor(float(D_IGNORE), device=ignored.device),
                       torch.tensor(float(label), device=ignored.device))


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` do not require gradients inside the block (restored after)."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


# ------------------------------------------------------------------------------------------------ the method


class AdvSemiSeg(Method):
    name = "advsemiseg"
    Options = AdvSemiSegOptions

    def __init__(self, options: dict | None = None):
        super().__init__(options)
        o = self.options
        # The original runs its unlabeled branch when either unlabeled-image term has a weight.
        self.needs_unlabeled = o.lambda_semi > 0 or o.lambda_semi_adv > 0
        self.discriminator: nn.Module | None = None  # the plain module: G's losses, pseudo-label confidence
        self.discriminator_train: nn.Module | None = None  # what D's own update calls (DDP-wrapped under torchrun)
        self.gt_stream = None

    def setup(self, ctx) -> None:
        super().setup(ctx)
        o = self.options
        crop = ctx.cfg.data.crop_size
        if min(crop) < MIN_CROP:
            raise ConfigError(f"AdvSemiSeg's discriminator needs crops of at least {MIN_CROP}x{MIN_CROP} (five "
                              f"stride-2 convolutions), got data.crop_size={crop}; raise data.crop_size")
        d = FCDiscriminator(ctx.num_classes, o.ndf, upsample=True)
        self.discriminator_train = ctx.add_module("discriminator", d)
        self.discriminator = ctx.modules["discriminator"]
        adam = torch.optim.Adam(self.discriminator.parameters(), lr=o.lr_d, betas=tuple(o.betas_d))
        ctx.add_optimizer("discriminator", adam, scheduler="poly")
        if o.gt_stream:
            self.gt_stream = ctx.add_stream("labeled_gt", ctx.labeled_dataset)

    # ------------------------------------------------------------------ pieces of a step
    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        """G's logits in float32 (the model may run in bf16; losses and softmax want fp32)."""
        with self.ctx.autocast():
            logits = self.ctx.model(images)
        return logits.float()

    def _discriminate(self, d: nn.Module, probs: torch.Tensor) -> torch.Tensor:
        """D's confidence logits (N, 1, H, W) at the input size, float32."""
        with self.ctx.autocast():
            out = d(probs)
        return out.float()

    def _unlabeled_losses(self, unlabeled_batch: dict, iteration: int) -> tuple[dict, torch.Tensor]:
        """Adversarial + self-taught losses on unlabeled images (backpropagated); returns logs and the
        detached probabilities for D's fake batch."""
        ctx, o = self.ctx, self.options
        images, _ = ctx.to_device(unlabeled_batch)  # their masks exist on disk but are never used
        logits = self._predict(images)
        probs = logits.softmax(1)
        d_logits = self._discriminate(self.discriminator, probs)
        loss_semi_adv = bce_with_logits_2d(d_logits, GT_LABEL, ignore_index=D_IGNORE)  # every unlabeled pixel counts
        pseudo = pseudo_labels(logits.detach(), d_logits.detach(), o.mask_T, ctx.ignore_index)
        if o.lambda_semi > 0 and iteration >= o.semi_start:
            # train.py's loss_calc: plain CE, not the recipe's criterion; 0 (not NaN) when no pixel is confident
            loss_semi = cross_entropy(logits, pseudo, ignore_index=ctx.ignore_index)
        else:
            loss_semi = torch.zeros((), device=logits.device)
        ctx.backward(o.lambda_semi_adv * loss_semi_adv + o.lambda_semi * loss_semi)
        logs = {"loss_semi_adv": loss_semi_adv.detach(), "loss_semi": loss_semi.detach(),
                "semi_ratio": (pseudo != ctx.ignore_index).float().mean()}
        return logs, probs.detach()

    def _labeled_losses(self, batch: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Segmentation + adversarial losses on labeled images (backpropagated); returns logs, the detached
        probabilities and the ignore mask for D's fake batch."""
        ctx, o = self.ctx, self.options
        images, masks = ctx.to_device(batch)
        logits = self._predict(images)
        loss_seg = ctx.criterion(logits, masks)
        ignored = masks == ctx.ignore_index
        probs = logits.softmax(1)
        d_logits = self._discriminate(self.discriminator, probs)
        loss_adv = bce_with_logits_2d(d_logits, d_target(GT_LABEL, ignored), ignore_index=D_IGNORE)
        ctx.backward(loss_seg + o.lambda_adv_pred * loss_adv)
        return {"loss_seg": loss_seg.detach(), "loss_adv": loss_adv.detach()}, probs.detach(), ignored

    def _discriminator_loss(self, fake_probs: torch.Tensor, fake_ignored: torch.Tensor,
                            gt_masks: torch.Tensor, labeled_probs: torch.Tensor) -> torch.Tensor:
        """D's update, half on predictions (label 0), half on one-hot ground truth (label 1) whose unlabeled
        pixels hold ``labeled_probs`` (see :func:`ground_truth_input`) and are ignored by the loss."""
        ctx = self.ctx
        d_fake = self._discriminate(self.discriminator_train, fake_probs)
        loss_fake = bce_with_logits_2d(d_fake, d_target(PRED_LABEL, fake_ignored), ignore_index=D_IGNORE)
        ctx.backward(loss_fake / 2)
        real = ctx.layout(ground_truth_input(gt_masks, labeled_probs, ctx.ignore_index))
        d_real = self._discriminate(self.discriminator_train, real)
        gt_ignored = gt_masks == ctx.ignore_index
        loss_real = bce_with_logits_2d(d_real, d_target(GT_LABEL, gt_ignored), ignore_index=D_IGNORE)
        ctx.backward(loss_real / 2)
        return (loss_fake.detach() + loss_real.detach()) / 2

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: dict, unlabeled_batch: dict | None, iteration: int) -> dict[str, torch.Tensor]:
        ctx, o = self.ctx, self.options
        self.discriminator.train()
        logs: dict[str, torch.Tensor] = {}
        u_probs = None

        # G's losses: D is frozen, so they leave D's gradients alone (D still passes gradients to G's output).
        with frozen(self.discriminator):
            if self.needs_unlabeled and iteration >= o.semi_start_adv:
                u_logs, u_probs = self._unlabeled_losses(unlabeled_batch, iteration)
                logs.update(u_logs)
            elif self.needs_unlabeled:  # same keys every step: the log averages them over a window
                zero = torch.zeros((), device=ctx.device)
                logs.update(loss_semi_adv=zero, loss_semi=zero, semi_ratio=zero)
            l_logs, labeled_probs, fake_ignored = self._labeled_losses(batch)
            logs.update(l_logs)

        # D's update on detached predictions (no gradient reaches G): labeled ones with their unlabeled
        # pixels ignored, then, with d_remain, every pixel of the unlabeled ones.
        fake_probs = labeled_probs
        if o.d_remain and u_probs is not None:
            fake_probs = torch.cat([labeled_probs, u_probs])
            u_ignored = torch.zeros_like(u_probs[:, 0], dtype=torch.bool)
            fake_ignored = torch.cat([fake_ignored, u_ignored])
        logs["loss_d"] = self._discriminator_loss(fake_probs, fake_ignored, self._ground_truth_masks(batch),
                                                  labeled_probs)

        total = logs["loss_seg"] + o.lambda_adv_pred * logs["loss_adv"]
        if self.needs_unlabeled:
            total = total + o.lambda_semi_adv * logs["loss_semi_adv"] + o.lambda_semi * logs["loss_semi"]
        return {"loss": total, **logs}

    def _ground_truth_masks(self, batch: dict) -> torch.Tensor:
        source = next(self.gt_stream) if self.gt_stream is not None else batch
        return source["mask"].to(self.ctx.device, non_blocking=True)


__all__ = ["AdvSemiSeg", "AdvSemiSegOptions", "pseudo_labels", "one_hot_labels", "ground_truth_input", "d_target",
           "frozen", "D_IGNORE"]
