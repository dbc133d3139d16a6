"""End-to-end training on the tiny model and data: run folder, resume, divergence, eval/predict agreement."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg.cli import main
from semiseg.config import load_config
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.evaluate import evaluate_checkpoint
from semiseg.engine.logger import read_metrics
from semiseg.engine.run_dir import RunDirError
from semiseg.engine.trainer import Trainer, TrainingDiverged

from conftest import PALETTE, tiny_overrides


def config(tmp_path, name="run", **extra):
    return load_config(None, tiny_overrides(output_dir=str(tmp_path), name=name, **extra))


def weights(run_dir, which="last.pt"):
    return load_checkpoint(os.path.join(run_dir, which))["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_run_folder_holds_config_split_checkpoints_and_metrics(tmp_path):
    cfg = config(tmp_path)
    result = Trainer(cfg, cfg.run_dir, progress=False).fit()
    run = cfg.run_dir
    assert sorted(os.listdir(run)) == [".semiseg-run", ".semiseg.lock", "best.pt", "config.yaml", "last.pt",
                                       "metrics.jsonl", "split.txt"]
    assert load_config(os.path.join(run, "config.yaml")) == cfg
    last = load_checkpoint(os.path.join(run, "last.pt"))
    assert last["iteration"] == 12 and last["dataset"]["classes"] == ["background", "red", "green", "blue"]
    best = load_checkpoint(os.path.join(run, "best.pt"))
    assert best["iteration"] == result["best"]["iteration"] and best["best"]["miou"] == result["best"]["miou"]
    events = read_metrics(run)
    assert [e["iteration"] for e in events if e["kind"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert [e["iteration"] for e in events if e["kind"] == "eval"] == [6, 12]
    assert all(np.isfinite(e["loss"]) and e["lr"] > 0 for e in events if e["kind"] == "train")
    # lr logged is the rate the step used: poly over 12 iterations from 0.01
    first = next(e for e in events if e["kind"] == "train")
    assert first["lr"] == pytest.approx(0.01 * (1 - 1 / 12) ** 0.9)
    assert events[0]["kind"] == "start" and events[0]["precision"] == "fp32" and events[0]["per_rank_batch"] == 4
    with open(os.path.join(run, "split.txt")) as f:
        assert "[labeled]" in f.read()


def test_existing_run_folder_is_refused_then_overwritten_on_request(tmp_path, capsys):
    cfg = config(tmp_path, **{"train.iterations": 2, "train.eval_interval": 0})
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    before = open(os.path.join(cfg.run_dir, "last.pt"), "rb").read()
    with pytest.raises(RunDirError, match="already exists"):
        Trainer(cfg, cfg.run_dir, progress=False)
    args = ["train", "--no-progress", *tiny_overrides(output_dir=str(tmp_path), name="run", **{"train.iterations": 2})]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert open(os.path.join(cfg.run_dir, "last.pt"), "rb").read() == before
    assert main(args + ["--overwrite"]) == 0
    assert "mIoU" in capsys.readouterr().out


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_continues_exactly(tmp_path, accum):
    # dropout exercises the restored RNG; accumulation the stream position; bitwise equality on CPU
    extra = {"model.options": "{dropout: 0.3}", "train.accum_steps": accum, "train.log_interval": 1}
    straight = config(tmp_path, "straight", **extra)
    Trainer(straight, straight.run_dir, progress=False).fit()

    chunked = config(tmp_path, "chunked", **extra)
    Trainer(chunked, chunked.run_dir, progress=False).fit(stop_at=7)
    assert load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))["iteration"] == 7
    torch.manual_seed(999)  # a fresh process would start from another RNG state; the checkpoint restores it
    Trainer(chunked, chunked.run_dir, resume=True, progress=False).fit()

    assert_same_weights(weights(straight.run_dir), weights(chunked.run_dir))
    a, b = read_metrics(straight.run_dir), read_metrics(chunked.run_dir)
    strip = lambda ev: [(e["kind"], e["iteration"], e.get("loss"), e.get("miou")) for e in ev if e["kind"] in ("train", "eval")]
    assert strip(a) == strip(b)
    a_opt = load_checkpoint(os.path.join(straight.run_dir, "last.pt"))["optimizers"]["model"]["state"]
    b_opt = load_checkpoint(os.path.join(chunked.run_dir, "last.pt"))["optimizers"]["model"]["state"]
    assert all(torch.equal(a_opt[k]["momentum_buffer"], b_opt[k]["momentum_buffer"]) for k in a_opt)


def test_a_resume_keeps_the_runs_precision_where_it_is_about_as_fast(tmp_path, monkeypatch):
    """precision auto decides again at a resume (the machine may have changed); a tie must not change the numerics."""
    import semiseg.runtime as runtime

    monkeypatch.setenv("SEMISEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEMISEG_REMEASURE", "1")
    speeds = {}
    monkeypatch.setattr(runtime, "measure_modes", lambda workload, modes: {m: speeds[m] for m in modes})
    cfg = config(tmp_path, "auto", **{"train.precision": "auto", "train.channels_last": "auto",
                                      "train.iterations": 6, "train.eval_interval": 0})
    speeds.update({("fp32", False): 0.10, ("fp32", True): 0.05, ("bf16", False): 0.30, ("bf16", True): 0.30})
    Trainer(cfg, cfg.run_dir, progress=False).fit(stop_at=2)
    assert load_checkpoint(os.path.join(cfg.run_dir, "last.pt"))["precision"] == {"precision": "fp32",
                                                                                   "channels_last": True}
    speeds[("fp32", True)] = 0.103  # now a tie with fp32: a fresh run would take the simpler fp32
    Trainer(cfg, cfg.run_dir, resume=True, progress=False).fit(stop_at=4)
    speeds[("fp32", True)] = 0.20  # now 2x slower: the run moves to fp32, and the log says why
    Trainer(cfg, cfg.run_dir, resume=True, progress=False).fit()
    segments = [e for e in read_metrics(cfg.run_dir) if e["kind"] in ("start", "resume")]
    assert [(e["precision"], e["channels_last"]) for e in segments] == [("fp32", True), ("fp32", True), ("fp32", False)]
    assert "within 5% of the fastest here: kept" in segments[1]["precision_reason"]
    assert "2x the fastest here: it continues in fp32" in segments[2]["precision_reason"]
    assert load_checkpoint(os.path.join(cfg.run_dir, "last.pt"))["precision"]["channels_last"] is False


def test_resume_command_line_extends_training(tmp_path, capsys):
    base = tiny_overrides(output_dir=str(tmp_path), name="cli", **{"train.iterations": 4, "train.eval_interval": 0,
                                                                    "train.log_interval": 1})
    assert main(["train", "--no-progress", *base]) == 0
    run = os.path.join(str(tmp_path), "cli")
    assert main(["train", "--no-progress", "--resume", run, "train.iterations=6"]) == 0
    assert load_checkpoint(os.path.join(run, "last.pt"))["iteration"] == 6
    assert load_config(os.path.join(run, "config.yaml")).train.iterations == 6
    lr5 = next(e["lr"] for e in read_metrics(run) if e["kind"] == "train" and e["iteration"] == 5)
    assert lr5 == pytest.approx(0.01 * (1 - 4 / 6) ** 0.9)  # the new schedule from the first resumed step
    assert main(["train", "--no-progress", "--resume", str(tmp_path / "missing")]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_stop_at_saves_mid_schedule_and_resume_finishes_the_same_run(tmp_path, capsys):
    args = tiny_overrides(output_dir=str(tmp_path), name="stop", **{"train.iterations": 6, "train.eval_interval": 0,
                                                                     "train.log_interval": 1})
    straight = tiny_overrides(output_dir=str(tmp_path), name="straight", **{"train.iterations": 6,
                                                                             "train.eval_interval": 0})
    assert main(["train", "--no-progress", "--stop-at", "4", *args]) == 0
    run = os.path.join(str(tmp_path), "stop")
    assert load_checkpoint(os.path.join(run, "last.pt"))["iteration"] == 4
    out = capsys.readouterr().out
    assert "stopped after iteration 4 of 6" in out and f"semiseg train --resume {run}" in out
    # the schedule spans all 6 iterations: step 4 ran at the poly rate of a 6-step run, not at the end of a 4-step one
    lr4 = next(e["lr"] for e in read_metrics(run) if e["kind"] == "train" and e["iteration"] == 4)
    assert lr4 == pytest.approx(0.01 * (1 - 3 / 6) ** 0.9)
    assert main(["train", "--no-progress", "--resume", run]) == 0
    assert main(["train", "--no-progress", *straight]) == 0
    a, b = weights(run), weights(os.path.join(str(tmp_path), "straight"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", "--no-progress", "--stop-at", "0", *args]) == 2
    assert "--stop-at must be" in capsys.readouterr().err


def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_checkpoint(tmp_path):
    cfg = config(tmp_path, **{"model.options": "{nan_at: 7}", "train.eval_interval": 0})
    with pytest.raises(TrainingDiverged) as e:
        Trainer(cfg, cfg.run_dir, progress=False).fit()
    msg = str(e.value)
    assert "iteration 7" in msg and "non-finite loss" in msg and "last.pt (iteration 4)" in msg
    assert e.value.iteration == 7
    last = load_checkpoint(os.path.join(cfg.run_dir, "last.pt"))
    assert last["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_nan_loss_on_the_command_line_exits_1(tmp_path, capsys):
    args = tiny_overrides(output_dir=str(tmp_path), name="nan", **{"model.options": "{nan_at: 3}"})
    assert main(["train", "--no-progress", *args]) == 1
    err = capsys.readouterr().err
    assert "iteration 3" in err and "no checkpoint was written yet" in err


def test_eval_command_reproduces_the_training_evaluation(tmp_path, capsys):
    cfg = config(tmp_path, **{"data.options": "{ignore_border: true}"})
    trainer = Trainer(cfg, cfg.run_dir, progress=False)
    final = trainer.fit()["metrics"]
    result = evaluate_checkpoint(os.path.join(cfg.run_dir, "last.pt"), device="cpu")
    assert result["metrics"] == final  # the very same code path, so exactly equal
    assert result["iteration"] == 12 and result["data"]["split"] == "val"

    assert main(["eval", cfg.run_dir, "--device", "cpu", "--out", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "background" in out and "mIoU" in out
    saved = json.load(open(tmp_path / "e.json"))
    assert saved["classes"] == ["background", "red", "green", "blue"]
    # the run folder argument picks best.pt
    assert saved["iteration"] == final_best_iteration(cfg.run_dir)
    # another split through --data / --split
    assert main(["eval", cfg.run_dir, "--split", "train", "--data", "options={length: 4}", "--device", "cpu"]) == 0
    assert json.load(open(os.path.join(cfg.run_dir, "eval_train.json")))["data"]["samples"] == 4


def test_eval_per_group_counts_each_image_once_in_its_group(tmp_path, capsys):
    from torch.utils.data import Subset

    from conftest import TinyNet, TinyShapes
    from semiseg.data.transforms import build_eval_transform
    from semiseg.engine.evaluate import evaluate, evaluate_groups, make_eval_loader

    torch.manual_seed(0)
    model = TinyNet(4)
    ds = TinyShapes("val", length=10, transform=build_eval_transform())
    ds.names = [f"{'dusk' if i % 3 == 0 else 'day'}_{i:03d}" for i in range(10)]  # groups interleave in batches
    group = lambda name: name.split("_", 1)[0]
    total, per_group = evaluate_groups(model, make_eval_loader(ds, batch_size=4), 4, groups=["day", "dusk"],
                                       group_of=group)
    assert torch.equal(total.mat, per_group["day"].mat + per_group["dusk"].mat)
    assert torch.equal(total.mat, evaluate(model, make_eval_loader(ds, batch_size=4), 4).mat)
    for g in ("day", "dusk"):  # a group's matrix is the evaluation of its images alone
        alone = Subset(ds, [i for i, n in enumerate(ds.names) if group(n) == g])
        assert torch.equal(per_group[g].mat, evaluate(model, make_eval_loader(alone, batch_size=1), 4).mat)
    with pytest.raises(ValueError, match="dusk"):  # a group list not made from this dataset
        evaluate_groups(model, make_eval_loader(ds, batch_size=4), 4, groups=["day"], group_of=group)

    # the command: a line per group in the table, and the groups in the JSON
    cfg = config(tmp_path, **{"train.iterations": 2, "train.eval_interval": 0})
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    out_json = tmp_path / "g.json"
    assert main(["eval", os.path.join(cfg.run_dir, "last.pt"), "--device", "cpu", "--group-by", "_",
                 "--out", str(out_json)]) == 0
    assert "per group" in capsys.readouterr().out
    saved = json.load(open(out_json))
    assert saved["group_by"] == "_" and list(saved["groups"]) == ["val"]  # TinyShapes names are val_000, ...
    assert saved["groups"]["val"]["images"] == saved["data"]["samples"]
    assert saved["groups"]["val"]["metrics"] == saved["metrics"]
    assert main(["eval", cfg.run_dir, "--device", "cpu", "--group-by", ""]) == 2
    assert "--group-by needs a separator" in capsys.readouterr().err


def final_best_iteration(run_dir):
    return load_checkpoint(os.path.join(run_dir, "best.pt"))["iteration"]


def test_predict_writes_palette_masks_of_the_input_size(tmp_path, capsys):
    cfg = config(tmp_path, **{"train.iterations": 2, "train.eval_interval": 0})
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 41, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 33, 3), dtype=np.uint8)).save(images / "b.jpg")
    out = tmp_path / "masks"
    assert main(["predict", cfg.run_dir, str(images), str(out), "--device", "cpu"]) == 0
    assert sorted(os.listdir(out)) == ["a.png", "b.png"]
    for name, size in (("a.png", (41, 30)), ("b.png", (33, 50))):
        mask = Image.open(out / name)
        assert mask.mode == "P" and mask.size == size
        assert np.array(mask).max() < 4
        assert np.array(mask.getpalette()[:12]).reshape(4, 3).tolist() == PALETTE.tolist()
    assert main(["predict", cfg.run_dir, str(tmp_path / "none"), str(out)]) == 2


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    # mean of two micro-batch means == full-batch mean when both halves have equally many valid pixels
    full = config(tmp_path, "full", **{"train.eval_interval": 0})
    Trainer(full, full.run_dir, progress=False).fit()
    acc = config(tmp_path, "acc", **{"train.eval_interval": 0, "train.accum_steps": 2})
    Trainer(acc, acc.run_dir, progress=False).fit()
    assert_same_weights(weights(full.run_dir), weights(acc.run_dir), atol=1e-5)


def test_dice_loss_class_weights_and_warmup_run(tmp_path):
    cfg = config(tmp_path, **{"loss.name": "ce+dice", "loss.class_weights": "[0.5, 1, 1, 2]",
                              "optim.warmup_iters": 3, "optim.grad_clip": 1.0, "train.eval_interval": 0})
    result = Trainer(cfg, cfg.run_dir, progress=False).fit()
    assert result["iteration"] == 12
    train_events = [e for e in read_metrics(cfg.run_dir) if e["kind"] == "train"]
    assert train_events[0]["lr"] < train_events[1]["lr"]  # warming up
    with pytest.raises(Exception, match="class_weights has 2 values"):
        Trainer(config(tmp_path, "bad", **{"loss.class_weights": "[1, 2]"}), str(tmp_path / "bad"), progress=False)
    assert not (tmp_path / "bad").exists()  # a run that could not start leaves no folder to trip the retry


def test_unusable_initial_weights_are_a_clear_error_before_the_run_folder_exists(tmp_path, capsys):
    args = ["train", "--no-progress", *tiny_overrides(output_dir=str(tmp_path), name="run")]
    missing = str(tmp_path / "no_such.pt")
    assert main(args + [f"model.weights={missing}"]) == 2
    err = capsys.readouterr().err
    assert "weights file not found" in err and missing in err and "model.weights" in err
    assert not os.path.exists(tmp_path / "run")

    # a state dict whose tensors do not fit the model: one error that names the file and the way out
    cfg = config(tmp_path, "source", **{"train.iterations": 1, "train.eval_interval": 0})
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    state = weights(cfg.run_dir)
    name = next(k for k, v in state.items() if v.dim() == 4)
    state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 2)
    bad = str(tmp_path / "bad.pt")
    torch.save(state, bad)
    assert main(args + [f"model.weights={bad}"]) == 2
    err = capsys.readouterr().err
    assert bad in err and "same_shape" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "run")
