"""Config -> the objects of a run: datasets, split, model, optimizer, loss.

The only place where the engine meets the data, models and losses packages, through the contracts of
docs/internals.md. ``model.name`` and ``data.kind`` may also be ``"package.module:function"`` to plug in
a model or dataset that is not in the registries (same signatures as ``build_model`` / ``build_dataset``).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import torch
from torch import nn

from semiseg.config import Config, ConfigError


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {target!r} ({e}); use 'package.module:function'") from None


# ---------------------------------------------------------------------------------------------------
# data


def build_dataset(cfg: Config, split: str, transform=None, *, validation: bool = False):
    """A dataset of ``cfg.data`` for ``split``; its transform is set by the caller.

    ``validation=True`` applies ``data.val_options`` over ``data.options``.
    """
    from semiseg.data.errors import option_style

    d = cfg.data
    options = {**d.options, **d.val_options} if validation else dict(d.options)
    # data errors name the recipe keys (data.options.binary=true), also when raised later in DataLoader workers
    with option_style("config", options="data.options", split="data.val_split" if validation else "data.train_split"):
        if ":" in d.kind:
            return _import(d.kind)(d.root, split, transform=transform, **options)
        from semiseg.data import build_dataset as data_build_dataset

        return data_build_dataset(d.kind, d.root, split, transform=transform, **options)


def train_transform(cfg: Config, normalization: str, ignore_index: int):
    from semiseg.data.transforms import build_train_transform

    d = cfg.data
    return build_train_transform(d.crop_size, scale_range=d.scale_range, hflip=d.hflip, rotate90=d.rotate90,
                                 photometric=d.photometric, brightness_range=d.brightness_range,
                                 normalization=normalization, ignore_index=ignore_index)


def eval_transform(normalization: str):
    from semiseg.data.transforms import build_eval_transform

    return build_eval_transform(normalization=normalization)


def make_or_load_split(cfg: Config, names: list[str], path: str | None):
    """The labeled/unlabeled split: loaded from ``path`` when it exists (resume), else made from the config.

    Without fraction/count/id_file every sample is labeled.
    """
    from semiseg.data.splits import Split, make_split

    if path is not None and os.path.isfile(path):
        return Split.load(path)
    lab = cfg.data.labeled
    if lab.fraction is None and lab.count is None and lab.id_file is None:
        return Split(sorted(names), [], lab.seed, {"fraction": 1.0, "total": len(names)})
    return make_split(names, fraction=lab.fraction, count=lab.count, id_file=lab.id_file, seed=lab.seed,
                      stratify=lab.stratify)


# ---------------------------------------------------------------------------------------------------
# model


def build_model(cfg: Config, num_classes: int, *, pretrained: bool = True, verbose: bool = False) -> nn.Module:
    """The network of ``cfg.model``; ``pretrained=False`` skips backbone and init weights (a checkpoint
    will be loaded over them anyway). ``verbose`` prints the weight-loading report."""
    m = cfg.model
    backbone = m.pretrained_backbone if pretrained else False
    if ":" in m.name:
        model = _import(m.name)(num_classes, pretrained_backbone=backbone, **m.options)
    else:
        from semiseg.models import build_model as models_build_model, model_options

        try:
            model, problem = models_build_model(m.name, num_classes, pretrained_backbone=backbone, **m.options), None
        except (TypeError, ValueError) as e:  # an option the model does not take, or a value it refuses
            model, problem = None, str(e)
        if problem is not None:  # (outside the handler: the option listing builds models that fail on purpose)
            raise ConfigError(f"model.options {m.options} for {m.name}: {problem}\n  fix: change model.options; "
                              f"{m.name} takes {', '.join(model_options(m.name)) or 'no options'}")
    if pretrained and m.weights:
        from semiseg.models import load_weights
        from semiseg.models.pretrained import PretrainedWeightsError

        try:
            report = load_weights(model, m.weights, mode=m.weights_mode)
        except (ValueError, TypeError) as e:  # shapes or layout that do not fit this model
            raise PretrainedWeightsError(
                f"model.weights={m.weights} does not fit {m.name} with {num_classes} classes: {e}\n"
                "(model.weights_mode=same_shape loads what fits and skips the rest, e.g. a head for other classes)"
            ) from e
        if verbose:
            print(report)
    return model


def precision_choice(cfg: Config, model: nn.Module, num_classes: int, device: torch.device, *, task: str, batch: int,
                     precision: str | None = None, channels_last: bool | str | None = None,
                     previous: tuple[str, bool] | None = None):
    """``train.precision`` / ``train.channels_last`` (or the given values) made concrete for this model on ``device``.

    ``"auto"`` on a CPU times ``model`` (a copy of it) at the run's crop -- a training step for ``task="train"``,
    a forward for ``task="infer"`` (at the sliding window when evaluation slides) -- see semiseg/runtime.py.
    ``previous``: the mode a resumed run trained in (kept where it is about as fast).
    """
    from semiseg.runtime import Workload, choose_precision

    size = cfg.data.crop_size
    if task == "infer" and cfg.eval.mode == "slide" and cfg.eval.crop_size:
        size = cfg.eval.crop_size
    key = f"{cfg.model.name} {json.dumps(cfg.model.options, sort_keys=True, default=str)} classes={num_classes}"
    workload = Workload(model, key, task, (int(size[0]), int(size[1])), int(batch), int(num_classes))
    return choose_precision(precision or cfg.train.precision,
                            cfg.train.channels_last if channels_last is None else channels_last, device, workload,
                            previous=previous)


def model_normalization(cfg: Config, model: nn.Module) -> str:
    if cfg.data.normalization != "auto":
        return cfg.data.normalization
    return getattr(model, "normalization", "imagenet")


def param_groups(model: nn.Module, lr_mult_overrides: dict[str, float]) -> list[dict]:
    """The model's parameter groups (``model.param_groups()``, else one group at 1x), with recipe overrides."""
    if hasattr(model, "param_groups"):
        groups = [dict(g) for g in model.param_groups()]
    else:
        groups = [{"name": "all", "params": [p for p in model.parameters() if p.requires_grad], "lr_mult": 1.0}]
    names = [g["name"] for g in groups]
    unknown = [k for k in lr_mult_overrides if k not in names]
    if unknown:
        raise ConfigError(f"optim.lr_mult names unknown parameter groups {unknown}; this model has {names}")
    for g in groups:
        g["lr_mult"] = float(lr_mult_overrides.get(g["name"], g.get("lr_mult", 1.0)))
        g["params"] = [p for p in g["params"] if p.requires_grad]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (or AdamW) over the parameter groups; each group's lr is ``optim.lr * lr_mult`` (1x backbone,
    10x head as in the seeds)."""
    o = cfg.optim
    groups = param_groups(model, o.lr_mult)
    for g in groups:
        g["lr"] = o.lr * g["lr_mult"]
    fused = resolve_fused(o.fused, [p for g in groups for p in g["params"]])
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.momentum, 0.999), weight_decay=o.weight_decay, fused=fused)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov,
                           fused=fused)


def resolve_fused(setting: bool | str, params: list[torch.Tensor]) -> bool:
    """``optim.fused``: one fused kernel for the whole update instead of several passes per tensor.

    The same arithmetic as torch's default loop, in one pass over memory: on a CPU it made the SGD step
    of FCN-8s' 134M parameters about 6x faster (fc6 alone: 0.27 s -> 0.04 s per step, 1 thread).
    "auto" uses it where torch has the kernel (CPU since torch 2.4, CUDA) for floating-point parameters.
    """
    if setting == "auto":
        version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
        return (version >= (2, 4) and bool(params)
                and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params))
    if not isinstance(setting, bool):
        raise ConfigError(f"optim.fused must be true, false or auto, not {setting!r}")
    return setting


def class_weights(cfg: Config, num_classes: int) -> list[float] | None:
    """``loss.class_weights``, checked to hold one weight per class (the labeled loss's, and any method's that
    weighs its own loss the same way)."""
    weights = cfg.loss.class_weights
    if weights is not None and len(weights) != num_classes:
        raise ConfigError(f"loss.class_weights has {len(weights)} values but the dataset has {num_classes} classes")
    return weights


def build_criterion(cfg: Config, num_classes: int, ignore_index: int) -> nn.Module:
    from semiseg.losses import build_loss

    weights = class_weights(cfg, num_classes)
    return build_loss(cfg.loss.name, weight=weights, ignore_index=ignore_index, per_image=cfg.loss.per_image,
                      label_smoothing=cfg.loss.label_smoothing, dice_factor=cfg.loss.dice_factor,
                      ohem_thresh=cfg.loss.ohem_thresh, ohem_min_kept=cfg.loss.ohem_min_kept)


__all__ = ["build_dataset", "train_transform", "eval_transform", "make_or_load_split",
           "build_model", "precision_choice", "model_normalization", "param_groups", "build_optimizer", "resolve_fused",
           "class_weights", "build_criterion"]
