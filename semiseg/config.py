"""Typed run configuration: dataclasses with the papers' defaults, YAML recipes and dotted overrides.

A recipe is a YAML file whose sections mirror :class:`Config`::

    _base_: ../base.yaml            # optional: start from another recipe (path relative to this file)
    model: {name: deeplabv2_resnet101, options: {freeze_bn: true}}
    data: {kind: voc_aug, root: data/VOCdevkit, labeled: {fraction: 0.125}}
    optim: {lr: 2.5e-4}
    train: {iterations: 20000, precision: bf16}

``load_config(path, ["optim.lr=0.01", "data.crop_size=[256,256]"])`` applies dotted overrides after the
file; their values are parsed as YAML (``null``, lists, numbers). Every key is checked against the
dataclass fields, so ``optim.lrr=0.01`` fails with the list of valid keys instead of being ignored.
Free-form option dicts (``model.options``, ``data.options``, ``method.options``) accept any key; the
model builder, dataset or method that receives them checks them.

Defaults are those of AdvSemiSeg / DeepLab-v2 on PASCAL VOC (Hung et al. 2018): SGD lr 2.5e-4 with 10x on
the classifier, momentum 0.9, weight decay 5e-4, poly power 0.9, 20k iterations, batch 10, 321x321 crops,
random scale 0.5-1.5 and mirroring. Recipes name every number that differs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union  # Union: get_origin() of Optional[...] hints

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message names the key and the fix."""


@dataclass
class ModelConfig:
    name: str = "deeplabv2_resnet101"  # a name of semiseg.models.available_models(), or "package.module:builder"
    pretrained_backbone: bool | str = True  # ImageNet weights (torchvision cache) or a local file path
    weights: str | None = None  # initial weights of the whole model (load_weights: original releases too)
    weights_mode: str = "convert"  # convert (shape mismatch = error) | same_shape (skip mismatches, e.g. classes)
    options: dict = field(default_factory=dict)  # passed to the builder, e.g. {output_stride: 8}
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP


@dataclass
class LabeledConfig:
    """Which training samples keep their labels; all of them when fraction, count and id_file are unset."""

    fraction: float | None = None  # e.g. 0.125 for 1/8 of the labels
    count: int | None = None  # or an absolute number of labeled images
    id_file: str | None = None  # or a list of labeled names (one per line, or a saved split)
    seed: int = 0  # the split's permutation seed (the original AdvSemiSeg split was unseeded)
    # draw the labels from every group of names in proportion, a group being a name's part before the first
    # occurrence of this separator (CamVid: "_" -> its video sequences); null: a plain random draw
    stratify: str | None = None


@dataclass
class DataConfig:
    kind: str = "voc_aug"  # synthetic|voc|voc_aug|folder|camvid|cityscapes|ade20k, or "package.module:builder"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    options: dict = field(default_factory=dict)  # dataset options, e.g. {length: 400, size: 128} for synthetic
    val_options: dict = field(default_factory=dict)  # merged over options for the validation split only
    crop_size: list[int] = field(default_factory=lambda: [321, 321])  # (height, width)
    scale_range: list[float] | None = field(default_factory=lambda: [0.5, 1.5])  # null: no random scale
    hflip: bool = True
    rotate90: bool = False  # random quarter turns, for data with no "up" (aerial, microscopy, synthetic); square crops
    photometric: bool = False  # mild colour distortion of training crops (brightness, contrast, saturation, hue)
    brightness_range: list[float] | None = None  # [min, max] brightness factor of that distortion; null: 0.875-1.125
    normalization: str = "auto"  # auto (what the model's weights expect) | imagenet | caffe (BGR) | caffe_rgb
    batch_size: int = 10  # images per optimizer step summed over all processes and accumulation steps
    num_workers: int = 2  # per process
    labeled: LabeledConfig = field(default_factory=LabeledConfig)
    check: bool | str = "auto"  # files checked before the first step: auto | full | headers | off (false) (engine/preflight.py)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (the papers) | adamw (converges faster from scratch)
    lr: float = 2.5e-4  # base learning rate; a parameter group gets lr * lr_mult
    momentum: float = 0.9  # sgd momentum; for adamw the first beta
    weight_decay: float = 5e-4  # L2 for sgd, decoupled for adamw
    nesterov: bool = False
    lr_mult: dict = field(default_factory=dict)  # override the model's group multipliers: {head: 10.0}
    power: float = 0.9  # poly decay: lr * (1 - it / iterations) ** power
    min_lr: float = 0.0  # floor of the poly decay of the model's optimizer (an absolute lr); not a method's own optimizers (the discriminator's)
    warmup_iters: int = 0  # linear warmup from lr * warmup_factor to the poly curve
    warmup_factor: float = 1e-3
    grad_clip: float | None = None  # max global grad norm, null = no clipping
    fused: bool | str = "auto"  # fused optimizer kernel (auto: where torch has one; the plain loop otherwise)


