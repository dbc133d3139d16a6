"""How the quickstart's two runs share the cores: side by side on half the threads each, or one after the other on
all of them, chosen by a measurement of this machine (cached like ``precision: auto``'s).

Why it is measured: the supervised run is about a third as long as the semi-supervised one, so side by side the
second core idles for the last two thirds of the command. One after the other wins when a step on all the threads
is fast enough against a step on half of them: the break-even was a 1.34x faster run on the 2-core AMD EPYC Zen 3 of
BENCHMARKS.md (Quickstart, Q10), where one after the other took 4.8 instead of 5.4 minutes. Whether a machine's
threads scale that well is not something its CPU name says (two vCPUs may be one core's two hyperthreads), so it is
timed: the semi-supervised step's model passes (a no-grad teacher forward on 16 scenes, a student forward and
backward on 48), on half the threads and on all of them, a few seconds once per machine.
"""

from __future__ import annotations

import datetime
import time
import warnings
from dataclasses import dataclass
from typing import Callable

# The model passes scale better than the whole run: one after the other, each run also draws and augments its scenes
# in its own process (~0.05-0.07 s of a 0.26 s step on the Zen 3), which the second thread does not speed up. There
# the passes ran 1.88-1.97x faster on 2 threads and the semi-supervised run 1.43x; from those parts one after the
# other breaks even at about 1.6x of the passes, so it is chosen from 1.7x (a margin); below, side by side.
MIN_SPEEDUP = 1.7
CACHE_NAME = "schedule.json"


@dataclass(frozen=True)
class Schedule:
    jobs: int  # runs at once
    reason: str


def measure_step_seconds(threads: int, *, size: int = 64, rounds: int = 3) -> float:
    """Fastest wall seconds of the quickstart semi-supervised step's model passes on ``threads`` threads."""
    import torch
    import torch.nn.functional as F

    from semiseg.data.synthetic import CLASSES
    from semiseg.models import build_model

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model("unet_small", len(CLASSES)).train()
            teacher_in, student_in = torch.randn(16, 3, size, size), torch.randn(48, 3, size, size)
            target = torch.randint(0, len(CLASSES), (48, size, size))
            best = float("inf")
            for i in range(rounds + 1):  # the first is a warm-up: oneDNN sets its kernels up then
                start = time.perf_counter()
                with torch.no_grad():
                    model(teacher_in)
                F.cross_entropy(model(student_in), target).backward()
                model.zero_grad(set_to_none=True)
                if i:
                    best = min(best, time.perf_counter() - start)
            return best
    finally:
        torch.set_num_threads(before)


def _timed(entry: dict) -> bool:
    """A cache entry with the two step times (half the threads, all of them)."""
    seconds = entry.get("seconds")
    return isinstance(seconds, list) and len(seconds) == 2 and all(isinstance(v, (int, float)) for v in seconds)


def choose_schedule(cores: int, *, measure: Callable[[int], float] = measure_step_seconds) -> Schedule:
    """Side by side (2 jobs) or one after the other (1 job) for a machine with ``cores`` cores (2 or more)."""
    from semiseg.runtime import cache_file, machine_fingerprint, read_cache, remeasure_requested, write_cache

    half = max(1, cores // 2)
    machine = {**machine_fingerprint(), "threads": [half, cores]}
    path = cache_file().with_name(CACHE_NAME)  # beside precision.json
    entries = read_cache(path, "schedule cache", _timed)
    entry = next((e for e in entries if e.get("machine") == machine), None)
    if entry is not None and not remeasure_requested():
        low, high = (float(s) for s in entry["seconds"])
        source = f"cached {str(entry.get('measured', '?'))[:10]} in {path}; SEMISEG_REMEASURE=1 measures again"
    else:
        try:
            low, high = measure(half), measure(cores)
        except Exception as e:  # the timing is an optimisation: the measured side-by-side setting always works
            warnings.warn(f"quickstart schedule: timing the threads failed ({type(e).__name__}: {e})", stacklevel=2)
            return Schedule(2, f"side by side: timing the threads failed ({type(e).__name__})")
        entries = [e for e in entries if e is not entry] + [{
            "machine": machine, "seconds": [low, high],
            "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}]
        source = f"measured, cached in {path}" if write_cache(path, entries, "schedule cache") else "measured, not cached"
    speedup = low / high
    timing = (f"a semi-supervised step's model passes {1000 * low:.0f} ms on {half} thread{'s' if half > 1 else ''}, "
              f"{1000 * high:.0f} ms on {cores}: {speedup:.2f}x")
    if speedup >= MIN_SPEEDUP:
        return Schedule(1, f"one after the other: {timing}, at least {MIN_SPEEDUP}x; {source}")
    return Schedule(2, f"side by side: {timing}, under the {MIN_SPEEDUP}x one after the other needs; {source}")
