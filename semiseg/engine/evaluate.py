"""The one evaluation routine, shared by ``semiseg eval`` and the evaluations during training.

The logits come from semiseg.inference (whole image, sliding windows, multi-scale + flip, as the run's
``eval`` section says: :func:`inference_options`); their argmax is compared with the mask. Under DDP each
process evaluates its shard of the dataset and the confusion matrices are summed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from semiseg.config import Config, ConfigError
from semiseg.engine import distributed as dist
from semiseg.engine.sampling import ShardSampler
from semiseg.inference import InferenceOptions, infer


def collate_eval(samples: list[dict]) -> dict:
    """Stack whole images into a batch when they share a size; keep lists when they do not.

    Real folder datasets mix image sizes, and ``torch.stack`` refuses them. Padding would change what the
    model sees at the border, so images of different sizes are evaluated in groups of equal size instead
    (:func:`same_size_groups`): the same logits as ``eval.batch_size=1``, and batches where sizes repeat.
    """
    if len({tuple(s["image"].shape) for s in samples}) == 1:
        return default_collate(samples)
    return {key: [s[key] for s in samples] for key in samples[0]}


def same_size_groups(batch: dict):
    """(images, masks, names) batches of one size each from a batch of :func:`collate_eval`."""
    images, masks = batch["image"], batch["mask"]
    names = list(batch.get("name") or [""] * len(images))
    if isinstance(images, torch.Tensor):
        yield images, masks, names
        return
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for indices in groups.values():
        yield (torch.stack([images[i] for i in indices]), torch.stack([masks[i] for i in indices]),
               [names[i] for i in indices])


def make_eval_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """A loader over this process's shard of ``dataset`` (the whole dataset without DDP); images of
    different sizes may share a batch (see :func:`collate_eval`)."""
    sampler = ShardSampler(len(dataset), dist.get_rank(), dist.get_world_size())
    # generator=: starting the loader must not consume the global RNG (exact resume, see sampling.py)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator(), collate_fn=collate_eval)


def inference_options(cfg: Config) -> InferenceOptions:
    """The run's ``eval`` section as inference options (the slide window defaults to the training crop)."""
    e = cfg.eval
    slide = e.mode == "slide"
    try:
        return InferenceOptions(mode=e.mode, crop_size=(e.crop_size or cfg.data.crop_size) if slide else None,
                                stride=e.stride if slide else None, scales=e.scales, flip=e.flip)
    except ValueError as err:  # e.g. an eval.stride larger than the data.crop_size it defaults to
        raise ConfigError(f"eval settings: {err} (keys eval.mode, eval.crop_size, eval.stride, eval.scales)") from None


def predict_logits(model: nn.Module, images: torch.Tensor, *, precision: str = "fp32",
                   channels_last: bool = False, inference: InferenceOptions | None = None) -> torch.Tensor:
    """Float32 logits for a normalised batch already on the model's device (whole image unless ``inference``)."""
    return infer(model, images, inference, precision=precision, channels_last=channels_last)


def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, *, device: torch.device | str = "cpu",
             precision: str = "fp32", channels_last: bool = False, ignore_index: int = 255,
             progress: bool = False, inference: InferenceOptions | None = None):
    """Run ``model`` over ``loader`` and return the (all-reduced) ``ConfusionMatrix``.

    ``inference``: how logits are computed (default: whole images; :func:`inference_options` reads a config).

    The model is put in eval mode and returned to its previous mode afterwards.
    """
    total, _ = evaluate_groups(model, loader, num_classes, device=device, precision=precision,
                               channels_last=channels_last, ignore_index=ignore_index, progress=progress,
                               inference=inference)
    return total


