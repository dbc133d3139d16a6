"""Poly schedule with warmup, parameter groups (1x backbone / 10x head), precision resolution."""

from __future__ import annotations

import pytest
import torch

from semiseg.config import ConfigError, load_config
from semiseg.engine import build
from semiseg.runtime import resolve_channels_last, resolve_precision
from semiseg.engine.schedule import build_scheduler, poly_factor

from conftest import TinyNet


def test_poly_matches_advsemiseg_lr_poly():
    base, max_iter = 2.5e-4, 20000
    for it in (0, 1, 100, 10000, 19999):
        assert base * poly_factor(it, max_iters=max_iter) == pytest.approx(base * (1 - it / max_iter) ** 0.9)
    assert poly_factor(20000, max_iters=20000) == 0.0


def test_warmup_rises_linearly_then_joins_poly():
    f = lambda it: poly_factor(it, max_iters=100, warmup_iters=10, warmup_factor=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx((1 - 0.05) ** 0.9 * (0.1 + 0.9 * 0.5))
    assert f(10) == pytest.approx((1 - 0.1) ** 0.9)
    assert all(f(i) < f(i + 1) for i in range(9))


def test_optimizer_groups_and_scheduler_keep_the_10x_head():
    cfg = load_config(None, ["optim.lr=0.01", "train.iterations=10"])
    model = TinyNet(4)
    opt = build.build_optimizer(cfg, model)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("backbone", 0.01), ("head", pytest.approx(0.1))]
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    sched = build_scheduler(opt, max_iters=10, base_lr=0.01)
    for _ in range(5):
        opt.step()
        sched.step()
    factor = (1 - 5 / 10) ** 0.9
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * factor)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * factor)


def test_lr_mult_override_and_typo():
    model = TinyNet(4)
    cfg = load_config(None, ["optim.lr=0.01", "optim.lr_mult={head: 2}"])
    assert build.build_optimizer(cfg, model).param_groups[1]["lr"] == pytest.approx(0.02)
    cfg = load_config(None, ["optim.lr_mult={decoder: 2}"])
    with pytest.raises(ConfigError, match=r"unknown parameter groups \['decoder'\].*'backbone', 'head'"):
        build.build_optimizer(cfg, model)


def test_precision_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", cpu) in ("bf16", "fp32")
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_precision("fp16", cpu)
    assert resolve_channels_last(False, cpu) is False
    assert resolve_channels_last("auto", cpu) in (True, False)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_matches_the_plain_loop(name):
    """optim.fused=auto picks torch's fused kernel on this CPU; five steps must land where the plain loop does."""
    results = {}
    for fused in ("auto", False):
        torch.manual_seed(0)
        model = TinyNet(4)
        cfg = load_config(None, [f"optim.name={name}", "optim.lr=0.05", f"optim.fused={fused}"])
        opt = build.build_optimizer(cfg, model)
        assert opt.defaults["fused"] is (fused == "auto")
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(2, 3, 8, 8, generator=g)).square().mean().backward()
            opt.step()
        results[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.manual_seed(0)
    initial = torch.cat([p.detach().flatten() for p in TinyNet(4).parameters()])
    assert (results[False] - initial).abs().max() > 1e-3  # the five steps really moved the weights
    torch.testing.assert_close(results["auto"], results[False], rtol=1e-5, atol=1e-6)


def test_fused_setting_is_checked():
    with pytest.raises(ConfigError, match="optim.fused must be true, false or auto"):
        build.resolve_fused("yes", [torch.zeros(1)])
    assert build.resolve_fused("auto", [torch.zeros(1, dtype=torch.long)]) is False
