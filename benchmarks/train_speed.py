"""Training throughput and peak memory of each model at its recipe's crop and batch size.

Two modes, measured side by side in one process (steps interleaved, so background load hits both alike):
  fp32  plain eager float32, contiguous (NCHW) tensors;
  fast  the engine's default for this device (precision=auto, channels_last=auto: bf16 autocast +
        channels_last on a CPU with native bf16).
Both start from the same weights and the same batch; the first step's losses are compared.
Peak memory is measured in a fresh subprocess per (model, mode): the process's peak RSS after one training
step, minus its RSS just before that step (so the weights and the Python runtime are not counted).

    python benchmarks/train_speed.py --repeats 3 --out bench_out/train_speed.json
    python benchmarks/train_speed.py configs/voc/fcn_resnet18.yaml --repeats 5

The step is the supervised method's: forward under autocast, loss in float32, backward, optimizer step,
with the recipe's optimizer (parameter groups, momentum, weight decay) and loss.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from semiseg.config import load_config
from semiseg.data.palettes import CAMVID_CLASSES, VOC_CLASSES
from semiseg.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from semiseg.engine.build import build_criterion, build_model, build_optimizer
from semiseg.engine.precision import autocast, resolve_channels_last, resolve_device, resolve_precision

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


class Setup:
    """Model, optimizer, loss and one random batch for a recipe in one mode."""

    def __init__(self, recipe: str, mode: str, device: torch.device, model: torch.nn.Module | None = None):
        cfg = load_config(str(ROOT / recipe), [])
        self.cfg = cfg
        num_classes = NUM_CLASSES[cfg.data.kind]
        if model is None:
            torch.manual_seed(0)
            model = build_model(cfg, num_classes, pretrained=False)
        self.model = model.to(device).train()
        if mode == "fp32":
            self.precision, self.channels_last = "fp32", False
        else:
            self.precision = resolve_precision("auto", device)
            self.channels_last = resolve_channels_last("auto", device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg, self.model)
        self.criterion = build_criterion(cfg, num_classes, 255).to(device)
        g = torch.Generator().manual_seed(1)
        h, w = cfg.data.crop_size
        b = cfg.data.batch_size
        self.images = torch.randn(b, 3, h, w, generator=g).to(device)
        self.masks = torch.randint(0, num_classes, (b, h, w), generator=g).to(device)
        if self.channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.device = device

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.precision, self.device):
            logits = self.model(self.images)
        loss = self.criterion(logits.float(), self.masks)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_memory(recipe: str, mode: str, device: torch.device) -> dict:
    """In this (fresh) process: RSS before a step, peak RSS after it."""
    setup = Setup(recipe, mode, device)
    before = rss_mib()
    setup.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {"rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1), "step_peak_mib": round(peak - before, 1)}
    if device.type == "cuda":
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def measure_speed(recipe: str, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    fp32 = Setup(recipe, "fp32", device)
    fast = Setup(recipe, "fast", device, model=copy.deepcopy(fp32.model))
    # Both start from identical weights and see the same batch every step, so their losses must stay
    # together step after step (the first step alone can be trivial: FCN score layers start at zero).
    losses = {"fp32": [fp32.step()], "fast": [fast.step()]}
    times = {"fp32": [], "fast": []}
    for _ in range(repeats):  # interleaved, so a load spike hits both modes
        for name, setup in (("fp32", fp32), ("fast", fast)):
            t0 = time.perf_counter()
            losses[name].append(setup.step())
            times[name].append(time.perf_counter() - t0)
    batch = fp32.cfg.data.batch_size
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "recipe": recipe,
        "model": fp32.cfg.model.name,
        "crop": fp32.cfg.data.crop_size,
        "batch": batch,
        "fast_mode": f"{fast.precision}{' + channels_last' if fast.channels_last else ''}",
        "fp32_img_s": round(batch / med["fp32"], 3),
        "fast_img_s": round(batch / med["fast"], 3),
        "speedup": round(med["fp32"] / med["fast"], 2),
        "step_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "losses": {k: [round(v, 5) for v in vals] for k, vals in losses.items()},
        # worst relative gap between the two modes' losses over the steps
        "loss_rel_diff": round(max(abs(a - b) / abs(a) for a, b in zip(losses["fp32"], losses["fast"])), 5),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=DEFAULT_RECIPES)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per mode (after one warm-up step)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-modes", default="fp32,fast", help="modes whose peak memory is measured (one subprocess each)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice, all cores)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--_memory", nargs=2, metavar=("RECIPE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args._memory:  # child process: one memory measurement, printed as JSON
        print(json.dumps(measure_memory(*args._memory, device)))
        return 0

    results = []
    for recipe in args.recipes:
        row = measure_speed(recipe, args.repeats, device)
        if not args.no_memory:
            for mode in args.memory_modes.split(","):
                threads = ["--threads", str(args.threads)] if args.threads else []
                proc = subprocess.run([sys.executable, __file__, "--device", args.device, *threads, "--_memory", recipe, mode],
                                      capture_output=True, text=True, check=True)
                row[f"memory_{mode}"] = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print("| model | crop | batch | fp32 img/s | fast img/s | speedup | fast mode | loss rel. diff | peak MiB fp32 / fast |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mem = ""
        mem = " / ".join(f"{r[f'memory_{m}']['step_peak_mib']:.0f}" if f"memory_{m}" in r else "-" for m in ("fp32", "fast"))
        print(f"| {r['model']} | {r['crop'][0]}x{r['crop'][1]} | {r['batch']} | {r['fp32_img_s']} | {r['fast_img_s']} | "
              f"{r['speedup']}x | {r['fast_mode']} | {r['loss_rel_diff']} | {mem} |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