@torch.no_grad()
def evaluate_groups(model: nn.Module, loader: DataLoader, num_classes: int, *, groups: Sequence[str] = (),
                    group_of: Callable[[str], str] | None = None, device: torch.device | str = "cpu",
                    precision: str = "fp32", channels_last: bool = False, ignore_index: int = 255,
                    progress: bool = False, inference: InferenceOptions | None = None):
    """:func:`evaluate`, also counted per group of images: returns ``(total, {group: ConfusionMatrix})``.

    ``group_of`` maps an image's name to its group (e.g. a CamVid name to its video sequence); ``groups`` lists
    every group of the whole dataset, so that under DDP each process all-reduces the same matrices whatever its
    shard holds. A name whose group is not listed is an error (the list was not made from this dataset).
    """
    from semiseg.metrics import ConfusionMatrix

    device = torch.device(device)
    was_training = model.training
    model.eval()
    total = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    per_group = {g: ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device) for g in groups}
    batches = loader
    if progress and dist.is_main():
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    try:
        for batch in batches:
            for images, masks, names in same_size_groups(batch):
                images = images.to(device, non_blocking=True)
                masks = masks.to(device, non_blocking=True)
                logits = infer(model, images, inference, precision=precision, channels_last=channels_last)
                pred = logits.argmax(1)
                total.update(pred, masks)
                if group_of is not None:
                    for i, name in enumerate(names):
                        group = group_of(name)
                        if group not in per_group:
                            raise ValueError(f"image {name!r} is in group {group!r}, which is not among the "
                                             f"groups listed ({', '.join(per_group)})")
                        per_group[group].update(pred[i:i + 1], masks[i:i + 1])
    finally:
        model.train(was_training)
    for cm in (total, *per_group.values()):  # the same matrices in the same order on every process
        cm.all_reduce()
    return total, per_group


