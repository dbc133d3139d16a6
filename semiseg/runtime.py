"""Runtime policy: device, numeric precision, memory format, and the autocast / grad-scaler plumbing.

A leaf every layer may use (the engine's loop and methods, ``semiseg.inference``, export, benchmarks): it imports
torch and the standard library, and ``semiseg.config`` / ``semiseg.atomic`` only for their error type and writes.

``precision`` is one of :data:`PRECISIONS`: ``"fp32"``, ``"bf16"`` (autocast to bfloat16; no scaler needed because
bfloat16 has fp32's exponent range), ``"fp16"`` (autocast to float16 + a gradient scaler; CUDA only) or ``"auto"``;
``channels_last`` is true, false or ``"auto"``. This tuple is the one place the names are spelled (the config's
validation and the commands' ``--precision`` choices read it).

``auto`` on a CPU is measured, not inferred from a capability flag: oneDNN reports bf16 support on any
AVX-512 CPU, including those that only emulate it, where bf16 + channels_last ran 2.2-2.5x *slower* than
fp32 (a 2-core Xeon without avx512_bf16). :func:`choose_precision` times a copy of the run's own model at
the run's crop (scaled down when a step there would take over ~0.5 s) in each candidate mode -- fp32,
fp32 + channels_last, bf16, bf16 + channels_last -- a training step (forward, loss, backward, SGD step) for
training, a no-grad forward for evaluation and prediction, and keeps the fastest. A scaled-down probe can rank
close modes wrongly (on an AMX Xeon it ranked fp32 first for FCN-VGG16, which runs 4-5x faster in bf16 at its
crop), so the modes within :data:`PROBE_MARGIN` of its fastest are timed again at the full crop when that costs
at most :data:`RETIME_STEPS` full-crop steps. Exact fp32 and the default layout win ties: a mode is chosen over a simpler one only when
it is faster by more than :data:`NOISE_MARGIN`. The times are cached per machine (CPU model and flags, torch
version, thread count) and workload (model, classes, crop, batch, train/infer) in
``$SEMISEG_CACHE/precision.json`` (default ``$XDG_CACHE_HOME/semiseg`` or ``~/.cache/semiseg``), so a
machine measures a model once; ``SEMISEG_REMEASURE=1`` measures again. CUDA keeps its rule: bf16 where
supported, else fp16 with a scaler; channels_last on. The fixed benchmark of two stand-in nets that preceded
this measurement is ``benchmarks/precision_modes.py``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from semiseg.atomic import atomic_write_text
from semiseg.config import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The CPU candidates, simplest first: within the noise margin of the fastest, the first one listed wins
# (fp32 is exact; contiguous is the layout every op supports natively).
MODES: tuple[tuple[str, bool], ...] = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
NOISE_MARGIN = 0.05  # a mode must beat a simpler one by more than 5% to be chosen over it
# A scaled-down probe ranks modes less surely than the full crop: on an Intel Xeon with AMX, bf16 vs bf16 +
# channels_last moved by 14% (CamVid DeepLabV3+, 5% apart at the probe) and 22% (CamVid FCN-ResNet-18: plain bf16
# 12% ahead at the probe, channels_last 12% ahead at full size). Modes this close to the fastest at a scaled-down
# probe are timed again at the full crop (where the budget allows) before the choice.
PROBE_MARGIN = 0.25
# Re-timing at the full crop may cost up to this many full-crop steps of the probe's fastest mode (or ``budget``): for a model
# whose step is slow anyway (FCN-VGG16: 4-10 s per step at 512x512 on one core) a few steps' measuring, cached per
# machine, is small beside the run, and its 64x64 probe times mostly what does not grow with the image.
RETIME_STEPS = 6
DROP_RATIO = 1.5  # after a timed round, modes slower than 1.5x the best so far are not timed again
CACHE_FORMAT = 1
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "avx_vnni", "avx512_vnni")


def mode_name(precision: str, channels_last: bool) -> str:
    return precision + ("+CL" if channels_last else "")


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but CUDA is not available; use train.device=cpu")
    return device


def resolve_precision(requested: str, device: torch.device) -> str:
    """Check a requested precision against ``device``; ``"auto"`` without a measurement.

    ``"auto"`` gives CUDA's rule on CUDA and fp32 on a CPU: only :func:`choose_precision`, which has the
    model to time, may pick bf16 there.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        # CPU float16 autocast exists but is slow and needs a scaler that CPU torch does not ship.
        raise ConfigError("precision fp16 needs CUDA; on CPU use bf16 or fp32")
    return requested


