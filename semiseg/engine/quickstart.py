"""The quickstart's recipe and run logic (``semiseg quickstart``; its command line is semiseg/commands/quickstart.py).

Two runs of one base recipe (supervised, and semi-supervised with a moving-average teacher) on one seeded split
of the built-in synthetic scenes, as a two-arm study (semiseg/engine/study.py), then a few prediction panels.
"""

from __future__ import annotations

import json
import os
import sys
import time

from typing import Callable

import yaml

from semiseg.engine.quickstart_schedule import Schedule, choose_schedule

# The recipes: the payoff study's third regime (BENCHMARKS.md; configs/synthetic/study_payoff_unet.yaml), read from
# its shipped recipes so the two cannot drift apart: the small U-Net from scratch on 1,000 synthetic scenes of which
# 1/8 (125) keep their labels, whole scenes with flips and quarter turns, batch 16, AdamW. The study measures what the
# unlabeled scenes are worth on its 128 px scenes at 1,500 iterations (`--large-scenes --iters 1500`, third regime:
# 32% of the gap to the all-label model closed) and 3,000 (`--large-scenes --iters 3000`, fourth regime: 56%).
SUPERVISED_RECIPE = "synthetic/unet_small_1-8"
SEMI_RECIPE = "synthetic/consistency_unet_small_tuned_1-8"
# What the quickstart changes in the supervised recipe, in both regimes.
QUICKSTART = {
    "name": "quickstart",
    "data.val_options": {"length": 200},  # 200 validation and 200 test scenes
    "train.eval_interval": 0,  # validate at the end only: the runs are scored on test, nothing is picked on val
    "train.log_interval": 20,
}
# The default regime: the shortest measured where the unlabeled scenes pay, within 5 minutes on a 2-core CPU without
# native bf16 (BENCHMARKS.md, "Quickstart", Q5-Q10; configs/synthetic/study_quickstart_64px.yaml). On 64 px scenes (a
# quarter of the pixels) with 800 steps 125 labels are 5.9 val mIoU short of all 1,000 (at 200 steps on 128 px they
# are not short at all) ...
SMALL_SCENES = {"data.options": {"size": 64}, "data.crop_size": [64, 64], "train.iterations": 800,
                "train.checkpoint_interval": 400}
# ... and the arm, whose confident pseudo labels were 98% background there, gains once each class keeps its most
# confident half of the pixels (per_class_keep) and the labeled images are pasted into the unlabeled ones and back
# (Bidirectional Copy-Paste, as in the CamVid arm): test mIoU over seeds 0-2 +3.0 / +8.0 / +5.8 with one thread per run
# (side by side), +2.9 / +6.8 / +6.7 with two (one after the other; two threads sum in another order). On a 2-core
# AMD EPYC Zen 3 without bf16 it takes 4.8 minutes one after the other, 5.4 side by side (Q10; quickstart_schedule.py
# chooses between them); at 500 steps it did not pay.
SMALL_SCENES_SEMI = {"per_class_keep": 0.5, "paste_labeled": True, "cutmix_prob": 1.0, "cutmix_area": [0.44, 0.44]}
SMALL_SCENES_GAINS = {1: (3.0, 8.0, 5.8), 2: (2.9, 6.8, 6.7)}  # threads per run -> test mIoU gains, seeds 0, 1, 2
# `--large-scenes`: the payoff study's 128 px scenes and its recipes' arm; 200 iterations fit 5 minutes (4.1 on the
# Zen 3) but are too few for the unlabeled scenes to pay (at 200 steps the labels do not limit: BENCHMARKS.md).
LARGE_SCENES = {"train.iterations": 200, "train.checkpoint_interval": 100}
STUDY_ITERATIONS = 1500  # the payoff study's third regime: `semiseg quickstart --large-scenes --iters 1500`
LONG_STUDY_ITERATIONS = 3000  # its fourth regime (the same recipes, twice the steps): `--large-scenes --iters 3000`
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
FAST_NOTE = (f"--fast checks that every piece runs ({FAST_ITERATIONS} iterations on 32 scenes): its numbers say nothing "
             "about the methods; `semiseg quickstart` without it is the measured regime.\n")
