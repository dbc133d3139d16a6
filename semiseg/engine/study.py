"""A study: a grid of training runs (method arms x label settings x seeds) and the table that answers
"does my unlabeled data help?".

A study file (YAML) names a base recipe, the arms (overrides or a recipe of their own), the label settings
(fractions or counts of labeled training images), the seeds, the baseline arm and the held-out split::

    name: payoff_synthetic                        # default: the file name
    recipe: deeplabv3plus_mobilenetv2_1-8.yaml    # relative to this file
    set: [train.iterations=2000]                  # overrides for every run
    arms:
      supervised: {set: [method.name=supervised]}
      unimatch:   {recipe: unimatch_deeplabv3plus_mobilenetv2_1-8.yaml, set: [method.options.conf_thresh=0.9]}
    baseline: supervised
    labels: [0.03125, 0.125]                      # fractions in (0, 1] (floats) or image counts (ints)
    full_labels: true                             # also the baseline with every label: the ceiling
    seeds: [0, 1, 2]                              # train.seed and data.labeled.seed: arms share split and seed
    eval_split: test                              # evaluated with last.pt, never a checkpoint picked on it
    jobs: 2                                       # runs at once (default min(2, cores))
    group_by: _                                   # also mIoU per name prefix (e.g. per video sequence)

Each run is one subprocess that runs ``semiseg train`` into ``OUT/runs/<arm>_<labels>_s<seed>`` and then
``semiseg eval RUN/last.pt --split eval_split`` (one process: torch is imported once per run), its output in
``OUT/logs/<run>.log``. Running the study
again skips finished runs, resumes runs that have a ``last.pt`` and restarts the others (moving what is there
aside to ``<run>.failed-N``; nothing is deleted). The results go to ``OUT/study.md``, ``OUT/study.json`` and
``OUT/study.png``; with ``group_by`` study.md also has each run's mIoU per group of images (``semiseg eval
--group-by``), so a method that wins on one kind of image and loses on another shows. A result whose run folder
is gone (deleted to save space, or left on another machine) stays in the table, marked "kept", when the previous
study.json recorded it finished with the same settings (``config_digest``); running the study (not
``--table-only``) trains such a run again. The table and the plot are made by ``semiseg/engine/study_report.py`` (pure functions of the run records ``collect`` reads here); this
module parses no command line: that is ``semiseg/commands/study.py``.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from semiseg.config import ConfigError, config_to_dict, load_config, load_yaml_file
from semiseg.engine.preflight import check_config
from semiseg.engine.run_dir import CONFIG, METRICS, SPLIT
from semiseg.engine.study_report import (class_table, format_duration, groups_table, markdown_table, plot,
                                         pseudo_label_summary, runs_table, summarize, train_seconds)

STUDY_KEYS = ("name", "recipe", "set", "arms", "baseline", "labels", "full_labels", "seeds", "eval_split", "jobs",
              "group_by")
ARM_KEYS = ("recipe", "set")
# Keys the grid sets per run; a `set` that changed them would silently break the pairing.
GRID_KEYS = ("train.seed", "data.labeled.fraction", "data.labeled.count", "data.labeled.id_file", "data.labeled.seed")
# Keys that say where or how a run was made, not what it is: the same experiment on another machine has its data in
# another folder (data.root), another thread count, and the numeric mode that is fastest there (precision `auto`
# already differs between CPUs; every mode semiseg offers trains correctly; the runs table shows what each run used).
# What the data is (kind, classes, which images are labeled: split.txt) stays part of the experiment.
MACHINE_KEYS = ("name", "output_dir", "train.threads", "data.root", "train.device", "train.precision",
                "train.channels_last", "train.compile")
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class StudyError(ValueError):
    """A study file or study folder that cannot be used as asked; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------------
# the study file


@dataclass(frozen=True)
class Labels:
    """One label setting: a fraction of the training images, a count of them, or all of them."""

    fraction: float | None = None
    count: int | None = None

    @property
    def is_all(self) -> bool:
        return self.fraction is None and self.count is None

    @property
    def tag(self) -> str:
        """The run-name part: ``1-8`` for 1/8, ``f0.3``, ``n50``, ``all``."""
        if self.count is not None:
            return f"n{self.count}"
        if self.fraction is None:
            return "all"
        inverse = 1.0 / self.fraction
        if inverse > 1.5 and abs(inverse - round(inverse)) < 1e-6:
            return f"1-{round(inverse)}"
        return f"f{self.fraction:g}"

    @property
    def text(self) -> str:
        if self.count is not None:
            return f"{self.count} images"
        if self.fraction is None:
            return "all"
        return self.tag.replace("-", "/") if not self.tag.startswith("f") else f"{self.fraction:g}"

    def overrides(self) -> list[str]:
        f = "null" if self.fraction is None else repr(self.fraction)
        c = "null" if self.count is None else str(self.count)
        return [f"data.labeled.fraction={f}", f"data.labeled.count={c}", "data.labeled.id_file=null"]

    def sort_key(self) -> tuple:
        # fractions and counts cannot be ordered against each other before the data is read; keep them apart
        return (2, 0.0) if self.is_all else (0, self.fraction) if self.fraction is not None else (1, float(self.count))