def resolve_channels_last(requested: bool | str, device: torch.device) -> bool:
    """``"auto"`` without a measurement: on for CUDA (tensor cores want NHWC under autocast), off on a CPU."""
    if requested == "auto":
        return device.type == "cuda"
    if isinstance(requested, str):
        raise ConfigError(f"channels_last must be true, false or auto, got {requested!r}")
    return bool(requested)


# ---------------------------------------------------------------------------------------------------
# The measured choice


@dataclass
class Workload:
    """What to time: the run's model (never modified: a copy is timed) at the run's input size.

    ``key`` names the model in the cache (name, options, classes); ``task`` is ``"train"`` (a training step)
    or ``"infer"`` (a no-grad forward in eval mode).
    """

    model: torch.nn.Module
    key: str
    task: str
    size: tuple[int, int]
    batch: int
    num_classes: int
    measured_size: tuple[int, int] | None = None  # set by measure_modes when it scaled the crop down to save time
    clock: str | None = None  # set by measure_modes: "CPU time" or "wall time"
    retimed: tuple | None = None  # set by measure_modes: the modes tied at the probe and timed again at the full crop

    def describe(self) -> dict:
        return {"model": self.key, "task": self.task, "size": [int(v) for v in self.size], "batch": int(self.batch)}

    def text(self, measured_size: tuple[int, int] | list[int] | None = None, clock: str | None = None) -> str:
        h, w = self.size
        step = ("training step" if self.task == "train" else "forward") + (f" ({clock})" if clock else "")
        if measured_size and tuple(measured_size) != (h, w):
            return f"{step} of {self.batch}x{measured_size[0]}x{measured_size[1]} (the {h}x{w} crop scaled to save time)"
        return f"{step} of {self.batch}x{h}x{w}"


@dataclass(frozen=True)
class PrecisionChoice:
    """A concrete precision and layout, and why: ``line`` is what the run logs."""

    precision: str
    channels_last: bool
    reason: str
    requested: str = "auto"
    times_ms: dict[str, float] = field(default_factory=dict)  # mode name -> ms per step, measured or cached

    @property
    def mode(self) -> str:
        return self.precision + (" + channels_last" if self.channels_last else "")

    @property
    def line(self) -> str:
        return f"precision {self.requested} -> {self.mode} ({self.reason})"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


# oneDNN's instruction-set cap: ONEDNN_MAX_CPU_ISA=AVX512_CORE on a CPU with avx512_bf16 makes its bf16 kernels
# emulated, as on a Xeon without bf16 (measured on Zen 4: bf16 steps 2x the fp32 ones instead of 0.6x), so
# timings taken under one cap are not valid under another.
ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def machine_fingerprint() -> dict:
    """What makes timings of one machine valid for another run: CPU, its vector extensions, torch, threads
    (and oneDNN's instruction-set cap when one is set)."""
    fingerprint = {"cpu": cpu_name(), "flags": _cpu_flags(), "capability": torch.backends.cpu.get_cpu_capability(),
                   "torch": str(torch.__version__), "threads": torch.get_num_threads()}
    isa = next((os.environ[v] for v in ONEDNN_ISA_VARIABLES if os.environ.get(v)), None)
    if isa:  # only when set, so that the caches of uncapped machines stay valid
        fingerprint["onednn_max_cpu_isa"] = isa.upper()
    return fingerprint