@dataclass
class LossConfig:
    name: str = "ce"  # ce | dice | ce+dice | ohem (semiseg.losses.build_loss)
    class_weights: list[float] | None = None  # one weight per class
    dice_factor: float = 1.0  # ce + dice_factor * dice
    per_image: bool = False  # average the cross-entropy per image first (d2l)
    label_smoothing: float = 0.0
    ohem_thresh: float = 0.7  # ohem: pixels whose true class has probability <= this are hard (UniMatch: 0.7)
    ohem_min_kept: int = 100_000  # ohem: at least this many hardest pixels per batch (UniMatch Cityscapes: 100,000)


@dataclass
class MethodConfig:
    name: str = "supervised"  # a key of the method registry (semiseg/method_names.py: METHODS)
    options: dict = field(default_factory=dict)  # checked by the method


@dataclass
class TrainConfig:
    iterations: int = 20000  # optimizer steps
    accum_steps: int = 1  # micro-batches per optimizer step (data.batch_size is split across them)
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    precision: str = "auto"  # one of semiseg.runtime.PRECISIONS (auto: measured fastest correct mode per device)
    channels_last: bool | str = "auto"  # auto: timed with precision on a CPU (semiseg/runtime.py), on for CUDA
    compile: bool = False  # torch.compile the model (slow first steps, faster later)
    eval_interval: int = 1000  # iterations between evaluations on data.val_split; 0 = only at the end
    checkpoint_interval: int = 1000  # iterations between writes of last.pt
    log_interval: int = 20  # iterations between metrics.jsonl lines
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower)
    threads: int = 0  # CPU threads per process; 0 = auto: 1 or all cores, whichever measures faster (threads.py)
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed


@dataclass
class EvalConfig:
    """Test-time inference (semiseg.inference); used by the evaluations during training and ``semiseg eval``."""

    batch_size: int = 1  # whole images of different sizes cannot be batched unless equal in size
    mode: str = "whole"  # whole (the image at once) | slide (overlapping windows, for images larger than the crop)
    crop_size: list[int] | None = None  # slide window (height, width); null: data.crop_size, the training crop
    stride: list[int] | None = None  # slide step (height, width); null: 2/3 of the window (mmseg: 512 -> 341)
    scales: list[float] = field(default_factory=lambda: [1.0])  # resize ratios; several = multi-scale test,
    #   e.g. mmseg's [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]; the views' softmax probabilities are averaged
    flip: bool = False  # also run each scale's mirror image (horizontal flip) and average it in


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs"  # the run folder is output_dir/name
    name: str = ""  # default: the recipe's file name without extension

    @property
    def run_dir(self) -> str:
        return os.path.join(self.output_dir, self.name or "run")


# ---------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert the harmless cases (int -> float, "1e-3" -> float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        # Try the exact-type arms first so that ``bool | str`` keeps "auto" a string and True a bool.
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return copy.deepcopy(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 2e4 is a float in YAML
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number everyone means.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = prefix or "the top level"
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} in {where}; "
            f"valid keys: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def dataclass_from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build any config dataclass from plain data with the same checks (used for method options)."""
    return _from_dict(cls, data or {}, prefix)


def config_from_dict(data: dict) -> Config:
    """Build a :class:`Config` from nested plain data (a loaded YAML or a checkpoint's ``config``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(data).__name__}")
    return _from_dict(Config, data)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------------
# files and overrides


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml_file(path: str, *, what: str = "recipe", flag: str = "--config", error: type[Exception] = ConfigError):
    """The parsed YAML of ``path`` (a recipe, a study file, ...); every way the file can be unusable raises
    ``error`` with a message that names the file and says what was expected."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except yaml.YAMLError as e:
        raise error(f"{path} is not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path} is not a text file (not UTF-8 at byte {e.start}); a {what} is a YAML text file") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder; {flag} takes a {what} (a YAML file)") from None


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself ({' -> '.join(seen + (path,))})")
    data = load_yaml_file(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping (model:, data:, train: ...), got {type(data).__name__}")
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = _deep_merge(merged, _read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,)))
    return _deep_merge(merged, data)


def _field_type(cls: type, name: str) -> Any:
    return _hints(cls)[name]


