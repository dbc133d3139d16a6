"""The quickstart's recipe and run logic (``semiseg quickstart``; its command line is semiseg/commands/quickstart.py).

Two runs of one base recipe (supervised, and semi-supervised with a moving-average teacher) on one seeded split
of the built-in synthetic scenes, as a two-arm study (semiseg/engine/study.py), then a few prediction panels.
"""

from __future__ import annotations

import json
import os
import sys
import time

import yaml

# The regime: the payoff study's third regime (BENCHMARKS.md; configs/synthetic/study_payoff_unet.yaml), read from
# its shipped recipes so the two cannot drift apart: the small U-Net from scratch on 1,000 synthetic scenes of which
# 1/8 (125) keep their labels, whole 128x128 scenes with flips and quarter turns, batch 16, AdamW. The study measures
# what the unlabeled scenes are worth at 1,500 iterations (`--iters 1500`, third regime: 32% of the gap to the
# all-label model closed) and 3,000 (`--iters 3000`, fourth regime: 56%); the default is shorter so that the first
# command fits 5 minutes on a 2-core CPU.
SUPERVISED_RECIPE = "synthetic/unet_small_1-8"
SEMI_RECIPE = "synthetic/consistency_unet_small_tuned_1-8"
# What the quickstart changes in the supervised recipe.
QUICKSTART = {
    "name": "quickstart",
    "data.val_options": {"length": 200},  # 200 validation and 200 test scenes
    "train.iterations": 200,  # sized for 5 minutes on a 2-core CPU without native bf16 (BENCHMARKS.md, Quickstart)
    "train.eval_interval": 0,  # validate at the end only: the runs are scored on test, nothing is picked on val
    "train.checkpoint_interval": 100,
    "train.log_interval": 20,
}
# `--small-scenes`: the shortest regime measured where the unlabeled scenes pay (BENCHMARKS.md, "Quickstart", Q5-Q8;
# configs/synthetic/study_quickstart_64px.yaml). On 64 px scenes (a quarter of the pixels) with 800 steps 125 labels
# are 5.9 val mIoU short of all 1,000 (at the default's 200 steps on 128 px they are not short at all) ...
SMALL_SCENES = {"data.options": {"size": 64}, "data.crop_size": [64, 64], "train.iterations": 800,
                "train.checkpoint_interval": 400}
# ... and the arm, whose confident pseudo labels were 98% background there, gains once each class keeps its most
# confident half of the pixels (per_class_keep) and the labeled images are pasted into the unlabeled ones and back
# (Bidirectional Copy-Paste, as in the CamVid arm): test mIoU +3.0 / +8.0 / +5.8 over seeds 0-2. It takes 5.2 minutes
# on a 2-core AMD EPYC Zen 3 without bf16 (BENCHMARKS.md, Q9), over the default's 5-minute budget; at 500 steps it did
# not pay.
SMALL_SCENES_SEMI = {"per_class_keep": 0.5, "paste_labeled": True, "cutmix_prob": 1.0, "cutmix_area": [0.44, 0.44]}
SMALL_SCENES_GAINS = (3.0, 8.0, 5.8)
STUDY_ITERATIONS = 1500  # the payoff study's third regime: `semiseg quickstart --iters 1500`
LONG_STUDY_ITERATIONS = 3000  # its fourth regime (the same recipes, twice the steps): `--iters 3000`
SEED = 0
# One DataLoader worker per loader: drawing the scenes is ~22% of a step (4.4 ms CPU per scene, 16-32 per step), and
# a worker draws them on whichever core is free. The two runs go side by side, so this pays once the short supervised
# run has ended: the semi-supervised one then trains ~30% faster and the quickstart ends 4-10% sooner, with the same
# numbers (scenes are drawn under per-item seeds wherever they are drawn; BENCHMARKS.md, Quickstart).
QUICKSTART_WORKERS = 1
# The same setting lowers the supervised run's CPU priority (niceness +10): it is the shorter run, and the command
# ends when the semi-supervised one does, so while both train that one takes the larger share of the cores. On a
# 2-core AMD EPYC Zen 3 without bf16 the quickstart took 4.7 instead of 5.2-5.6 minutes, with the same numbers
# (scheduling only; BENCHMARKS.md, Quickstart).
QUICKSTART_NICE = {"supervised": 10}
FAST_ITERATIONS = 20  # `--fast`: a smoke test of the whole pipeline (CI), small images, not a model
ARMS = ("supervised", "semi-supervised")
DEFAULT_RUN_DIR = os.path.join("runs", "quickstart")