@dataclass
class Arm:
    name: str
    recipe: str  # absolute path
    overrides: list[str] = field(default_factory=list)


@dataclass
class Study:
    path: str  # absolute path of the study file
    name: str
    arms: dict[str, Arm]
    baseline: str
    labels: list[Labels]
    full_labels: bool
    seeds: list[int]
    eval_split: str
    jobs: int | None = None
    overrides: list[str] = field(default_factory=list)  # the file's `set`
    group_by: str | None = None  # also score each group of images (a name's part before the first group_by)
    cli_overrides: list[str] = field(default_factory=list)  # the command line's --set (after each arm's `set`)


@dataclass
class RunSpec:
    """One run of the grid: what to train, where, and with which overrides."""

    name: str
    arm: str
    labels: Labels
    seed: int
    recipe: str
    overrides: list[str]  # everything but train.threads, which depends on the machine
    run_dir: str
    log: str  # the subprocesses' output (next to the run folder: a fresh run needs an empty folder)
    eval_split: str
    iterations: int = 0  # train.iterations of the resolved config: the final iteration
    data: dict = field(default_factory=dict)  # the resolved config's data section
    group_by: str | None = None
    digest: str | None = None  # of the resolved config without MACHINE_KEYS: which experiment the run is

    @property
    def eval_file(self) -> str:
        return os.path.join(self.run_dir, f"eval_{self.eval_split}_last.json")


