"""`semiseg quickstart --fast`: the whole pipeline of the README's first command, shortened for CI.

The full quickstart (two runs of 800 iterations on 64 px scenes) is timed in BENCHMARKS.md; this checks that every piece runs,
both arms train on the same split and seed, and every promised file is there.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from PIL import Image

from semiseg.cli import main
from semiseg.config import load_config
from semiseg.data.splits import Split
from semiseg.data.synthetic import DEFAULT_LENGTH as SYNTHETIC_LENGTH
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.quickstart import (LARGE_SCENES, LONG_STUDY_ITERATIONS, SMALL_SCENES_SEMI, STUDY_ITERATIONS,
                                      _budget_note, plan_jobs, quickstart_config, run_priorities, semi_options,
                                      write_study)
from semiseg.engine.quickstart_schedule import MIN_SPEEDUP, Schedule, choose_schedule, measure_step_seconds


@pytest.mark.slow
def test_quickstart_fast_trains_both_arms_on_one_split_and_reports_the_gain(tmp_path, capsys):
    run = str(tmp_path / "quickstart")
    assert main(["quickstart", "--fast", "--run-dir", run, "--predictions", "2"]) == 0
    out = capsys.readouterr().out
    assert "supervised on 4 labeled scenes" in out and "semi-supervised, + 28 unlabeled scenes" in out
    assert "gain" in out and run in out and "--fast checks that every piece runs" in out
    assert {"study.md", "study.json", "study.yaml", "recipe.yaml", "runs", "logs", "predictions"} <= set(os.listdir(run))
    sup, semi = (os.path.join(run, "runs", f"{arm}_1-8_s0") for arm in ("supervised", "semi-supervised"))
    a, b = load_config(os.path.join(sup, "config.yaml")), load_config(os.path.join(semi, "config.yaml"))
    assert a.method.name == "supervised" and b.method.name == "unimatch"
    assert b.method.options["teacher"] == "ema" and b.method.options["unsup_start"] == semi_options(20)["unsup_start"]
    assert b.method.options["paste_labeled"] is True and b.method.options["per_class_keep"] == 0.5  # the default arm
    assert a.train.seed == b.train.seed and a.data == b.data  # same data, split settings and seed
    assert Split.load(os.path.join(sup, "split.txt")).labeled == Split.load(os.path.join(semi, "split.txt")).labeled
    for d in (sup, semi):
        assert load_checkpoint(os.path.join(d, "last.pt"))["iteration"] == 20
        assert os.path.isfile(os.path.join(d, "eval_test_last.json"))
    record = json.load(open(os.path.join(run, "study.json")))
    by_arm = {r["arm"]: r for r in record["runs"]}
    assert f"{100 * by_arm['supervised']['miou']:5.1f}" in out and f"{100 * by_arm['semi-supervised']['miou']:5.1f}" in out
    preds = sorted(os.listdir(os.path.join(run, "predictions")))
    assert "test_00000_panel.png" in preds and "test_00001_semi-supervised.png" in preds and len(preds) == 6
    assert Image.open(os.path.join(run, "predictions", "test_00000_panel.png")).size == (4 * 256 + 12, 256)

    # a second quickstart never touches the first one (and --large-scenes' arm trains: the payoff study's recipe)
    assert main(["quickstart", "--fast", "--large-scenes", "--run-dir", run, "--predictions", "0",
                 "train.iterations=2"]) == 0
    assert os.path.isdir(run + "-2") and load_checkpoint(os.path.join(sup, "last.pt"))["iteration"] == 20
    large = load_config(os.path.join(run + "-2", "runs", "semi-supervised_1-8_s0", "config.yaml"))
    assert "paste_labeled" not in large.method.options and "per_class_keep" not in large.method.options


def test_large_scenes_is_the_payoff_studys_regime():
    cfg = quickstart_config(large_scenes=True)
    assert cfg.train.iterations == LARGE_SCENES["train.iterations"] == 200 and cfg.data.crop_size == [128, 128]
    assert cfg.model.name == "unet_small" and cfg.model.pretrained_backbone is False  # no download: runs offline
    assert cfg.data.options.get("length", SYNTHETIC_LENGTH["train"]) == 1000 and cfg.data.rotate90 and cfg.method.name == "supervised"
    assert cfg.optim.warmup_iters == 20  # the recipe's 10% warm-up, scaled to 200 iterations
    # --iters 1500 is the payoff study's schedule: both arms are then the study's recipes, warm-ups included
    study = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic",
                                     "consistency_unet_small_tuned_1-8.yaml"))
    long = quickstart_config(iterations=STUDY_ITERATIONS, large_scenes=True)
    assert long.optim == study.optim and long.model == study.model and long.loss == study.loss
    assert long.data.labeled == study.data.labeled and long.data.options == study.data.options
    for key in ("batch_size", "crop_size", "scale_range", "rotate90"):
        assert getattr(long.data, key) == getattr(study.data, key), key
    assert semi_options(STUDY_ITERATIONS, large_scenes=True) == study.method.options
    short = semi_options(300, large_scenes=True)  # warm-up and ramp keep their share of the schedule: 150 and 200 of 1,500
    assert (short["unsup_start"], short["unsup_rampup"]) == (30, 40)
    assert {k: v for k, v in short.items() if not k.startswith("unsup_")} == \
        {k: v for k, v in study.method.options.items() if not k.startswith("unsup_")}
    # --iters 3000 is the fourth regime: the study ran the same recipes with only train.iterations=3000
    longer = quickstart_config(iterations=LONG_STUDY_ITERATIONS, large_scenes=True)
    assert longer.train.iterations == 3000 and longer.optim == study.optim  # warm-up: the recipe's 150 steps
    assert semi_options(LONG_STUDY_ITERATIONS, large_scenes=True) == study.method.options


def test_the_default_is_the_study_that_measured_it(tmp_path):
    """BENCHMARKS.md reports the default regime's gains from configs/synthetic/study_quickstart_64px.yaml: the
    quickstart's two runs must be exactly that study's seed-0 runs (machine keys aside)."""
    from semiseg.config import config_to_dict
    from semiseg.engine.study import expand, experiment_diff, load_study

    study = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic", "study_quickstart_64px.yaml")
    measured = {s.arm: s for s in expand(load_study(study), str(tmp_path / "m")) if s.seed == 0}
    os.makedirs(tmp_path / "q")
    cfg = quickstart_config()
    assert cfg.data.crop_size == [64, 64] and cfg.train.iterations == 800 and cfg.optim.warmup_iters == 80
    assert cfg.model.name == "unet_small" and cfg.model.pretrained_backbone is False  # no download: runs offline
    quick = {s.arm: s for s in expand(load_study(write_study(str(tmp_path / "q"), cfg)), str(tmp_path / "q"))}
    for ours, theirs in (("supervised", "supervised"), ("semi-supervised", "semi")):
        a, b = (config_to_dict(load_config(s.recipe, s.overrides)) for s in (quick[ours], measured[theirs]))
        for config in (a, b):
            config["data"].pop("num_workers")  # a machine setting: the quickstart's scene worker
        assert experiment_diff(a, b) == [], ours
    assert semi_options(800) == {**semi_options(800, large_scenes=True), **SMALL_SCENES_SEMI}
    assert "per_class_keep" not in semi_options(200, large_scenes=True)
    # the printed note gives the gains measured with the run's thread count, and points --large-scenes' short
    # runs to the regime that pays
    assert "+3.0 / +8.0 / +5.8" in _budget_note(800, threads=1) and "+2.9 / +6.8 / +6.7" in _budget_note(800, threads=2)
    assert "were not measured" in _budget_note(500)
    assert "default `semiseg quickstart`" in _budget_note(200, large_scenes=True)
    assert _budget_note(STUDY_ITERATIONS, large_scenes=True) == ""


def test_quickstart_draws_scenes_in_a_worker_only_where_a_core_can_be_spared(monkeypatch):
    import semiseg.engine.threads as threads

    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert quickstart_config().data.num_workers == 1  # the free core after the supervised run ends draws the scenes
    assert quickstart_config(large_scenes=True).data.num_workers == 1
    assert quickstart_config(fast=True).data.num_workers == 0  # 20 steps: starting a worker costs more than it saves
    assert quickstart_config(jobs=1).data.num_workers == 0  # one run on 2 threads: a worker would stall them
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert quickstart_config().data.num_workers == 0  # 4 threads per run: not the measured setting, left as it was
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    assert quickstart_config().data.num_workers == 0  # one core: a worker would only compete with training
    assert load_config("synthetic/unet_small_1-8").data.num_workers == 0  # the study's recipe is unchanged


def test_the_supervised_run_yields_the_cores_only_where_the_two_runs_share_them(monkeypatch):
    import semiseg.engine.threads as threads

    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert run_priorities() == {"supervised": 10}  # side by side on one thread each: the long semi run goes first
    assert run_priorities(jobs=1) == {}  # one after the other: nothing to share
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert run_priorities() == {}  # 4 threads per run: they do not compete


def test_the_schedule_is_measured_where_the_default_regime_runs_on_2_cores_or_more(monkeypatch):
    import semiseg.engine.threads as threads

    asked = []

    def choose(cores):
        asked.append(cores)
        return Schedule(1, "measured")

    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert plan_jobs(None, choose=choose) == Schedule(1, "measured") and asked == [2]
    assert plan_jobs(2, choose=choose).jobs == 2 and plan_jobs(1, choose=choose).jobs == 1  # --jobs decides
    assert plan_jobs(None, fast=True, choose=choose).jobs == 2  # CI's smoke test: the tested side-by-side setting
    assert plan_jobs(None, large_scenes=True, choose=choose).jobs == 2  # the setting its 4.1 minutes were measured in
    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    assert plan_jobs(None, choose=choose).jobs == 1 and asked == [2]  # one core: nothing to choose


def test_choose_schedule_goes_one_after_the_other_only_when_all_threads_are_fast_enough(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMISEG_CACHE", str(tmp_path))
    monkeypatch.delenv("SEMISEG_REMEASURE", raising=False)
    calls = []

    def timing(speedup):
        def measure(threads):
            calls.append(threads)
            return speedup ** -math.log2(threads)  # each doubling of the threads `speedup` times faster
        return measure

    fast = choose_schedule(2, measure=timing(MIN_SPEEDUP + 0.1))
    assert fast.jobs == 1 and calls == [1, 2] and "measured, cached" in fast.reason
    assert (tmp_path / "schedule.json").is_file()
    again = choose_schedule(2, measure=timing(1.0))  # the cached timing decides: nothing is measured
    assert again.jobs == 1 and calls == [1, 2] and "cached" in again.reason
    monkeypatch.setenv("SEMISEG_REMEASURE", "1")
    slow = choose_schedule(2, measure=timing(MIN_SPEEDUP - 0.1))
    assert slow.jobs == 2 and calls == [1, 2, 1, 2] and "under the" in slow.reason
    monkeypatch.delenv("SEMISEG_REMEASURE")
    assert choose_schedule(2, measure=timing(9.0)).jobs == 2  # the new measurement replaced the old one
    # 8 cores: half of them against all of them, cached apart from the 2-core entry
    assert choose_schedule(8, measure=timing(MIN_SPEEDUP)).jobs == 1 and calls[-2:] == [4, 8]
    def broken(threads):
        raise RuntimeError("no kernels")

    monkeypatch.setenv("SEMISEG_REMEASURE", "1")
    with pytest.warns(UserWarning, match="timing the threads failed"):
        assert choose_schedule(2, measure=broken).jobs == 2
    monkeypatch.delenv("SEMISEG_REMEASURE")
    (tmp_path / "schedule.json").write_text("{not json")
    with pytest.warns(UserWarning, match="schedule cache"):
        assert choose_schedule(2, measure=timing(1.2)).jobs == 2


def test_measure_step_seconds_times_the_model_and_restores_the_thread_count():
    import torch

    before = torch.get_num_threads()
    seconds = measure_step_seconds(1, size=16, rounds=1)
    assert 0 < seconds < 60 and torch.get_num_threads() == before


def test_small_scenes_is_still_accepted_and_excludes_large_scenes(capsys):
    from semiseg.cli import build_parser

    args = build_parser("quickstart").parse_args(["quickstart", "--small-scenes"])  # the default since Q10; old commands still run
    assert args.small_scenes and not args.large_scenes
    with pytest.raises(SystemExit):
        build_parser("quickstart").parse_args(["quickstart", "--small-scenes", "--large-scenes"])
    assert "not allowed with" in capsys.readouterr().err
