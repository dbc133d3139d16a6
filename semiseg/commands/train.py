"""``semiseg train --config RECIPE [key=value ...]``: train a model from a recipe.

    semiseg train --config camvid/fcn_resnet18_scratch train.iterations=2000 optim.lr=0.01   # a shipped recipe
    semiseg train --config folder/thin_structures data.root=/data/retina 'data.options={classes: [bg, vessel], binary: true}'
    semiseg train --config my_recipe.yaml                               # a file
    semiseg train --resume runs/fcn_resnet18                      # continue exactly where it stopped
    semiseg train --resume runs/fcn_resnet18 train.iterations=40000   # ... and train longer
    semiseg train --config ... --stop-at 2000      # stop after step 2,000 of the schedule; --resume continues
    torchrun --standalone --nproc_per_node=4 -m semiseg train --config ...   # data parallel

Shipped recipes: camvid/*, cityscapes/*, synthetic/*, voc/*, and folder/{large_objects,thin_structures,many_classes} for
a folder of your own images and masks. The recipe's names and the data files are checked before the first
step (data.check). The run folder is ``output_dir/name`` (default ``runs/<recipe name>``) or ``--run-dir``.
An existing run folder is never overwritten unless ``--overwrite`` is given (one that holds no checkpoint,
left by a run that failed before its first, is started again).
"""

from __future__ import annotations

import argparse
import os
import sys

from semiseg.commands.flags import add_allow_code_argument, describe
from semiseg.config import ConfigError, check_code_names, config_to_dict, load_config


def configure(parser: argparse.ArgumentParser) -> None:
    describe(parser, __doc__)
    parser.add_argument("--config", "-c", metavar="RECIPE",
                        help="a recipe file, or the name of a shipped recipe from any folder, e.g. "
                             "camvid/deeplabv3plus_mobilenetv2_scratch or folder/thin_structures (a wrong name lists them)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied after the recipe, e.g. optim.lr=0.01 data.crop_size=[256,256]")
    parser.add_argument("--run-dir", help="run folder (default: output_dir/name from the config)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR (or the config's run folder) from its last.pt")
    parser.add_argument("--stop-at", type=int, metavar="N",
                        help="stop after iteration N with a checkpoint; the learning-rate schedule still spans "
                             "train.iterations, so --resume later continues the same run (time-limited machines, "
                             "looking at a run's first half before paying for the second)")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run folder and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    add_allow_code_argument(parser)


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        key = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict) and not k.endswith("options"):
            out += _changed_keys(va, vb, key + ".")
        elif va != vb:
            out.append(f"{key}: {vb!r} -> {va!r}")
    return out


def resolve(args: argparse.Namespace):
    """(config, run folder, resume?) from the command line."""
    overrides = list(args.overrides)
    resume = args.resume
    # `--resume key=value` would swallow the first override as the folder: give it back.
    if isinstance(resume, str) and "=" in resume and not os.path.exists(resume):
        overrides.insert(0, resume)
        resume = True
    if not resume:
        cfg = load_config(args.config, overrides)
        run_dir = args.run_dir or cfg.run_dir
        cfg.name = cfg.name or os.path.basename(os.path.abspath(run_dir))
        return cfg, run_dir, False
    if isinstance(resume, str):
        run_dir = resume
    else:
        run_dir = args.run_dir or load_config(args.config, overrides).run_dir
    saved = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(saved):
        raise ConfigError(f"cannot resume {run_dir}: no config.yaml there (is it a semiseg run folder?)")
    # The run's own resolved config makes the resume exact; key=value overrides may change it on purpose.
    cfg = load_config(saved, overrides)
    # The folder's config.yaml is a file like a checkpoint: it may name registry entries, not code to import.
    check_code_names(cfg, saved, allow_code=getattr(args, "allow_code", None), typed=overrides)
    if args.config:
        recipe = load_config(args.config, overrides)
        recipe.name, recipe.output_dir = cfg.name, cfg.output_dir
        diff = _changed_keys(config_to_dict(recipe), config_to_dict(cfg))
        if diff:
            print("warning: the recipe differs from the run's config.yaml, which is what the resume uses:\n  "
                  + "\n  ".join(diff) + "\npass intended changes as key=value", file=sys.stderr)
    return cfg, run_dir, True


def run(args: argparse.Namespace) -> int:
    from semiseg.engine import distributed as dist
    from semiseg.engine.checkpoint import CheckpointError
    from semiseg.engine.run_dir import RunDirError
    from semiseg.engine.trainer import Trainer, TrainingDiverged
    from semiseg.models.pretrained import PretrainedWeightsError

    try:
        from semiseg.data import DataError
    except ImportError:  # pragma: no cover - the data package is part of semiseg
        DataError = ValueError

    try:
        if args.stop_at is not None and args.stop_at < 1:
            raise ConfigError(f"--stop-at must be an iteration >= 1, got {args.stop_at}")
        cfg, run_dir, resume = resolve(args)
        trainer = Trainer(cfg, run_dir, resume=resume, overwrite=args.overwrite, progress=not args.no_progress)
        result = trainer.fit(stop_at=args.stop_at)
        if trainer.is_main and result["iteration"] < cfg.train.iterations:
            print(f"stopped after iteration {result['iteration']} of {cfg.train.iterations} (--stop-at); last.pt "
                  f"is saved: continue with  semiseg train --resume {trainer.run_dir}")
        elif trainer.is_main:
            if trainer.last_cm is not None:
                print(trainer.last_cm.table(trainer.dataset_info.classes))
            best = result["best"]
            if best["miou"] is not None:
                print(f"best mIoU {100 * best['miou']:.2f} at iteration {best['iteration']}")
            print(f"run folder: {trainer.run_dir} (config.yaml, split.txt, last.pt, best.pt, metrics.jsonl)")
        return 0
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, RunDirError, CheckpointError, DataError, PretrainedWeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.destroy()
