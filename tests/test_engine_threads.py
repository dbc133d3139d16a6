"""train.threads=0: the tuner keeps whichever thread count measures faster, and follows load changes."""

from __future__ import annotations

import torch

from semiseg.engine.threads import ThreadTuner


def run(tuner, cost, steps):
    """Feed the tuner ``steps`` fake steps whose duration depends on the current thread count."""
    used = []
    for _ in range(steps):
        n = torch.get_num_threads()
        used.append(n)
        tuner.update(cost(n))
    return used


def test_picks_all_cores_on_an_idle_machine_and_one_thread_on_a_busy_one():
    before = torch.get_num_threads()
    try:
        idle = lambda n: {1: 1.0, 4: 0.6}[n]
        busy = lambda n: {1: 1.0, 4: 9.0}[n]
        tuner = ThreadTuner(4, probe_steps=3, period=20)
        used = run(tuner, idle, 15)
        assert tuner.best == 4 and used[-1] == 4
        # the load rises: at the next probe the tuner moves to 1 thread ...
        used = run(tuner, busy, 40)
        assert tuner.best == 1 and used[-1] == 1
        # ... and a hopeless probe of 4 threads costs one measured step (plus its warm-up), not probe_steps
        used = run(tuner, busy, 40)
        runs_of_4 = "".join("x" if n == 4 else " " for n in used).split()
        assert runs_of_4 and all(len(r) <= 2 for r in runs_of_4)
        assert used.count(1) >= 30
        assert tuner.wait > 20  # the same answer twice: probe less often
        assert [sorted(m) for _, m in tuner.history] == [[1, 4]] * len(tuner.history)
    finally:
        torch.set_num_threads(before)


def test_single_core_disables_the_tuner():
    tuner = ThreadTuner(1)
    assert not tuner.enabled
    tuner.update(1.0)
    assert tuner.best is None
