"""UniMatch (Yang et al., CVPR 2023, "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation"), with FixMatch as its special case.

Each step sees a labeled batch ``x``, an unlabeled batch ``u`` (the loop's stream) and a second unlabeled
batch ``m`` (this method's ``"unlabeled_mix"`` stream), all weakly augmented by the data pipeline (scale,
crop, flip). Then:

1. pseudo labels of ``m``: the model in eval mode, no gradient (argmax, confidence = max softmax);
2. ``strong_views`` strong views of ``u``: colour jitter / grayscale / blur (``strong_augment_batch``),
   each with, at probability ``cutmix_prob``, a CutMix box pasted from a strong view of ``m``;
3. one train-mode forward of ``cat(x, u)``; with ``feature_perturbation`` the backbone features are also
   passed through channel dropout and decoded in the same batch (UniMatch's "fp" stream);
   pseudo labels of ``u`` = its detached clean prediction;
4. one forward of the strong views; each is supervised by the pseudo labels of ``u``, CutMixed with those
   of ``m`` by the same box as its image; the fp prediction by the pseudo labels of ``u``.

Unsupervised losses are the official ones: per-pixel cross-entropy on pixels whose pseudo label has
confidence >= ``conf_thresh``, summed, divided by the number of valid unlabeled pixels (all of them except
the crop's padding; low-confidence pixels count in the denominator, so the loss grows with the mask ratio).
Total: ``(loss_x + weight_strong * mean(loss_s) + weight_fp * loss_fp) / 2`` (without the ``/ 2`` when
``average_losses: false``, the FixMatch paper's sum) - UniMatch's
``(loss_x + 0.25 loss_s1 + 0.25 loss_s2 + 0.5 loss_fp) / 2`` with the defaults, the official fixmatch.py's
``(loss_x + loss_s) / 2`` with ``strong_views: 1, feature_perturbation: false``.

Choices and differences from the official code (github.com/LiheYoung/UniMatch, unimatch.py / fixmatch.py):

* BatchNorm / dropout: as the official code, the pasted-image pseudo labels (step 1) come from the model
  in eval mode (running statistics, no dropout, no update of the running statistics by this extra pass),
  and those of ``u`` from the train-mode forward they share with the labeled images. semiseg's
  DeepLabV3+ decoder has bubbliiiing's Dropout(0.5)/(0.1), which UniMatch's decoder has not, so its
  train-mode pseudo labels are a little noisier than the official ones.
* The pasted images come from an independently shuffled stream. The official code zips the same
  DistributedSampler-driven loader twice, which visits the same images in the same order, so there a
  box is mostly pasted from another augmentation of the same image.
* The strong views are made in the training step from the weak crop (denormalised to uint8 exactly,
  augmented, normalised again), not in the data workers.
* Padding: the unlabeled masks are never read (their labels must not leak into training). Padded pixels
  are recognised by their exact fill value (the transform pads with the dataset mean; ``padding_mask``),
  where the official dataset marks them with 254 in a zero mask. With ``data.photometric`` the padding's
  colour changes and cannot be recognised; a warning says so when some unlabeled image is smaller than the crop
  at the smallest scale (none is in the CamVid recipes: 360x480 at 0.375x still covers the 120x160 crop).
* The feature perturbation needs no change to the model: a forward hook on ``model.backbone`` appends a
  channel-dropped copy of every backbone output to the batch, which is what the official
  ``DeepLabV3Plus.forward(x, need_fp=True)`` does (``Dropout2d(0.5)`` on the low- and high-level features,
  one decoder pass over clean + perturbed). Models without a ``backbone`` module (DeepLabV2, the FCN-VGG
  family) cannot use it; the method then refuses to start and says to set ``feature_perturbation: false``.
* Zero valid unlabeled pixels (only possible with tiny images) give a zero loss instead of the official 0/0.
* Not in the official code, all off by default (engine/methods/teacher.py has the shared pieces): an EMA teacher,
  a supervised warm-up, distribution alignment, BatchNorm statistics of the teacher's own for the groups of images
  no label comes from (``teacher_bn_group_by``), a flip-averaged teacher (``teacher_flip``), per-class thresholds
  (``per_class_keep``), an unlabeled loss weighted by the recipe's class weights (``class_weighted``), strong views
  without colour or outside BatchNorm's running statistics; and ``paste_labeled``, Bidirectional Copy-Paste (Bai et
  al., CVPR 2023): CutMix boxes between labeled and unlabeled images, in both directions, instead of between
  unlabeled ones.

Where the pieces live: this module has the options and the training step; ``pseudo_labels.py`` the targets,
distribution alignment and the consistency loss; ``perturbations.py`` the strong views, CutMix and the feature
perturbation; ``teacher.py`` the EMA teacher, the warm-up and the per-class thresholds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any

import torch

from semiseg.config import ConfigError
from semiseg.data.info import image_sizes
from semiseg.data.transforms import build_strong_augment, crop_can_pad
from semiseg.data.splits import group_of
from semiseg.engine.build import class_weights
from semiseg.engine.methods.base import Method
from semiseg.engine.methods.perturbations import (
    FeaturePerturbation, check_cutmix_options, make_strong_views, padding_mask,
)
from semiseg.engine.methods.pseudo_labels import (
    DistributionAlignment, Targets, consistency_loss, mask_ratio, pseudo_label_accuracy, pseudo_labels,
)
from semiseg.engine.methods.teacher import (
    TEACHER_MODULE, EMATeacher, GroupStatistics, class_thresholds, dropout_off, ema_momentum, strong_view_statistics,
    unsupervised_weight,
)
from semiseg.inference import logits_of_probabilities


@dataclasses.dataclass
class UniMatchOptions:
    """Defaults: the official UniMatch code on Pascal VOC (configs/pascal.yaml, unimatch.py, dataset/)."""

    # A pseudo label supervises a pixel only when its confidence (max softmax) is >= conf_thresh.
    # Official pascal.yaml: 0.95 (also coco.yaml; the README's later Cityscapes setting is 0).
    conf_thresh: float = 0.95
    # Probability that a strong view gets a CutMix box from a strong view of another unlabeled image.
    # Official obtain_cutmix_box(p=0.5).
    cutmix_prob: float = 0.5
    # Box area as a fraction of the crop, uniform in [min, max]. Official: size_min=0.02, size_max=0.4.
    cutmix_area: list[float] = dataclasses.field(default_factory=lambda: [0.02, 0.4])
    # Strong views per unlabeled image: 2 = UniMatch's dual-stream image perturbation, 1 = FixMatch.
    strong_views: int = 2
    # UniMatch's feature-perturbation stream (channel dropout on the backbone features); false = FixMatch.
    feature_perturbation: bool = True
    # Channel dropout probability of that stream. Official: nn.Dropout2d(0.5).
    fp_dropout: float = 0.5
    # mu: weight of the strong-view loss (the mean over views) inside the unlabeled loss. null = the official
    # value of the chosen variant: 0.5 with feature perturbation (unimatch.py), 1.0 without (fixmatch.py).
    weight_strong: float | None = None
    # lambda: weight of the feature-perturbation loss. Official unimatch.py: 0.5.
    weight_fp: float = 0.5
    # Where pseudo labels come from. "model": the model being trained, as the official UniMatch (V1): the
    # unlabeled images' from the train-mode pass they share with the labeled ones, the pasted images' from an
    # eval-mode pass. "ema": an exponential moving average of the model (Mean Teacher; UniMatch V2), in eval
    # mode, for both.
    teacher: str = "model"
    # Momentum of the EMA teacher (UniMatch V2: 0.996 over tens of thousands of iterations; short CPU
    # schedules want a faster teacher). Ramped as Mean Teacher: min(ema_momentum, 1 - 1 / (iteration + 1)).
    ema_momentum: float = 0.99
    # The official decoder has no dropout, so its pseudo labels are clean. false: dropout layers are switched
    # off in the pass that makes pseudo labels (DeepLabV3+'s decoder has Dropout(0.5)/(0.1)).
    teacher_dropout: bool = False
    # Unlabeled images per labeled image in a step (FixMatch's mu: 7 in its image classification; the official
    # UniMatch: 1). Each step then sees unlabeled_ratio x data.batch_size unlabeled images (and as many to paste).
    unlabeled_ratio: int = 1
    # Supervised warm-up: no unlabeled loss before iteration unsup_start (0-based), then its weight ramps
    # linearly from 0 to 1 over unsup_rampup iterations. Official: 0 and 0 (a pretrained backbone gives
    # usable pseudo labels from the first step; from scratch they are nearly all background).
    unsup_start: int = 0
    unsup_rampup: int = 0
    # Colour / grayscale / blur in the strong views. false: the strong view is the weak crop with its CutMix box
    # only (CutMix-Seg, French et al. 2020), for models whose few labels taught them colour more than shape.
    strong_colour: bool = True
    # false: the strong views' batch statistics stay out of BatchNorm's running averages (they still normalise
    # their own batch). The official code lets them in; from scratch, the recoloured views then shift the
    # statistics evaluation and an EMA teacher use.
    strong_bn_statistics: bool = True
    # Distribution alignment (ReMixMatch, Berthelot et al. 2020): the teacher's class probabilities are scaled by
    # (labeled class frequency / the teacher's running mean prediction) and renormalised before argmax and
    # threshold, so pseudo labels cannot drift towards the dominant class (background) over training.
    distribution_alignment: bool = False
    # Momentum of the two running class distributions distribution alignment keeps.
    da_momentum: float = 0.99
    # null: one running prediction for all unlabeled images. A separator (CamVid: "_"): images whose names share the
    # part before it (a video sequence, a camera, a site) keep a running prediction of their own, each aligned to the
    # labeled frequencies on its own. With one running mean, a group the labels miss can collapse onto a few classes
    # while the others hold the mean in place (CamVid 12 labels without a dusk frame: dusk predicted 65% building,
    # 29% car, 1% road after training). Tried in CamVid development round 4 (BENCHMARKS.md): it stopped that collapse
    # (dusk 6.3 -> 19.8 mIoU on the unlabeled frames) but stayed 0.7 under supervised training overall.
    da_group_by: str | None = None
    # With da_group_by: "all" aligns every group on its own; "unlabeled" only the groups no labeled image belongs to
    # (CamVid's random seed-2 split: dusk), the others sharing one running prediction as without da_group_by. Why:
    # aligning a labeled sequence on its own asks it for the labeled frames' class mix, which it may not have (CamVid
    # 0006R0: half their building, twice their tree; round 6 lost 2.3 mIoU there, BENCHMARKS.md).
    da_groups: str = "all"
    # null: the EMA teacher predicts every image with its running BatchNorm statistics. A separator (CamVid: "_"):
    # the images of a group no labeled image belongs to are predicted with BatchNorm statistics of that group's own,
    # running averages (momentum teacher_bn_momentum per batch) of the teacher's inputs on that group's images
    # (teacher.GroupStatistics; AdaBN per group). Why: on CamVid models that never saw a dusk label scored 5-6 mIoU
    # higher on the dusk frames with the dusk frames' own statistics, and lower on the labeled sequences
    # (BENCHMARKS.md, "the dusk sequence's own BatchNorm statistics"). Needs teacher: ema.
    teacher_bn_group_by: str | None = None
    teacher_bn_momentum: float = 0.1
    # true: the EMA teacher's pseudo labels come from the mean of its softmax on each image and on its mirror image
    # (horizontal-flip test-time augmentation, as `semiseg eval --flip`), one more no-grad teacher pass per image.
    # Why: averaging two views makes the teacher's labels more often right, and its confidence honest where the two
    # disagree; the pseudo labels are then left-right symmetric in the way the weak view's random flip is. Needs
    # teacher: ema.
    teacher_flip: bool = False
    # null: one confidence threshold for every class (conf_thresh, the official rule). A share in (0, 1]: per class
    # and batch, the most confident per_class_keep of the pixels the teacher gives that class are kept (DARS-style
    # class-wise thresholds; conf_thresh is then unused). One global threshold keeps nearly all background pixels and
    # few of the objects', and the unlabeled loss then shrinks the objects (BENCHMARKS.md, payoff study).
    per_class_keep: float | None = None
    # true: the unlabeled cross-entropy is weighted per pixel by its pseudo label's class weight from
    # loss.class_weights, as the labeled loss is. Without it a recipe with class weights (CamVid: thin classes up to
    # 3x, road 0.39x) balances its two losses differently, and the confident pseudo labels - mostly large classes -
    # pull the model towards them. Tried in the CamVid development round (BENCHMARKS.md): it did not help there.
    class_weighted: bool = False
    # true: the step's loss is (loss_x + weight * loss_u) / 2, the official UniMatch / fixmatch.py code. false: loss_x +
    # weight * loss_u, the FixMatch paper's (Sohn et al. 2020, l_s + lambda_u l_u) and AdvSemiSeg's form. Averaging halves
    # the labeled loss's gradient once the unlabeled loss starts, so under the same LR schedule the labeled images train
    # at half the supervised arm's rate. On CamVid false gained +2.6 / +2.4 test mIoU over supervised at 12 / 46 labels
    # where true gained +0.6 / +0.1 (BENCHMARKS.md, development round 2; one seed each).
    average_losses: bool = True
    # true: Bidirectional Copy-Paste (BCP, Bai et al., CVPR 2023) in place of CutMix between unlabeled images. Each
    # strong view's CutMix box is filled from a labeled image (strong-augmented), its true labels the box's targets;
    # and each labeled image gets a strong view of its own with a box filled from an unlabeled image (pseudo labels in
    # the box, true labels around it), trained in the strong views' pass with the same loss. Why: with few labels the
    # model sees the labeled pixels in one context only, and the unlabeled views hold no true label at all; BCP mixes
    # the two so each view has both (its abstract: over 21% Dice above the previous best on ACDC with 5% of the labels).
    # Differences from the official code (DeepMed-Lab-ECNU/BCP): boxes from cutmix_prob / cutmix_area (BCP: always,
    # 2/3 of each side, cutmix_prob 1 and cutmix_area [0.44, 0.44] here), every pixel weighted alike (BCP: the
    # pseudo-labeled part x 0.5), and the plain labeled loss is kept (BCP replaces it by the mixed images'). No second
    # unlabeled stream is read.
    paste_labeled: bool = False
    # Diagnostics only: log the accuracy of the confident pseudo labels against the unlabeled images' true
    # masks when the dataset has them (synthetic data). The masks never enter a loss.
    log_pseudo_accuracy: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_thresh <= 1.0:
            raise ConfigError(f"method.options.conf_thresh must be in [0, 1] (a softmax probability), "
                              f"got {self.conf_thresh}")
        check_cutmix_options(self.cutmix_prob, self.cutmix_area)
        if self.strong_views not in (1, 2):
            raise ConfigError(f"method.options.strong_views must be 1 (FixMatch) or 2 (UniMatch), "
                              f"got {self.strong_views}")
        if not 0.0 <= self.fp_dropout < 1.0:
            raise ConfigError(f"method.options.fp_dropout must be in [0, 1), got {self.fp_dropout}")
        if self.weight_strong is not None and self.weight_strong < 0:
            raise ConfigError(f"method.options.weight_strong must be >= 0 (or null), got {self.weight_strong}")
        if self.weight_fp < 0:
            raise ConfigError(f"method.options.weight_fp must be >= 0, got {self.weight_fp}")
        if self.teacher not in ("model", "ema"):
            raise ConfigError(f"method.options.teacher must be 'model' (the official UniMatch) or 'ema' (a moving "
                              f"average of the model), got {self.teacher!r}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f"method.options.ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if not 0.0 <= self.da_momentum < 1.0:
            raise ConfigError(f"method.options.da_momentum must be in [0, 1), got {self.da_momentum}")
        if self.da_group_by is not None and not self.distribution_alignment:
            raise ConfigError("method.options.da_group_by groups distribution alignment's running prediction, and "
                              "distribution_alignment is false: set distribution_alignment=true or da_group_by=null")
        for key in ("da_group_by", "teacher_bn_group_by"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and value):
                raise ConfigError(f"method.options.{key} must be a non-empty separator such as '_' (or null), "
                                  f"got {value!r}")
        if self.teacher_bn_group_by is not None and self.teacher != "ema":
            raise ConfigError("method.options.teacher_bn_group_by gives the EMA teacher BatchNorm statistics per "
                              "group, and teacher is 'model' (its pseudo labels come from the training pass): set "
                              "teacher=ema or teacher_bn_group_by=null")
        if self.teacher_flip and self.teacher != "ema":
            raise ConfigError("method.options.teacher_flip averages the EMA teacher's prediction with its mirror "
                              "image's, and teacher is 'model' (its pseudo labels come from the training pass): set "
                              "teacher=ema or teacher_flip=false")
        if not 0.0 < self.teacher_bn_momentum <= 1.0:
            raise ConfigError(f"method.options.teacher_bn_momentum must be in (0, 1], got {self.teacher_bn_momentum}")
        if self.da_groups not in ("all", "unlabeled"):
            raise ConfigError(f"method.options.da_groups must be 'all' (every group aligned on its own) or 'unlabeled' "
                              f"(only the groups without a labeled image), got {self.da_groups!r}")
        if self.da_groups != "all" and self.da_group_by is None:
            raise ConfigError("method.options.da_groups chooses which groups of da_group_by are aligned on their own, "
                              "and da_group_by is null: set da_group_by (CamVid: '_') or leave da_groups at 'all'")
        if self.per_class_keep is not None and not 0.0 < self.per_class_keep <= 1.0:
            raise ConfigError(f"method.options.per_class_keep must be in (0, 1] (the share of each class's pixels "
                              f"kept) or null (one global conf_thresh), got {self.per_class_keep}")
        if self.unlabeled_ratio < 1:
            raise ConfigError(f"method.options.unlabeled_ratio must be a whole number >= 1 (unlabeled images per labeled "
                              f"image in a step), got {self.unlabeled_ratio!r}")
        if self.unsup_start < 0 or self.unsup_rampup < 0:
            raise ConfigError(f"method.options.unsup_start and unsup_rampup must be >= 0 (iterations), got "
                              f"{self.unsup_start} and {self.unsup_rampup}")
        if self.feature_perturbation and self.weight_fp == 0:
            raise ConfigError("method.options.weight_fp=0 would run the feature-perturbation stream for nothing; "
                              "set method.options.feature_perturbation=false instead")

    @property
    def strong_weight(self) -> float:
        if self.weight_strong is not None:
            return self.weight_strong
        return 0.5 if self.feature_perturbation else 1.0


def flip_averaged_log_probs(logits: torch.Tensor, logits_mirrored: torch.Tensor) -> torch.Tensor:
    """log of the mean softmax of an image's logits and of its mirror image's (flipped back), in float32: logits whose
    softmax is that mean, so pseudo labels, confidences and distribution alignment see the averaged prediction."""
    return logits_of_probabilities((logits.float().softmax(1) + logits_mirrored.float().flip(-1).softmax(1)) / 2)


def _image_names(subset) -> list[str] | None:
    """The names of the images of a dataset or of a torch ``Subset`` of one, in its order; None when it has none."""
    names = getattr(getattr(subset, "dataset", subset), "names", None)
    if names is None:
        return None
    return [names[i] for i in getattr(subset, "indices", range(len(names)))]


# ------------------------------------------------------------------------------------------------ the method


class UniMatch(Method):
    name = "unimatch"
    Options = UniMatchOptions
    needs_unlabeled = True

    def unlabeled_batch(self, per_rank_batch: int) -> int:
        return per_rank_batch * self.options.unlabeled_ratio

    def setup(self, ctx) -> None:
        super().setup(ctx)
        o = self.options
        if ctx.unlabeled_dataset is None:
            raise ConfigError("unimatch needs unlabeled images; set data.labeled.fraction (or count / id_file)")
        for key in ("da_group_by", "teacher_bn_group_by"):
            if getattr(o, key) is not None:
                self._check_groups(ctx.unlabeled_dataset, key, getattr(o, key))
        self.class_weight = self._class_weight(ctx) if o.class_weighted else None
        self.fp = FeaturePerturbation(ctx.raw_model, o.fp_dropout) if o.feature_perturbation else None
        if ctx.cfg.data.photometric and self._unlabeled_crops_can_pad(ctx):
            warnings.warn("data.photometric=true recolours the padding of the crops, so UniMatch cannot tell padded "
                          "pixels of unlabeled crops from image pixels and trains on them too; set "
                          "data.photometric=false (UniMatch's weak view is scale, crop and flip only)", stacklevel=2)
        # The images CutMix pastes in: a second, independently shuffled pass over the unlabeled images (with
        # paste_labeled the labeled batch instead).
        self.mix_stream = None if o.paste_labeled else ctx.add_stream(
            "unlabeled_mix", ctx.unlabeled_dataset, batch_size=self.unlabeled_batch(ctx.per_rank_batch))
        self.augment = build_strong_augment()
        # The EMA teacher is a registered module: the loop checkpoints it and restores it on --resume.
        self.teacher = ctx.add_module(TEACHER_MODULE, EMATeacher(ctx.raw_model, o.ema_momentum), ddp=False) \
            if o.teacher == "ema" else None
        self._ema_updated_at = -1
        alone = self._unlabeled_groups(ctx, o.da_group_by, "da_groups=unlabeled") if o.da_groups == "unlabeled" \
            else None
        self.align = DistributionAlignment(ctx.num_classes, o.da_momentum, ctx.ignore_index, o.da_group_by, alone) \
            if o.distribution_alignment else None
        self.group_stats = None
        if o.teacher_bn_group_by is not None:
            groups = self._unlabeled_groups(ctx, o.teacher_bn_group_by, "teacher_bn_group_by")
            if not groups:
                warnings.warn(f"method.options.teacher_bn_group_by={o.teacher_bn_group_by!r}: every group of unlabeled "
                              "images has a labeled image, so the teacher keeps its shared BatchNorm statistics for "
                              "all of them (the option changes nothing here)", stacklevel=2)
            self.group_stats = GroupStatistics(self.teacher.model, groups, o.teacher_bn_momentum)

    @staticmethod
    def _unlabeled_crops_can_pad(ctx) -> bool:
        """Whether some unlabeled image is smaller than the crop at the smallest scale, so its crops hold padding
        (which photometric augmentation recolours). Reads file headers only; unknown sizes count as padding."""
        data = ctx.cfg.data
        sizes = image_sizes(ctx.unlabeled_dataset)
        return sizes is None or any(crop_can_pad(size, data.crop_size, data.scale_range) for size in sizes)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ema_updated_at": self._ema_updated_at}
        if self.align is not None:
            state["distribution_alignment"] = self.align.state_dict()
        if self.group_stats is not None:
            state["teacher_group_statistics"] = self.group_stats.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ema_updated_at = int(state.get("ema_updated_at", -1))
        if self.align is not None and "distribution_alignment" in state:
            self.align.load_state_dict(state["distribution_alignment"])
        if self.group_stats is not None and "teacher_group_statistics" in state:
            self.group_stats.load_state_dict(state["teacher_group_statistics"])

    # ------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, unlabeled_batch: dict | None, iteration: int) -> dict[str, torch.Tensor]:
        ctx, o = self.ctx, self.options
        self._update_teacher(iteration)
        images_x, masks_x = ctx.to_device(batch)
        if self.align is not None:
            self.align.observe_labels(masks_x)
        weight = unsupervised_weight(iteration, o.unsup_start, o.unsup_rampup)
        if weight == 0.0:  # supervised warm-up: the labeled images only, exactly the supervised method's step
            with ctx.autocast():
                logits_x = ctx.model(images_x)
            loss_x = ctx.criterion(logits_x.float(), masks_x)
            ctx.backward(loss_x)
            return {"loss": loss_x.detach(), "loss_x": loss_x.detach()}

        images_u, _ = ctx.to_device(unlabeled_batch)  # the masks of unlabeled images never enter a loss
        names_u = unlabeled_batch.get("name")
        valid_u = ~padding_mask(images_u, ctx.normalization)
        if o.paste_labeled:  # BCP: the boxes come from the labeled images, with their true labels
            truth_x = Targets.of_masks(masks_x, ctx.ignore_index)
            repeat = images_u.shape[0] // images_x.shape[0]
            images_m = images_x.repeat(repeat, 1, 1, 1)
            targets_m = Targets(*(t.repeat(repeat, 1, 1) for t in truth_x))
            targets_u = self._ema_targets(images_u, valid_u, names_u=names_u)[0] if self.teacher is not None else None
        else:
            mix_batch = next(self.mix_stream)
            images_m, _ = ctx.to_device(mix_batch)
            valid_m = ~padding_mask(images_m, ctx.normalization)
            if self.teacher is not None:
                targets_u, targets_m = self._ema_targets(images_u, valid_u, images_m, valid_m, names_u,
                                                         mix_batch.get("name"))
            else:
                targets_u, targets_m = None, self._eval_targets(images_m, valid_m)
        views = make_strong_views(images_u, images_m, views=o.strong_views, cutmix_prob=o.cutmix_prob,
                                  cutmix_area=tuple(o.cutmix_area), normalization=ctx.normalization,
                                  augment=self.augment, colour=o.strong_colour)
        if o.paste_labeled:  # and the other direction: unlabeled boxes in strong views of the labeled images
            views += make_strong_views(images_x, images_u[:images_x.shape[0]], views=1, cutmix_prob=o.cutmix_prob,
                                       cutmix_area=tuple(o.cutmix_area), normalization=ctx.normalization,
                                       augment=self.augment, colour=o.strong_colour)

        strong_stats = strong_view_statistics(ctx.raw_model, o.strong_bn_statistics)
        with ctx.autocast():
            logits_x, logits_u, logits_fp = self._weak_forward(images_x, images_u)
            with strong_stats:
                logits_s = ctx.model(ctx.layout(torch.cat([v for v, _ in views]))).split([len(v) for v, _ in views])
        if targets_u is None:
            targets_u = pseudo_labels(logits_u, valid_u, self.align, names_u)
        threshold = self._threshold(targets_u)

        # Losses in float32 (softmax over bf16 logits loses the small probabilities CE cares about).
        loss_x = ctx.criterion(logits_x.float(), masks_x)
        losses_s = []
        for logits, (_, box) in zip(logits_s, views[:o.strong_views]):
            targets = targets_u.cutmix(box, targets_m)
            losses_s.append(consistency_loss(logits, targets, threshold(targets), self.class_weight))
        loss_s = torch.stack(losses_s).mean()
        loss_u = o.strong_weight * loss_s
        out = {"loss_x": loss_x.detach(), "loss_s": loss_s.detach()}
        if o.paste_labeled:  # the labeled view: true labels around its box, the unlabeled image's pseudo labels in it
            (_, box), n_x = views[-1], images_x.shape[0]
            targets = truth_x.cutmix(box, Targets(*(t[:n_x] for t in targets_u)))
            loss_p = consistency_loss(logits_s[-1], targets, threshold(targets), self.class_weight)
            loss_u = loss_u + o.strong_weight * loss_p  # as one more strong view (BCP: L_in + L_out, equal weights)
            out["loss_p"] = loss_p.detach()
        if logits_fp is not None:
            loss_fp = consistency_loss(logits_fp, targets_u, threshold(targets_u), self.class_weight)
            loss_u = loss_u + o.weight_fp * loss_fp
            out["loss_fp"] = loss_fp.detach()
        loss = loss_x + weight * loss_u
        if o.average_losses:
            loss = loss / 2
        ctx.backward(loss)
        out["mask_ratio"] = mask_ratio(targets_u, threshold(targets_u))
        if o.log_pseudo_accuracy and unlabeled_batch.get("mask") is not None:
            out["pseudo_acc"] = pseudo_label_accuracy(targets_u, unlabeled_batch["mask"].to(ctx.device),
                                                      threshold(targets_u), ctx.ignore_index)
        return {"loss": loss.detach(), **out}

    @staticmethod
    def _check_groups(unlabeled, key: str, separator: str) -> None:
        """A separator no unlabeled image's name contains would make every image a group of its own (alignment or
        BatchNorm statistics per image): a mistake, refused."""
        mine = _image_names(unlabeled)
        if mine is None:  # a dataset without names: the first batch fails instead, naming the option
            return
        if mine and not any(separator in name for name in mine):
            raise ConfigError(f"method.options.{key}={separator!r}: no unlabeled image's name contains it (e.g. "
                              f"{mine[0]!r}), so every image would be a group of its own; set the separator that ends "
                              f"the group part of the names (CamVid: '_' in 0001TP_008550) or {key}=null")

    @staticmethod
    def _unlabeled_groups(ctx, separator: str, option: str) -> set[str]:
        """The groups of the unlabeled images that no labeled image belongs to (``da_groups: unlabeled``,
        ``teacher_bn_group_by``)."""
        def groups(subset) -> set[str]:
            names = _image_names(subset)
            if names is None:
                raise ConfigError(f"method.options.{option} needs image names to find the groups, and the dataset "
                                  "has none: leave it unset")
            return {group_of(name, separator) for name in names}

        return groups(ctx.unlabeled_dataset) - groups(ctx.labeled_dataset)

    @staticmethod
    def _class_weight(ctx) -> torch.Tensor:
        weights = class_weights(ctx.cfg, ctx.num_classes)
        if weights is None:
            raise ConfigError("method.options.class_weighted=true weights the unlabeled loss by loss.class_weights, "
                              "and the recipe has none: set loss.class_weights or class_weighted=false")
        return torch.tensor(weights, dtype=torch.float32, device=ctx.device)

    def _threshold(self, targets_u: Targets):
        """targets -> the confidence each of its pixels needs: ``conf_thresh`` everywhere, or with ``per_class_keep``
        the threshold of its class, computed once per step on the unlabeled images' pseudo labels (the pasted
        pixels of a CutMix box are held to the same per-class thresholds)."""
        keep = self.options.per_class_keep
        if keep is None:
            return lambda targets: self.options.conf_thresh
        per_class = class_thresholds(targets_u.conf, targets_u.label, targets_u.valid, self.ctx.num_classes, keep)
        return lambda targets: per_class[targets.label]

    def _update_teacher(self, iteration: int) -> None:
        """Move the EMA teacher towards the model once per iteration, before its pseudo labels are made: the
        model then holds the weights of the previous optimizer step (the loop steps after training_step)."""
        if self.teacher is None or self._ema_updated_at == iteration:
            return
        if iteration > 0:
            self.teacher.update(self.ctx.raw_model, ema_momentum(iteration, self.options.ema_momentum))
        self._ema_updated_at = iteration

    def _ema_targets(self, images_u, valid_u, images_m=None, valid_m=None, names_u=None,
                     names_m=None) -> tuple[Targets, Targets | None]:
        """Pseudo labels of the unlabeled and the pasted images (None without them) from the EMA teacher in one
        no-grad pass (with ``teacher_bn_group_by``, one more per group with statistics of its own that the batch
        holds)."""
        images = images_u if images_m is None else torch.cat([images_u, images_m])
        names = [*(names_u or ()), *(names_m or ())]
        if self.options.teacher_flip:  # the mirror images in the same pass (and the same group's statistics)
            images, names = torch.cat([images, images.flip(-1)]), names * 2
        with torch.no_grad(), self.ctx.autocast():
            logits = self.teacher(images) if self.group_stats is None else self._teacher_by_group(images, names)
        if self.options.teacher_flip:
            logits = flip_averaged_log_probs(*logits.chunk(2))
        if images_m is None:
            return pseudo_labels(logits, valid_u, self.align, names_u), None
        logits_u, logits_m = logits.split([images_u.shape[0], images_m.shape[0]])
        return (pseudo_labels(logits_u, valid_u, self.align, names_u),
                pseudo_labels(logits_m, valid_m, self.align, names_m))

    def _teacher_by_group(self, images: torch.Tensor, names: list[str]) -> torch.Tensor:
        """The teacher's logits, the images of each group with statistics of its own (``teacher_bn_group_by``)
        predicted in a pass of their own with those statistics, the others together with the shared ones."""
        if len(names) != images.shape[0]:
            raise ValueError("method.options.teacher_bn_group_by needs the name of every unlabeled image in the batch")
        keys = [g if g in self.group_stats.groups else None
                for g in (group_of(name, self.options.teacher_bn_group_by) for name in names)]
        logits = None
        for key in dict.fromkeys(keys):
            rows = torch.tensor([i for i, k in enumerate(keys) if k == key], device=images.device)
            with self.group_stats.use(key) if key is not None else contextlib.nullcontext():
                out = self.teacher(images[rows])
            if logits is None:
                logits = out.new_empty((images.shape[0], *out.shape[1:]))
            logits[rows] = out
        return logits

    def _eval_targets(self, images: torch.Tensor, valid: torch.Tensor) -> Targets:
        """Pseudo labels of the images CutMix pastes in: eval mode and no gradient, as the official code (so this
        extra pass neither updates BatchNorm's running statistics nor uses dropout)."""
        model = self.ctx.raw_model  # not the DDP wrapper: no gradient to synchronise, no buffer broadcast
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.ctx.autocast():
                logits = model(images)
        finally:
            model.train(was_training)
        return pseudo_labels(logits, valid)

    def _weak_forward(self, images_x: torch.Tensor, images_u: torch.Tensor):
        """One train-mode pass over labeled + weak unlabeled images (BatchNorm sees both, as the official code);
        with the fp stream the perturbed copies of the whole batch are decoded in the same pass. With the model
        as teacher this pass makes the unlabeled pseudo labels, so its dropout layers are off unless
        ``teacher_dropout`` (the official decoder has none). With the EMA teacher and no fp stream the unlabeled
        images are not needed here: the labeled ones go alone."""
        o = self.options
        if self.teacher is not None and self.fp is None:
            return self.ctx.model(images_x), None, None
        clean = dropout_off(self.ctx.raw_model) if self.teacher is None and not o.teacher_dropout \
            else contextlib.nullcontext()
        images = torch.cat([images_x, images_u])
        n_x, n = images_x.shape[0], images.shape[0]
        if self.fp is None:
            with clean:
                logits = self.ctx.model(images)
            return logits[:n_x], logits[n_x:], None
        with self.fp.active(), clean:
            logits = self.ctx.model(images)
        if logits.shape[0] != 2 * n:
            raise RuntimeError(
                f"feature perturbation: {type(self.ctx.raw_model).__name__} returned {logits.shape[0]} predictions "
                f"for {n} images with perturbed backbone features appended (expected {2 * n}); its backbone output "
                "does not go to the decoder image by image. Set method.options.feature_perturbation=false")
        return logits[:n_x], logits[n_x:n], logits[n + n_x:]


__all__ = ["UniMatch", "UniMatchOptions"]
