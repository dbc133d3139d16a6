"""Atomic checkpoint writes, data-only loading with RNG state, and the run-folder rules."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from semiseg.engine import checkpoint as ck
from semiseg.engine.run_dir import RunDirError, prepare_run_dir, unique_run_dir


def test_atomic_save_keeps_old_file_when_the_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.atomic_save({"format": ck.FORMAT, "iteration": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")  # bytes hit the disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.atomic_save({"format": ck.FORMAT, "iteration": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)

    state = ck.load_checkpoint(path)
    assert state["iteration"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_stale_temp_file_from_a_killed_write_is_ignored_and_cleaned(tmp_path):
    (tmp_path / ".last.pt.tmp-12345").write_bytes(b"\x80garbage")
    ck.atomic_save({"format": ck.FORMAT, "iteration": 3}, tmp_path / "last.pt")
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert ck.load_checkpoint(tmp_path / "last.pt")["iteration"] == 3


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(5), np.random.rand(7), random.random()
    ck.atomic_save({"format": ck.FORMAT, "rng": ck.capture_rng_state()}, tmp_path / "c.pt")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.normal())

    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    state = ck.load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    ck.restore_rng_state(state["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.normal())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ck.CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(ck.CheckpointError, match="model.weights"):
        ck.load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ck.CheckpointError, match="cannot read"):
        ck.load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(ck.CheckpointError, match="no checkpoint in"):
        ck.resolve_checkpoint(tmp_path)


def test_run_dir_is_never_overwritten_unless_asked(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(str(run))  # new
    (run / "config.yaml").write_text("x: 1")
    (run / "last.pt").write_bytes(b"precious")
    with pytest.raises(RunDirError, match="already exists.*--resume.*--overwrite"):
        prepare_run_dir(str(run))
    assert (run / "last.pt").read_bytes() == b"precious"
    prepare_run_dir(str(run), overwrite=True)
    assert os.listdir(run) == [".semiseg-run"]  # the marker: semiseg made this folder

    other = tmp_path / "home"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(RunDirError, match="not created by semiseg"):
        prepare_run_dir(str(other), overwrite=True)
    assert (other / "thesis.tex").exists()

    with pytest.raises(RunDirError, match="nothing to resume"):
        prepare_run_dir(str(tmp_path / "fresh"), resume=True)
    with pytest.raises(RunDirError, match="contradict"):
        prepare_run_dir(str(run), resume=True, overwrite=True)


def test_unique_run_dir(tmp_path):
    base = str(tmp_path / "quickstart")
    assert unique_run_dir(base) == base
    os.makedirs(base)
    os.makedirs(base + "-2")
    assert unique_run_dir(base) == base + "-3"
