"""semiseg study: the study file and its grid, run-state detection, the table maths, and one tiny study that is
killed (kill -9) midway and finished by running it again."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from semiseg.cli import main
from semiseg.config import dump_config, load_config
from semiseg.engine import study as st
from semiseg.engine import study_report as report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN = os.path.join(REPO, "configs", "synthetic")
BASE = os.path.join(SYN, "deeplabv3plus_mobilenetv2_1-8.yaml")
ADV = os.path.join(SYN, "advsemiseg_deeplabv3plus_mobilenetv2_1-8.yaml")
TINY = ["data.options={size: 32, length: 16}", "data.crop_size=[32,32]", "data.batch_size=2", "eval.batch_size=4",
        "train.iterations=3", "train.checkpoint_interval=1", "train.eval_interval=0", "train.tensorboard=false",
        "train.precision=fp32", "data.num_workers=0"]


def write_study(tmp_path, text: str, name: str = "study.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


STUDY = f"""
name: grid
recipe: {BASE}
set: [train.iterations=10, optim.lr=0.01]
arms:
  supervised: {{}}
  adv: {{recipe: {ADV}, set: [optim.lr=0.02]}}
baseline: supervised
labels: [0.125, 50]
seeds: [0, 1]
"""


# ---------------------------------------------------------------------------------------------------
# the study file and the grid


def test_grid_shares_split_and_seed_across_arms(tmp_path):
    study = st.load_study(write_study(tmp_path, STUDY), ["optim.lr=0.03"])
    specs = st.expand(study, str(tmp_path / "out"))
    names = [s.name for s in specs]
    assert names == ["supervised_1-8_s0", "adv_1-8_s0", "supervised_n50_s0", "adv_n50_s0", "supervised_all_s0",
                     "supervised_1-8_s1", "adv_1-8_s1", "supervised_n50_s1", "adv_n50_s1", "supervised_all_s1"]
    cfgs = {s.name: load_config(s.recipe, s.overrides) for s in specs}
    for tag in ("1-8", "n50"):
        for seed in (0, 1):
            a, b = cfgs[f"supervised_{tag}_s{seed}"], cfgs[f"adv_{tag}_s{seed}"]
            assert (a.method.name, b.method.name) == ("supervised", "advsemiseg")
            for c in (a, b):  # the same split and the same seed for both arms
                assert c.train.seed == c.data.labeled.seed == seed
            assert (a.data.labeled.fraction, a.data.labeled.count) == (b.data.labeled.fraction, b.data.labeled.count)
    assert cfgs["adv_1-8_s0"].data.labeled.fraction == 0.125 and cfgs["adv_1-8_s0"].data.labeled.count is None
    assert cfgs["adv_n50_s1"].data.labeled.count == 50 and cfgs["adv_n50_s1"].data.labeled.fraction is None
    full = cfgs["supervised_all_s1"].data.labeled
    assert full.fraction is None and full.count is None and full.id_file is None
    # order: the file's set, the arm's set, the command line's --set
    assert cfgs["adv_1-8_s0"].optim.lr == cfgs["supervised_1-8_s0"].optim.lr == 0.03
    assert all(c.train.iterations == 10 for c in cfgs.values())
    assert {s.iterations for s in specs} == {10}
    s = specs[0]
    assert s.run_dir == str(tmp_path / "out" / "runs" / "supervised_1-8_s0")
    assert s.log == str(tmp_path / "out" / "logs" / "supervised_1-8_s0.log")
    assert s.eval_file.endswith("eval_test_last.json")


@pytest.mark.parametrize("change, message", [
    (("labels: [0.125, 50]", "labels: [0]"), "not a positive image count"),
    (("labels: [0.125, 50]", "labels: [1.5]"), "not a fraction in (0, 1]"),
    (("labels: [0.125, 50]", "labels: [eighth]"), "neither a fraction"),
    (("baseline: supervised", "baseline: sup"), "baseline 'sup' is not one of the arms"),
    (("set: [train.iterations=10, optim.lr=0.01]", "set: [train.seed=3]"), "sets train.seed"),
    (("seeds: [0, 1]", "seeds: [0, 0]"), "distinct integers"),
    (("name: grid", "nme: grid"), "unknown key(s) 'nme'"),
    (("name: grid", "name: grid\ngroup_by: ''"), "group_by must be a separator"),
    ((f"recipe: {ADV}", "recipe: no_such_recipe.yaml"), "arm 'adv' recipe 'no_such_recipe.yaml' not found"),
    ((f"recipe: {BASE}", "recipe: missing/base.yaml"), "recipe 'missing/base.yaml' not found"),
])
def test_study_file_errors_name_the_problem(tmp_path, change, message):
    path = write_study(tmp_path, STUDY.replace(*change))
    with pytest.raises(st.StudyError) as e:
        st.load_study(path)
    assert message in str(e.value) and path in str(e.value)


def test_bad_override_fails_before_anything_runs(tmp_path):
    study = st.load_study(write_study(tmp_path, STUDY), ["optim.lrr=1"])
    with pytest.raises(st.StudyError, match="optim.lrr"):
        st.expand(study, str(tmp_path / "out"))
    with pytest.raises(st.StudyError, match="data.labeled.seed"):
        st.load_study(write_study(tmp_path, STUDY), ["data.labeled.seed=4"])
    # a misspelt method name or method option is caught for every run before the first one starts
    with pytest.raises(st.StudyError, match="run supervised_1-8_s0 .*unknown method.name 'advsemi'"):
        st.expand(st.load_study(write_study(tmp_path, STUDY), ["method.name=advsemi"]), str(tmp_path / "out"))


def test_cli_dry_run_and_errors(tmp_path, capsys):
    path = write_study(tmp_path, STUDY)
    out = tmp_path / "out"
    assert main(["study", path, "--out", str(out), "--dry-run", "--jobs", "2", "--only", "adv_*"]) == 0
    text = capsys.readouterr().out
    assert "10 runs" in text and "adv_1-8_s0" in text and "train + evaluate" in text
    assert "--run-dir " + str(out / "runs" / "adv_n50_s1") in text
    assert "--run-dir " + str(out / "runs" / "supervised_1-8_s0") not in text  # --only adv_*
    assert not out.exists()  # a dry run writes nothing
    assert main(["study", str(tmp_path / "nope.yaml")]) == 2
    assert "study file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# run state


def _spec(tmp_path, iterations=3) -> st.RunSpec:
    d = tmp_path / "runs" / "a_1-8_s0"
    return st.RunSpec(name="a_1-8_s0", arm="a", labels=st.Labels(fraction=0.125), seed=0, recipe=BASE,
                      overrides=list(TINY), run_dir=str(d), log=str(tmp_path / "logs" / "a.log"), eval_split="test",
                      iterations=iterations)


def _event(kind, iteration, t):
    return json.dumps({"kind": kind, "iteration": iteration, "time": t}) + "\n"


def test_run_state_from_the_files_semiseg_writes(tmp_path):
    spec = _spec(tmp_path)
    d = spec.run_dir
    assert st.run_state(spec) == "new"
    os.makedirs(d)
    assert st.run_state(spec) == "new"  # empty folder
    open(os.path.join(d, "config.yaml"), "w").close()
    assert st.run_state(spec) == "broken"  # killed before its first checkpoint
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write(_event("start", 0, 100.0) + _event("train", 2, 101.0) + '{"kind": "tra')  # a line cut by kill -9
    open(os.path.join(d, "last.pt"), "w").close()
    assert st.run_state(spec) == "partial"
    # the final evaluation logged, but killed before last.pt was written after it: still partial
    with open(os.path.join(d, "metrics.jsonl"), "a") as f:
        f.write("\n" + _event("eval", 3, time.time() + 60))
    assert st.run_state(spec) == "partial"
    with open(os.path.join(d, "metrics.jsonl"), "a") as f:
        f.write(_event("eval", 3, 102.0))
    assert st.run_state(spec) == "trained"
    result = {"checkpoint": os.path.join(d, "last.pt"), "iteration": 2, "metrics": {"miou": 0.5}}
    with open(spec.eval_file, "w") as f:
        json.dump(result, f)
    assert st.run_state(spec) == "trained"  # an evaluation of an earlier last.pt does not count
    result["iteration"] = 3
    with open(spec.eval_file, "w") as f:
        json.dump(result, f)
    assert st.run_state(spec) == "done"
    with open(spec.eval_file, "w") as f:
        json.dump({**result, "checkpoint": os.path.join(d, "best.pt")}, f)
    assert st.run_state(spec) == "trained"  # never a checkpoint picked by validation
    # a study that scores groups of images wants an evaluation with them: one without is made again
    grouped = st.RunSpec(**{**spec.__dict__, "group_by": "_"})
    with open(spec.eval_file, "w") as f:
        json.dump(result, f)
    assert st.run_state(spec) == "done" and st.run_state(grouped) == "trained"
    with open(spec.eval_file, "w") as f:
        json.dump({**result, "group_by": "_", "groups": {}}, f)
    assert st.run_state(grouped) == "done"


def test_commands_per_state(tmp_path):
    spec = _spec(tmp_path)
    new = st.commands(spec, "new", threads=3)
    assert [c[0] for c in new] == ["train", "eval"]
    assert new[0][-1] == "train.threads=3" and "--run-dir" in new[0] and spec.overrides[0] in new[0]
    assert new[1][1:] == [os.path.join(spec.run_dir, "last.pt"), "--split", "test", "--out", spec.eval_file,
                          "--threads", "3"]
    resume = st.commands(spec, "partial", threads=1)
    assert resume[0] == ["train", "--no-progress", "--resume", spec.run_dir, "train.threads=1"]
    assert [c[0] for c in st.commands(spec, "trained", threads=1)] == ["eval"]
    assert st.commands(spec, "done", threads=1) == []
    grouped = st.RunSpec(**{**spec.__dict__, "group_by": "_"})
    assert st.commands(grouped, "trained", threads=1)[0][2:6] == ["--split", "test", "--group-by", "_"]
    # one process per run: the steps joined by --then
    worker = st.worker_command(resume)
    assert worker[1:3] == ["-m", "semiseg.engine.study"] and worker.count("--then") == 1
    assert worker[3:].index("--then") == len(resume[0])


def test_move_aside_keeps_everything(tmp_path):
    d = tmp_path / "runs" / "r"
    d.mkdir(parents=True)
    (d / "notes.txt").write_text("mine")
    (tmp_path / "runs" / "r.failed-1").mkdir()
    target = st.move_aside(str(d))
    assert target == str(d) + ".failed-2" and not d.exists()
    assert (tmp_path / "runs" / "r.failed-2" / "notes.txt").read_text() == "mine"


def test_changed_settings_are_refused(tmp_path):
    path = write_study(tmp_path, STUDY)
    out = tmp_path / "out"
    study = st.load_study(path)
    spec = st.expand(study, str(out))[0]
    os.makedirs(spec.run_dir)
    # the run's saved config: what the study asks for, with a machine-dependent thread count
    dump_config(load_config(spec.recipe, [*spec.overrides, "train.threads=7"]), os.path.join(spec.run_dir, "config.yaml"))
    open(os.path.join(spec.run_dir, "last.pt"), "w").close()
    assert st.config_mismatch(spec) == []
    changed = st.load_study(path, ["optim.lr=0.5"])
    spec2 = st.expand(changed, str(out))[0]
    assert st.config_mismatch(spec2) == ["optim.lr: run has 0.01, study asks 0.5"]
    with pytest.raises(st.StudyError, match="optim.lr: run has 0.01, study asks 0.5"):
        st.run_study(changed, str(out), dry_run=True, echo=lambda s: None)


def test_experiment_diff_ignores_machine_keys_and_leaves_its_inputs_alone():
    want = {"name": "a", "train": {"threads": 1, "iterations": 800}, "optim": {"lr": 0.01}}
    have = {"name": "b", "train": {"threads": 2, "iterations": 800}, "optim": {"lr": 0.5}}
    assert st.experiment_diff(want, have) == ["optim.lr: run has 0.5, study asks 0.01"]
    assert want["train"]["threads"] == 1 and have["name"] == "b"  # copies were trimmed, not the caller's dicts
    assert st.experiment_diff(want, {**want, "name": "c", "train": {"threads": 4, "iterations": 800}}) == []
    # the same data in another folder (another machine) is the same experiment; other data is not
    here = {**want, "data": {"root": "../shared/data/camvid", "kind": "camvid"}}
    there = {**want, "data": {"root": "/data/camvid", "kind": "camvid"},
             "train": {**want["train"], "precision": "fp32", "channels_last": True}}  # `auto` resolves per machine
    assert st.experiment_diff(here, there) == [] and st.config_digest(here) == st.config_digest(there)
    assert st.experiment_diff(here, {**there, "data": {"root": "/data/voc", "kind": "voc"}}) == [
        "data.kind: run has 'voc', study asks 'camvid'"]


def test_table_only_refuses_finished_runs_made_with_other_settings(tmp_path, capsys):
    path, out, specs = _one_seed_study_with_finished_runs(tmp_path)
    adv = specs["adv_1-8_s0"]
    dump_config(load_config(adv.recipe, adv.overrides), os.path.join(adv.run_dir, "config.yaml"))
    assert main(["study", path, "--out", str(out), "--table-only"]) == 0
    changed = write_study(tmp_path, open(path).read().replace("optim.lr=0.02", "optim.lr=0.05"))
    before = (out / "study.md").read_text()
    capsys.readouterr()
    assert main(["study", changed, "--out", str(out), "--table-only"]) == 2
    err = capsys.readouterr().err
    assert adv.run_dir in err and "optim.lr: run has 0.02, study asks 0.05" in err
    assert (out / "study.md").read_text() == before  # the table of the old settings is left as it was


def test_train_seconds_sums_sessions():
    events = [{"kind": "start", "time": 100.0}, {"kind": "train", "time": 110.0},
              {"kind": "resume", "time": 500.0}, {"kind": "train", "time": 520.0}, {"kind": "eval", "time": 530.0}]
    assert report.train_seconds(events) == pytest.approx(40.0)
    assert report.train_seconds([]) is None


# ---------------------------------------------------------------------------------------------------
# the table


def _result(arm, labels, seed, miou, n=125, secs=60.0):
    return {"name": f"{arm}_{labels}_s{seed}", "arm": arm, "labels": labels, "seed": seed, "done": miou is not None,
            "miou": miou, "n_labeled": n, "train_seconds": secs}


def test_table_maths():
    base = {0: 0.30, 1: 0.32, 2: 0.31}
    good = {0: 0.37, 1: 0.38, 2: 0.36}       # gains .07 .06 .05: the smallest, .05, > 2 x spread .02
    small = {0: 0.335, 1: 0.345, 2: 0.345}   # gains .035 .025 .035: every seed, mean .0317 < .04
    bad = {0: 0.20, 1: 0.21, 2: 0.22}        # every seed worse by far
    full = {0: 0.50, 1: 0.52, 2: 0.48}
    results = [_result("sup", "1-8", s, v) for s, v in base.items()]
    results += [_result("good", "1-8", s, v) for s, v in good.items()]
    results += [_result("small", "1-8", s, v) for s, v in small.items()]
    results += [_result("bad", "1-8", s, v) for s, v in bad.items()]
    results += [_result("sup", "all", s, v, n=1000) for s, v in full.items()]
    rows = report.summarize(results, baseline="sup", arms=["sup", "good", "small", "bad"], labels=["1-8", "all"],
                        seeds=[0, 1, 2])
    by = {(r["arm"], r["labels"]): r for r in rows}
    assert [(r["arm"], r["labels"]) for r in rows] == [("sup", "1-8"), ("good", "1-8"), ("small", "1-8"),
                                                       ("bad", "1-8"), ("sup", "all")]
    b = by["sup", "1-8"]
    assert b["mean"] == pytest.approx(0.31) and b["min"] == 0.30 and b["max"] == 0.32
    assert b["std"] == pytest.approx(0.01) and b["verdict"] == "baseline" and b["gain_mean"] is None
    g = by["good", "1-8"]
    assert g["gain_mean"] == pytest.approx(0.06) and g["gain_min"] == pytest.approx(0.05)
    assert g["gain_max"] == pytest.approx(0.07) and g["gains"] == pytest.approx({0: 0.07, 1: 0.06, 2: 0.05})
    assert g["share_of_gap"] == pytest.approx(0.06 / (0.50 - 0.31))
    assert g["verdict"] == "helps"
    assert by["small", "1-8"]["verdict"] == "no clear effect"
    assert by["bad", "1-8"]["verdict"] == "hurts" and by["bad", "1-8"]["share_of_gap"] < 0
    assert by["sup", "all"]["verdict"] == "ceiling" and by["sup", "all"]["n_labeled"] == 1000

    md = report.markdown_table(rows, eval_split="test", label_text={"1-8": "1/8", "all": "all"})
    assert "| good | 1/8 | 125 | 3 | **37.0** | 36.0-38.0 | 1.0 | +6.0 (+5.0..+7.0) | 32% | helps | 60 s |" in md
    assert "| sup | all | 1000 | 3 | **50.0** |" in md and "twice the baseline's seed-to-seed spread" in md


def test_table_with_missing_runs_and_no_ceiling():
    results = [_result("sup", "1-8", 0, 0.30), _result("sup", "1-8", 1, None), _result("x", "1-8", 0, 0.33),
               _result("x", "1-8", 1, 0.34)]
    rows = report.summarize(results, baseline="sup", arms=["sup", "x"], labels=["1-8"], seeds=[0, 1])
    x = rows[1]
    assert x["gains"] == pytest.approx({0: 0.03}) and x["share_of_gap"] is None  # no full-label run
    assert x["verdict"] == "needs 2+ seeds"
    assert "| sup | 1-8 | 125 | 1 of 2 |" in report.markdown_table(rows, eval_split="test", label_text={})


@pytest.mark.parametrize("gains, spread, expected", [
    ([0.05, 0.05], 0.025, "no clear effect"),  # exactly twice the spread is not more than twice
    ([0.05, 0.05], 0.02, "helps"),
    ([0.10, -0.01], 0.0, "no clear effect"),   # not on every seed
    ([0.10, 0.03], 0.02, "no clear effect"),   # the mean (0.065) clears twice the spread, the smaller gain does not
    ([-0.05, -0.06], 0.01, "hurts"),
    ([0.05], 0.0, "needs 2+ seeds"),
])
def test_verdict_rule(gains, spread, expected):
    assert report.verdict(gains, spread) == expected


def test_gap_closed_undefined_when_baseline_reaches_ceiling():
    results = [_result("sup", "1-8", s, 0.5) for s in (0, 1)] + [_result("x", "1-8", s, 0.55) for s in (0, 1)]
    results += [_result("sup", "all", s, 0.5) for s in (0, 1)]
    rows = report.summarize(results, baseline="sup", arms=["sup", "x"], labels=["1-8", "all"], seeds=[0, 1])
    assert rows[1]["share_of_gap"] is None and rows[1]["verdict"] == "helps"


def _fake_run(spec, miou, *, labeled, total, iou=(0.9, 0.1)):
    d = spec.run_dir
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "last.pt"), "w").close()
    with open(os.path.join(d, "split.txt"), "w") as f:
        f.write(f"# semiseg split v1\n# seed: {spec.seed}\n# labeled: {labeled}\n# unlabeled: {total - labeled}\n"
                f"# total: {total}\n[labeled]\n")
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"kind": "start", "iteration": 0, "time": 10.0, "threads": 1}) + "\n")
        f.write(_event("eval", spec.iterations, 40.0))
    with open(spec.eval_file, "w") as f:
        json.dump({"checkpoint": os.path.join(d, "last.pt"), "iteration": spec.iterations, "classes": ["bg", "fg"],
                   "metrics": {"miou": miou, "iou": list(iou)}}, f)


def test_table_only_from_run_folders(tmp_path, capsys):
    path = write_study(tmp_path, STUDY.replace("labels: [0.125, 50]", "labels: [0.125]") + "group_by: _\n")
    out = tmp_path / "out"
    study = st.load_study(path)
    specs = {s.name: s for s in st.expand(study, str(out))}
    values = {"supervised_1-8_s0": 0.30, "supervised_1-8_s1": 0.31, "adv_1-8_s0": 0.34, "supervised_all_s0": 0.5,
              "supervised_all_s1": 0.52}
    class_iou = {"supervised_1-8_s0": (0.8, 0.2), "supervised_1-8_s1": (0.6, 0.3)}
    for name, v in values.items():
        _fake_run(specs[name], v, labeled=1000 if "all" in name else 125, total=1000,
                  iou=class_iou.get(name, (0.9, 0.1)))
    # one evaluation per group (dusk, day); the others were made without groups and still count in the table
    adv = json.load(open(specs["adv_1-8_s0"].eval_file))
    adv.update(group_by="_", groups={"dusk": {"images": 2, "metrics": {"miou": 0.2}},
                                     "day": {"images": 6, "metrics": {"miou": 0.4}}})
    json.dump(adv, open(specs["adv_1-8_s0"].eval_file, "w"))
    assert main(["study", path, "--out", str(out), "--table-only"]) == 0
    printed = capsys.readouterr().out
    md = (out / "study.md").read_text()
    assert "| adv | 1/8 | 125 | 1 of 2 | **34.0** |" in md and "| supervised | all | 1000 | 2 | **51.0** |" in md
    assert "Not finished yet (1): adv_1-8_s1" in md and "adv_1-8_s1" in printed
    per_group = md.split("## Per group", 1)[1]
    assert "| run | day | dusk | all |" in per_group and "| adv_1-8_s0 | 40.0 | 20.0 | 34.0 |" in per_group
    assert "| supervised_1-8_s0 | - | - | 30.0 |" in per_group
    per_class = md.split("## Per class", 1)[1].split("## Per group", 1)[0]
    assert "| method | labels | seeds | mIoU | bg | fg |" in per_class
    assert "| supervised | 1/8 | 2 | 30.5 | 70.0 | 25.0 |" in per_class  # the mean over the row's two seeds
    assert "| adv | 1/8 | 1 | 34.0 | 90.0 | 10.0 |" in per_class
    record = json.loads((out / "study.json").read_text())
    assert record["rows"][0]["class_iou"] == pytest.approx({"bg": 0.7, "fg": 0.25})
    run = next(r for r in record["runs"] if r["name"] == "adv_1-8_s0")
    assert run["miou"] == 0.34 and run["iou"] == {"bg": 0.9, "fg": 0.1} and run["train_seconds"] == 30.0
    row = next(r for r in record["rows"] if r["arm"] == "adv")
    assert row["gain_mean"] == pytest.approx(0.04) and row["share_of_gap"] == pytest.approx(0.04 / 0.21)
    pytest.importorskip("matplotlib")
    assert (out / "study.png").stat().st_size > 0


def test_plot_pairs_each_seed_across_the_arms():
    """The right panel draws one line per (label setting, seed) through the arms that ran it, baseline first; a seed
    with one arm only has nothing to pair and draws nothing."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def res(arm, tag, seed, miou, n):
        return {"arm": arm, "labels": tag, "seed": seed, "miou": miou, "n_labeled": n, "train_seconds": 1.0}

    results = [res("sup", "12", 1, 0.287, 12), res("sup", "12", 2, 0.268, 12), res("x", "12", 1, 0.363, 12),
               res("x", "12", 2, 0.389, 12), res("sup", "46", 1, 0.395, 46), res("x", "46", 2, 0.41, 46)]
    rows = report.summarize(results, baseline="sup", arms=["sup", "x"], labels=["12", "46"], seeds=[1, 2])
    ax = Figure().add_subplot()
    report._plot_paired(ax, rows, ["sup", "x"])
    lines = {line.get_label(): [round(y, 1) for y in line.get_ydata()] for line in ax.get_lines()}
    assert lines == {"12 labeled, seed 1": [28.7, 36.3], "12 labeled, seed 2": [26.8, 38.9]}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sup", "x"]


