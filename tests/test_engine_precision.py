"""`precision: auto` chooses by measurement (selection, cache, log line), and the fast CPU path (bf16 autocast +
channels_last) agrees with fp32 in loss, gradients and metrics."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch

from semiseg.config import ConfigError, load_config
from semiseg import runtime as P
from semiseg.engine.evaluate import evaluate_checkpoint
from semiseg.engine.logger import read_metrics
from semiseg.runtime import MODES, Workload, autocast, choose_precision, decide
from semiseg.engine.trainer import Trainer
from semiseg.models import build_model

from conftest import TinyNet, tiny_overrides

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    # 1 thread: these tests compare numbers, not speed, and 1 thread is not slowed down by a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def loss_and_grad(model, x, y, precision, channels_last):
    model.zero_grad(set_to_none=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(precision, CPU):
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    grad = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return loss.item(), grad


def synthetic_batch(n=4, size=64):
    from semiseg.data import build_dataset
    from semiseg.data.transforms import build_eval_transform

    ds = build_dataset("synthetic", None, "train", transform=build_eval_transform(), length=n, size=size)
    return torch.stack([ds[i]["image"] for i in range(n)]), torch.stack([ds[i]["mask"] for i in range(n)])


@pytest.mark.parametrize("name", ["fcn_resnet18", "deeplabv3plus_mobilenetv2"])
@pytest.mark.slow
def test_one_training_step_of_a_real_model_agrees(name):
    """Loss of one step agrees to 2%; for ResNet-18 the gradient direction too.

    The gradient of DeepLabV3+ at initialisation is too ill-conditioned to compare element-wise: its
    ASPP image-pooling BatchNorm normalises over only N values, so even fp32 contiguous vs fp32
    channels_last (same maths, another summation order) gives a gradient cosine of about 0.75. Its
    agreement is judged on training outcomes instead (test below, and the quickstart in the README).
    """
    torch.manual_seed(0)
    model = build_model(name, 8).train()
    x, y = synthetic_batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for precision, channels_last in (("fp32", False), ("fp32", True), ("bf16", True)):
        model.load_state_dict(state)  # BatchNorm running stats moved: every mode starts from the same state
        results[precision, channels_last] = loss_and_grad(model, x, y, precision, channels_last)
    loss32, grad32 = results["fp32", False]
    loss16, grad16 = results["bf16", True]
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    if name == "fcn_resnet18":
        cos = lambda a, b: torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()
        assert cos(grad32, results["fp32", True][1]) > 0.999  # channels_last alone is only a layout change
        assert cos(grad32, grad16) > 0.9  # bf16 keeps ~3 significant digits through 20 BatchNorm layers
        assert grad16.norm().item() == pytest.approx(grad32.norm().item(), rel=0.1)


def test_training_curves_and_metrics_agree(tmp_path):
    """Same run in fp32 and in bf16 + channels_last: the losses track each other and mIoU matches."""
    runs = {}
    for precision, channels_last in (("fp32", "false"), ("bf16", "true")):
        cfg = load_config(None, tiny_overrides(**{
            "output_dir": str(tmp_path), "name": precision, "train.precision": precision,
            "train.channels_last": channels_last, "train.iterations": 30, "train.eval_interval": 15,
            "train.log_interval": 3, "optim.lr": 0.05, "model.options": "{batchnorm: true, width: 16}",
            "data.options": "{length: 32}"}))
        Trainer(cfg, cfg.run_dir, progress=False).fit()
        runs[precision] = read_metrics(cfg.run_dir)
    loss = {k: [e["loss"] for e in v if e["kind"] == "train"] for k, v in runs.items()}
    miou = {k: [e["miou"] for e in v if e["kind"] == "eval"] for k, v in runs.items()}
    assert runs["bf16"][0]["precision"] == "bf16" and runs["bf16"][0]["channels_last"] is True
    assert loss["bf16"] == pytest.approx(loss["fp32"], rel=0.05)
    assert miou["fp32"][-1] > 0.8  # the run learned something, so agreeing is not trivial
    assert miou["bf16"] == pytest.approx(miou["fp32"], abs=0.02)


# ---------------------------------------------------------------------------------------------------------------
# precision: auto -- the measured choice (fake timers: no timing asserts)

NAMES = {m: P.mode_name(*m) for m in MODES}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMISEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEMISEG_REMEASURE", raising=False)
    return tmp_path / "cache" / "precision.json"


class FakeTimer:
    """Stands in for measure_modes: returns the given seconds per mode and counts its calls."""

    def __init__(self, seconds: dict):
        self.seconds, self.calls = seconds, []

    def __call__(self, workload, modes):
        self.calls.append(list(modes))
        return {m: self.seconds[m] for m in modes}


def workload(task="train", key="tiny {} classes=4", size=(32, 32)):
    return Workload(TinyNet(4), key, task, size, 2, 4)


def times(fastest, ratio=0.5, base=0.2):
    return {m: base * (ratio if m == fastest else 1.0) for m in MODES}


@pytest.mark.parametrize("fastest", MODES, ids=lambda m: NAMES[m])
def test_the_mode_the_measurement_prefers_is_chosen(cache, fastest):
    fake = FakeTimer(times(fastest))
    choice = choose_precision("auto", "auto", CPU, workload(), measure=fake)
    assert (choice.precision, choice.channels_last) == fastest
    assert fake.calls == [list(MODES)]  # all four candidates timed
    assert choice.times_ms == {NAMES[m]: pytest.approx(1000 * t) for m, t in times(fastest).items()}


def test_within_the_noise_margin_the_simpler_mode_is_kept(cache):
    # bf16 + channels_last 3% faster than fp32 is noise: exact fp32 stays
    seconds = {("fp32", False): 0.100, ("fp32", True): 0.101, ("bf16", False): 0.099, ("bf16", True): 0.097}
    choice = choose_precision("auto", "auto", CPU, workload(), measure=FakeTimer(seconds))
    assert (choice.precision, choice.channels_last) == ("fp32", False)
    assert "bf16+CL is within 5%: the simpler fp32 is kept" in choice.reason
    # 10% faster is not noise; and among bf16 modes, channels_last must also beat plain bf16 by the margin
    seconds = {("fp32", False): 0.100, ("fp32", True): 0.100, ("bf16", False): 0.090, ("bf16", True): 0.088}
    choice = choose_precision("auto", "auto", CPU, workload(key="other"), measure=FakeTimer(seconds))
    assert (choice.precision, choice.channels_last) == ("bf16", False)


def test_a_cache_hit_chooses_what_the_measurement_chose_at_the_noise_margin(cache):
    # fp32 is 5.00004% slower than fp32 + channels_last: just outside the margin, so channels_last is chosen.
    # Times rounded to the microsecond in the cache (1.05 ms) put it inside and chose fp32 on the next run.
    seconds = {("fp32", False): 1.0500004e-3, ("fp32", True): 1.0e-3}
    measured = choose_precision("fp32", "auto", CPU, workload(), measure=FakeTimer(seconds))
    never = FakeTimer({})
    cached = choose_precision("fp32", "auto", CPU, workload(), measure=never)
    assert never.calls == [] and "cached measurement" in cached.reason
    assert (measured.precision, measured.channels_last) == (cached.precision, cached.channels_last) == ("fp32", True)
    assert cached.times_ms == measured.times_ms


def test_a_resumed_run_keeps_its_mode_while_it_is_about_as_fast(cache):
    # fp32 + channels_last 3% slower than fp32: a fresh run takes fp32, a run that trained in fp32 + CL keeps it
    seconds = {("fp32", False): 0.100, ("fp32", True): 0.103, ("bf16", False): 0.300, ("bf16", True): 0.290}
    fresh = choose_precision("auto", "auto", CPU, workload(), measure=FakeTimer(seconds))
    assert (fresh.precision, fresh.channels_last) == ("fp32", False)
    kept = choose_precision("auto", "auto", CPU, workload(), measure=FakeTimer(seconds), previous=("fp32", True))
    assert (kept.precision, kept.channels_last) == ("fp32", True)
    assert "the run trained in fp32+CL so far, within 5% of the fastest here: kept" in kept.reason
    # a machine where the run's bf16 is 2.9x slower: it moves to the fastest simple mode, and says so
    moved = choose_precision("auto", "auto", CPU, workload(), measure=FakeTimer(seconds), previous=("bf16", True))
    assert (moved.precision, moved.channels_last) == ("fp32", False)
    assert "the run trained in bf16+CL so far, 2.9x the fastest here: it continues in fp32" in moved.reason
    # a mode the configuration no longer allows is not brought back
    narrowed = choose_precision("fp32", False, CPU, workload(), measure=FakeTimer(seconds), previous=("bf16", True))
    assert (narrowed.precision, narrowed.channels_last) == ("fp32", False)
    same = choose_precision("auto", "auto", CPU, workload(), measure=FakeTimer(seconds), previous=("fp32", False))
    assert "so far" not in same.reason


def test_fixed_values_narrow_the_candidates(cache):
    fake = FakeTimer(times(("bf16", True)))
    choice = choose_precision("fp32", "auto", CPU, workload(), measure=fake)
    assert fake.calls == [[("fp32", False), ("fp32", True)]] and choice.precision == "fp32"
    assert choice.line.startswith("precision fp32, channels_last auto -> fp32")
    choice = choose_precision("bf16", False, CPU, workload(), measure=fake)  # nothing left to choose
    assert len(fake.calls) == 1 and (choice.precision, choice.channels_last) == ("bf16", False)
    assert choice.reason == "as configured"
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        choose_precision("fp16", "auto", CPU, workload(), measure=fake)
    # no model to time: the exact default, never bf16 on a flag's word
    assert choose_precision("auto", "auto", CPU).precision == "fp32"


def test_the_log_line_names_the_choice_the_times_and_the_cache(cache):
    seconds = {("fp32", False): 0.212, ("fp32", True): 0.187, ("bf16", False): 0.144, ("bf16", True): 0.130}
    line = choose_precision("auto", "auto", CPU, workload(), measure=FakeTimer(seconds)).line
    cpu = P.cpu_name()
    assert line.startswith(f"precision auto -> bf16 + channels_last (measured on {cpu}, ")
    assert ": fp32 212, fp32+CL 187, bf16 144, bf16+CL 130 ms per training step of 2x32x32; " in line
    assert line.endswith(f"cached in {cache})")
    line = choose_precision("auto", "auto", CPU, workload(), measure=FakeTimer(seconds)).line
    assert line.startswith("precision auto -> bf16 + channels_last (cached measurement (")
    assert line.endswith(f"from {cache}, SEMISEG_REMEASURE=1 measures again)")


def test_a_cache_hit_measures_nothing_and_another_machine_or_workload_measures_again(cache, monkeypatch):
    fake = FakeTimer(times(("bf16", True)))
    first = choose_precision("auto", "auto", CPU, workload(), measure=fake)
    again = choose_precision("auto", "auto", CPU, workload(), measure=fake)
    assert len(fake.calls) == 1 and (again.precision, again.channels_last) == (first.precision, first.channels_last)
    stored = json.loads(cache.read_text())
    assert stored["format"] == 1 and len(stored["entries"]) == 1
    entry = stored["entries"][0]
    assert entry["workload"] == {"model": "tiny {} classes=4", "task": "train", "size": [32, 32], "batch": 2}
    assert entry["machine"]["torch"] == str(torch.__version__) and "threads" in entry["machine"]

    # inference is measured separately from training; so is another crop or model
    choose_precision("auto", "auto", CPU, workload(task="infer"), measure=fake)
    choose_precision("auto", "auto", CPU, workload(size=(64, 32)), measure=fake)
    assert len(fake.calls) == 3
    # another machine (or torch, or thread count): its own measurement, the first entry kept
    real_fingerprint = P.machine_fingerprint
    real = real_fingerprint()
    monkeypatch.setattr(P, "machine_fingerprint", lambda: {**real, "cpu": "Some Xeon", "flags": ["avx512f"]})
    other = choose_precision("auto", "auto", CPU, workload(), measure=FakeTimer(times(("fp32", False))))
    assert other.precision == "fp32" and "Some Xeon" in other.reason
    assert len(json.loads(cache.read_text())["entries"]) == 4
    monkeypatch.setattr(P, "machine_fingerprint", lambda: real)
    assert choose_precision("auto", "auto", CPU, workload(), measure=fake).channels_last is True
    assert len(fake.calls) == 3  # still cached
    # oneDNN capped below bf16 (how a CPU without native bf16 is emulated): not the uncapped machine's timings
    monkeypatch.setattr(P, "machine_fingerprint", real_fingerprint)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core")
    assert P.machine_fingerprint() == {**real, "onednn_max_cpu_isa": "AVX512_CORE"}
    choose_precision("auto", "auto", CPU, workload(), measure=fake)
    assert len(fake.calls) == 4
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("SEMISEG_REMEASURE", "1")
    choose_precision("auto", "auto", CPU, workload(), measure=fake)
    assert len(fake.calls) == 5


@pytest.mark.parametrize("content", ["{not json", '{"format": 99, "entries": []}', '[1, 2]',
                                     '{"format": 1, "entries": [{"machine": 1, "times_ms": {"fp32": "x"}}]}'])
def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(cache, content):
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    fake = FakeTimer(times(("bf16", False)))
    with pytest.warns(UserWarning, match="precision cache") if content.startswith(("{not", '{"format": 99', "[")) \
            else _no_warning():
        choice = choose_precision("auto", "auto", CPU, workload(), measure=fake)
    assert len(fake.calls) == 1 and (choice.precision, choice.channels_last) == ("bf16", False)
    assert json.loads(cache.read_text())["format"] == 1  # valid again
    assert not [f for f in os.listdir(cache.parent) if f != "precision.json"]  # no temporary file left


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SEMISEG_CACHE", str(blocker / "sub"))  # a folder inside a file cannot be made
    with pytest.warns(UserWarning, match="could not write"):
        choice = choose_precision("auto", "auto", CPU, workload(), measure=FakeTimer(times(("fp32", True))))
    assert choice.channels_last is True and choice.reason.endswith("not cached")


def test_cache_location_follows_semiseg_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMISEG_CACHE", str(tmp_path / "a"))
    assert P.cache_file() == tmp_path / "a" / "precision.json"
    monkeypatch.delenv("SEMISEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert P.cache_file() == tmp_path / "xdg" / "semiseg" / "precision.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert P.cache_file() == P.Path(os.path.expanduser("~")) / ".cache" / "semiseg" / "precision.json"


def test_a_real_measurement_of_a_tiny_model_leaves_it_and_the_rng_untouched(cache):
    torch.manual_seed(0)
    model = TinyNet(4, dropout=0.5, batchnorm=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    for task in ("train", "infer"):
        w = Workload(model, "tiny", task, (32, 32), 2, 4)
        seconds = P.measure_modes(w, list(MODES))
        assert set(seconds) == set(MODES) and all(0 < t < 60 for t in seconds.values())
        assert w.measured_size == (32, 32)  # small enough to time at the crop itself
        choice = choose_precision("auto", "auto", CPU, w)
        assert (choice.precision, choice.channels_last) in MODES and "measured on" in choice.reason
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training and next(model.parameters()).is_contiguous()


def test_measure_modes_scales_a_large_crop_down_to_its_time_target():
    w = Workload(TinyNet(4), "tiny", "infer", (512, 768), 1, 4)
    seconds = P.measure_modes(w, [("fp32", False)], rounds=1, step_seconds=1e-4)
    assert set(seconds) == {("fp32", False)}
    h, wd = w.measured_size
    assert h < 512 and wd < 768 and h % 8 == 0 and wd % 8 == 0 and abs(wd / h - 1.5) < 0.2
    assert "of 1x" in w.text(w.measured_size) and "the 512x768 crop scaled to save time" in w.text(w.measured_size)


BF16, BF16_CL, FP32 = ("bf16", False), ("bf16", True), ("fp32", False)


class _SlowUnderBf16(torch.nn.Module):
    """TinyNet whose every forward under bf16 autocast also burns 20 ms of CPU (an AVX2-only CPU's bf16). The
    measurement times a deep copy, so the (bf16?, input size) of each forward go to a list all copies share."""

    calls: list = []

    def __init__(self):
        super().__init__()
        self.net = TinyNet(4)

    def forward(self, x):
        bf16 = torch.is_autocast_enabled("cpu")
        _SlowUnderBf16.calls.append((bf16, tuple(x.shape[-2:])))
        if bf16:
            end = time.process_time() + 0.02
            while time.process_time() < end:
                pass
        return self.net(x)


def test_a_mode_far_slower_at_the_calibration_size_is_never_stepped_at_the_probe_size():
    _SlowUnderBf16.calls.clear()
    w = Workload(_SlowUnderBf16(), "slow bf16", "infer", (96, 128), 1, 4)
    seconds = P.measure_modes(w, list(MODES), step_seconds=10.0)  # fast enough to probe at the crop itself
    small = P._scaled((96, 128), 64 * 64 / (96 * 128))
    assert w.measured_size == (96, 128) != small
    sizes = {bf16: {size for b, size in _SlowUnderBf16.calls if b == bf16} for bf16 in (True, False)}
    assert sizes[True] == {small}  # bf16 only ever ran at the calibration size
    assert (96, 128) in sizes[False]  # the fp32 modes were timed at the probe size
    assert min(seconds[BF16], seconds[BF16_CL]) > 4 * min(seconds[FP32], seconds[("fp32", True)])
    assert decide(seconds)[0] == "fp32"


def test_a_tie_at_the_probe_is_settled_by_the_full_crop():
    # the Xeon-with-AMX case: bf16 and bf16 + CL within 5% at the probe, 14% apart at the full crop (4x the area)
    probe = {FP32: 1.00, BF16: 0.60, BF16_CL: 0.58}
    timed = []

    def at_full(m):
        timed.append(m)
        return {BF16: 2.52, BF16_CL: 2.16}[m]

    settled, retimed = P.settle_tie_at_full_crop(probe, at_full, probe_area_share=0.25, affordable=lambda pair: True)
    assert decide(probe) == BF16 and timed == [BF16, BF16_CL]  # only the tied pair is timed again
    assert retimed == (BF16, BF16_CL)
    assert settled == {FP32: 1.00, BF16: 0.63, BF16_CL: 0.54} and decide(settled) == BF16_CL
    # the probe's noise can also put the simpler mode first: still a tie, still settled at the full crop
    flipped = {FP32: 1.00, BF16: 0.215, BF16_CL: 0.217}
    assert decide(P.settle_tie_at_full_crop(flipped, at_full, probe_area_share=0.25,
                                            affordable=lambda modes: True)[0]) == BF16_CL
    # still tied at the full crop: the simpler mode stays
    assert decide(P.settle_tie_at_full_crop(probe, {BF16: 2.40, BF16_CL: 2.36}.get, probe_area_share=0.25,
                                            affordable=lambda pair: True)[0]) == BF16


def test_a_probe_lead_short_of_the_probe_margin_is_checked_at_the_full_crop():
    # the CamVid FCN-ResNet-18 case (AMX Xeon): plain bf16 12% ahead at the probe, channels_last 12% ahead at full size
    probe = {FP32: 0.147, ("fp32", True): 0.161, BF16: 0.112, BF16_CL: 0.125}
    settled, retimed = P.settle_tie_at_full_crop(probe, {BF16: 0.89, BF16_CL: 0.79}.get, probe_area_share=0.125,
                                                 affordable=lambda modes: True)
    assert decide(probe) == BF16 and retimed == (BF16, BF16_CL)  # fp32 (31% slower) is not timed again
    assert decide(settled) == BF16_CL and settled[FP32] == 0.147
    # beyond the margin the probe's order stands and nothing more is timed
    far = {FP32: 1.0, BF16: 0.70, BF16_CL: 0.55}
    assert P.settle_tie_at_full_crop(far, {}.get, probe_area_share=0.125, affordable=lambda m: True) == (far, ())


def test_growth_to_the_full_crop_counts_a_fixed_cost_once():
    # all cost per pixel: the area ratio
    assert P._growth([((64, 64), 0.01), ((128, 128), 0.04)], (512, 512), (128, 128)) == pytest.approx(16)
    # FCN-VGG16-like (AMX Xeon, one thread): 1.79 s at 64x64, 2.40 s at 128x128 -> a 1.59 s fixed part; at 512x512
    # that gives ~14.6 s, 8x the probe, not the 64x area scaling gives (fp32 measured there: 9.3 s)
    g = P._growth([((64, 64), 1.79), ((128, 128), 2.40)], (512, 512), (64, 64))
    assert 7 < g < 9
    # noise making the larger size faster: no per-pixel part, the step does not grow (never below 1)
    assert P._growth([((64, 64), 1.0), ((128, 128), 0.9)], (512, 512), (64, 64)) == pytest.approx(1.0)
    assert P._growth([((64, 64), 1.0), ((64, 64), 1.1)], (512, 512), (64, 64)) == pytest.approx(64)


def test_the_choice_says_when_the_full_crop_settled_a_tie(cache):
    w = Workload(TinyNet(4), "tiny", "train", (240, 320), 2, 4)

    def measured_with_a_retiming(workload, modes):
        workload.measured_size, workload.clock, workload.retimed = (120, 160), "CPU time", (BF16, BF16_CL)
        return {FP32: 1.00, ("fp32", True): 0.95, BF16: 0.63, BF16_CL: 0.54}

    choice = choose_precision("auto", "auto", CPU, w, measure=measured_with_a_retiming)
    assert (choice.precision, choice.channels_last) == BF16_CL
    assert "bf16 and bf16+CL were within 25% there and were timed again at the full 240x320 crop" in choice.reason


def test_no_tie_or_no_budget_times_nothing_more():
    def never(m):
        raise AssertionError("timed again")

    clear = {FP32: 1.0, BF16: 0.5, BF16_CL: 0.3}  # bf16 + CL wins by far more than the margin
    assert P.settle_tie_at_full_crop(clear, never, probe_area_share=0.25, affordable=lambda pair: True) == (clear, ())
    tied = {FP32: 1.0, BF16: 0.60, BF16_CL: 0.58}
    assert P.settle_tie_at_full_crop(tied, never, probe_area_share=0.25, affordable=lambda pair: False) == (tied, ())
    with_failed = {FP32: math.inf, BF16: 0.60}
    assert P.settle_tie_at_full_crop(with_failed, never, probe_area_share=0.25, affordable=lambda pair: True) == (with_failed, ())


@pytest.mark.parametrize("budget", [8.0, 1e-9])  # 1e-9: too slow for warm-up steps at the probe (FCN-VGG16's case)
def test_a_scaled_down_probe_hands_the_tie_break_a_full_crop_timer(monkeypatch, budget):
    seen = {}

    def spy(times, time_at_full, *, probe_area_share, affordable):
        seen.update(times=times, share=probe_area_share, full=time_at_full(("fp32", True)),
                    affordable=affordable((("fp32", False), ("fp32", True))))
        return times, ()

    monkeypatch.setattr(P, "settle_tie_at_full_crop", spy)
    w = Workload(TinyNet(4), "tiny", "infer", (128, 192), 1, 4)
    seconds = P.measure_modes(w, [("fp32", False), ("fp32", True)], rounds=1, step_seconds=1e-4, budget=budget)
    assert seen, "the full-crop tie break was not reached"
    h, wd = w.measured_size
    # the share of the full crop's step the probe's step is: between the area share (all cost per pixel) and 1
    assert (h, wd) != (128, 192) and h * wd / (128 * 192) - 1e-9 <= seen["share"] <= 1
    assert seen["times"] == seconds and 0 < seen["full"] < 60 and isinstance(seen["affordable"], bool)


def test_train_eval_and_the_log_use_the_choice_and_a_cache_hit_changes_no_bit(tmp_path, cache, capsys):
    """Run A measures (cache miss), run B reads the cache: same choice, identical weights and losses, so the
    measurement consumed no random numbers and touched no state of the run."""
    runs = {}
    for name in ("measured", "cached"):
        cfg = load_config(None, tiny_overrides(**{
            "output_dir": str(tmp_path), "name": name, "train.precision": "auto", "train.channels_last": "auto",
            "train.iterations": 4, "train.eval_interval": 4, "model.options": "{dropout: 0.3}"}))
        trainer = Trainer(cfg, cfg.run_dir, progress=False)
        trainer.fit()
        runs[name] = (trainer, read_metrics(cfg.run_dir), capsys.readouterr().out)
    (a, log_a, out_a), (b, log_b, out_b) = runs["measured"], runs["cached"]
    assert (a.precision, a.channels_last) == (b.precision, b.channels_last)
    assert f"precision auto -> {a.precision_choice.mode} (measured on " in out_a
    assert "(cached measurement (" in out_b and "ms per training step (CPU time) of 2x24x24" in out_b
    start = log_a[0]
    assert start["kind"] == "start" and start["precision"] == a.precision
    assert start["precision_reason"] == a.precision_choice.reason
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), ka
    strip = lambda log: [{k: v for k, v in e.items() if k not in ("img_per_s", "precision_reason", "time")} for e in log]
    assert strip(log_a) == strip(log_b)

    # semiseg eval measures a forward (its own cache entry) and records why
    result = evaluate_checkpoint(a.run_dir, device="cpu")
    assert "per forward (CPU time) of 1x24x24" in result["precision_reason"]
    assert result["precision"] in ("fp32", "bf16") and isinstance(result["channels_last"], bool)
    assert "precision auto -> " in capsys.readouterr().out