def quickstart_config(overrides=(), *, iterations: int | None = None, fast: bool = False, jobs: int | None = None,
                      small_scenes: bool = False):
    """The base recipe both runs share (supervised; the semi-supervised arm changes only ``method``).
    ``small_scenes``: SMALL_SCENES (64 px, 800 iterations) instead of the default 128 px and 200 iterations.

    ``jobs``: runs at once (default: 2 when there are 2+ cores). Only runs side by side on one thread each draw their
    scenes in a worker, the setting measured: next to a run on several threads a worker process could stall its
    threads' barriers (semiseg/engine/threads.py), and with cores to spare the scenes are not what waits."""
    from semiseg.config import load_config, override_config

    recipe = load_config(SUPERVISED_RECIPE)
    values = dict(QUICKSTART)
    if small_scenes:
        values.update(SMALL_SCENES)
    if fast:
        values.update({"train.iterations": FAST_ITERATIONS, "train.eval_interval": 0, "train.checkpoint_interval": 10,
                       "data.options": {"length": 32, "size": 64}, "data.crop_size": [64, 64],
                       "data.val_options": {"length": 16}, "data.batch_size": 4, "eval.batch_size": 16})
    if iterations is not None:
        values["train.iterations"] = iterations
    if not fast and _side_by_side_one_thread_each(jobs):
        values["data.num_workers"] = QUICKSTART_WORKERS
    # a shorter run keeps the recipe's share of learning-rate warm-up (150 of 1,500); a longer one its 150 steps
    values["optim.warmup_iters"] = max(1, round(recipe.optim.warmup_iters * _shrink(values["train.iterations"],
                                                                                     recipe.train.iterations)))
    # JSON is YAML: each value goes through the overrides' parser and schema check, then the user's overrides
    changes = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    return override_config(recipe, changes + list(overrides))


def run_priorities(jobs: int | None = None) -> dict[str, int]:
    """{arm: niceness} for the two runs: the supervised one yields where they share the cores one thread each (the
    setting measured; with a core or more per run they do not compete)."""
    return dict(QUICKSTART_NICE) if _side_by_side_one_thread_each(jobs) else {}


def _side_by_side_one_thread_each(jobs: int | None) -> bool:
    """Whether `semiseg study` will run the two runs at once on one thread each (the setting the scene worker and the
    priorities were measured in)."""
    from semiseg.engine.study import jobs_and_threads

    jobs, threads = jobs_and_threads(jobs)
    return jobs >= 2 and threads == 1


def _shrink(iterations: int, recipe_iterations: int) -> float:
    """How much a schedule's warm-ups shrink for a run of ``iterations``: in proportion when it is shorter than the
    recipe's, not at all when longer (the fourth regime ran the recipes' warm-ups unchanged over 3,000 steps)."""
    return min(1.0, iterations / recipe_iterations)


def semi_options(iterations: int, small_scenes: bool = False) -> dict:
    """The semi-supervised recipe's method options, its supervised warm-up and ramp shrunk for a short run (and
    SMALL_SCENES_SEMI added for ``small_scenes``)."""
    from semiseg.config import load_config

    recipe = load_config(SEMI_RECIPE)
    options = dict(recipe.method.options)
    for key in ("unsup_start", "unsup_rampup"):
        options[key] = round(options.get(key, 0) * _shrink(iterations, recipe.train.iterations))
    if small_scenes:
        options.update(SMALL_SCENES_SEMI)
    return options