def _one_seed_study_with_finished_runs(tmp_path):
    """A study of 1/8 labels, seed 0 (supervised, adv, the ceiling), each run finished: (path, out, specs)."""
    path = write_study(tmp_path, STUDY.replace("labels: [0.125, 50]", "labels: [0.125]").replace("seeds: [0, 1]",
                                                                                                  "seeds: [0]"))
    out = tmp_path / "out"
    specs = {s.name: s for s in st.expand(st.load_study(path), str(out))}
    for name, v in {"supervised_1-8_s0": 0.30, "adv_1-8_s0": 0.34, "supervised_all_s0": 0.5}.items():
        _fake_run(specs[name], v, labeled=1000 if "all" in name else 125, total=1000)
    return path, out, specs


def test_runs_table_shows_the_pseudo_labels_each_semi_supervised_run_ended_on(tmp_path):
    path, out, specs = _one_seed_study_with_finished_runs(tmp_path)
    # the precision each training segment ran in (here resumed on a machine where `auto` chose another)
    with open(os.path.join(specs["supervised_1-8_s0"].run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"kind": "start", "iteration": 0, "time": 1.0, "threads": 1, "precision": "bf16"}) + "\n")
        f.write(json.dumps({"kind": "resume", "iteration": 5, "time": 2.0, "threads": 1, "precision": "fp32"}) + "\n")
    # 10 iterations: the last 10% is step 10 only; AdvSemiSeg logs its self-taught share as semi_ratio
    with open(os.path.join(specs["adv_1-8_s0"].run_dir, "metrics.jsonl"), "a") as f:
        for it, ratio in [(5, 0.9), (9, 0.8), (10, 0.02)]:
            f.write(json.dumps({"kind": "train", "iteration": it, "loss": 1.0, "semi_ratio": ratio}) + "\n")
    assert main(["study", path, "--out", str(out), "--table-only"]) == 0
    runs = (out / "study.md").read_text().split("## Runs", 1)[1]
    assert "| threads | precision | train time | pseudo labels kept / right (last 10% of steps) |" in runs
    assert "| supervised_1-8_s0 | 30.0 | 10 | 125 | 1 | bf16, fp32 |" in runs
    assert "| adv_1-8_s0 | 34.0 | 10 | 125 | 1 | - |" in runs
    assert "| adv_1-8_s0 | 34.0 |" in runs and runs.split("| adv_1-8_s0 |", 1)[1].split("\n")[0].endswith(" 2% / - |")
    assert runs.split("| supervised_1-8_s0 |", 1)[1].split("\n")[0].endswith(" - |")
    record = json.loads((out / "study.json").read_text())
    assert next(r for r in record["runs"] if r["name"] == "adv_1-8_s0")["pseudo_labels"] == {"kept": 0.02, "right": None}

    from semiseg.engine.study_report import pseudo_label_summary
    events = [{"kind": "train", "iteration": i, "mask_ratio": 0.5, "pseudo_acc": acc}
              for i, acc in [(80, 0.1), (95, 0.8), (100, float("nan")), (100, 0.9)]]
    assert pseudo_label_summary(events, 100) == {"kept": 0.5, "right": pytest.approx(0.85)}  # steps 91-100, NaN out
    assert pseudo_label_summary([{"kind": "train", "iteration": 100, "loss": 1.0}], 100) is None


