"""Training throughput and peak memory of each model at its recipe's crop and batch size.

Two modes, measured side by side in one process (steps interleaved, so background load hits both alike):
  fp32  plain eager float32, contiguous (NCHW) tensors, torch's default (unfused) optimizer loop;
  fast  the engine's default for this device (precision=auto, channels_last=auto, optim.fused=auto: the
        precision and layout semiseg/runtime.py measures fastest for the model, + the fused SGD kernel).
Both start from the same weights and the same batch; the first step's losses are compared.
Peak memory is measured in a fresh subprocess per (model, mode): the kernel's resident high-water mark (VmHWM,
reset just before the step) during one training step, minus the resident size just before that step (so the
weights and the Python runtime are not counted).

    python benchmarks/train_speed.py --repeats 3 --out bench_out/train_speed.json
    python benchmarks/train_speed.py configs/voc/fcn_resnet18.yaml --repeats 5
    python benchmarks/train_speed.py configs/voc/fcn_resnet18.yaml --threads 1 --profile 15   # where the time goes

The step is the engine's own: semiseg.engine.methods.supervised (forward under autocast, loss in float32,
backward) then TrainContext.apply_updates (the optimizer step the training loop runs), with the recipe's
optimizer (parameter groups, momentum, weight decay) and loss. Data loading is not included.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from semiseg.config import load_config
from semiseg.data.palettes import CAMVID_CLASSES, VOC_CLASSES
from semiseg.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from semiseg.engine.build import build_criterion, build_model, build_optimizer, precision_choice
from semiseg.engine.context import TrainContext
from semiseg.engine.methods.supervised import Supervised
from semiseg.runtime import make_grad_scaler, resolve_device

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = [
    "configs/voc/fcn32s_vgg16.yaml",
    "configs/voc/fcn16s_vgg16.yaml",
    "configs/voc/fcn8s_vgg16.yaml",
    "configs/voc/fcn_resnet18.yaml",
    "configs/voc/deeplabv2_resnet101.yaml",
    "configs/voc/deeplabv3plus_mobilenetv2.yaml",
]
# class counts of the recipes' dataset kinds, from the datasets' own class lists
NUM_CLASSES = {"voc": len(VOC_CLASSES), "voc_aug": len(VOC_CLASSES), "camvid": len(CAMVID_CLASSES),
               "synthetic": len(SYNTHETIC_CLASSES)}


# "fp32": what a plain PyTorch loop does; "fast": the engine's defaults for the device (the recipe as written).
# Extra modes split the gain: "bf16" is autocast alone, "bf16_cl" adds channels_last, "bf16_fused" adds the fused
# optimizer (NCHW); "compiled" is the fast default plus torch.compile.
MODE_OVERRIDES = {
    "fp32": ["train.precision=fp32", "train.channels_last=false", "optim.fused=false"],
    "fast": [],
    "bf16": ["train.precision=bf16", "train.channels_last=false", "optim.fused=false"],
    "bf16_cl": ["train.precision=bf16", "train.channels_last=true", "optim.fused=false"],
    "bf16_fused": ["train.precision=bf16", "train.channels_last=false", "optim.fused=true"],
    "compiled": ["train.compile=true"],
}


class Setup:
    """The engine's real training step (supervised method + TrainContext.apply_updates) for a recipe in one
    mode, on one fixed random batch at the recipe's crop and batch size (``overrides``: dotted config changes,
    e.g. ``data.batch_size=4``, applied after the mode's)."""

    def __init__(self, recipe: str, mode: str, device: torch.device, model: torch.nn.Module | None = None,
                 overrides: list[str] | tuple[str, ...] = ()):
        cfg = load_config(str(ROOT / recipe), [*MODE_OVERRIDES[mode], *overrides])
        self.cfg = cfg
        num_classes = NUM_CLASSES[cfg.data.kind]
        if model is None:
            torch.manual_seed(0)
            model = build_model(cfg, num_classes, pretrained=False)
        # "fast" (precision/channels_last auto): the engine's measured choice for this model (cached per machine)
        choice = precision_choice(cfg, model, num_classes, device, task="train", batch=min(2, cfg.data.batch_size))
        if "auto" in (cfg.train.precision, cfg.train.channels_last):
            print(f"{recipe} {mode}: {choice.line}", flush=True)
        self.precision, self.channels_last = choice.precision, choice.channels_last
        model = model.to(device).train()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = build_optimizer(cfg, model)
        self.fused = bool(self.optimizer.defaults.get("fused"))
        h, w = cfg.data.crop_size
        b = cfg.data.batch_size
        self.ctx = TrainContext(
            cfg=cfg, model=model, raw_model=model, criterion=build_criterion(cfg, num_classes, 255).to(device),
            device=device, precision=self.precision, channels_last=self.channels_last,
            scaler=make_grad_scaler(self.precision, device), rank=0, world_size=1, per_rank_batch=b,
            num_classes=num_classes, ignore_index=255, normalization="imagenet", labeled_dataset=None,
            unlabeled_dataset=None)
        self.ctx.add_optimizer("model", self.optimizer, scheduler=None)  # constant lr: the schedule costs nothing
        if cfg.train.compile:
            self.ctx.model = torch.compile(model)  # as the loop does with train.compile=true
        self.method = Supervised()
        self.method.setup(self.ctx)
        g = torch.Generator().manual_seed(1)
        self.batch = {"image": torch.randn(b, 3, h, w, generator=g), "mask": torch.randint(0, num_classes, (b, h, w), generator=g)}
        self.device = device

    @property
    def description(self) -> str:
        return (f"{self.precision}{' + channels_last' if self.channels_last else ''}"
                f"{' + fused optimizer' if self.fused else ''}{' + compile' if self.cfg.train.compile else ''}")

    def step(self) -> float:
        losses = self.method.training_step(self.batch, None, 0)
        self.ctx.apply_updates()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return float(losses["loss"])


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_memory(recipe: str, mode: str, device: torch.device) -> dict:
    """In this (fresh) process: resident memory just before one training step and its high-water mark during it.

    The high-water mark is the kernel's VmHWM, reset just before the step (writing 5 to /proc/self/clear_refs).
    Not getrusage's ru_maxrss: Linux carries that over from the parent across fork + exec, so a child of a big
    benchmark process would report the parent's peak.
    """
    setup = Setup(recipe, mode, device)
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    setup.step()
    peak = _status_mib("VmHWM")
    out = {"rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1), "step_peak_mib": round(peak - before, 1)}
    if device.type == "cuda":
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def measure_speed(recipe: str, repeats: int, device: torch.device, modes: list[str]) -> dict:
    torch.manual_seed(0)
    setups = {"fp32": Setup(recipe, "fp32", device)}
    for mode in modes:
        if mode != "fp32":
            setups[mode] = Setup(recipe, mode, device, model=copy.deepcopy(setups["fp32"].model))
    # All start from identical weights and see the same batch every step, so their losses must stay
    # together step after step (the first step alone can be trivial: FCN score layers start at zero).
    # The first step is also the warm-up (and the compilation, for "compiled").
    losses = {name: [setup.step()] for name, setup in setups.items()}
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(repeats):  # interleaved, so a load spike hits every mode alike
        for name, setup in setups.items():
            t0 = time.perf_counter()
            losses[name].append(setup.step())
            times[name].append(time.perf_counter() - t0)
    fp32 = setups["fp32"]
    batch = fp32.cfg.data.batch_size
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"recipe": recipe, "model": fp32.cfg.model.name, "crop": fp32.cfg.data.crop_size, "batch": batch}
    for name, setup in setups.items():
        row[f"{name}_mode"] = setup.description
        row[f"{name}_img_s"] = round(batch / med[name], 3)
        if name != "fp32":
            row[f"{name}_speedup"] = round(med["fp32"] / med[name], 2)
            # worst relative gap between this mode's losses and fp32's over the steps
            row[f"{name}_loss_rel_diff"] = round(
                max(abs(a - b) / abs(a) for a, b in zip(losses["fp32"], losses[name])), 5)
    row["step_s"] = {k: [round(t, 3) for t in v] for k, v in times.items()}
    row["losses"] = {k: [round(v, 5) for v in vals] for k, vals in losses.items()}
    return row


