"""semiseg's default training step and eval forward side by side with the peers' own model code, on the CPU.

    python benchmarks/peers_speed.py --advsemiseg /path/AdvSemiSeg --pytorch-fcn /path/pytorch-fcn \\
        --bubbliiiing /path/deeplabv3-plus-pytorch --threads 1 --rounds 3 --out bench_out/peers_speed.json

The peers' code is not part of semiseg: check the three repositories out anywhere and pass their paths
(hfslyc/AdvSemiSeg, wkentaro/pytorch-fcn, bubbliiiing/deeplabv3-plus-pytorch). Any subset may be given.

Per peer, at its own crop and batch size, with the same thread count and the same random batch on both sides:

* **peer**: its own model class in fp32 eager, contiguous (NCHW), as its training script runs it: ``model.train()``,
  its loss function, ``torch.optim.SGD`` with its parameter groups, momentum and weight decay
  (``zero_grad``, forward, loss, ``backward``, ``step``). Its eval forward: ``model.eval()``, ``torch.no_grad()``.
* **semiseg**: the matching recipe as its users run it, through the engine's own step (benchmarks/train_speed.py's
  ``Setup``: methods/supervised.py + ``TrainContext.apply_updates``), with the recipe's defaults
  (``precision: auto``, ``channels_last: auto``, ``optim.fused: auto``). Its eval forward: the inference path
  (semiseg.inference.infer) in the precision and layout ``precision: auto`` chooses for inference.

Steps are interleaved in one process: each round times peer train, semiseg train, peer eval, semiseg eval once;
per contender the median and minimum over rounds are kept (the first call of each is an untimed warm-up).
``--clock cpu`` (with ``--threads 1``) times by the process's CPU time instead of the wall clock, for a box that
other work keeps busy.
Both sides start from their own random initialisation (no downloads); the architecture is checked by the number of
weights (parameters plus frozen BatchNorm affine tensors; not the running statistics), printed for both.

The peers are old code; what this script patches at import time, without changing their files:

* pytorch-fcn: ``torchfcn/__init__.py`` imports its trainer and datasets (``fcn``, ``pytz``, ``skimage``,
  ``distutils``); only ``torchfcn.models`` is imported, with a stub ``fcn`` module (only used there to
  download weights). Its loss ``cross_entropy2d`` (torchfcn/trainer.py) and ``get_parameters``
  (examples/voc/train_fcn32s.py) are read from their source files and executed alone, with ``LooseVersion``
  from packaging-free code (a tuple comparison; the function only asks whether torch < 0.3).
* AdvSemiSeg: ``model/deeplab.py`` and ``utils/loss.py`` are loaded from their files (they import as they are);
  ``F.cross_entropy(size_average=...)`` still works (a deprecation warning, silenced).
* bubbliiiing: its folder goes on ``sys.path`` for ``nets.deeplabv3_plus`` and ``nets.deeplabv3_training``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import NUM_CLASSES, Setup  # noqa: E402

from semiseg.engine.build import precision_choice  # noqa: E402
from semiseg.runtime import cpu_name  # noqa: E402
from semiseg.inference import infer  # noqa: E402

NUM_VOC = NUM_CLASSES["voc"]


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _function_from_source(path: Path, name: str, namespace: dict) -> Callable:
    """One top-level function of a file, executed alone in ``namespace`` (the file's other imports are not run)."""
    tree = ast.parse(path.read_text(), str(path))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def weight_count(model: nn.Module) -> int:
    """Parameters plus tensors that are parameters elsewhere (frozen BatchNorm weight/bias), not running statistics."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(t.numel() for k, t in model.state_dict().items() if not k.endswith(skip))


# ---------------------------------------------------------------------------------------------------
# the peers, each as its training script runs it


class PeerStep:
    """A peer's model with its own loss and optimizer: ``train_step()`` and ``eval_forward(x1)``."""

    name: str
    model: nn.Module

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.images, self.labels = batch["image"], batch["mask"]
        self.eval_model = copy.deepcopy(self.model).eval()

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    def train_step(self) -> float:
        self.model.train()
        self.optimizer.zero_grad()
        loss = self.loss(self.forward(self.model, self.images))
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(self.eval_model, x)


class AdvSemiSegPeer(PeerStep):
    """hfslyc/AdvSemiSeg train.py, the segmentation part (its baseline without the discriminator):
    ``pred = interp(model(images))`` (bilinear, align_corners=True), ``CrossEntropy2d``, SGD lr 2.5e-4 (10x on
    the classifier) momentum 0.9 weight decay 5e-4 over ``model.optim_parameters``."""

    name = "AdvSemiSeg Res_Deeplab"
    recipe = "configs/voc/deeplabv2_resnet101.yaml"
    batch_size, crop = 4, (321, 321)

    def __init__(self, root: Path, batch):
        deeplab = _load_file("advsemiseg_deeplab", root / "model" / "deeplab.py")
        loss = _load_file("advsemiseg_loss", root / "utils" / "loss.py")
        torch.manual_seed(0)
        self.model = deeplab.Res_Deeplab(num_classes=NUM_VOC)
        self.criterion = loss.CrossEntropy2d()
        groups = self.model.optim_parameters(types.SimpleNamespace(learning_rate=2.5e-4))
        # optim_parameters yields a parameter once per enclosing module (layer1, its blocks, their convs): old
        # PyTorch accepted the duplicates (updating such a parameter several times per step). Each is kept once
        # here, so the peer is not slowed by repeated updates.
        for group in groups:
            group["params"] = list({id(p): p for p in group["params"]}.values())
        self.optimizer = torch.optim.SGD(groups, lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
        super().__init__(batch)

    def forward(self, model, x):
        return F.interpolate(model(x), size=x.shape[-2:], mode="bilinear", align_corners=True)

    def loss(self, out):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # size_average is deprecated
            return self.criterion(out, self.labels)


class PytorchFCNPeer(PeerStep):
    """wkentaro/pytorch-fcn examples/voc/train_fcn8s.py + torchfcn.Trainer: ``cross_entropy2d`` summed over
    pixels / batch, SGD lr 1e-14 (2x for biases, no weight decay on them) momentum 0.99 weight decay 5e-4."""

    name = "pytorch-fcn FCN8s"
    recipe = "configs/voc/fcn8s_vgg16.yaml"
    batch_size, crop = 1, (500, 500)

    def __init__(self, root: Path, batch):
        fcn_stub = types.ModuleType("fcn")  # only used by torchfcn to download weights
        fcn_stub.data = types.SimpleNamespace(cached_download=None)
        sys.modules.setdefault("fcn", fcn_stub)
        package = types.ModuleType("torchfcn")  # not torchfcn/__init__.py: it imports the trainer's dependencies
        package.__path__ = [str(root / "torchfcn")]
        sys.modules["torchfcn"] = package
        models = importlib.import_module("torchfcn.models")
        package.models = models

        def loose_version(v: str) -> tuple:
            return tuple(int(p) for p in v.split("+")[0].split(".")[:2])

        ns = {"torch": torch, "F": F, "LooseVersion": loose_version, "torchfcn": package}
        cross_entropy2d = _function_from_source(root / "torchfcn" / "trainer.py", "cross_entropy2d", ns)
        get_parameters = _function_from_source(root / "examples" / "voc" / "train_fcn32s.py", "get_parameters", ns)
        torch.manual_seed(0)
        self.model = models.FCN8s(n_class=NUM_VOC)
        self.optimizer = torch.optim.SGD(
            [{"params": get_parameters(self.model, bias=False)},
             {"params": get_parameters(self.model, bias=True), "lr": 1e-14 * 2, "weight_decay": 0}],
            lr=1e-14, momentum=0.99, weight_decay=5e-4)
        self.cross_entropy2d = cross_entropy2d
        super().__init__(batch)

    def loss(self, out):
        # torchfcn.Trainer.train_epoch: size_average=False, then divided by the batch size
        return self.cross_entropy2d(out, self.labels, size_average=False) / len(self.images)


class BubbliiiingPeer(PeerStep):
    """bubbliiiing/deeplabv3-plus-pytorch train.py (unfrozen phase: batch 4) + utils_fit.fit_one_epoch: ``CE_Loss``
    with unit class weights, SGD lr 7e-3 momentum 0.9 nesterov weight decay 1e-4 over all parameters,
    MobileNetV2 backbone, output stride 16."""

    name = "bubbliiiing DeepLabV3+ MobileNetV2"
    recipe = "configs/voc/deeplabv3plus_mobilenetv2.yaml"
    batch_size, crop = 4, (512, 512)

    def __init__(self, root: Path, batch):
        sys.path.insert(0, str(root))
        deeplab = importlib.import_module("nets.deeplabv3_plus")
        training = importlib.import_module("nets.deeplabv3_training")
        torch.manual_seed(0)
        self.model = deeplab.DeepLab(num_classes=NUM_VOC, backbone="mobilenet", pretrained=False, downsample_factor=16)
        self.optimizer = torch.optim.SGD(self.model.parameters(), 7e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
        self.ce_loss = training.CE_Loss
        self.cls_weights = torch.ones(NUM_VOC)
        super().__init__(batch)

    def loss(self, out):
        return self.ce_loss(out, self.labels, self.cls_weights, num_classes=NUM_VOC)


PEERS = {"advsemiseg": AdvSemiSegPeer, "pytorch_fcn": PytorchFCNPeer, "bubbliiiing": BubbliiiingPeer}


# ---------------------------------------------------------------------------------------------------
# semiseg's side


class SemisegSide:
    """The recipe's engine step at the peer's crop and batch, and its inference path (``precision: auto``)."""

    def __init__(self, recipe: str, batch_size: int, crop: tuple[int, int], device: torch.device,
                 extra: list[str] | tuple[str, ...] = ()):
        overrides = [f"data.batch_size={batch_size}", f"data.crop_size=[{crop[0]},{crop[1]}]", *extra]
        self.setup = Setup(recipe, "fast", device, overrides=overrides)
        cfg = self.setup.cfg
        num_classes = NUM_CLASSES[cfg.data.kind]
        self.eval_model = copy.deepcopy(self.setup.model).float().to(memory_format=torch.contiguous_format).eval()
        choice = precision_choice(cfg, self.eval_model, num_classes, device, task="infer", batch=1)
        print(f"{recipe} inference: {choice.line}", flush=True)
        self.eval_precision, self.eval_channels_last = choice.precision, choice.channels_last
        if self.eval_channels_last:
            self.eval_model.to(memory_format=torch.channels_last)
        self.batch = self.setup.batch

    @property
    def train_mode(self) -> str:
        return self.setup.description

    @property
    def eval_mode(self) -> str:
        return self.eval_precision + (" + channels_last" if self.eval_channels_last else "")

    def train_step(self) -> float:
        return self.setup.step()

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return infer(self.eval_model, x, precision=self.eval_precision, channels_last=self.eval_channels_last)


# --clock: the wall clock, or the process's CPU time, which with one torch thread is the time the step itself
# used, so a box loaded by other work still gives usable numbers (as `auto`'s probe does).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(fn: Callable[[], object], clock: Callable[[], float]) -> float:
    start = clock()
    fn()
    return clock() - start


def compare(key: str, root: Path, rounds: int, device: torch.device, extra: list[str] | tuple[str, ...] = (),
            clock: Callable[[], float] = time.perf_counter) -> dict:
    cls = PEERS[key]
    ours = SemisegSide(cls.recipe, cls.batch_size, cls.crop, device, extra)
    peer = cls(root, ours.batch)  # the same random batch (and labels) on both sides
    one = ours.batch["image"][:1].clone()
    counts = {"peer": weight_count(peer.model), "semiseg": weight_count(ours.setup.model)}
    print(f"{cls.name}: weights peer {counts['peer']:,} semiseg {counts['semiseg']:,}", flush=True)
    contenders = {
        "peer_train": peer.train_step, "semiseg_train": ours.train_step,
        "peer_eval": lambda: peer.eval_forward(one), "semiseg_eval": lambda: ours.eval_forward(one),
    }
    shapes = {"peer": tuple(peer.eval_forward(one).shape), "semiseg": tuple(ours.eval_forward(one).shape)}
    for fn in contenders.values():  # warm-up (oneDNN builds its primitives on the first call)
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):
        for name, fn in contenders.items():
            times[name].append(_timed(fn, clock))
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    row = {
        "peer": cls.name, "recipe": cls.recipe, "overrides": list(extra), "model": ours.setup.cfg.model.name, "batch": cls.batch_size,
        "crop": list(cls.crop), "weights": counts, "logit_shapes": shapes,
        "semiseg_train_mode": ours.train_mode, "semiseg_eval_mode": ours.eval_mode,
        "median_s": med, "min_s": low, "times_s": times,
        "train_speedup_median": med["peer_train"] / med["semiseg_train"],
        "train_speedup_min": low["peer_train"] / low["semiseg_train"],
        "eval_speedup_median": med["peer_eval"] / med["semiseg_eval"],
        "eval_speedup_min": low["peer_eval"] / low["semiseg_eval"],
    }
    print(json.dumps({k: v for k, v in row.items() if k != "times_s"}, default=str), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--advsemiseg", type=Path, help="checkout of hfslyc/AdvSemiSeg")
    parser.add_argument("--pytorch-fcn", type=Path, help="checkout of wkentaro/pytorch-fcn")
    parser.add_argument("--bubbliiiing", type=Path, help="checkout of bubbliiiing/deeplabv3-plus-pytorch")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up call of each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for semiseg's side, e.g. model.options.legacy_aspp=true")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall: perf_counter (a quiet box); cpu: process CPU time (needs --threads 1; a busy box)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1: with more threads the process's CPU time is not the step's time")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    roots = {"advsemiseg": args.advsemiseg, "pytorch_fcn": args.pytorch_fcn, "bubbliiiing": args.bubbliiiing}
    if not any(roots.values()):
        parser.error("give at least one of --advsemiseg, --pytorch-fcn, --bubbliiiing")
    rows = []
    for key, root in roots.items():
        if root is not None:
            rows.append(compare(key, root.resolve(), args.rounds, device, args.set, CLOCKS[args.clock]))
    print(f"\n{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); median (min) over "
          f"{args.rounds} interleaved rounds, {args.clock} time")
    print("| peer model | batch x crop | weights peer / semiseg | train s/step peer | semiseg | **train ratio** | "
          "eval s/image peer | semiseg | **eval ratio** | semiseg mode train / eval |")
    print("|---" * 10 + "|")
    for r in rows:
        m, lo = r["median_s"], r["min_s"]
        print(f"| {r['peer']} | {r['batch']} x {r['crop'][0]}x{r['crop'][1]} | {r['weights']['peer']:,} / "
              f"{r['weights']['semiseg']:,} | {m['peer_train']:.2f} ({lo['peer_train']:.2f}) | "
              f"{m['semiseg_train']:.2f} ({lo['semiseg_train']:.2f}) | **{r['train_speedup_median']:.2f}x** | "
              f"{m['peer_eval']:.3f} ({lo['peer_eval']:.3f}) | {m['semiseg_eval']:.3f} ({lo['semiseg_eval']:.3f}) | "
              f"**{r['eval_speedup_median']:.2f}x** | {r['semiseg_train_mode']} / {r['semiseg_eval_mode']} |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"cpu": cpu_name(), "platform": platform.machine(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
                       "rounds": args.rounds, "clock": args.clock, "rows": rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