def test_table_only_with_only_shows_the_matching_runs_and_still_records_every_run(tmp_path, capsys):
    import shutil

    path, out, specs = _one_seed_study_with_finished_runs(tmp_path)
    assert main(["study", path, "--out", str(out), "--table-only"]) == 0
    shutil.rmtree(specs["adv_1-8_s0"].run_dir)  # its result now lives only in study.json
    capsys.readouterr()
    assert main(["study", path, "--out", str(out), "--table-only", "--only", "supervised_*"]) == 0
    md = (out / "study.md").read_text()
    assert "Runs shown: those matching `supervised_*`." in md
    assert "| supervised | 1/8 | 125 | 1 | **30.0** |" in md and "| supervised | all | 1000 | 1 | **50.0** |" in md
    assert "| adv |" not in md and "adv_1-8_s0" not in md
    record = json.loads((out / "study.json").read_text())
    assert record["only"] == ["supervised_*"] and {r["arm"] for r in record["rows"]} == {"supervised"}
    adv = next(r for r in record["runs"] if r["name"] == "adv_1-8_s0")
    assert adv["miou"] == 0.34 and adv["kept"] is True  # the narrowed table did not drop the kept record
    assert main(["study", path, "--out", str(out), "--table-only"]) == 0
    assert "| adv_1-8_s0 | 34.0 (kept) |" in (out / "study.md").read_text()