def write_study(run_dir: str, cfg, small_scenes: bool = False) -> str:
    """recipe.yaml (the shared base) and study.yaml (two arms, one split, one seed) in ``run_dir``."""
    from semiseg.atomic import atomic_write_text
    from semiseg.config import dump_config

    dump_config(cfg, os.path.join(run_dir, "recipe.yaml"))
    options = yaml.safe_dump(semi_options(cfg.train.iterations, small_scenes), default_flow_style=True,
                             width=10_000).strip()
    study = {
        "name": "quickstart",
        "recipe": "recipe.yaml",
        "arms": {"supervised": {}, "semi-supervised": {"set": ["method.name=unimatch", f"method.options={options}"]}},
        "baseline": "supervised",
        "labels": [cfg.data.labeled.fraction],
        "full_labels": False,
        "seeds": [SEED],
        "eval_split": "test",
    }
    path = os.path.join(run_dir, "study.yaml")
    header = "# written by `semiseg quickstart`; rerun (or finish) it with `semiseg study " + path + f" --out {run_dir}`\n"
    return atomic_write_text(path, header + yaml.safe_dump(study, sort_keys=False))


def write_predictions(run_dirs: dict[str, str], cfg, out: str, count: int) -> str:
    """Panels image | truth | one prediction per run for the first ``count`` test scenes, and each run's palette
    mask (``<scene>_<arm>.png``, what `semiseg predict` writes)."""
    import numpy as np
    import torch
    from PIL import Image

    from semiseg.data.transforms import denormalize
    from semiseg.engine import build
    from semiseg.engine.evaluate import predict_logits
    from semiseg.engine.predict import load_trained_model, palette_image, save_mask_png

    os.makedirs(out, exist_ok=True)
    device = torch.device("cpu")
    # fp32 for a handful of scenes: timing the precision modes would cost more than the predictions
    models = {arm: load_trained_model(os.path.join(d, "last.pt"), device=device, precision="fp32", channels_last=False)
              for arm, d in run_dirs.items()}
    first = next(iter(models.values()))
    palette, norm, ignore = first.info.palette, first.info.normalization, first.info.ignore_index
    scenes = build.build_dataset(cfg, "test", build.eval_transform(norm), validation=True)
    for i in range(min(count, len(scenes))):
        sample = scenes[i]
        x = sample["image"].unsqueeze(0)
        image = Image.fromarray(denormalize(sample["image"], norm).permute(1, 2, 0).numpy())
        parts = [image, palette_image(sample["mask"].clamp(max=255).numpy().astype(np.uint8), palette, ignore).convert("RGB")]
        for arm, loaded in models.items():
            with torch.no_grad():
                logits = predict_logits(loaded.model, x, precision=loaded.precision, channels_last=loaded.channels_last)
            pred = logits.argmax(1)[0].to("cpu", torch.uint8).numpy()
            save_mask_png(pred, palette, os.path.join(out, f"{sample['name']}_{arm}.png"), ignore)
            parts.append(palette_image(pred, palette, ignore).convert("RGB"))
        zoom = max(1, 256 // image.height)  # small scenes are shown enlarged (nearest: crisp label edges)
        h, w = image.height * zoom, image.width * zoom
        panel = Image.new("RGB", (len(parts) * (w + 4) - 4, h), (255, 255, 255))
        for k, part in enumerate(parts):
            panel.paste(part.resize((w, h), Image.NEAREST), (k * (w + 4), 0))
        panel.save(os.path.join(out, f"{sample['name']}_panel.png"))
    return out


def _budget_note(iterations: int, small_scenes: bool = False) -> str:
    """What a short quickstart can and cannot show, said where its numbers are printed."""
    gains = " / ".join(f"{g:+.1f}" for g in SMALL_SCENES_GAINS)
    if small_scenes:
        if iterations == SMALL_SCENES["train.iterations"]:
            return (f"This regime gained {gains} test mIoU over seeds 0, 1 and 2 (BENCHMARKS.md, Quickstart, Q7); "
                    "the seed-to-seed spread is a few points.\n")
        return (f"--small-scenes was measured at {SMALL_SCENES['train.iterations']} iterations ({gains} over three "
                f"seeds); {iterations} were not measured (at 500 it did not pay).\n")
    if iterations >= STUDY_ITERATIONS:
        return ""
    unsup = iterations - semi_options(iterations)["unsup_start"]
    return (f"At {iterations} iterations the unlabeled loss has run for {unsup} of them, too few to pay (at 200, 31 "
            "labeled scenes score as well as all 1,000: steps limit the model, not labels). "
            f"`semiseg quickstart --small-scenes` (about 5 minutes on 2 cores) is the shortest regime measured where "
            f"they pay ({gains} test mIoU over three seeds); the payoff study's: `--iters {STUDY_ITERATIONS}` or "
            f"`--iters {LONG_STUDY_ITERATIONS}` (README, BENCHMARKS.md).\n")


def run_quickstart(overrides=(), *, run_dir: str = DEFAULT_RUN_DIR, iterations: int | None = None, fast: bool = False,
                   jobs: int | None = None, predictions: int = 4, small_scenes: bool = False) -> int:
    """Train and score both arms into a new study folder (``run_dir``, or ``run_dir-2`` ... when it exists), print
    the table; returns the exit code."""
    from semiseg.config import ConfigError
    from semiseg.data.synthetic import DEFAULT_LENGTH as SYNTHETIC_LENGTH
    from semiseg.engine.run_dir import unique_run_dir
    from semiseg.engine.study import StudyError, jobs_and_threads, load_study, run_study

    start = time.perf_counter()
    jobs, _ = jobs_and_threads(jobs)
    try:
        cfg = quickstart_config(overrides, iterations=iterations, fast=fast, jobs=jobs, small_scenes=small_scenes)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = os.path.abspath(unique_run_dir(run_dir))
    os.makedirs(run_dir)
    n_train = cfg.data.options.get("length", SYNTHETIC_LENGTH["train"])
    n_labeled = round(cfg.data.labeled.fraction * n_train)
    print(f"semiseg quickstart: do {n_train - n_labeled} unlabeled scenes help a model that has {n_labeled} labeled "
          f"ones?\n{cfg.model.name} from scratch, {cfg.data.crop_size[0]}px crops, {cfg.train.iterations} iterations "
          f"of batch {cfg.data.batch_size}; supervised and semi-supervised side by side ({jobs} at a time) -> {run_dir}")
    try:
        study = load_study(write_study(run_dir, cfg, small_scenes))
        code = run_study(study, run_dir, jobs=jobs, echo=lambda line: print(line, flush=True),
                         nice=run_priorities(jobs))
    except (StudyError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finish with `semiseg study {run_dir}/study.yaml --out {run_dir}`", file=sys.stderr)
        return 130
    with open(os.path.join(run_dir, "study.json"), encoding="utf-8") as f:
        runs = {r["arm"]: r for r in json.load(f)["runs"]}
    if code or not all(runs.get(a, {}).get("done") for a in ARMS):
        print(f"error: a run did not finish; its log is in {run_dir}/logs/", file=sys.stderr)
        return 1
    run_dirs = {arm: runs[arm]["run_dir"] for arm in ARMS}
    if predictions:
        write_predictions(run_dirs, cfg, os.path.join(run_dir, "predictions"), predictions)
    sup, semi = (100 * runs[a]["miou"] for a in ARMS)
    minutes = (time.perf_counter() - start) / 60
    rows = [f"supervised on {n_labeled} labeled scenes", f"semi-supervised, + {n_train - n_labeled} unlabeled scenes"]
    width = max(map(len, rows))
    print(f"\nfinished in {minutes:.1f} min; test mIoU after {cfg.train.iterations} iterations each:\n"
          f"  {rows[0]:<{width}}  {sup:5.1f}\n"
          f"  {rows[1]:<{width}}  {semi:5.1f}  (gain {semi - sup:+.1f})\n"
          f"{_budget_note(cfg.train.iterations, small_scenes)}"
          "One seed: BENCHMARKS.md has this comparison over seeds and label fractions, with its spread.\n"
          f"study folder {run_dir}:\n"
          f"  study.md           the table; study.yaml + recipe.yaml rerun it: semiseg study {run_dir}/study.yaml --out {run_dir}\n"
          f"  runs/*/            each run: checkpoints, metrics.jsonl, split.txt (semiseg report {run_dirs['semi-supervised']})\n"
          f"  predictions/       {predictions} test scenes: image | truth | supervised | semi-supervised")
    return 0
