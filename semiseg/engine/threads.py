"""``train.threads=0`` (auto): choose the CPU thread count by measured step time, and keep re-checking.

Why: torch's default (one OpenMP thread per core) is fastest on an idle machine, but on a shared one it
is a trap. Every operator waits at a barrier for its slowest thread, and a thread that another process
has pushed off its core stalls the whole step: on the 2-core dev box, a DeepLabV3+ step took 0.8 s with
2 threads when idle, 9 s with 2 threads next to one busy process, and 0.6 s with 1 thread in both cases.
Load changes during a run, so the choice is measured, not guessed, and measured again periodically.

The tuner compares 1 thread with all cores: a few timed steps each (median, after one warm-up step),
keeps the faster, re-probes every ``period`` steps. A probe of the slower setting is cut short after a
single step that is already twice as slow as the best median, so a bad probe costs about one slow step.
Thread counts only change the summation order inside kernels; runs that must be bit-reproducible (the
resume tests) set ``train.threads`` to a fixed number.
"""

from __future__ import annotations

import os
import statistics

import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ThreadTuner:
    def __init__(self, max_threads: int | None = None, *, probe_steps: int = 5, period: int = 300):
        self.candidates = sorted({1, max_threads or available_cores()})
        self.probe_steps, self.period = probe_steps, period
        self.enabled = len(self.candidates) > 1
        self.times: dict[int, list[float]] = {}
        self.best: int | None = None
        self.best_median: float | None = None
        self.queue: list[int] = list(self.candidates)  # candidates still to probe in this round
        self.warmup = True
        self.steps_since_probe = 0
        self.history: list[tuple[int, dict[int, float]]] = []  # (step, medians) of each decision, for logs
        self.step = 0
        if self.enabled:
            torch.set_num_threads(self.queue[0])

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def update(self, seconds: float) -> None:
        """Report the wall time of the step just finished (with the current thread count)."""
        if not self.enabled:
            return
        self.step += 1
        if not self.queue:  # exploiting the best setting
            self.steps_since_probe += 1
            if self.steps_since_probe >= self.period:
                self.queue, self.times, self.warmup = list(self.candidates), {}, True
                torch.set_num_threads(self.queue[0])
            return
        current = self.queue[0]
        if self.warmup:  # the first step after a change pays for new kernel setups
            self.warmup = False
            return
        samples = self.times.setdefault(current, [])
        samples.append(seconds)
        done = [statistics.median(t) for n, t in self.times.items() if n != current and t]
        reference = min(done + ([self.best_median] if self.best_median is not None else []), default=None)
        hopeless = reference is not None and seconds > 2 * reference
        if len(samples) >= self.probe_steps or hopeless:
            self.queue.pop(0)
            if self.queue:
                torch.set_num_threads(self.queue[0])
                self.warmup = True
            else:
                self._decide()

    def _decide(self) -> None:
        medians = {n: statistics.median(t) for n, t in self.times.items()}
        self.best = min(medians, key=medians.get)
        self.best_median = medians[self.best]
        self.history.append((self.step, medians))
        torch.set_num_threads(self.best)
        self.steps_since_probe = 0


__all__ = ["ThreadTuner", "available_cores"]