def test_a_run_folder_trimmed_to_its_small_files_is_still_done(tmp_path, capsys):
    """Checkpoints are big: a run folder kept (or committed) without last.pt still holds its final result."""
    path, out, specs = _one_seed_study_with_finished_runs(tmp_path)
    spec = specs["adv_1-8_s0"]
    os.remove(os.path.join(spec.run_dir, "last.pt"))
    assert st.run_state(spec) == "done" and st.commands(spec, st.run_state(spec), threads=1) == []
    assert main(["study", path, "--out", str(out), "--table-only"]) == 0
    md = (out / "study.md").read_text()
    assert "| adv | 1/8 | 125 | 1 | **34.0** |" in md and "(kept)" not in md and "Not finished" not in md
    # an evaluation of an earlier checkpoint is not the run's result, with or without last.pt
    result = json.load(open(spec.eval_file))
    json.dump({**result, "iteration": spec.iterations - 1}, open(spec.eval_file, "w"))
    assert st.final_evaluation(spec) is None and st.run_state(spec) == "broken"


def test_table_only_keeps_results_whose_run_folders_are_gone(tmp_path, capsys):
    """Deleting run folders (checkpoints are big) or moving machines must not erase finished results from the table;
    a result is only kept for the same experiment, and an old study.json that cannot be kept is backed up."""
    import shutil

    path, out, specs = _one_seed_study_with_finished_runs(tmp_path)
    assert main(["study", path, "--out", str(out), "--table-only"]) == 0
    first = json.loads((out / "study.json").read_text())
    shutil.rmtree(specs["adv_1-8_s0"].run_dir)
    capsys.readouterr()

    assert main(["study", path, "--out", str(out), "--table-only"]) == 0
    md = (out / "study.md").read_text()
    assert "| adv | 1/8 | 125 | 1 | **34.0** |" in md and "| adv_1-8_s0 | 34.0 (kept) |" in md
    assert "Kept from the previous study.json (1; their run folders are gone" in md and "Not finished" not in md
    second = json.loads((out / "study.json").read_text())
    assert second["rows"] == first["rows"]
    assert next(r for r in second["runs"] if r["name"] == "adv_1-8_s0")["kept"] is True
    assert main(["study", path, "--out", str(out), "--table-only"]) == 0  # kept again from the kept record
    assert "| adv_1-8_s0 | 34.0 (kept) |" in (out / "study.md").read_text()

    # another experiment (the adv arm's learning rate changed): its old result must not fill the new cell
    changed = write_study(tmp_path, open(path).read().replace("optim.lr=0.02", "optim.lr=0.05"))
    capsys.readouterr()
    assert main(["study", changed, "--out", str(out), "--table-only"]) == 0
    assert "adv_1-8_s0" in capsys.readouterr().out.split("note:", 1)[1]
    md = (out / "study.md").read_text()
    assert "Not finished yet (1): adv_1-8_s0" in md and "(kept)" not in md
    backup = json.loads((out / "study.previous-1.json").read_text())
    assert next(r for r in backup["runs"] if r["name"] == "adv_1-8_s0")["miou"] == 0.34


