"""Is ``precision: auto``'s choice within 10% of the fastest mode at each recipe's own crop?

``auto`` times the four modes (fp32 / fp32 + channels_last / bf16 / bf16 + channels_last) on a copy of the model at
the crop scaled down to keep a step short (semiseg/runtime.py ``measure_modes``). This benchmark checks that the
shortcut picks well: per recipe it makes auto's choice exactly as a run does (a fresh cache, so it is measured),
then times all four modes at the recipe's full crop (no scaling, modes interleaved, fastest of the rounds) and
prints the chosen mode's time over the fastest and plain fp32's time over the chosen.

    python benchmarks/auto_choice.py --threads 1
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/auto_choice.py --threads 1   # a CPU without native bf16

Batch: the recipe's per-step batch capped by ``--max-batch`` (2 by default; the big recipes' 10 images at 321x321
take minutes per step on one thread). Both the choice and the full-crop timing use the same batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import NUM_CLASSES  # noqa: E402  (class counts per dataset kind, from the datasets' class lists)

DEFAULT_RECIPES = [
    "synthetic/deeplabv3plus_mobilenetv2",
    "synthetic/unet_small",
    "camvid/deeplabv3plus_mobilenetv2_scratch",
    "camvid/fcn_resnet18_scratch",
    "voc/deeplabv3plus_mobilenetv2",
    "voc/deeplabv2_resnet101",
    "voc/fcn8s_vgg16",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, help="shipped recipe names or files")
    p.add_argument("--tasks", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--max-batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds at the full crop (each mode keeps its fastest)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # a private cache: auto measures here instead of reusing an earlier choice
    os.environ["SEMISEG_CACHE"] = tempfile.mkdtemp(prefix="semiseg-auto-choice-")

    from semiseg.config import load_config
    from semiseg.engine.build import build_model, precision_choice
    from semiseg.recipes import find_recipe
    from semiseg.runtime import MODES, Workload, machine_fingerprint, measure_modes, mode_name

    fp = machine_fingerprint()
    print(f"# {fp['cpu']}, flags {' '.join(fp['flags']) or '-'}, torch {fp['torch']}, {args.threads} thread(s)"
          + (f", oneDNN capped at {fp['onednn_max_cpu_isa']}" if "onednn_max_cpu_isa" in fp else ""))
    print("| recipe | task | input | auto's choice (measured at) | fp32 | fp32 + CL | bf16 | bf16 + CL | chosen / fastest | fp32 / chosen |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = 1.0
    for recipe in args.recipes:
        cfg = load_config(find_recipe(recipe), [])
        num_classes = NUM_CLASSES[cfg.data.kind]  # the datasets need not be here
        model = build_model(cfg, num_classes, pretrained=False)  # weights do not change the time
        per_step = cfg.data.batch_size // max(1, cfg.train.accum_steps)
        for task in args.tasks:
            batch = max(1, min(per_step if task == "train" else cfg.eval.batch_size, args.max_batch))
            if task == "train":
                batch = max(batch, getattr(model, "min_train_batch", 1))
            choice = precision_choice(cfg, model, num_classes, torch.device("cpu"), task=task, batch=batch)
            chosen = (choice.precision, choice.channels_last)
            size = tuple(int(v) for v in cfg.data.crop_size)
            key = f"{cfg.model.name} full crop"
            work = Workload(model, key, task, size, batch, num_classes)
            times = measure_modes(work, list(MODES), rounds=args.rounds, step_seconds=1e9, budget=1e9, wall_budget=1e9)
            fastest = min(times.values())
            ratio = times[chosen] / fastest
            worst = max(worst, ratio)
            probe = choice.reason.split(" ms per ", 1)[-1].split(";")[0] if "ms per" in choice.reason else choice.reason
            cells = " | ".join(("**%.0f**" if m == chosen else "%.0f") % (1000 * times[m]) for m in MODES)
            print(f"| {recipe} | {task} | {batch}x{size[0]}x{size[1]} | {mode_name(*chosen)} ({probe}) | {cells} | "
                  f"{ratio:.2f} | {times[('fp32', False)] / times[chosen]:.2f} |", flush=True)
    print(f"# worst chosen / fastest: {worst:.2f} (target <= 1.10); times are ms per step at the full crop "
          f"({'CPU time' if args.threads == 1 else 'wall time'}), fastest of {args.rounds} interleaved rounds")
    return 0 if worst <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