ARMS = ("supervised", "semi-supervised")
DEFAULT_RUN_DIR = os.path.join("runs", "quickstart")


def quickstart_config(overrides=(), *, iterations: int | None = None, fast: bool = False, jobs: int | None = None,
                      large_scenes: bool = False):
    """The base recipe both runs share (supervised; the semi-supervised arm changes only ``method``).
    The default regime is SMALL_SCENES (64 px, 800 iterations); ``large_scenes``: LARGE_SCENES (128 px, 200).

    ``jobs``: runs at once (default: 2 when there are 2+ cores). Only runs side by side on one thread each draw their
    scenes in a worker, the setting measured: next to a run on several threads a worker process could stall its
    threads' barriers (semiseg/engine/threads.py), and with cores to spare the scenes are not what waits."""
    from semiseg.config import load_config, override_config

    recipe = load_config(SUPERVISED_RECIPE)
    values = dict(QUICKSTART)
    values.update(LARGE_SCENES if large_scenes else SMALL_SCENES)
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


def semi_options(iterations: int, large_scenes: bool = False) -> dict:
    """The semi-supervised recipe's method options, its supervised warm-up and ramp shrunk for a short run, and
    SMALL_SCENES_SEMI added unless ``large_scenes`` (the payoff study's recipe as it is)."""
    from semiseg.config import load_config

    recipe = load_config(SEMI_RECIPE)
    options = dict(recipe.method.options)
    for key in ("unsup_start", "unsup_rampup"):
        options[key] = round(options.get(key, 0) * _shrink(iterations, recipe.train.iterations))
    if not large_scenes:
        options.update(SMALL_SCENES_SEMI)
    return options


