"""``semiseg eval CHECKPOINT|RUN_DIR``: per-class IoU of a trained model on a dataset, printed and saved as JSON.

    semiseg eval runs/quickstart                      # best.pt on the run's own validation split
    semiseg eval runs/voc/last.pt --split train
    semiseg eval runs/voc --data kind=folder root=data/my_set options={classes: [bg, car]}
    semiseg eval runs/camvid --split test --group-by _       # also per video sequence (0001TP_008550 -> 0001TP)
    semiseg eval runs/camvid_semi --teacher                   # the EMA teacher of a consistency run
    semiseg eval runs/camvid --mode slide --crop 512 512 --stride 341 341 --scales 0.75 1 1.25 --flip
    semiseg eval AdvSemiSeg_VOC.pth --config configs/voc/deeplabv2_resnet101.yaml \
        --set data.root=/data/VOCdevkit model.options.legacy_aspp=true     # released weights + a recipe

The dataset defaults to the run's (``data`` in the checkpoint's config); ``--data key=value`` changes
fields of it. Precision and memory format default to the run's, so the numbers equal those the run logged
(this is the very code that evaluates during training: engine/evaluate.py). So does the inference
mode (the run's ``eval`` section), unless --mode/--crop/--stride/--scales/--flip change it.
With ``--config RECIPE`` the file is weights of any layout ``load_weights`` converts (the papers' released
checkpoints): the model, dataset and inference settings come from the recipe and ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from semiseg.commands.flags import (
    add_allow_code_argument, add_inference_arguments, add_runtime_arguments, add_teacher_argument, apply_threads, describe,
    inference_overrides,
)


def configure(parser: argparse.ArgumentParser) -> None:
    describe(parser, __doc__)
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR", help="a .pt file, or a run folder (best.pt, else last.pt)")
    parser.add_argument("--config", metavar="RECIPE",
                        help="evaluate CHECKPOINT as plain weights (e.g. a paper's release) in the model of this recipe "
                             "(a file, or a shipped recipe name such as voc/deeplabv2_resnet101)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="with --config: dotted recipe overrides, e.g. model.options.legacy_aspp=true")
    parser.add_argument("--data", nargs="+", default=[], metavar="KEY=VALUE",
                        help="dataset fields overriding the run's: kind=, root=, val_split=, options=...")
    parser.add_argument("--split", help="dataset split to evaluate (default: the run's data.val_split)")
    parser.add_argument("--group-by", metavar="SEP",
                        help="also score each group of images, a group being the name's part before the first SEP "
                             "(e.g. _ for CamVid's video sequences): which part of a test set a model wins or loses on")
    add_teacher_argument(parser)
    parser.add_argument("--out", help="JSON file to write (default: eval_<split>.json next to the checkpoint; "
                                      "eval_<split>_teacher.json with --teacher)")
    add_runtime_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's eval.batch_size")
    parser.add_argument("--num-workers", type=int, default=None)
    add_allow_code_argument(parser)
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from semiseg.config import ConfigError
    from semiseg.data import DataError
    from semiseg.engine import distributed as dist
    from semiseg.atomic import atomic_write_text
    from semiseg.engine.checkpoint import CheckpointError
    from semiseg.engine.evaluate import evaluate_checkpoint
    from semiseg.models.pretrained import PretrainedWeightsError

    try:
        result = evaluate_checkpoint(args.checkpoint, data_overrides=args.data, split=args.split, device=args.device,
                                     precision=args.precision, batch_size=args.batch_size,
                                     num_workers=args.num_workers, inference_overrides=inference_overrides(args),
                                     recipe=args.config, recipe_overrides=args.overrides,
                                     allow_code=args.allow_code, group_by=args.group_by, teacher=args.teacher)
        if dist.is_main():
            from semiseg.data.transforms import describe_normalization

            norm = result["normalization"]
            print(f"input normalization: {norm} ({describe_normalization(norm)})")
            print(result["table"])
            name = f"eval_{result['data']['split']}{'_teacher' if args.teacher else ''}.json"  # the model's file stays
            out = args.out or os.path.join(os.path.dirname(result["checkpoint"]), name)
            atomic_write_text(out, json.dumps({k: v for k, v in result.items() if k != "table"}, indent=1))
            print(f"wrote {out}")
        return 0
    except (ConfigError, CheckpointError, DataError, PretrainedWeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.destroy()
