"""Training in real processes: kill -9 at arbitrary moments and resume; torchrun DDP vs one process."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.logger import read_metrics

from conftest import PYTHON, subprocess_env, tiny_overrides


def checkpoint_iteration(path: str) -> int:
    # Reading while the trainer replaces the file is safe: os.replace swaps whole files.
    return load_checkpoint(path)["iteration"] if os.path.exists(path) else -1


def wait_for(predicate, proc, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early with code {proc.returncode}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for the trainer")


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_finishes(tmp_path):
    run = str(tmp_path / "run")
    # A checkpoint after every iteration, so the kills have a good chance of landing inside a write.
    args = tiny_overrides(**{"train.iterations": 120, "train.checkpoint_interval": 1, "train.eval_interval": 0,
                             "train.log_interval": 1})
    cmd = [PYTHON, "-m", "semiseg", "train", "--no-progress", "--run-dir", run, *args]
    env = subprocess_env()
    last = os.path.join(run, "last.pt")
    seen = -1
    for kill in range(3):
        resume = ["--resume"] if kill else []
        proc = subprocess.Popen(cmd + resume, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        target = seen + 8
        wait_for(lambda: checkpoint_iteration(last) >= target, proc)
        time.sleep(0.013 * (kill + 1))  # a different phase of the loop each time
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        it = checkpoint_iteration(last)  # loads completely: never a half-written file
        assert it >= target
        seen = it
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    final = load_checkpoint(last)
    assert final["iteration"] == 120
    assert not [f for f in os.listdir(run) if ".tmp-" in f]
    # one consistent history: every iteration logged exactly once despite the kills
    train_its = [e["iteration"] for e in read_metrics(run) if e["kind"] == "train"]
    assert train_its == list(range(1, 121))


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 ranks x 2 images == 1 process x 4 images, for a BatchNorm-free model.

    The ranks load exactly the two halves of every global batch (same images, same augmentation seeds),
    each computes the mean loss of its half, and DDP averages the gradients: with equal valid-pixel
    counts per half that is the gradient of the global mean, so the weights agree up to float rounding
    of the different reduction order. (With BatchNorm the statistics would be per rank instead; SyncBN
    needs CUDA.)
    """
    common = tiny_overrides(**{"train.iterations": 8, "train.checkpoint_interval": 4, "train.eval_interval": 4,
                               "train.log_interval": 1, "data.batch_size": 4})
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS", None)  # torchrun sets 1 thread per process itself
    single = str(tmp_path / "single")
    ddp = str(tmp_path / "ddp")
    r1 = subprocess.run([PYTHON, "-m", "semiseg", "train", "--no-progress", "--run-dir", single, *common],
                        env=env, capture_output=True, text=True, timeout=180)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "semiseg", "train", "--no-progress", "--run-dir", ddp, *common],
                        env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]

    a, b = load_checkpoint(os.path.join(single, "last.pt")), load_checkpoint(os.path.join(ddp, "last.pt"))
    assert b["world_size"] == 2 and len(b["rng"]) == 2 and a["world_size"] == 1
    start = [e for e in read_metrics(ddp) if e["kind"] == "start"]
    assert len(start) == 1 and start[0]["world_size"] == 2 and start[0]["per_rank_batch"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4, msg=k)
    la = [e["loss"] for e in read_metrics(single) if e["kind"] == "train"]
    lb = [e["loss"] for e in read_metrics(ddp) if e["kind"] == "train"]
    assert la == pytest.approx(lb, rel=1e-4)
    # evaluation: each rank scores half of the validation set, the confusion matrices are summed
    ea = [e for e in read_metrics(single) if e["kind"] == "eval"]
    eb = [e for e in read_metrics(ddp) if e["kind"] == "eval"]
    assert [e["iteration"] for e in eb] == [4, 8]
    for x, y in zip(ea, eb):
        assert x["acc"] == pytest.approx(y["acc"], abs=2e-3) and x["miou"] == pytest.approx(y["miou"], abs=5e-3)
    # only rank 0 wrote the log: one line per event
    assert [e["iteration"] for e in read_metrics(ddp) if e["kind"] == "train"] == list(range(1, 9))


@pytest.mark.slow
def test_eval_under_torchrun_counts_every_image_once(tmp_path):
    """`semiseg eval` in 2 processes gives the very confusion matrix of one process, on a split of odd
    length (a padding sampler would count one image twice)."""
    import json

    run = str(tmp_path / "run")
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS", None)
    train = subprocess.run([PYTHON, "-m", "semiseg", "train", "--no-progress", "--run-dir", run,
                            *tiny_overrides(**{"train.iterations": 6, "train.eval_interval": 0})],
                           env=env, capture_output=True, text=True, timeout=180)
    assert train.returncode == 0, train.stderr[-3000:]
    outs = {}
    for name, launcher in (("single", [PYTHON, "-m", "semiseg"]),
                           ("ddp", [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                    "-m", "semiseg"])):
        out = str(tmp_path / f"{name}.json")
        r = subprocess.run([*launcher, "eval", run, "--data", "options={length: 7}", "--out", out, "--threads", "1"],
                           env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        with open(out) as f:
            outs[name] = json.load(f)
    single, ddp = outs["single"], outs["ddp"]
    assert single["data"]["samples"] == 7
    # 7 images of 32x32: every labelled pixel counted exactly once in both
    assert sum(map(sum, single["confusion_matrix"])) == 7 * 32 * 32
    assert ddp["confusion_matrix"] == single["confusion_matrix"]
    assert ddp["metrics"] == single["metrics"]
