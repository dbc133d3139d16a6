"""``train.threads=0`` (auto): choose the CPU thread count by measured step time, and keep re-checking.

Why: torch's default (one OpenMP thread per core) is fastest on an idle machine, but on a shared one it
is a trap. Every operator waits at a barrier for its slowest thread, and a thread that another process
has pushed off its core stalls the whole step: on the 2-core dev box, a DeepLabV3+ step took 0.8 s with
2 threads when idle, 9 s with 2 threads next to one busy process, and 0.6 s with 1 thread in both cases.
Load changes during a run, so the choice is measured, not guessed, and measured again periodically.

The tuner compares 1 thread with all cores: a few timed steps each (median, after one warm-up step),
keeps the faster, re-probes after ``period`` steps (twice as long each time the answer repeats, up to 8x).
A probe of the other setting stops at its first step that is twice as slow as the reference (four times
for its untimed warm-up step), so a bad probe costs one or two slow steps.
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
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class ThreadTuner:
    def __init__(self, max_threads: int | None = None, *, probe_steps: int = 5, period: int = 300):
        self.candidates = sorted({1, max_threads or available_cores()})
        self.probe_steps, self.period = probe_steps, period
        self.enabled = len(self.candidates) > 1
        self.times: dict[int, list[float]] = {}
        self.best: int | None = None
        self.queue: list[int] = list(self.candidates)  # candidates still to probe in this round
        self.warmup = True
        self.steps_since_probe = 0
        self.wait = period
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
            if self.steps_since_probe >= self.wait:
                # the current choice first: it sets this round's reference without risking slow steps
                self.queue = [self.best] + [n for n in self.candidates if n != self.best]
                self.times, self.warmup = {}, True
                torch.set_num_threads(self.queue[0])
            return
        current = self.queue[0]
        # reference: this round's measurements only (the load may have changed since the last round)
        reference = min((statistics.median(t) for n, t in self.times.items() if n != current and t), default=None)
        if self.warmup:  # the first step after a change pays for new kernel setups: not timed, unless absurd
            self.warmup = False
            if reference is None or seconds <= 4 * reference:
                return
            hopeless = True
        else:
            self.times.setdefault(current, []).append(seconds)
            hopeless = reference is not None and seconds > 2 * reference
        samples = self.times.setdefault(current, [seconds])
        if len(samples) >= self.probe_steps or hopeless:
            self.queue.pop(0)
            if self.queue:
                torch.set_num_threads(self.queue[0])
                self.warmup = True
            else:
                self._decide()

    def _decide(self) -> None:
        medians = {n: statistics.median(t) for n, t in self.times.items()}
        previous, self.best = self.best, min(medians, key=medians.get)
        # The same answer again: the load is steady, probe half as often (up to 8x the base period).
        self.wait = min(2 * self.wait, 8 * self.period) if previous == self.best else self.period
        self.history.append((self.step, medians))
        torch.set_num_threads(self.best)
        self.steps_since_probe = 0


__all__ = ["ThreadTuner", "available_cores"]