# ---------------------------------------------------------------------------------------------------
# end to end: kill -9 the study midway, run it again


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, waiting to be reaped
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_children_die_with_the_study():
    """kill -9 of the study must not leave a run writing on: the next study run would resume that folder."""
    code = ("import os, subprocess, sys, time\n"
            "from semiseg.engine.study import _die_with_parent\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " preexec_fn=_die_with_parent(os.getpid()))\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": REPO})
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive


@pytest.mark.skipif(not hasattr(os, "nice"), reason="POSIX niceness")
def test_an_arm_can_run_at_a_lower_cpu_priority(tmp_path, monkeypatch):
    """execute(nice={arm: n}): that arm's run processes start n nicer than the study, the others as the study."""
    study = st.load_study(write_study(tmp_path, STUDY))
    specs = [s for s in st.expand(study, str(tmp_path / "out")) if s.seed == 0 and s.labels.tag == "1-8"]
    assert sorted(s.arm for s in specs) == ["adv", "supervised"]
    # each "run" only writes the niceness it runs at into a file named after it
    monkeypatch.setattr(st, "commands", lambda spec, state, threads: [[os.path.join(str(tmp_path), spec.name)]])
    monkeypatch.setattr(st, "worker_command", lambda steps: [
        sys.executable, "-c", f"import os; open({steps[0][0]!r}, 'w').write(str(os.nice(0)))"])
    outcome = st.execute([(s, "new") for s in specs], jobs=2, threads=1, echo=lambda line: None, poll=0.05,
                         nice={"supervised": 7})
    assert set(outcome) == {s.name for s in specs}  # finished (no eval file: "not done", which is not checked here)
    base = os.nice(0)
    got = {s.arm: int((tmp_path / s.name).read_text()) for s in specs}
    assert got == {"supervised": min(19, base + 7), "adv": base}