def _list_of_str(value: Any, where: str, path: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise StudyError(f"{path}: {where} must be a list of key=value overrides, e.g. [train.threads=1], got {value!r}")
    return list(value)


def _check_grid_keys(overrides: list[str], where: str, path: str) -> None:
    for o in overrides:
        key = o.partition("=")[0].strip()
        if key in GRID_KEYS:
            raise StudyError(f"{path}: {where} sets {key}, which the study sets for each run (labels: sets "
                             "data.labeled.*, seeds: sets train.seed and data.labeled.seed); change labels/seeds instead")


def _parse_labels(value: Any, path: str) -> list[Labels]:
    if not isinstance(value, list) or not value:
        raise StudyError(f"{path}: labels must be a non-empty list of fractions (0.125) or image counts (50), got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise StudyError(f"{path}: labels value {v!r} is neither a fraction in (0, 1] nor a positive image count")
        if isinstance(v, int):
            if v < 1:
                raise StudyError(f"{path}: labels value {v} is not a positive image count (fractions are floats: 0.125)")
            out.append(Labels(count=v))
        else:
            if not 0 < v <= 1:
                raise StudyError(f"{path}: labels value {v} is not a fraction in (0, 1] (counts are integers: 50)")
            out.append(Labels(fraction=float(v)))
    if len(set(out)) != len(out):
        raise StudyError(f"{path}: labels has repeated values: {value}")
    return out


def load_study(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Read and check a study file; ``overrides`` (key=value) apply to every run after the file's ``set``."""
    path = os.path.abspath(path)
    data = load_yaml_file(path, what="study file", flag="semiseg study", error=StudyError)
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study file is a mapping (recipe:, arms:, labels:, seeds: ...)")
    unknown = [k for k in data if k not in STUDY_KEYS]
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(STUDY_KEYS)}")
    here = os.path.dirname(path)

    def recipe_path(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise StudyError(f"{path}: {where} must be a recipe file name, got {value!r}")
        p = os.path.normpath(os.path.join(here, os.path.expanduser(value)))
        if not os.path.isfile(p):
            raise StudyError(f"{path}: {where} {value!r} not found (looked for {p}; paths are relative to the study file)")
        return p

    base = recipe_path(data["recipe"], "recipe") if data.get("recipe") is not None else None
    common = _list_of_str(data.get("set"), "set", path)
    _check_grid_keys(common, "set", path)
    cli = list(overrides)
    _check_grid_keys(cli, "--set", path)

    arms_data = data.get("arms")
    if not isinstance(arms_data, dict) or not arms_data:
        raise StudyError(f"{path}: arms must map arm names to {{recipe: ..., set: [...]}}, "
                         "e.g. arms: {supervised: {set: [method.name=supervised]}}")
    arms = {}
    for name, spec in arms_data.items():
        name = str(name)
        if not ARM_NAME.fullmatch(name):
            raise StudyError(f"{path}: arm name {name!r} must be a plain name (it is part of the run folder names)")
        spec = spec or {}
        if not isinstance(spec, dict) or any(k not in ARM_KEYS for k in spec):
            raise StudyError(f"{path}: arm {name!r} must be a mapping with keys {', '.join(ARM_KEYS)}, got {spec!r}")
        recipe = recipe_path(spec["recipe"], f"arm {name!r} recipe") if spec.get("recipe") is not None else base
        if recipe is None:
            raise StudyError(f"{path}: arm {name!r} has no recipe; give the study a recipe: or the arm one")
        arm_set = _list_of_str(spec.get("set"), f"arm {name!r} set", path)
        _check_grid_keys(arm_set, f"arm {name!r} set", path)
        arms[name] = Arm(name, recipe, arm_set)

    baseline = data.get("baseline", next(iter(arms)) if len(arms) == 1 else None)
    if baseline not in arms:
        raise StudyError(f"{path}: baseline {baseline!r} is not one of the arms ({', '.join(arms)}); "
                         "name the arm the paired gains are measured against")
    seeds = data.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise StudyError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
    jobs = data.get("jobs")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise StudyError(f"{path}: jobs must be a positive integer, got {jobs!r}")
    eval_split = data.get("eval_split", "test")
    if not isinstance(eval_split, str) or not eval_split:
        raise StudyError(f"{path}: eval_split must be a split name such as test, got {eval_split!r}")
    full = data.get("full_labels", True)
    if not isinstance(full, bool):
        raise StudyError(f"{path}: full_labels must be true or false, got {full!r}")
    group_by = data.get("group_by")
    if group_by is not None and (not isinstance(group_by, str) or not group_by):
        raise StudyError(f"{path}: group_by must be a separator such as _ (an image's group is its name up to the "
                         f"first one), got {group_by!r}")
    name = data.get("name") or os.path.splitext(os.path.basename(path))[0]
    return Study(path=path, name=str(name), arms=arms, baseline=baseline, labels=_parse_labels(data.get("labels"), path),
                 full_labels=full, seeds=list(seeds), eval_split=eval_split, jobs=jobs, overrides=common,
                 cli_overrides=cli, group_by=group_by)


# ---------------------------------------------------------------------------------------------------
# the grid


def expand(study: Study, out_dir: str, *, resolve: bool = True) -> list[RunSpec]:
    """Every run of the study, in the order they are started: seed by seed (so that a study stopped early
    already holds complete paired comparisons), within a seed label setting by label setting, arm by arm,
    and the full-label baseline last. Each run's config is loaded once here (``resolve``), so that a wrong
    override fails before anything runs."""
    runs_dir = os.path.join(os.path.abspath(out_dir), "runs")
    logs_dir = os.path.join(os.path.abspath(out_dir), "logs")
    cells = [(arm, labels) for labels in study.labels for arm in study.arms]
    if study.full_labels:
        cells.append((study.baseline, Labels()))
    specs = []
    for seed in study.seeds:
        for arm_name, labels in cells:
            arm = study.arms[arm_name]
            name = f"{arm_name}_{labels.tag}_s{seed}"
            # the file's `set`, then the arm's, then the command line's --set, then the grid's own keys
            overrides = [*study.overrides, *arm.overrides, *study.cli_overrides,
                         *labels.overrides(), f"train.seed={seed}", f"data.labeled.seed={seed}", f"name={name}"]
            spec = RunSpec(name=name, arm=arm_name, labels=labels, seed=seed, recipe=arm.recipe, overrides=overrides,
                           run_dir=os.path.join(runs_dir, name), log=os.path.join(logs_dir, f"{name}.log"),
                           eval_split=study.eval_split, group_by=study.group_by)
            if resolve:
                try:
                    cfg = load_config(arm.recipe, overrides)
                    check_config(cfg)  # a misspelt method, model or dataset fails here, before any run starts
                except ConfigError as e:
                    raise StudyError(f"{study.path}: run {name} (recipe {arm.recipe}): {e}") from None
                resolved = config_to_dict(cfg)
                spec.iterations, spec.data, spec.digest = cfg.train.iterations, resolved["data"], config_digest(resolved)
            specs.append(spec)
    return specs


# ---------------------------------------------------------------------------------------------------
# run state


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _events(run_dir: str) -> list[dict]:
    out = []
    try:
        with open(os.path.join(run_dir, METRICS), encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by kill -9
    except OSError:
        pass
    return out


def run_state(spec: RunSpec) -> str:
    """What a run folder holds, from what semiseg writes there:

    * ``done``: the held-out evaluation of the final last.pt is recorded (eval_<split>_last.json), per group
      when the study has ``group_by`` (an evaluation without its groups is made again); last.pt itself may have
      been deleted since;
    * ``trained``: training finished (the final evaluation is logged and last.pt was written after it);
    * ``partial``: a last.pt to resume from;
    * ``new``: no folder, or an empty one;
    * ``broken``: something is there but no checkpoint (killed before its first last.pt): moved aside.
    """
    d = spec.run_dir
    if not os.path.isdir(d) or not os.listdir(d):
        return "new"
    last = os.path.join(d, "last.pt")
    result = final_evaluation(spec)
    if result is not None and (spec.group_by is None or result.get("group_by") == spec.group_by):
        return "done"
    if not os.path.isfile(last):
        return "broken"
    final = [e for e in _events(d) if e.get("kind") == "eval" and e.get("iteration") == spec.iterations]
    # the trainer logs the final evaluation, then writes last.pt: a kill in between leaves an older last.pt
    if final and os.path.getmtime(last) >= final[-1].get("time", math.inf):
        return "trained"
    return "partial"


def final_evaluation(spec: RunSpec) -> dict | None:
    """The run's recorded evaluation of its final last.pt (eval_<split>_last.json), or None.

    The checkpoint itself need not be there any more: a run folder trimmed to its small files (last.pt deleted to
    save space, or the folder copied elsewhere without it) still holds its result; the evaluation records the
    iteration it scored, and only the final one counts."""
    result = _read_json(spec.eval_file)
    if (isinstance(result, dict) and result.get("iteration") == spec.iterations
            and os.path.basename(str(result.get("checkpoint", ""))) == "last.pt"):
        return result
    return None


def check_eval_split(study: Study, specs: list[RunSpec], echo: Callable[[str], None] = print) -> None:
    """The held-out split must be readable before hours of training end in a failed evaluation."""
    from semiseg.config import config_from_dict

    seen = set()
    for spec in specs:
        # the labeled split does not change the held-out split: read each dataset once
        key = json.dumps({k: v for k, v in spec.data.items() if k != "labeled"}, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        if spec.data.get("val_split") == study.eval_split and len(seen) == 1:
            echo(f"note: eval_split {study.eval_split!r} is also the runs' validation split (data.val_split): "
                 "scores of last.pt are unbiased by checkpoint choice, but not by any tuning done on that split")
        from semiseg.engine.build import build_dataset

        try:
            build_dataset(config_from_dict({"data": spec.data}), study.eval_split)
        except Exception as e:  # any dataset error: missing folder, unknown split, ...
            raise StudyError(f"{study.path}: eval_split {study.eval_split!r} cannot be read for run {spec.name} "
                             f"({type(e).__name__}: {e}); name a split of the dataset that has labels") from None


def config_mismatch(spec: RunSpec) -> list[str]:
    """Differences between a run folder's config.yaml and what the study asks for (machine keys aside)."""
    saved = os.path.join(spec.run_dir, CONFIG)
    if not os.path.isfile(saved):
        return []
    try:
        have = config_to_dict(load_config(saved))
    except ConfigError as e:
        return [f"its config.yaml cannot be read ({e})"]
    return experiment_diff(config_to_dict(load_config(spec.recipe, spec.overrides)), have)


def experiment_diff(want: dict, have: dict) -> list[str]:
    """Where two resolved configs (as dicts) describe different experiments: one line per key that differs, the
    machine keys (MACHINE_KEYS: threads, the data's folder, precision, ...) aside; [] when they are the same
    experiment. The inputs are not changed."""
    return _diff(_without_machine_keys(copy.deepcopy(want)), _without_machine_keys(copy.deepcopy(have)))


def _without_machine_keys(config: dict) -> dict:
    """A resolved config (as a dict) with the keys that do not make another experiment removed, in place."""
    for key in MACHINE_KEYS:
        d = config
        *parents, leaf = key.split(".")
        for p in parents:
            d = d.get(p) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(leaf, None)
    return config


def config_digest(config: dict) -> str:
    """A short fingerprint of the experiment a resolved config describes (machine keys aside): study.json records
    it per run, so that a result kept after its run folder is gone is only reused for the same experiment."""
    text = json.dumps(_without_machine_keys(json.loads(json.dumps(config, default=str))), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _diff(want: dict, have: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(want) | set(have)):
        a, b = want.get(k), have.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: run has {b!r}, study asks {a!r}")
    return out


def move_aside(run_dir: str) -> str:
    """Rename a run folder that cannot be resumed to ``<run_dir>.failed-N`` (nothing is deleted)."""
    i = 1
    while os.path.exists(f"{run_dir}.failed-{i}"):
        i += 1
    target = f"{run_dir}.failed-{i}"
    os.replace(run_dir, target)
    return target


# ---------------------------------------------------------------------------------------------------
# commands and the process pool


def jobs_and_threads(jobs: int | None = None) -> tuple[int, int]:
    """Runs at once (``jobs``, default 2 where there are 2+ cores) and the threads each run gets (the cores shared)."""
    from semiseg.engine.threads import available_cores  # here: it imports torch, which the rest of a study never needs

    cores = available_cores()
    jobs = jobs or min(2, cores)
    return jobs, max(1, cores // jobs)


def commands(spec: RunSpec, state: str, threads: int) -> list[list[str]]:
    """The semiseg commands (argument lists after ``semiseg``) that bring a run from ``state`` to done."""
    train = ["train", "--no-progress"]
    steps = []
    if state in ("new", "broken"):
        steps.append([*train, "--config", spec.recipe, "--run-dir", spec.run_dir, *spec.overrides,
                      f"train.threads={threads}"])
    elif state == "partial":
        steps.append([*train, "--resume", spec.run_dir, f"train.threads={threads}"])
    if state != "done":
        group = ["--group-by", spec.group_by] if spec.group_by is not None else []
        steps.append(["eval", os.path.join(spec.run_dir, "last.pt"), "--split", spec.eval_split, *group,
                      "--out", spec.eval_file, "--threads", str(threads)])
    return steps


def worker_command(steps: list[list[str]]) -> list[str]:
    """One process for a run's steps: ``python -m semiseg.engine.study STEP --then STEP``."""
    argv = [sys.executable, "-m", "semiseg.engine.study"]
    for i, step in enumerate(steps):
        argv += (["--then"] if i else []) + step
    return argv


def run_steps(argv: list[str]) -> int:
    """The worker: semiseg commands separated by ``--then``, one after another in this process; stops at
    the first that fails and returns its exit code."""
    from semiseg.cli import main

    steps: list[list[str]] = [[]]
    for a in argv:
        if a == "--then":
            steps.append([])
        else:
            steps[-1].append(a)
    for step in steps:
        print(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} $ semiseg {shlex.join(step)}", flush=True)
        rc = main(step)
        if rc:
            return rc
    return 0


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # the children import this very semiseg, wherever it was imported from
    import semiseg

    root = os.path.dirname(os.path.dirname(os.path.abspath(semiseg.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = str(threads)
    env["TQDM_DISABLE"] = "1"  # no progress bars in the log files
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _child_setup(parent: int, niceness: int = 0) -> Callable[[], None] | None:
    """What a run's process does before it starts: die with the study (Linux) and, where ``niceness`` is set,
    lower its CPU priority by that much (POSIX ``nice``)."""
    die = _die_with_parent(parent)
    if not niceness or not hasattr(os, "nice"):
        return die

    def setup() -> None:
        if die is not None:
            die()
        os.nice(niceness)

    return setup


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """Linux: a child gets SIGTERM when the study process dies, even by kill -9, so that no orphaned run
    keeps writing into a folder the next study run resumes."""
    if not sys.platform.startswith("linux"):
        return None

    def set_pdeathsig() -> None:
        import ctypes

        try:
            ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the parent died before the prctl
            os._exit(1)

    return set_pdeathsig


class _Job:
    def __init__(self, spec: RunSpec, steps: list[list[str]]):
        self.spec, self.steps = spec, list(steps)
        self.proc: subprocess.Popen | None = None
        self.log = None
        self.started = 0.0


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


def execute(specs_states: list[tuple[RunSpec, str]], *, jobs: int, threads: int,
            echo: Callable[[str], None] = print, poll: float = 0.5,
            nice: dict[str, int] | None = None) -> dict[str, str | None]:
    """Bring every run to done, ``jobs`` subprocesses at a time; returns {run name: error or None}.

    ``nice``: {arm: niceness} lowers the CPU priority of that arm's runs. Scheduling only, no number changes: where
    runs that share the cores differ in length, the shorter one yields and the longest, which decides when the
    study ends, goes faster (the quickstart's supervised run; BENCHMARKS.md, Quickstart)."""
    env = _child_env(threads)
    pending = [_Job(spec, commands(spec, state, threads)) for spec, state in specs_states]
    pending = [j for j in pending if j.steps]
    running: list[_Job] = []
    outcome: dict[str, str | None] = {}
    total, finished = len(pending), 0

    def start(job: _Job) -> None:
        os.makedirs(os.path.dirname(job.spec.log), exist_ok=True)
        job.log = open(job.spec.log, "a", encoding="utf-8")
        setup = _child_setup(os.getpid(), (nice or {}).get(job.spec.arm, 0))
        job.proc = subprocess.Popen(worker_command(job.steps), stdout=job.log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, preexec_fn=setup)

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    except ValueError:  # not the main thread
        pass
    try:
        while pending or running:
            while pending and len(running) < jobs:
                job = pending.pop(0)
                job.started = time.time()
                echo(f"[{finished + len(running) + 1}/{total}] start {job.spec.name}  (log: {job.spec.log})")
                start(job)
                running.append(job)
            time.sleep(poll)
            for job in list(running):
                rc = job.proc.poll()
                if rc is None:
                    continue
                job.log.close()
                running.remove(job)
                finished += 1
                error = None if rc == 0 else f"exit code {rc}; see {job.spec.log}"
                if error is None and run_state(job.spec) != "done":
                    error = f"the evaluation did not record the final iteration {job.spec.iterations}; see {job.spec.log}"
                outcome[job.spec.name] = error
                took = time.time() - job.started
                echo(f"[{finished}/{total}] {'done' if error is None else 'FAILED'} {job.spec.name} "
                     f"({format_duration(took)}){'' if error is None else ': ' + error}")
    except (KeyboardInterrupt, _Interrupted):
        for job in running:
            if job.proc.poll() is None:
                job.proc.terminate()
        deadline = time.time() + 15
        for job in running:
            try:
                job.proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()
            job.log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} stopped: the study was interrupted\n")
            job.log.close()
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return outcome


# ---------------------------------------------------------------------------------------------------
# results


def _split_counts(run_dir: str) -> tuple[int | None, int | None]:
    labeled = total = None
    try:
        with open(os.path.join(run_dir, SPLIT), encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                key, _, value = line[1:].partition(":")
                if key.strip() == "labeled":
                    labeled = int(value)
                elif key.strip() == "total":
                    total = int(value)
    except (OSError, ValueError):
        pass
    return labeled, total


def collect(spec: RunSpec) -> dict:
    """What the table needs from one run folder (``miou`` None when the run is not done; ``groups`` {} when its
    evaluation has none: made before the study had ``group_by``, until the study is run again)."""
    result = final_evaluation(spec)
    done = result is not None
    labeled, total = _split_counts(spec.run_dir)
    events = _events(spec.run_dir)
    starts = [e for e in events if e.get("kind") in ("start", "resume")]
    metrics = (result or {}).get("metrics") or {}
    return {
        "name": spec.name, "arm": spec.arm, "labels": spec.labels.tag, "seed": spec.seed, "done": done,
        "n_labeled": labeled if labeled is not None else None, "n_train": total,
        "miou": metrics.get("miou") if done else None,
        "iou": dict(zip(result.get("classes", []), metrics.get("iou", []))) if done else None,
        "groups": {g: (r.get("metrics") or {}).get("miou") for g, r in (result.get("groups") or {}).items()}
        if done else None,
        "iteration": (result or {}).get("iteration"),
        "train_seconds": train_seconds(events) if done else None,
        "pseudo_labels": pseudo_label_summary(events, spec.iterations) if done else None,
        "threads": starts[-1].get("threads") if starts else None,
        # what the machine ran (precision `auto` resolved), per training segment when a resume changed it
        "precision": ", ".join(dict.fromkeys(str(e["precision"]) for e in starts if e.get("precision"))) or None,
        "run_dir": spec.run_dir, "config_digest": spec.digest,
    }


def _kept_results(specs: list[RunSpec], results: list[dict], previous: Any) -> tuple[list[dict], list[str], list[str]]:
    """Results of runs whose folders are gone (deleted to save space, or left on another machine), taken from the
    previous study.json when it recorded them finished with the same experiment (config digest). Returns the
    results with those filled in, the names kept, and the names whose earlier result could not be kept."""
    before = {r.get("name"): r for r in (previous or {}).get("runs", []) if isinstance(r, dict)} \
        if isinstance(previous, dict) else {}
    out, kept, lost = [], [], []
    for spec, result in zip(specs, results):
        old = before.get(spec.name)
        if result["done"] or os.path.exists(spec.run_dir) or not (old and old.get("done")):
            out.append(result)
        elif spec.digest is not None and old.get("config_digest") == spec.digest:
            out.append({**old, "kept": True})
            kept.append(spec.name)
        else:
            out.append(result)
            lost.append(spec.name)
    return out, kept, lost


def _matches(name: str, only: list[str] | None) -> bool:
    return not only or any(fnmatch.fnmatchcase(name, p) for p in only)


def write_results(study: Study, specs: list[RunSpec], out_dir: str, echo: Callable[[str], None] = print,
                  only: list[str] | None = None) -> dict:
    """study.md, study.json and study.png from the run folders; returns the JSON record. ``only`` (name patterns)
    narrows the table, the plot and the lists to the matching runs; study.json still records every run (it is the
    record that keeps the results of run folders that are gone)."""
    from semiseg.atomic import atomic_write_text

    json_path = os.path.join(out_dir, "study.json")
    previous = _read_json(json_path)
    results, kept, lost = _kept_results(specs, [collect(s) for s in specs], previous)
    if lost:  # the old study.json is the only record of those results: keep it beside the new one
        i = 1
        while os.path.exists(os.path.join(out_dir, f"study.previous-{i}.json")):
            i += 1
        backup = os.path.join(out_dir, f"study.previous-{i}.json")
        os.replace(json_path, backup)
        echo(f"note: {len(lost)} finished run(s) in {json_path} have no run folder any more and were made with other "
             f"settings than the study now asks for (or by an older semiseg): {', '.join(lost)}; "
             f"the old study.json is kept as {backup}")
    shown_specs = [s for s in specs if _matches(s.name, only)]
    shown = [r for r in results if _matches(r["name"], only)]
    tags = list(dict.fromkeys(s.labels.tag for s in sorted(shown_specs, key=lambda s: s.labels.sort_key())))
    label_text = {s.labels.tag: s.labels.text for s in specs}
    arms = [a for a in study.arms if any(s.arm == a for s in shown_specs)]
    rows = summarize(shown, baseline=study.baseline, arms=arms, labels=tags, seeds=study.seeds)
    table = markdown_table(rows, eval_split=study.eval_split, label_text=label_text)
    missing = [r["name"] for r in shown if not r["done"]]
    selection = f"Runs shown: those matching {' '.join(f'`{p}`' for p in only)}.\n\n" if only else ""
    text = (f"# Study {study.name}\n\nStudy file: `{study.path}`\n\n{selection}{table}\n\n"
            f"## Runs\n\n{runs_table(shown)}\n")
    if any(r.get("class_iou") for r in rows):
        text += f"\n## Per class\n\n{class_table(rows, label_text)}\n"
    if study.group_by is not None:
        text += f"\n## Per group\n\n{groups_table(shown, study.group_by)}\n"
    kept = [name for name in kept if _matches(name, only)]
    if kept:
        text += (f"\nKept from the previous study.json ({len(kept)}; their run folders are gone, the settings are the "
                 f"study's): {', '.join(kept)}.\n")
    if missing:
        text += f"\nNot finished yet ({len(missing)}): {', '.join(missing)}. Run the study again to finish them.\n"
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "study.md"), text)
    # run folders recorded relative to OUT, so a study folder copied or committed elsewhere still points at its runs
    recorded = [{**r, "run_dir": os.path.relpath(r["run_dir"], out_dir)} if os.path.isabs(r.get("run_dir") or "")
                else r for r in results]
    record = {"study": study.name, "file": study.path, "eval_split": study.eval_split, "group_by": study.group_by,
              "baseline": study.baseline, "only": only or None,
              "seeds": study.seeds, "rows": rows, "runs": recorded, "missing": missing}
    from semiseg.metrics import to_json_dict

    atomic_write_text(json_path, json.dumps(to_json_dict(record), indent=1))
    echo(table)
    if missing:
        echo(f"\n{len(missing)} of {len(shown)} runs not finished: {', '.join(missing)}")
    try:
        png = plot(rows, os.path.join(out_dir, "study.png"), title=study.name, eval_split=study.eval_split,
                   baseline=study.baseline)
        echo(f"\nwrote {os.path.join(out_dir, 'study.md')}, study.json, {os.path.basename(png)}")
    except ImportError:
        echo(f"\nwrote {os.path.join(out_dir, 'study.md')} and study.json; no plot: matplotlib is not installed "
             "(pip install 'semiseg[plots]')")
    return record


# ---------------------------------------------------------------------------------------------------
# the whole study


def default_out_dir(study: Study) -> str:
    return os.path.join("runs", "studies", study.name)


class _Lock:
    """One study process per output folder (released by the OS when the process dies, even by kill -9)."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, ".study.lock")
        self.file = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, "a+", encoding="utf-8")
        try:
            import fcntl

            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        except OSError:
            self.file.close()
            raise StudyError(f"another `semiseg study` is running with the output folder {os.path.dirname(self.path)}; "
                             "wait for it, or give this one another --out") from None
        return self

    def __exit__(self, *exc):
        self.file.close()


def _refuse_changed_settings(specs: list[RunSpec]) -> None:
    """StudyError naming every run folder whose config.yaml differs from what the study now asks for."""
    problems = []
    for spec in specs:
        diff = config_mismatch(spec)
        if diff:
            problems.append(f"{spec.run_dir}:\n    " + "\n    ".join(diff))
    if problems:
        raise StudyError("these runs were made with other settings than the study now asks for (a table mixing "
                         "them would compare different experiments):\n  " + "\n  ".join(problems)
                         + "\nmove them away (or use another --out), or undo the change to the study or recipe")


def run_study(study: Study, out_dir: str | None = None, *, jobs: int | None = None, only: list[str] | None = None,
              dry_run: bool = False, table_only: bool = False, echo: Callable[[str], None] = print,
              nice: dict[str, int] | None = None) -> int:
    """Plan, run what is missing, write the table. Returns 0 when every selected run is done, else 1.
    ``nice``: {arm: niceness}, see :func:`execute`."""
    out_dir = os.path.abspath(out_dir or default_out_dir(study))
    specs = expand(study, out_dir)
    selected = [s for s in specs if _matches(s.name, only)]
    if only and not selected:
        raise StudyError(f"--only {' '.join(only)} matches none of the runs: {', '.join(s.name for s in specs)}")
    if table_only:
        # a finished run made with other settings would put another experiment in the table under this study's name
        _refuse_changed_settings([s for s in selected if final_evaluation(s) is not None])
        write_results(study, specs, out_dir, echo, only=only)
        return 0
    check_eval_split(study, selected, echo)
    jobs, threads = jobs_and_threads(jobs or study.jobs)

    # the lock first: the states of the folders are only stable while no other study writes into them
    with contextlib.nullcontext() if dry_run else _Lock(out_dir):
        states = [(s, run_state(s)) for s in selected]
        _refuse_changed_settings([spec for spec, state in states if state in ("done", "trained", "partial")])

        actions = {"done": "skip (done)", "trained": "evaluate", "partial": "resume + evaluate",
                   "new": "train + evaluate", "broken": "move aside, train + evaluate"}
        echo(f"study {study.name}: {len(specs)} runs in {out_dir}/runs; {jobs} at a time, {threads} thread(s) each")
        for spec, state in states:
            echo(f"  {spec.name:<32} {actions[state]}")
        todo = [(s, st) for s, st in states if st != "done"]
        if dry_run:
            for spec, state in todo:
                for cmd in commands(spec, state, threads):
                    echo(shlex.join(["semiseg", *cmd]))
            return 0

        from semiseg.atomic import atomic_write_text

        with open(study.path, encoding="utf-8") as f:
            atomic_write_text(os.path.join(out_dir, "study.yaml"), f.read())
        for spec, state in todo:
            if state == "broken":
                echo(f"  {spec.name}: no checkpoint in the folder; moved to {move_aside(spec.run_dir)}")
        outcome = execute(todo, jobs=jobs, threads=threads, echo=echo, nice=nice) if todo else {}
        echo("")
        write_results(study, specs, out_dir, echo)
    failed = {k: v for k, v in outcome.items() if v}
    if failed:
        echo(f"\n{len(failed)} run(s) failed:\n  " + "\n  ".join(f"{k}: {v}" for k, v in failed.items()))
        return 1
    return 0


__all__ = ["StudyError", "Study", "Arm", "Labels", "RunSpec", "load_study", "expand", "run_state", "final_evaluation",
           "check_eval_split",
           "config_mismatch", "move_aside", "commands", "worker_command", "run_steps", "execute", "collect",
           "write_results", "run_study", "jobs_and_threads", "default_out_dir"]


if __name__ == "__main__":  # the worker of one run (see worker_command)
    raise SystemExit(run_steps(sys.argv[1:]))
