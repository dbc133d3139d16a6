"""``semiseg eval CHECKPOINT|RUN_DIR``: per-class IoU of a trained model on a dataset, printed and saved as JSON.

    semiseg eval runs/quickstart                      # best.pt on the run's own validation split
    semiseg eval runs/voc/last.pt --split train
    semiseg eval runs/voc --data kind=folder root=data/my_set options={classes: [bg, car]}
    semiseg eval runs/camvid --mode slide --crop 512 512 --stride 341 341 --scales 0.75 1 1.25 --flip
    semiseg eval AdvSemiSeg_VOC.pth --config configs/voc/deeplabv2_resnet101.yaml \
        --set data.root=/data/VOCdevkit model.options.legacy_aspp=true     # released weights + a recipe

The dataset defaults to the run's (``data`` in the checkpoint's config); ``--data key=value`` changes
fields of it. Precision and memory format default to the run's, so the numbers equal those the run logged
(this is the very code that evaluates during training: semiseg.engine.evaluate). So does the inference
mode (the run's ``eval`` section), unless --mode/--crop/--stride/--scales/--flip change it.
With ``--config RECIPE`` the file is weights of any layout ``load_weights`` converts (the papers' released
checkpoints): the model, dataset and inference settings come from the recipe and ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    from semiseg.runtime import PRECISIONS

    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR", help="a .pt file, or a run folder (best.pt, else last.pt)")
    parser.add_argument("--config", metavar="RECIPE",
                        help="evaluate CHECKPOINT as plain weights (e.g. a paper's release) in the model of this recipe "
                             "(a file, or a shipped recipe name such as voc/deeplabv2_resnet101)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="with --config: dotted recipe overrides, e.g. model.options.legacy_aspp=true")
    parser.add_argument("--data", nargs="+", default=[], metavar="KEY=VALUE",
                        help="dataset fields overriding the run's: kind=, root=, val_split=, options=...")
    parser.add_argument("--split", help="dataset split to evaluate (default: the run's data.val_split)")
    parser.add_argument("--out", help="JSON file to write (default: eval_<split>.json next to the checkpoint)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: the run's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's eval.batch_size")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (default: one per core; 1 is faster on a busy machine)")
    from semiseg.engine.predict import add_allow_code_argument, add_inference_arguments

    add_allow_code_argument(parser)
    add_inference_arguments(parser)


def evaluate_checkpoint(path: str, *, data_overrides=(), split: str | None = None, device: str = "auto",
                        precision: str | None = None, batch_size: int | None = None,
                        num_workers: int | None = None, inference_overrides=(), recipe: str | None = None,
                        recipe_overrides=(), allow_code: bool | None = None) -> dict:
    """Evaluate a checkpoint; returns {"metrics", "table", "classes", ...} (the JSON written by the command).

    ``inference_overrides``: dotted ``eval.*`` overrides of the run's inference settings (``eval.mode=slide``).
    ``recipe``: ``path`` holds plain weights for the model of this recipe (``recipe_overrides`` apply to it).
    ``allow_code``: let the checkpoint's config import ``module:function`` names (see ``load_trained_model``).
    """
    import dataclasses

    import torch

    from semiseg.config import override_config
    from semiseg.engine import build, distributed as dist
    from semiseg.engine.evaluate import evaluate, make_eval_loader
    from semiseg.runtime import resolve_device
    from semiseg.engine.predict import load_trained_model, load_weights_with_recipe
    from semiseg.metrics import to_json_dict

    data_overrides = [o if o.startswith("data.") else f"data.{o}" for o in data_overrides]
    dev = dist.init_distributed(resolve_device(device))
    if recipe:
        loaded = load_weights_with_recipe(path, recipe, device=dev, precision=precision,
                                          overrides=[*recipe_overrides, *inference_overrides])
    else:
        if recipe_overrides:
            from semiseg.config import ConfigError

            raise ConfigError("--set changes a recipe: use it with --config (a run's own settings are fixed; "
                              "--data and the inference flags change what evaluation reads)")
        # --data goes in with the other overrides: a data.kind typed here replaces the checkpoint's own
        loaded = load_trained_model(path, device=dev, precision=precision, allow_code=allow_code,
                                    overrides=[*inference_overrides, *data_overrides])
    cfg = override_config(loaded.cfg, data_overrides)
    split = split or cfg.data.val_split
    # the run's validation options apply when evaluating its validation split
    validation = split == cfg.data.val_split
    dataset = build.build_dataset(cfg, split, validation=validation)
    options = {**cfg.data.options, **(cfg.data.val_options if validation else {})}
    if int(dataset.num_classes) != loaded.info.num_classes:
        from semiseg.config import ConfigError

        raise ConfigError(f"the dataset has {dataset.num_classes} classes but the model was trained for "
                          f"{loaded.info.num_classes} ({', '.join(loaded.info.classes)})")
    dataset.transform = build.eval_transform(loaded.info.normalization)
    loader = make_eval_loader(dataset, batch_size=batch_size or cfg.eval.batch_size,
                              num_workers=cfg.data.num_workers if num_workers is None else num_workers,
                              pin_memory=dev.type == "cuda")
    cm = evaluate(loaded.model, loader, loaded.info.num_classes, device=dev, precision=loaded.precision,
                  channels_last=loaded.channels_last, ignore_index=int(getattr(dataset, "ignore_index", 255)),
                  progress=True, inference=loaded.inference)
    classes = list(dataset.classes)
    return {
        "checkpoint": os.path.abspath(loaded.checkpoint_path),
        "iteration": loaded.iteration,
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
        "table": cm.table(classes),
        "torch_version": str(torch.__version__),
    }


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from semiseg.config import ConfigError
    from semiseg.data import DataError
    from semiseg.engine import distributed as dist
    from semiseg.atomic import atomic_write_text
    from semiseg.engine.checkpoint import CheckpointError
    from semiseg.engine.predict import inference_overrides
    from semiseg.models.pretrained import PretrainedWeightsError

    try:
        result = evaluate_checkpoint(args.checkpoint, data_overrides=args.data, split=args.split, device=args.device,
                                     precision=args.precision, batch_size=args.batch_size,
                                     num_workers=args.num_workers, inference_overrides=inference_overrides(args),
                                     recipe=args.config, recipe_overrides=args.overrides,
                                     allow_code=args.allow_code)
        if dist.is_main():
            from semiseg.data.transforms import describe_normalization

            norm = result["normalization"]
            print(f"input normalization: {norm} ({describe_normalization(norm)})")
            print(result["table"])
            out = args.out or os.path.join(os.path.dirname(result["checkpoint"]), f"eval_{result['data']['split']}.json")
            atomic_write_text(out, json.dumps({k: v for k, v in result.items() if k != "table"}, indent=1))
            print(f"wrote {out}")
        return 0
    except (ConfigError, CheckpointError, DataError, PretrainedWeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.destroy()