@pytest.mark.slow
def test_study_stopped_midway_finishes_only_missing_runs(tmp_path):
    """A study run partly (--only), a run killed after its first checkpoint and one killed before it; running
    the study again skips the finished run, resumes the checkpointed one and restarts the other."""
    tiny = ", ".join(json.dumps(o) for o in TINY)
    path = write_study(tmp_path, f"""
name: tiny
recipe: {BASE}
set: [{tiny}]
arms:
  supervised: {{}}
  smooth: {{set: [loss.label_smoothing=0.1]}}
baseline: supervised
labels: [0.25]
seeds: [0]
jobs: 2
group_by: _
""")
    out = tmp_path / "out"
    study = st.load_study(path)
    specs = {s.name: s for s in st.expand(study, str(out))}
    assert list(specs) == ["supervised_1-4_s0", "smooth_1-4_s0", "supervised_all_s0"]

    lines = []
    assert st.run_study(study, str(out), only=["supervised_1-4*"], echo=lines.append) == 0
    assert st.run_state(specs["supervised_1-4_s0"]) == "done"
    assert "2 of 3 runs not finished" in "\n".join(lines)
    done_stamp = os.path.getmtime(specs["supervised_1-4_s0"].eval_file)

    # killed after its first checkpoint (iteration 1 of 3)
    from semiseg.engine.trainer import Trainer

    smooth = specs["smooth_1-4_s0"]
    cfg = load_config(smooth.recipe, [*smooth.overrides, "train.threads=1"])
    Trainer(cfg, smooth.run_dir, progress=False).fit(stop_at=1)
    # killed before its first checkpoint; a file of the user's is in the folder too
    full = specs["supervised_all_s0"]
    os.makedirs(full.run_dir)
    dump_config(load_config(full.recipe, full.overrides), os.path.join(full.run_dir, "config.yaml"))
    open(os.path.join(full.run_dir, "notes.txt"), "w").close()
    assert [st.run_state(s) for s in specs.values()] == ["done", "partial", "broken"]

    lines = []
    assert main(["study", path, "--out", str(out), "--dry-run"]) == 0  # changes nothing
    assert st.run_state(full) == "broken"
    assert st.run_study(study, str(out), echo=lines.append) == 0
    text = "\n".join(lines)
    started = {line.split()[2] for line in lines if "] start " in line}
    assert started == {"smooth_1-4_s0", "supervised_all_s0"}  # only the missing runs
    assert os.path.getmtime(specs["supervised_1-4_s0"].eval_file) == done_stamp
    kinds = [e["kind"] for e in st._events(smooth.run_dir)]
    assert kinds.count("start") == 1 and kinds.count("resume") == 1  # continued, not restarted
    assert os.path.isfile(full.run_dir + ".failed-1/notes.txt") and "moved to" in text
    assert all(st.run_state(s) == "done" for s in specs.values())
    md = (out / "study.md").read_text()
    assert "| smooth | 1/4 | 4 | 1 |" in md and "| supervised | all | 16 | 1 |" in md
    # group_by: each run's mIoU per group (the synthetic test images are all named test_NNNNN: one group)
    per_group = md.split("## Per group", 1)[1]
    for r in record_runs(out):
        assert f"| {r['name']} | {100 * r['groups']['test']:.1f} | {100 * r['miou']:.1f} |" in per_group
        assert r["groups"]["test"] == r["miou"]
    record = json.loads((out / "study.json").read_text())
    assert record["missing"] == [] and all(math.isfinite(r["miou"]) for r in record["runs"])
    log = (out / "logs" / "smooth_1-4_s0.log").read_text()
    assert "$ semiseg train --no-progress --resume" in log and "$ semiseg eval" in log