def profile_ops(recipe: str, device: torch.device, modes: list[str], top: int) -> list[dict]:
    """Self time per operator of one training step in each mode (torch.profiler), the ops that cost fp32 most
    first: where a speed-up comes from and where it does not."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    setups = {"fp32": Setup(recipe, "fp32", device)}
    for mode in modes:
        if mode != "fp32":
            setups[mode] = Setup(recipe, mode, device, model=copy.deepcopy(setups["fp32"].model))
    per_mode: dict[str, dict[str, float]] = {}
    for name, setup in setups.items():
        setup.step()  # warm-up outside the profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            setup.step()
        per_mode[name] = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}  # ms
    total = {name: sum(ops.values()) for name, ops in per_mode.items()}
    ops = sorted(per_mode["fp32"], key=per_mode["fp32"].get, reverse=True)[:top]
    print(f"\n{recipe}: self CPU time per op in one step, ms (total fp32 {total['fp32']:.0f} ms)")
    print(f"{'op':<44}" + "".join(f"{m:>12}" for m in setups) + "".join(f"{m + ' x':>12}" for m in setups if m != "fp32"))
    rows = []
    for op in ops:
        ms = {m: per_mode[m].get(op, 0.0) for m in setups}
        print(f"{op[:44]:<44}" + "".join(f"{ms[m]:>12.1f}" for m in setups)
              + "".join(f"{ms['fp32'] / ms[m]:>11.2f}x" if ms[m] else f"{'-':>12}" for m in setups if m != "fp32"))
        rows.append({"op": op, "ms": ms})
    # ops the fast modes add (casts, layout conversions) that fp32 does not run at all
    for m in setups:
        if m != "fp32":
            extra = sorted(((v, k) for k, v in per_mode[m].items() if k not in per_mode["fp32"]), reverse=True)[:5]
            print(f"only in {m}: " + ", ".join(f"{k} {v:.0f} ms" for v, k in extra))
    print(f"{'all ops':<44}" + "".join(f"{total[m]:>12.0f}" for m in setups))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=DEFAULT_RECIPES)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per mode (after one warm-up step)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--modes", default="fp32,fast", help=f"modes timed side by side, fp32 always included; of {sorted(MODE_OVERRIDES)}")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="skip the speed comparison")
    parser.add_argument("--memory-modes", default="fp32,fast", help="modes whose peak memory is measured (one subprocess each)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice, all cores)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="instead of timing: profile one step per mode and print the N costliest ops side by side")
    parser.add_argument("--_memory", nargs=2, metavar=("RECIPE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args._memory:  # child process: one memory measurement, printed as JSON
        print(json.dumps(measure_memory(*args._memory, device)))
        return 0

    if args.profile:
        profiles = {recipe: profile_ops(recipe, device, args.modes.split(","), args.profile) for recipe in args.recipes}
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump({"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "date": time.strftime("%Y-%m-%d"), "profiles": profiles}, f, indent=1)
        return 0

    results = []
    for recipe in args.recipes:
        if args.memory_only:
            cfg = load_config(str(ROOT / recipe), [])
            row = {"recipe": recipe, "model": cfg.model.name, "crop": cfg.data.crop_size, "batch": cfg.data.batch_size}
        else:
            row = measure_speed(recipe, args.repeats, device, args.modes.split(","))
        if not args.no_memory:
            for mode in args.memory_modes.split(","):
                threads = ["--threads", str(args.threads)] if args.threads else []
                proc = subprocess.run([sys.executable, __file__, "--device", args.device, *threads, "--_memory", recipe, mode],
                                      capture_output=True, text=True, check=True)
                row[f"memory_{mode}"] = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if args.memory_only:
        print("| model | crop | batch | " + " | ".join(f"peak step MiB {m}" for m in args.memory_modes.split(",")) + " |")
        for r in results:
            print(f"| {r['model']} | {r['crop'][0]}x{r['crop'][1]} | {r['batch']} | "
                  + " | ".join(f"{r[f'memory_{m}']['step_peak_mib']:.0f}" for m in args.memory_modes.split(",")) + " |")
    else:
        others = [m for m in args.modes.split(",") if m != "fp32"]
        print("| model | crop | batch | fp32 img/s | " + " | ".join(f"{m} img/s | {m} speedup | {m} loss rel. diff" for m in others)
              + " | peak MiB " + " / ".join(args.memory_modes.split(",")) + " |")
        print("|---" * (5 + 3 * len(others)) + "|")
        for r in results:
            mem = " / ".join(f"{r[f'memory_{m}']['step_peak_mib']:.0f}" if f"memory_{m}" in r else "-"
                             for m in args.memory_modes.split(","))
            cells = " | ".join(f"{r[f'{m}_img_s']} | {r[f'{m}_speedup']}x | {r[f'{m}_loss_rel_diff']}" for m in others)
            print(f"| {r['model']} | {r['crop'][0]}x{r['crop'][1]} | {r['batch']} | {r['fp32_img_s']} | {cells} | {mem} |")
        for m in ["fp32", *others]:
            print(f"{m}: {results[0][f'{m}_mode']}" if results else "")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