def apply_override(data: dict, override: str) -> dict:
    """Apply ``"section.key=value"`` to nested ``data`` (in place) and return it.

    The dotted path is checked against the schema before anything is set; below a free-form dict field
    (``model.options.output_stride=8``) any key is accepted.
    """
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key=value, e.g. optim.lr=0.01")
    dotted, _, raw = override.partition("=")
    dotted = dotted.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # e.g. an unquoted path with a colon: keep the text
    if isinstance(value, dict) and any(":" in str(k) and v is None for k, v in value.items()):
        # YAML reads {head:1} as the key "head:1" without a value
        raise ConfigError(f"override {override!r}: write a space after each colon in a mapping, e.g. {{head: 1}}")
    parts = dotted.split(".")
    cls: Any = Config
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if cls is not None:
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                where = ".".join(parts[:i]) or "the top level"
                raise ConfigError(
                    f"unknown key {part!r} in override {override!r} ({where}); valid keys: {', '.join(names)}"
                )
            tp = _field_type(cls, part)
            next_cls = tp if dataclasses.is_dataclass(tp) else None
            if not last and next_cls is None and not (tp is dict or typing.get_origin(tp) is dict):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
            cls = next_cls
        if last:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
    return data


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a recipe (or start from the defaults when ``path`` is None) and apply dotted overrides."""
    if path is not None:
        from semiseg.recipes import find_recipe  # a path as typed, or a shipped recipe name

        path = find_recipe(path)
    data = _read_yaml(os.fspath(path)) if path is not None else {}
    for override in overrides:
        apply_override(data, override)
    cfg = config_from_dict(data)
    if not cfg.name and path is not None:
        cfg.name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    validate(cfg)
    return cfg


def override_config(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A copy of ``cfg`` with dotted overrides applied (used when resuming with changes)."""
    data = config_to_dict(cfg)
    for override in overrides:
        apply_override(data, override)
    out = config_from_dict(data)
    validate(out)
    return out


def _validate_name(cfg: Config) -> None:
    """``name`` is a folder inside ``output_dir``: ``..``, ``../x`` or an absolute path would put the run (and what
    ``--overwrite`` deletes) somewhere else. ``--run-dir DIR`` is the way to name any other folder."""
    name = cfg.name
    if not name:
        return
    out = os.path.abspath(cfg.output_dir or ".")
    target = os.path.abspath(os.path.join(out, name))
    if os.path.isabs(name) or os.path.commonpath([out, target]) != out or target == out:
        raise ConfigError(
            f"name={name!r} does not name a folder inside output_dir={cfg.output_dir!r} (it resolves to {target}); "
            "use a plain name such as name=my_run, or --run-dir DIR to put the run in another folder"
        )


def _validate_optim(o: OptimConfig) -> None:
    def finite(key: str, value: float) -> None:
        if not math.isfinite(value):
            raise ConfigError(f"optim.{key} must be a finite number, got {value!r}")

    for key in ("lr", "momentum", "weight_decay", "power", "min_lr", "warmup_factor"):
        finite(key, getattr(o, key))
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {o.lr!r} (e.g. optim.lr=0.01)")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0 (0 = no decay), got {o.weight_decay!r}")
    beta = "the first Adam beta" if o.name == "adamw" else "SGD momentum"
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum ({beta}) must be in [0, 1), got {o.momentum!r} (the papers use 0.9)")
    if o.nesterov and (o.name != "sgd" or o.momentum == 0):
        raise ConfigError("optim.nesterov=true needs optim.name=sgd and optim.momentum > 0")
    if o.power < 0:
        raise ConfigError(f"optim.power (poly decay exponent) must be >= 0, got {o.power!r}")
    if o.min_lr < 0:
        raise ConfigError(f"optim.min_lr must be >= 0, got {o.min_lr!r}")
    if o.grad_clip is not None and not (math.isfinite(o.grad_clip) and o.grad_clip > 0):
        raise ConfigError(f"optim.grad_clip must be a positive number or null, got {o.grad_clip!r}")
    for group, mult in o.lr_mult.items():
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult < 0:
            raise ConfigError(f"optim.lr_mult.{group} must be a finite number >= 0, got {mult!r}")


