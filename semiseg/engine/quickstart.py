"""``semiseg quickstart``: train a small model on the built-in synthetic shapes, in a few minutes on a CPU.

Trains DeepLabV3+ (MobileNetV2 backbone, from scratch: no download) on 128x128 procedural scenes of 7 shape
classes (random 96px crops), evaluates it on 200 whole held-out scenes, prints the per-class IoU table and
leaves a run folder:

    runs/quickstart/config.yaml      the resolved config: `semiseg train --config` accepts it as a recipe
    runs/quickstart/split.txt        which training samples were used (all labeled here)
    runs/quickstart/best.pt, last.pt checkpoints (`semiseg eval runs/quickstart`, `semiseg predict ...`)
    runs/quickstart/metrics.jsonl    loss, learning rate, speed and evaluations over time (tb/: TensorBoard)
    runs/quickstart/predictions/     a few validation scenes: image | ground truth | prediction

An existing runs/quickstart is kept: the next run goes to runs/quickstart-2 and so on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from semiseg.data.synthetic import DEFAULT_LENGTH

# Chosen by measurement on the 2-core dev box (see the README): a few minutes of training with bf16 autocast.
# From scratch, AdamW with one learning rate for all layers converges much faster than SGD: at 128px,
# val mIoU 0.34 after 500 iterations vs 0.29 for SGD lr 0.05, and 0.19 after 400 for the papers' SGD with a
# 10x head (which assumes a pretrained backbone). AdamW lr 4e-3 gave the same as 2e-3.
QUICKSTART = {
    "name": "quickstart",
    "model.name": "deeplabv3plus_mobilenetv2",
    "model.pretrained_backbone": False,
    "data.kind": "synthetic",
    "data.options": {"size": 128},  # 1000 training and 200 validation scenes (the dataset's defaults)
    "data.crop_size": [96, 96],  # 96px crops of the 128px scenes: same mIoU per CPU-second as 128, more steps
    "data.scale_range": [0.75, 1.25],
    "data.batch_size": 8,
    "data.num_workers": 0,  # rendering is a small part of a step; a worker would compete for the 2 cores
    "optim.name": "adamw",
    "optim.lr": 0.002,
    "optim.weight_decay": 1e-4,
    "optim.lr_mult": {"head": 1.0},
    "optim.warmup_iters": 50,
    "loss.name": "ce",
    "train.iterations": 700,
    "train.eval_interval": 350,
    "train.checkpoint_interval": 100,
    "train.log_interval": 20,
    "eval.batch_size": 25,
}
FAST_ITERATIONS = 20  # `--fast`: a smoke test of the whole pipeline (CI), small images, not a model


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="change the quickstart config, e.g. train.precision=fp32")
    parser.add_argument("--run-dir", default=os.path.join("runs", "quickstart"), help="where to write (default: runs/quickstart)")
    parser.add_argument("--iters", type=int, help=f"training iterations (default {QUICKSTART['train.iterations']})")
    parser.add_argument("--fast", action="store_true", help=f"{FAST_ITERATIONS} iterations on less data: checks the pipeline, not the model")
    parser.add_argument("--predictions", type=int, default=6, help="validation scenes to render into predictions/")
    parser.add_argument("--no-progress", action="store_true")


def quickstart_config(overrides=(), *, iterations: int | None = None, fast: bool = False):
    from semiseg.config import config_from_dict, override_config

    values = dict(QUICKSTART)
    if fast:
        values.update({"train.iterations": FAST_ITERATIONS, "train.eval_interval": 0, "train.checkpoint_interval": 10,
                       "optim.warmup_iters": 5, "data.options": {"length": 32, "size": 64}, "data.crop_size": [64, 64],
                       "data.val_options": {"length": 16}, "data.batch_size": 4, "eval.batch_size": 16})
    if iterations is not None:
        values["train.iterations"] = iterations
        values["train.eval_interval"] = min(values["train.eval_interval"], iterations)
    nested: dict = {}
    for dotted, value in values.items():
        *sections, key = dotted.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return override_config(config_from_dict(nested), list(overrides))


def write_predictions(trainer, count: int) -> str:
    """Palette masks and image | truth | prediction panels for the first ``count`` validation scenes."""
    import numpy as np
    import torch
    from PIL import Image

    from semiseg.data.transforms import denormalize
    from semiseg.engine.evaluate import predict_logits
    from semiseg.engine.predict import palette_image, save_mask_png

    out = os.path.join(trainer.run_dir, "predictions")
    os.makedirs(out, exist_ok=True)
    palette = trainer.dataset_info.palette
    norm = trainer.dataset_info.normalization
    model = trainer.model
    model.eval()
    for i in range(min(count, len(trainer.val_set))):
        sample = trainer.val_set[i]
        x = sample["image"].unsqueeze(0).to(trainer.device)
        pred = predict_logits(model, x, precision=trainer.precision, channels_last=trainer.channels_last)
        pred = pred.argmax(1)[0].to("cpu", torch.uint8).numpy()
        name = sample["name"]
        save_mask_png(pred, palette, os.path.join(out, f"{name}_pred.png"))
        image = denormalize(sample["image"], norm).permute(1, 2, 0).numpy()
        truth = palette_image(sample["mask"].clamp(max=255).numpy().astype(np.uint8), palette).convert("RGB")
        guess = palette_image(pred, palette).convert("RGB")
        zoom = max(1, 256 // image.shape[0])  # small scenes are shown enlarged (nearest: crisp label edges)
        h, w = image.shape[0] * zoom, image.shape[1] * zoom
        panel = Image.new("RGB", (3 * w + 8, h), (255, 255, 255))
        for k, part in enumerate((Image.fromarray(image), truth, guess)):
            panel.paste(part.resize((w, h), Image.NEAREST), (k * (w + 4), 0))
        panel.save(os.path.join(out, f"{name}_panel.png"))
    return out


def run(args: argparse.Namespace) -> int:
    from semiseg.config import ConfigError
    from semiseg.data import DataError
    from semiseg.engine import distributed as dist
    from semiseg.engine.run_dir import RunDirError, unique_run_dir
    from semiseg.engine.trainer import Trainer, TrainingDiverged
    from semiseg.models.pretrained import PretrainedWeightsError

    start = time.perf_counter()
    try:
        cfg = quickstart_config(args.overrides, iterations=args.iters, fast=args.fast)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = unique_run_dir(args.run_dir)
    cfg.name = os.path.basename(run_dir)
    print(f"semiseg quickstart: {cfg.model.name} from scratch on synthetic shapes "
          f"({cfg.data.options.get('length', DEFAULT_LENGTH['train'])} training scenes, {cfg.data.crop_size[0]}px crops), "
          f"{cfg.train.iterations} iterations of batch {cfg.data.batch_size} -> {run_dir}")
    try:
        trainer = Trainer(cfg, run_dir, progress=not args.no_progress)  # prints its precision choice
        result = trainer.fit()
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, DataError, RunDirError, PretrainedWeightsError) as e:  # e.g. a bad key=value given to it
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.destroy()
    print()
    print(trainer.last_cm.table(trainer.dataset_info.classes))
    write_predictions(trainer, args.predictions)
    best = result["best"]
    minutes = (time.perf_counter() - start) / 60
    print(f"\nfinished in {minutes:.1f} min: val mIoU {100 * result['metrics']['miou']:.2f} "
          f"(best {100 * best['miou']:.2f} at iteration {best['iteration']})")
    print(f"run folder {run_dir}:\n"
          f"  config.yaml       resolved config (reusable: semiseg train --config {run_dir}/config.yaml name=mine)\n"
          f"  split.txt         training samples used\n"
          f"  best.pt, last.pt  checkpoints: semiseg eval {run_dir} ; semiseg predict {run_dir} IMAGES/ OUT/\n"
          f"  metrics.jsonl     training loss, lr, speed and evaluations (TensorBoard: tensorboard --logdir {run_dir})\n"
          f"  predictions/      {args.predictions} validation scenes: image | ground truth | prediction\n"
          f"An HTML page with the training curves, per-class IoU and samples: semiseg report {run_dir}")
    return 0