def write_study(run_dir: str, cfg, large_scenes: bool = False) -> str:
    """recipe.yaml (the shared base) and study.yaml (two arms, one split, one seed) in ``run_dir``."""
    from semiseg.atomic import atomic_write_text
    from semiseg.config import dump_config

    dump_config(cfg, os.path.join(run_dir, "recipe.yaml"))
    options = yaml.safe_dump(semi_options(cfg.train.iterations, large_scenes), default_flow_style=True,
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


def _gains(threads: int) -> str:
    return " / ".join(f"{g:+.1f}" for g in SMALL_SCENES_GAINS[1 if threads == 1 else 2])


def _budget_note(iterations: int, large_scenes: bool = False, threads: int = 1) -> str:
    """What a quickstart of ``iterations`` can and cannot show, said where its numbers are printed."""
    default = SMALL_SCENES["train.iterations"]
    if not large_scenes:
        if iterations == default:
            measured = "one thread per run" if threads == 1 else "two threads per run" + \
                ("" if threads == 2 else f" (this machine gave each {threads}: another summation order again)")
            return (f"This regime gained {_gains(threads)} test mIoU over seeds 0, 1 and 2 with {measured} "
                    "(BENCHMARKS.md, Quickstart, Q7 and Q10); the seed-to-seed spread is a few points.\n")
        return (f"The 64 px regime was measured at {default} iterations ({_gains(threads)} over three seeds); "
                f"{iterations} were not measured (at 500 it did not pay).\n")
    if iterations >= STUDY_ITERATIONS:
        return ""
    unsup = iterations - semi_options(iterations, large_scenes=True)["unsup_start"]
    return (f"At {iterations} iterations the unlabeled loss has run for {unsup} of them, too few to pay (at 200, 31 "
            "labeled scenes score as well as all 1,000: steps limit the model, not labels). "
            f"The default `semiseg quickstart` (64 px scenes, {default} iterations, about 5 minutes on 2 cores) is the "
            f"shortest regime measured where they pay ({_gains(1)} test mIoU over three seeds); the payoff "
            f"study's: `--large-scenes --iters {STUDY_ITERATIONS}` or `--iters {LONG_STUDY_ITERATIONS}` (README, "
            "BENCHMARKS.md).\n")


def plan_jobs(jobs: int | None, *, fast: bool = False, large_scenes: bool = False,
              choose: Callable[[int], Schedule] | None = None) -> Schedule:
    """How many runs at once: the user's ``--jobs``; else, for the default regime on 2+ cores, what this machine's
    threads measure (quickstart_schedule.py); else side by side wherever there are 2 cores (the setting the
    128 px regime and `--fast` were measured and tested in)."""
    from semiseg.engine.study import jobs_and_threads
    from semiseg.engine.threads import available_cores

    if jobs is not None:
        return Schedule(jobs_and_threads(jobs)[0], "--jobs")
    cores = available_cores()
    if cores >= 2 and not fast and not large_scenes:
        return (choose or choose_schedule)(cores)
    jobs = jobs_and_threads(None)[0]
    return Schedule(jobs, "one core" if cores < 2 else "the setting this regime was measured in")


def run_quickstart(overrides=(), *, run_dir: str = DEFAULT_RUN_DIR, iterations: int | None = None, fast: bool = False,
                   jobs: int | None = None, predictions: int = 4, large_scenes: bool = False) -> int:
    """Train and score both arms into a new study folder (``run_dir``, or ``run_dir-2`` ... when it exists), print
    the table; returns the exit code."""
    from semiseg.config import ConfigError
    from semiseg.data.synthetic import DEFAULT_LENGTH as SYNTHETIC_LENGTH
    from semiseg.engine.run_dir import unique_run_dir
    from semiseg.engine.study import StudyError, jobs_and_threads, load_study, run_study

    start = time.perf_counter()
    schedule = plan_jobs(jobs, fast=fast, large_scenes=large_scenes)
    jobs, threads = jobs_and_threads(schedule.jobs)
    try:
        cfg = quickstart_config(overrides, iterations=iterations, fast=fast, jobs=jobs, large_scenes=large_scenes)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = os.path.abspath(unique_run_dir(run_dir))
    os.makedirs(run_dir)
    n_train = cfg.data.options.get("length", SYNTHETIC_LENGTH["train"])
    n_labeled = round(cfg.data.labeled.fraction * n_train)
    print(f"semiseg quickstart: do {n_train - n_labeled} unlabeled scenes help a model that has {n_labeled} labeled "
          f"ones?\n{cfg.model.name} from scratch, {cfg.data.crop_size[0]}px crops, {cfg.train.iterations} iterations "
          f"of batch {cfg.data.batch_size}; supervised and semi-supervised -> {run_dir}\n"
          f"schedule: {jobs} run{'s' if jobs > 1 else ''} at a time on {threads} thread{'s' if threads > 1 else ''} "
          f"each ({schedule.reason})")
    try:
        study = load_study(write_study(run_dir, cfg, large_scenes))
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
    run_dirs = {arm: os.path.join(run_dir, runs[arm]["run_dir"]) for arm in ARMS}  # recorded relative to the study folder
    if predictions:
        write_predictions(run_dirs, cfg, os.path.join(run_dir, "predictions"), predictions)
    sup, semi = (100 * runs[a]["miou"] for a in ARMS)
    minutes = (time.perf_counter() - start) / 60
    rows = [f"supervised on {n_labeled} labeled scenes", f"semi-supervised, + {n_train - n_labeled} unlabeled scenes"]
    width = max(map(len, rows))
    print(f"\nfinished in {minutes:.1f} min; test mIoU after {cfg.train.iterations} iterations each:\n"
          f"  {rows[0]:<{width}}  {sup:5.1f}\n"
          f"  {rows[1]:<{width}}  {semi:5.1f}  (gain {semi - sup:+.1f})\n"
          f"{FAST_NOTE if fast else _budget_note(cfg.train.iterations, large_scenes, threads)}"
          "One seed: BENCHMARKS.md has this comparison over seeds and label fractions, with its spread.\n"
          f"study folder {run_dir}:\n"
          f"  study.md           the table; study.yaml + recipe.yaml rerun it: semiseg study {run_dir}/study.yaml --out {run_dir}\n"
          f"  runs/*/            each run: checkpoints, metrics.jsonl, split.txt (semiseg report {run_dirs['semi-supervised']})\n"
          f"  predictions/       {predictions} test scenes: image | truth | supervised | semi-supervised")
    return 0