def _validate_registry_names(cfg: Config) -> None:
    """Unknown model, loss, method or dataset names fail here, with the valid ones, before anything is built.

    ``package.module:function`` names are not imported here; that happens when the run is built (and only
    for configs the user passed, see :func:`check_code_names`)."""
    from semiseg.losses import LOSS_NAMES
    from semiseg.models import available_models

    def check(key: str, value: str, valid, fix: str = "") -> None:
        if ":" not in value and value not in valid:
            raise ConfigError(f"unknown {key} {value!r}; available: {', '.join(valid)}{fix}\n"
                              f"  fix: use one of {', '.join(valid)}")

    code = ", or 'package.module:function' for your own"
    check("model.name", cfg.model.name, available_models(), code)
    if cfg.loss.name.replace(" ", "").lower() not in LOSS_NAMES:
        raise ConfigError(f"unknown loss.name {cfg.loss.name!r}; available: {', '.join(LOSS_NAMES)}\n"
                          f"  fix: use one of {', '.join(LOSS_NAMES)}")
    from semiseg.method_names import available_methods  # names only: the engine is not imported

    check("method.name", cfg.method.name, available_methods(), ", or 'package.module:Class' for your own")
    from semiseg.data import DATASETS

    check("data.kind", cfg.data.kind, list(DATASETS), code)


def validate(cfg: Config) -> None:
    """Checks that need more than one field's type; each message says what to change."""
    d, t, o = cfg.data, cfg.train, cfg.optim
    _validate_name(cfg)
    _validate_optim(o)
    _validate_registry_names(cfg)
    if len(d.crop_size) != 2 or min(d.crop_size) < 1:
        raise ConfigError(f"data.crop_size must be [height, width] with positive values, got {d.crop_size}")
    if d.rotate90 and d.crop_size[0] != d.crop_size[1]:
        side = min(d.crop_size)
        raise ConfigError(f"data.rotate90 needs a square crop (a turned {d.crop_size[0]}x{d.crop_size[1]} crop cannot "
                          f"be batched with unturned ones); set data.crop_size=[{side}, {side}] or data.rotate90=false")
    if d.scale_range is not None and (len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]):
        raise ConfigError(f"data.scale_range must be [min, max] with 0 < min <= max (or null), got {d.scale_range}")
    if d.brightness_range is not None:
        if len(d.brightness_range) != 2 or not 0 <= d.brightness_range[0] <= d.brightness_range[1]:
            raise ConfigError(f"data.brightness_range must be [min, max] with 0 <= min <= max (or null), "
                              f"got {d.brightness_range}")
        if not d.photometric:
            raise ConfigError("data.brightness_range sets the brightness of the photometric distortion, which is off; "
                              "set data.photometric=true or data.brightness_range=null")
    if d.normalization not in ("auto", "imagenet", "caffe", "caffe_rgb"):  # semiseg.data.transforms.NORMALIZATIONS
        raise ConfigError(f"data.normalization must be auto, imagenet, caffe or caffe_rgb, got {d.normalization!r}")
    if d.batch_size < 1 or t.accum_steps < 1:
        raise ConfigError("data.batch_size and train.accum_steps must be >= 1")
    if d.batch_size % t.accum_steps:
        raise ConfigError(
            f"data.batch_size={d.batch_size} is not divisible by train.accum_steps={t.accum_steps}; the batch "
            "is the number of images per optimizer step, split into accum_steps micro-batches"
        )
    if sum(x is not None for x in (d.labeled.fraction, d.labeled.count, d.labeled.id_file)) > 1:
        raise ConfigError("set at most one of data.labeled.fraction, data.labeled.count, data.labeled.id_file")
    if t.iterations < 1:
        raise ConfigError(f"train.iterations must be >= 1, got {t.iterations}")
    from semiseg.runtime import PRECISIONS  # imported here: runtime imports config (its error type)

    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, got {t.precision!r}")
    if isinstance(t.channels_last, str) and t.channels_last != "auto":
        raise ConfigError(f"train.channels_last must be true, false or auto, got {t.channels_last!r}")
    if t.threads < 0:
        raise ConfigError(f"train.threads must be >= 0 (0 = torch's default), got {t.threads}")
    if min(t.eval_interval, t.checkpoint_interval) < 0 or t.log_interval < 1:
        raise ConfigError("train.eval_interval and train.checkpoint_interval must be >= 0, train.log_interval >= 1")
    if o.name not in ("sgd", "adamw"):
        raise ConfigError(f"optim.name must be sgd or adamw, got {o.name!r}")
    if o.warmup_iters < 0 or not 0 < o.warmup_factor <= 1:
        raise ConfigError("optim.warmup_iters must be >= 0 and optim.warmup_factor in (0, 1]")
    if not 0.0 <= cfg.loss.ohem_thresh <= 1.0 or cfg.loss.ohem_min_kept < 0:
        raise ConfigError(f"loss.ohem_thresh must be a probability in [0, 1] and loss.ohem_min_kept >= 0, got "
                          f"{cfg.loss.ohem_thresh} and {cfg.loss.ohem_min_kept}")
    if cfg.model.weights_mode not in ("convert", "same_shape"):
        raise ConfigError(f"model.weights_mode must be convert or same_shape, got {cfg.model.weights_mode!r}")
    _validate_eval(cfg.eval)