def cache_file() -> Path:
    root = os.environ.get("SEMISEG_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "semiseg")
    return Path(root) / "precision.json"


def _short_path(path: Path) -> str:
    home = os.path.expanduser("~")
    text = str(path)
    return "~" + text[len(home):] if home not in ("", "/") and text.startswith(home + os.sep) else text


def remeasure_requested() -> bool:
    """``SEMISEG_REMEASURE`` set to anything but empty / 0 / false / no: the machine caches are ignored and rewritten."""
    return os.environ.get("SEMISEG_REMEASURE", "").strip().lower() not in ("", "0", "false", "no")


def read_cache(path: Path, what: str = "precision cache", valid: Callable[[dict], bool] | None = None) -> list[dict]:
    """A measurement cache's entries (those ``valid`` accepts; default: the precision cache's); an unreadable or
    malformed file is ignored with a warning naming ``what`` (it is only a cache)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except (OSError, ValueError) as e:
        warnings.warn(f"ignoring the unreadable {what} {path} ({e}); it will be rewritten", stacklevel=3)
        return []
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or data.get("format") != CACHE_FORMAT:
        warnings.warn(f"ignoring the {what} {path}: not a semiseg format-{CACHE_FORMAT} cache; it will be "
                      "rewritten", stacklevel=3)
        return []
    valid = valid or (lambda e: isinstance(e.get("times_ms"), dict))
    return [e for e in entries if isinstance(e, dict) and valid(e)]


def write_cache(path: Path, entries: list[dict], what: str = "precision cache") -> bool:
    """Temp file + rename: a reader sees the old file or the new one. Failure (read-only home) only warns."""
    try:
        atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "entries": entries[-200:]}, indent=1))
        return True
    except OSError as e:
        warnings.warn(f"could not write the {what} {path} ({e}); the next run measures again", stacklevel=3)
        return False


def decide(times: dict[tuple[str, bool], float], margin: float = NOISE_MARGIN) -> tuple[str, bool]:
    """The simplest mode (in :data:`MODES` order) within ``margin`` of the fastest."""
    best = min(times.values())
    return next(m for m in MODES if m in times and times[m] <= best * (1 + margin))


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _format_times(times_ms: dict[str, float]) -> str:
    parts = [f"{name} {_ms(times_ms[name])}" if math.isfinite(times_ms[name]) else f"{name} failed"
             for name in (mode_name(*m) for m in MODES) if name in times_ms]
    return ", ".join(parts)


def choose_precision(precision: str, channels_last: bool | str, device: torch.device,
                     workload: Workload | None = None, *, measure: Callable | None = None,
                     previous: tuple[str, bool] | None = None) -> PrecisionChoice:
    """A concrete precision and layout for ``workload`` on ``device``, measured where ``"auto"`` leaves a choice.

    ``measure(workload, modes) -> {mode: seconds}`` defaults to :func:`measure_modes` (tests pass a fake).
    Without a ``workload`` (nothing to time) a CPU ``"auto"`` stays fp32 / contiguous.
    ``previous``: the mode a resumed run trained in so far. It is kept while it is within the noise margin of the
    fastest here (a run should not change its numerics at a resume for a tie); a slower one is left, and said.
    """
    resolve_precision(precision, device)  # validates (unknown names, fp16 on CPU)
    resolve_channels_last(channels_last, device)
    requested = "auto" if precision == "auto" and channels_last == "auto" else \
        f"{precision}, channels_last {str(channels_last).lower()}"
    if precision != "auto" and channels_last != "auto":
        return PrecisionChoice(precision, bool(channels_last), "as configured", requested)
    if device.type != "cpu":
        why = []
        p, cl = resolve_precision(precision, device), resolve_channels_last(channels_last, device)
        if precision == "auto":
            why.append("bf16 supported" if p == "bf16" else "no bf16: fp16 with a gradient scaler")
        if channels_last == "auto":
            why.append("channels_last for tensor cores")
        return PrecisionChoice(p, cl, f"{device.type}: {', '.join(why)}", requested)
    candidates = [m for m in MODES if precision in ("auto", m[0]) and channels_last in ("auto", m[1])]
    if workload is None:
        p, cl = candidates[0]
        return PrecisionChoice(p, cl, "not measured (no model given): the exact default", requested)

    path = cache_file()
    machine, work = machine_fingerprint(), workload.describe()
    entries = read_cache(path)
    entry = next((e for e in entries if e.get("machine") == machine and e.get("workload") == work), None)
    remeasure = remeasure_requested()
    # The decision is made on the milliseconds the cache stores, unrounded, on both paths: a cache hit then chooses
    # exactly what the measurement that wrote it chose (rounded times once flipped a tie at the noise margin).
    times = None if entry is None or remeasure else _cached_times_ms(entry, candidates)
    if times is not None:
        head = f"cached measurement ({str(entry.get('measured', '?'))[:10]})"
        measured_size = entry.get("measured_size")
        if not (isinstance(measured_size, list) and len(measured_size) == 2 and all(isinstance(v, int) for v in measured_size)):
            measured_size = None
        clock = entry.get("clock") if entry.get("clock") in ("CPU time", "wall time") else None
        tail = f"from {_short_path(path)}, SEMISEG_REMEASURE=1 measures again"
    else:
        try:
            seconds = (measure or measure_modes)(workload, candidates)
            times = {m: 1000 * float(seconds[m]) for m in candidates if m in seconds}
        except Exception as e:  # a model the probe cannot run: the exact mode, nothing cached
            warnings.warn(f"precision auto: timing {workload.key} failed ({type(e).__name__}: {e}); using "
                          f"{mode_name(*candidates[0])}", stacklevel=2)
            p, cl = candidates[0]
            return PrecisionChoice(p, cl, f"timing failed ({type(e).__name__}): the exact default", requested)
        measured_size, clock = workload.measured_size, workload.clock
        entries = [e for e in entries if e is not entry] + [{
            "machine": machine, "workload": work,
            "times_ms": {mode_name(*m): t if math.isfinite(t) else None for m, t in times.items()},
            "measured_size": list(measured_size) if measured_size else None, "clock": workload.clock,
            "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}]
        head, tail = "measured", f"cached in {_short_path(path)}" if write_cache(path, entries) else "not cached"
    times_ms = {mode_name(*m): t for m, t in times.items()}
    finite = {m: t for m, t in times.items() if math.isfinite(t)}
    if not finite:
        p, cl = candidates[0]
        return PrecisionChoice(p, cl, "no mode ran: the exact default", requested, times_ms)
    chosen, fastest = decide(finite), min(finite, key=finite.get)
    threads = machine["threads"]
    reason = (f"{head} on {machine['cpu']}, {threads} thread{'s' if threads != 1 else ''}: {_format_times(times_ms)} "
              f"ms per {workload.text(measured_size, clock)}")
    if head == "measured" and workload.retimed:
        reason += (f"; {' and '.join(mode_name(*m) for m in workload.retimed)} were within {PROBE_MARGIN:.0%} there and "
                   f"were timed again at the full {workload.size[0]}x{workload.size[1]} crop (shown scaled to the probe)")
    previous = tuple(previous) if previous is not None else None
    if previous is not None and previous != chosen and previous in finite:
        slower = finite[previous] / finite[fastest]
        if slower <= 1 + NOISE_MARGIN:
            chosen = previous
            reason += (f"; the run trained in {mode_name(*previous)} so far, within {NOISE_MARGIN:.0%} of the fastest "
                       "here: kept")
        else:
            reason += (f"; the run trained in {mode_name(*previous)} so far, {slower:.2g}x the fastest here: it continues "
                       f"in {mode_name(*chosen)} (set train.precision / train.channels_last to keep a mode)")
    elif chosen != fastest:
        reason += f"; {mode_name(*fastest)} is within {NOISE_MARGIN:.0%}: the simpler {mode_name(*chosen)} is kept"
    return PrecisionChoice(chosen[0], chosen[1], f"{reason}; {tail}", requested, times_ms)


def _cached_times_ms(entry: dict, candidates: list[tuple[str, bool]]) -> dict[tuple[str, bool], float] | None:
    """Milliseconds per mode from a cache entry (None: a failed mode -> inf); None when a candidate is missing."""
    try:
        raw = {m: entry["times_ms"][mode_name(*m)] for m in candidates}
        return {m: math.inf if v is None else float(v) for m, v in raw.items()}
    except (KeyError, TypeError, ValueError):
        return None


def measure_modes(workload: Workload, modes: list[tuple[str, bool]], *, rounds: int = 2, step_seconds: float = 0.5,
                  budget: float = 8.0, wall_budget: float = 60.0) -> dict[tuple[str, bool], float]:
    """Fastest seconds per step of each mode, on a copy of the workload's model (CPU).

    Calibration: two fp32 steps at a small size (the crop scaled to 64x64 px of area). Size: the crop, unless
    an fp32 step there would take over ``step_seconds`` by that estimate; then the crop scaled down to about
    that (same aspect ratio and batch, not below the calibration size), and ``workload.measured_size`` records
    it. The big recipes take 5-20 s per step at their crop on a 2-core CPU, and the modes' ratio depends on the
    layers' channel counts and kernels more than on the image size.

    Protocol, by how many steps of the estimated cost ``budget`` (seconds of the clock) affords: an untimed
    warm-up step per mode (oneDNN builds its kernels then) and up to ``rounds`` timed rounds; or warm-up and
    one round; or, for a model too slow for that (FCN-VGG16: ~2.5 s per step at any crop, its padding of 100
    makes even 32px cost 232px), one step per mode whose time counts (kernel set-up is a small part of it).
    Rounds interleave the modes, so a burst of background load does not hit one mode only; each mode keeps its
    minimum (other jobs only ever add time). A mode slower than :data:`DROP_RATIO` x the best after a round,
    or whose warm-up took over 4x the fastest warm-up, is not timed again; rounds also stop after
    ``wall_budget`` seconds of wall time. A scaled-down probe that leaves modes within :data:`PROBE_MARGIN` of the
    fastest has those timed again at the full crop where the budget allows (:func:`settle_tie_at_full_crop`).
    One thread is timed in CPU time, several in wall time. The model, its
    RNG stream and its weights are untouched: a copy is timed, drawing random numbers under a forked RNG state.
    """
    device = torch.device("cpu")
    train = workload.task == "train"
    start = time.perf_counter()
    # One thread: the process's CPU time, which other processes on a shared machine barely change (wall time
    # there grew 5x for every mode alike, and with it the noise). Several threads: wall time, because CPU
    # time would count the threads' waits at every barrier.
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    workload.clock = "CPU time" if clock is time.process_time else "wall time"
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(workload.model).to(device).train(train)
        params = [p for p in probe.parameters() if p.requires_grad]
        opt = None
        if train and params:  # no momentum: no state, so the layout can switch; fused like the run's optimizer
            try:
                opt = torch.optim.SGD(params, lr=1e-9, fused=True)
            except (RuntimeError, TypeError, ValueError):
                opt = torch.optim.SGD(params, lr=1e-9)
        layout: list[bool | None] = [None]
        batches: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

        def step(precision: str, channels_last: bool, size: tuple[int, int]) -> float:
            if size not in batches:
                g = torch.Generator().manual_seed(0)
                batches[size] = (torch.randn(workload.batch, 3, *size, generator=g),
                                 torch.randint(0, max(1, workload.num_classes), (workload.batch, *size), generator=g))
            x, y = batches[size]
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            if layout[0] != channels_last:
                probe.to(memory_format=fmt)
                layout[0] = channels_last
            x = x.contiguous(memory_format=fmt)
            t0 = clock()
            if train:
                with autocast(precision, device):
                    out = probe(x)
                torch.nn.functional.cross_entropy(out.float(), y).backward()
                if opt is not None:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            else:
                with torch.no_grad(), autocast(precision, device):
                    probe(x)
            return clock() - t0

        full = (int(workload.size[0]), int(workload.size[1]))
        small = _scaled(full, 64 * 64 / (full[0] * full[1]))
        fp32 = ("fp32", False)
        step(*fp32, small)  # builds the kernels
        calibration = step(*fp32, small)
        size = _scaled(full, step_seconds * small[0] * small[1] / (max(calibration, 1e-9) * full[0] * full[1]))
        if size[0] * size[1] < small[0] * small[1]:
            size = small
        workload.measured_size = size
        estimate = calibration * (size[0] * size[1]) / (small[0] * small[1])  # seconds per fp32 step at size
        affordable = budget / max(estimate, 1e-9)
        warmup = affordable >= 2 * len(modes)
        rounds = max(1, rounds) if affordable >= 3 * len(modes) else 1

        timed: dict[tuple[str, bool], float] = {}
        warm: dict[tuple[str, bool], float] = {}
        if size == small and fp32 in modes:  # the calibration already warmed and timed fp32 here
            timed[fp32] = warm[fp32] = calibration
        elif fp32 in modes:
            # A mode far slower than fp32 at the calibration size is not stepped at the probe size: bf16 without
            # native kernels (an AVX2-only CPU) took 42 s for one DeepLabV3+ forward there, which used up the wall
            # budget of the tie-break below. Its time is the small step's, scaled to the probe's area.
            for m in modes:
                if m == fp32:
                    continue
                try:
                    step(*m, small)  # builds the kernels
                    t = step(*m, small)
                except RuntimeError:
                    continue  # the probe-size step below says why
                if t > 4 * calibration:
                    warm[m] = t * (size[0] * size[1]) / (small[0] * small[1])
        for m in modes:
            if m in warm:
                continue
            try:
                warm[m] = step(*m, size)
            except RuntimeError as e:  # an op without a kernel for this mode: that mode cannot win
                warnings.warn(f"precision auto: {mode_name(*m)} does not run ({e})", stacklevel=2)
                warm[m] = math.inf
        runnable = [t for t in warm.values() if math.isfinite(t)]
        if not runnable:
            return warm
        active = [m for m in modes if warm[m] <= 4 * min(runnable)]
        for _ in range(rounds if warmup else 0):  # too slow for more: each mode's first step is its time
            for m in active:
                t = step(*m, size)
                timed[m] = min(timed.get(m, t), t)
            fastest = min(timed.values())
            active = [m for m in active if timed[m] <= DROP_RATIO * fastest]
            if len(active) <= 1 or time.perf_counter() - start > wall_budget:
                break
        result = {m: timed.get(m, warm[m]) for m in modes}
        if size != full:
            # How much a step grows from the probe to the full crop: a fixed part plus a part per pixel, fitted to
            # fp32 at two sizes (the calibration and the probe, or one more step at 4x the calibration's area).
            # Area alone overstates it where a fixed part dominates the probe (FCN-VGG16's fc6/fc7 and optimizer).
            growth = (full[0] * full[1]) / (size[0] * size[1])
            if math.isfinite(result.get(fp32, math.inf)):
                points = [(small, calibration), (size, result[fp32])]
                if size == small:
                    mid = _scaled(full, 4 * small[0] * small[1] / (full[0] * full[1]))
                    step(*fp32, mid)  # warm-up at the new shape
                    points[1] = (mid, step(*fp32, mid))
                growth = _growth(points, full, size)
            full_step = min(t for t in result.values() if math.isfinite(t)) * growth  # the probe's fastest, full crop
            allowed = max(budget, RETIME_STEPS * full_step)

            # a step slower than step_seconds is timed once, its kernel set-up included (a small part of it), as
            # the probe times such models; a faster one gets a warm-up step and `rounds` timed steps
            steps_each = rounds + 1 if full_step <= step_seconds else 1

            def time_at_full(m: tuple[str, bool]) -> float:
                if steps_each == 1:
                    return step(*m, full)
                step(*m, full)  # warm-up: the kernels for the new shape are built here
                return min(step(*m, full) for _ in range(steps_each - 1))

            def tie_affordable(tied: tuple) -> bool:  # at the fitted full-crop cost
                cost = sum(result[m] * growth for m in tied) * steps_each
                return cost <= allowed and time.perf_counter() - start + cost <= max(wall_budget, 2 * allowed)

            result, retimed = settle_tie_at_full_crop(result, time_at_full, probe_area_share=1 / growth,
                                                      affordable=tie_affordable)
            workload.retimed = retimed or None
    return result


def _growth(points: list[tuple[tuple[int, int], float]], full: tuple[int, int], probe: tuple[int, int]) -> float:
    """Full-crop step time over probe step time, from step times at two sizes fitted as fixed + per-pixel cost
    (each part at least 0; area scaling when the two sizes coincide)."""
    (s1, t1), (s2, t2) = points
    a1, a2, af, ap = s1[0] * s1[1], s2[0] * s2[1], full[0] * full[1], probe[0] * probe[1]
    if a2 == a1:
        return af / ap
    per_pixel = max(0.0, (t2 - t1) / (a2 - a1))
    fixed = max(0.0, t1 - per_pixel * a1)
    at_probe = fixed + per_pixel * ap
    return (fixed + per_pixel * af) / at_probe if at_probe > 0 else af / ap


def settle_tie_at_full_crop(times: dict[tuple[str, bool], float], time_at_full: Callable[[tuple[str, bool]], float], *,
                            probe_area_share: float, affordable: Callable[[tuple], bool]
                            ) -> tuple[dict[tuple[str, bool], float], tuple[tuple[str, bool], ...]]:
    """Where the probe (a scaled-down crop) puts two or more modes within :data:`PROBE_MARGIN` of the fastest, time
    just those again at the full crop (``time_at_full(mode)`` -> seconds) and let that decide.

    Why: the probe's ranking of close modes does not hold at the full crop (Intel Xeon with AMX, CamVid DeepLabV3+
    at 240x320: bf16 and bf16 + channels_last within 5% at 120x160, 14% apart at full size; CamVid FCN-ResNet-18:
    plain bf16 12% ahead at the probe, bf16 + channels_last 12% ahead at full size). The
    full-crop times come back multiplied by ``probe_area_share`` (a probe step's share of a full-crop step: the
    area share, or the fitted fixed + per-pixel cost's), so they stay on the probe's scale beside the other modes. Returns (times, the modes timed again); nothing is timed again, and
    ``()`` comes back, when fewer than two modes tie or ``affordable(tied_modes)`` is false."""
    finite = {m: t for m, t in times.items() if math.isfinite(t)}
    best = min(finite.values(), default=math.inf)
    tied = tuple(m for m in MODES if m in finite and finite[m] <= best * (1 + PROBE_MARGIN))
    if len(tied) < 2 or not affordable(tied):
        return times, ()
    settled = dict(times)
    for m in tied:
        settled[m] = time_at_full(m) * probe_area_share
    return settled, tied


def _scaled(size: tuple[int, int], area_ratio: float) -> tuple[int, int]:
    """``size`` with its area times ``area_ratio`` (at most 1), same aspect ratio, sides multiples of 8 (>= 32)."""
    k = math.sqrt(min(1.0, max(area_ratio, 0.0)))
    if k >= 1.0:
        return size
    return tuple(max(32, min(s, int(round(s * k / 8)) * 8)) for s in size)  # type: ignore[return-value]


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a concrete precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler only where it is needed: fp16 (narrow exponent range) on CUDA."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


__all__ = [
    "PRECISIONS", "MODES", "NOISE_MARGIN", "PROBE_MARGIN", "mode_name", "resolve_device", "resolve_precision", "resolve_channels_last",
    "autocast", "make_grad_scaler", "Workload", "PrecisionChoice", "choose_precision", "measure_modes", "decide",
    "settle_tie_at_full_crop", "machine_fingerprint", "cache_file", "read_cache", "write_cache", "remeasure_requested",
]