def evaluate_checkpoint(path: str, *, data_overrides=(), split: str | None = None, device: str = "auto",
                        precision: str | None = None, batch_size: int | None = None,
                        num_workers: int | None = None, inference_overrides=(), recipe: str | None = None,
                        recipe_overrides=(), allow_code: bool | None = None, group_by: str | None = None,
                        teacher: bool = False) -> dict:
    """Evaluate a checkpoint; returns {"metrics", "table", "classes", ...} (the JSON written by the command).

    ``inference_overrides``: dotted ``eval.*`` overrides of the run's inference settings (``eval.mode=slide``).
    ``recipe``: ``path`` holds plain weights for the model of this recipe (``recipe_overrides`` apply to it).
    ``allow_code``: let the checkpoint's config import ``module:function`` names (see ``load_trained_model``).
    ``group_by``: also score each group of images, a group being an image name's part before the first
    ``group_by`` (CamVid's ``0001TP_008550`` -> ``0001TP`` with ``"_"``, the grouping of a stratified split): the
    result gets ``"groups"``, and the table a line per group.
    ``teacher``: evaluate the run's EMA teacher instead of its trained model (see ``load_trained_model``).
    """
    import dataclasses
    import os
    from collections import Counter

    from semiseg.config import override_config
    from semiseg.data import splits
    from semiseg.data.info import DatasetInfo
    from semiseg.engine import build
    from semiseg.engine.predict import load_trained_model, load_weights_with_recipe
    from semiseg.runtime import resolve_device
    from semiseg.metrics import to_json_dict

    data_overrides = [o if o.startswith("data.") else f"data.{o}" for o in data_overrides]
    if group_by is not None and not group_by:
        from semiseg.config import ConfigError

        raise ConfigError("--group-by needs a separator, e.g. _ (an image's group is its name up to the first _)")
    dev = dist.init_distributed(resolve_device(device))
    if recipe:
        if teacher:
            from semiseg.config import ConfigError

            raise ConfigError("--teacher picks the EMA teacher of a semiseg run; with --config the file is one set "
                              "of plain weights")
        loaded = load_weights_with_recipe(path, recipe, device=dev, precision=precision,
                                          overrides=[*recipe_overrides, *inference_overrides])
    else:
        if recipe_overrides:
            from semiseg.config import ConfigError

            raise ConfigError("--set changes a recipe: use it with --config (a run's own settings are fixed; "
                              "--data and the inference flags change what evaluation reads)")
        # --data goes in with the other overrides: a data.kind typed here replaces the checkpoint's own
        loaded = load_trained_model(path, device=dev, precision=precision, allow_code=allow_code,
                                    overrides=[*inference_overrides, *data_overrides], teacher=teacher)
    cfg = override_config(loaded.cfg, data_overrides)
    split = split or cfg.data.val_split
    # the run's validation options apply when evaluating its validation split
    validation = split == cfg.data.val_split
    dataset = build.build_dataset(cfg, split, validation=validation)
    options = {**cfg.data.options, **(cfg.data.val_options if validation else {})}
    data_info = DatasetInfo.of(dataset, loaded.info.normalization)  # the evaluated data's facts (its ignore label)
    if data_info.num_classes != loaded.info.num_classes:
        from semiseg.config import ConfigError

        raise ConfigError(f"the dataset has {data_info.num_classes} classes but the model was trained for "
                          f"{loaded.info.num_classes} ({', '.join(loaded.info.classes)})")
    dataset.transform = build.eval_transform(loaded.info.normalization)
    loader = make_eval_loader(dataset, batch_size=batch_size or cfg.eval.batch_size,
                              num_workers=cfg.data.num_workers if num_workers is None else num_workers,
                              pin_memory=dev.type == "cuda")
    group_of = None if group_by is None else (lambda name: splits.group_of(name, group_by))
    images_per_group = Counter()
    if group_of is not None:
        names = getattr(dataset, "names", None)
        if names is None:
            from semiseg.config import ConfigError

            raise ConfigError(f"--group-by groups images by name, and the {cfg.data.kind!r} dataset does not list its "
                              "names (a `names` attribute, as semiseg's datasets have); add one or drop --group-by")
        images_per_group = Counter(group_of(n) for n in names)
    cm, per_group = evaluate_groups(loaded.model, loader, loaded.info.num_classes, groups=sorted(images_per_group),
                                    group_of=group_of, device=dev, precision=loaded.precision,
                                    channels_last=loaded.channels_last, ignore_index=data_info.ignore_index,
                                    progress=True, inference=loaded.inference)
    classes = data_info.classes
    table = cm.table(classes)
    groups = {}
    if group_by is not None:
        groups = {g: {"images": images_per_group[g], "metrics": to_json_dict(m.compute())} for g, m in per_group.items()}
        table += "\n\n" + group_table(groups, group_by)
    result = {
        "checkpoint": os.path.abspath(loaded.checkpoint_path),
        "iteration": loaded.iteration,
        "weights": loaded.weights,  # "model", or "teacher" (the run's EMA teacher)
        "data": {"kind": cfg.data.kind, "root": cfg.data.root, "split": split, "options": options,
                 "samples": len(dataset)},
        "precision": loaded.precision,
        "normalization": loaded.info.normalization,  # the input convention (the recipe's, or the run's)
        "channels_last": loaded.channels_last,
        "precision_reason": loaded.precision_reason,
        "inference": dataclasses.asdict(loaded.inference),
        "classes": classes,
        "metrics": to_json_dict(cm.compute()),
        "confusion_matrix": cm.mat.cpu().tolist(),
        "table": table,
        "torch_version": str(torch.__version__),
    }
    if group_by is not None:
        result["group_by"] = group_by
        result["groups"] = groups
    return result


def group_table(groups: dict[str, dict], separator: str) -> str:
    """A line per group: images, mIoU, pixel accuracy (from :func:`evaluate_checkpoint`'s ``"groups"``)."""
    def pct(value: float | None) -> str:  # None: no labelled pixel in the group
        return "-" if value is None else f"{100 * value:.1f}"

    width = max([len("group"), *map(len, groups)])
    lines = [f"per group (an image's name up to the first {separator!r}):",
             f"{'group':<{width}}  images   mIoU   aAcc"]
    for g, r in groups.items():
        m = r["metrics"]
        lines.append(f"{g:<{width}}  {r['images']:>6}  {pct(m['miou']):>5}  {pct(m['acc']):>5}")
    return "\n".join(lines)


__all__ = ["collate_eval", "same_size_groups", "make_eval_loader", "inference_options", "predict_logits", "evaluate",
           "evaluate_groups", "evaluate_checkpoint", "group_table"]