def _validate_eval(e: EvalConfig) -> None:
    # the same rules as semiseg.inference.InferenceOptions, with the config's key names in the messages
    if e.mode not in ("whole", "slide"):
        raise ConfigError(f"eval.mode must be whole or slide, got {e.mode!r} (multi-scale: set eval.scales)")
    for key, value in (("crop_size", e.crop_size), ("stride", e.stride)):
        if value is not None and (len(value) != 2 or min(value) < 1):
            raise ConfigError(f"eval.{key} must be [height, width] with positive values (or null), got {value}")
    if e.crop_size is not None and e.stride is not None and any(s > c for s, c in zip(e.stride, e.crop_size)):
        raise ConfigError(f"eval.stride {e.stride} exceeds eval.crop_size {e.crop_size}: windows would leave "
                          "pixels uncovered; use a stride <= the crop size")
    if not e.scales or min(e.scales) <= 0:
        raise ConfigError(f"eval.scales must be a non-empty list of positive ratios, got {e.scales}")
    if e.batch_size < 1:
        raise ConfigError(f"eval.batch_size must be >= 1, got {e.batch_size}")


# ---------------------------------------------------------------------------------------------------
# code named by a config: trusted only when the user passed it

# Keys whose value may be "package.module:function" (imported and called) instead of a registry name.
CODE_KEYS = ("model.name", "data.kind", "method.name")
ALLOW_CODE_ENV = "SEMISEG_ALLOW_CODE"


class UntrustedCodeError(ConfigError):
    """A config read from a file (checkpoint, a run's config.yaml) names code to import, and the user did not
    allow it."""


def allow_code_default() -> bool:
    """``SEMISEG_ALLOW_CODE=1`` in the environment: the same as passing ``--allow-code`` to every command."""
    return os.environ.get(ALLOW_CODE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def code_names(cfg: Config) -> dict[str, str]:
    """The ``package.module:function`` values of ``cfg``, by key (empty when it uses registry names only)."""
    values = {"model.name": cfg.model.name, "data.kind": cfg.data.kind, "method.name": cfg.method.name}
    return {k: v for k, v in values.items() if ":" in v}


def check_code_names(cfg: Config, source: str, *, allow_code: bool | None = None,
                     typed: list[str] | tuple[str, ...] = ()) -> None:
    """Refuse a config read from ``source`` (a checkpoint or a run folder's config.yaml) that names code to import.

    A checkpoint loads with ``weights_only=True``, so opening it runs no code; its config must not undo that by
    naming a module that semiseg would import (``model.name: evil:build``, ``data.kind: torch.hub:load``).
    Registry names pass. A ``module:function`` value passes only when the user allows code for this command
    (``allow_code``: ``--allow-code``; None reads ``SEMISEG_ALLOW_CODE``) or typed that key themselves in
    ``typed`` (``key=value`` overrides from the command line).
    """
    if allow_code is None:
        allow_code = allow_code_default()
    if allow_code:
        return
    typed_keys = {o.partition("=")[0].strip() for o in typed}
    found = {k: v for k, v in code_names(cfg).items()
             if not any(k == t or k.startswith(t + ".") for t in typed_keys)}
    if found:
        shown = ", ".join(f"{k}={v!r}" for k, v in found.items())
        raise UntrustedCodeError(
            f"{source} names code to import ({shown}); semiseg imports module:function names only from a recipe "
            "or key=value you pass yourself. If you trust this file and the modules it names, run the command again "
            f"with --allow-code (or {ALLOW_CODE_ENV}=1); otherwise set the key to a registry name, e.g. "
            "--data kind=folder for `semiseg eval`"
        )


def dump_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically, so a killed run never leaves half a file)."""
    from semiseg.atomic import atomic_write_text

    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, "# resolved semiseg config: every value this run used (defaults included)\n" + text)


__all__ = [
    "Config", "ModelConfig", "DataConfig", "LabeledConfig", "OptimConfig", "LossConfig", "MethodConfig",
    "TrainConfig", "EvalConfig", "ConfigError", "load_config", "dump_config", "config_from_dict",
    "config_to_dict", "dataclass_from_dict", "override_config", "apply_override", "validate",
    "CODE_KEYS", "ALLOW_CODE_ENV", "UntrustedCodeError", "allow_code_default", "code_names", "check_code_names",
]