def record_runs(out) -> list[dict]:
    return json.loads((out / "study.json").read_text())["runs"]


def test_one_study_process_per_folder(tmp_path):
    path = write_study(tmp_path, STUDY)
    out = tmp_path / "out"
    with st._Lock(str(out)):
        with pytest.raises(st.StudyError, match="another `semiseg study` is running"):
            st.run_study(st.load_study(path), str(out), echo=lambda s: None)
    assert not (out / "runs").exists()


def test_eval_split_checked_before_training(tmp_path):
    out = str(tmp_path / "out")
    study = st.load_study(write_study(tmp_path, STUDY + "eval_split: nosuch\n"))
    with pytest.raises(st.StudyError, match="eval_split 'nosuch' cannot be read for run supervised_1-8_s0"):
        st.run_study(study, out, dry_run=True, echo=lambda s: None)
    lines = []
    st.run_study(st.load_study(write_study(tmp_path, STUDY + "eval_split: val\n")), out, dry_run=True,
                 echo=lines.append)
    assert any("also the runs' validation split" in line for line in lines)


STUDY_FILES = sorted(p for p in (os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(REPO, "configs")) for f in fs)
                     if os.path.basename(p).startswith("study_") and p.endswith(".yaml"))


@pytest.mark.parametrize("path", STUDY_FILES, ids=os.path.basename)
def test_shipped_study_files_expand(path, tmp_path):
    study = st.load_study(path)
    specs = st.expand(study, str(tmp_path))  # every run's recipe and overrides load
    assert len(specs) == len(study.seeds) * (len(study.labels) * len(study.arms) + study.full_labels)


def test_study_json_records_run_folders_relative_to_the_study_folder(tmp_path, capsys):
    """A committed or copied study folder must not point at the machine it was made on."""
    import shutil

    path, out, specs = _one_seed_study_with_finished_runs(tmp_path)
    assert main(["study", path, "--out", str(out), "--table-only"]) == 0
    moved = tmp_path / "elsewhere"
    shutil.move(str(out), str(moved))
    runs = json.loads((moved / "study.json").read_text())["runs"]
    adv = next(r for r in runs if r["name"] == "adv_1-8_s0")
    assert adv["run_dir"] == os.path.join("runs", "adv_1-8_s0")
    assert os.path.isfile(os.path.join(moved, adv["run_dir"], "metrics.jsonl"))
