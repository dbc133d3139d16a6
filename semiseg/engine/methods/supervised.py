"""Supervised training: the segmentation loss on labeled crops; optionally CutMix between labeled crops."""

from __future__ import annotations

import dataclasses

import torch

from semiseg.config import ConfigError
from semiseg.data.transforms import build_strong_augment
from semiseg.engine.methods.base import Method
from semiseg.engine.methods.perturbations import check_cutmix_options, make_strong_views
from semiseg.engine.methods.pseudo_labels import Targets, consistency_loss
from semiseg.engine.methods.teacher import strong_view_statistics, unsupervised_weight


@dataclasses.dataclass
class SupervisedOptions:
    """All off by default: plain supervised training."""

    # true: each step also trains a strong view of every labeled crop (colour, grayscale, blur as unimatch's strong
    # views) with a CutMix box pasted from another crop of the batch, its labels mixed by the same box; that loss is
    # the mean cross-entropy over the view's labeled pixels (no class weights), added to the plain one. Why: the
    # labeled-only control of unimatch's paste_labeled (BCP), which adds the same kind of view with the box from an
    # unlabeled image - the difference between the two is what the unlabeled images give.
    labeled_cutmix: bool = False
    cutmix_prob: float = 1.0
    cutmix_area: list[float] = dataclasses.field(default_factory=lambda: [0.02, 0.4])
    # The mixed view's loss weight: 0 before iteration mix_start (0-based), then linear to 1 over mix_rampup
    # iterations, as unimatch's unsup_start / unsup_rampup (a control mirrors its arm's schedule).
    mix_start: int = 0
    mix_rampup: int = 0
    # false: the mixed views' batch statistics stay out of BatchNorm's running averages, as unimatch's option.
    strong_bn_statistics: bool = True

    def __post_init__(self) -> None:
        check_cutmix_options(self.cutmix_prob, self.cutmix_area)
        if self.mix_start < 0 or self.mix_rampup < 0:
            raise ConfigError(f"method.options.mix_start and mix_rampup must be >= 0 (iterations), got "
                              f"{self.mix_start} and {self.mix_rampup}")


class Supervised(Method):
    name = "supervised"
    Options = SupervisedOptions

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.augment = build_strong_augment() if self.options.labeled_cutmix else None

    def training_step(self, batch: dict, unlabeled_batch: dict | None, iteration: int) -> dict[str, torch.Tensor]:
        ctx, o = self.ctx, self.options
        images, masks = ctx.to_device(batch)
        with ctx.autocast():
            logits = ctx.model(images)
        # The loss in float32: softmax over bf16 logits loses the small probabilities CE cares about.
        loss = ctx.criterion(logits.float(), masks)
        weight = unsupervised_weight(iteration, o.mix_start, o.mix_rampup) if o.labeled_cutmix else 0.0
        if weight == 0.0:
            ctx.backward(loss)
            return {"loss": loss.detach()}
        loss_x, loss_mix = loss, self._mixed_view_loss(images, masks)
        loss = loss_x + weight * loss_mix
        ctx.backward(loss)
        return {"loss": loss.detach(), "loss_x": loss_x.detach(), "loss_mix": loss_mix.detach()}

    def _mixed_view_loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The loss of a strong view of each crop with a box from the previous crop of the batch (``roll(1)``: the
        first's from the last; a batch of one pastes from itself)."""
        ctx, o = self.ctx, self.options
        (view, box), = make_strong_views(images, images.roll(1, 0), views=1, cutmix_prob=o.cutmix_prob,
                                         cutmix_area=tuple(o.cutmix_area), normalization=ctx.normalization,
                                         augment=self.augment)
        targets = Targets.of_masks(masks, ctx.ignore_index).cutmix(box, Targets.of_masks(masks.roll(1, 0),
                                                                                          ctx.ignore_index))
        stats = strong_view_statistics(ctx.raw_model, o.strong_bn_statistics)
        with ctx.autocast(), stats:
            logits = ctx.model(ctx.layout(view))
        return consistency_loss(logits, targets, 1.0)  # true labels have confidence 1: every labeled pixel counts


__all__ = ["Supervised", "SupervisedOptions"]
