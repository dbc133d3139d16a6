"""Training methods: a registry dict from ``method.name`` to ``"module:Class"``, imported on first use."""

from __future__ import annotations

import importlib

from semiseg.config import ConfigError, MethodConfig
from semiseg.engine.methods.base import Method

METHODS: dict[str, str] = {
    "supervised": "semiseg.engine.methods.supervised:Supervised",
    "advsemiseg": "semiseg.engine.methods.advsemiseg:AdvSemiSeg",
    "unimatch": "semiseg.engine.methods.unimatch:UniMatch",
}


def available_methods() -> list[str]:
    return sorted(METHODS)


def build_method(cfg: MethodConfig) -> Method:
    target = METHODS.get(cfg.name, cfg.name if ":" in cfg.name else None)
    if target is None:
        raise ConfigError(f"unknown method.name {cfg.name!r}; available: {', '.join(available_methods())}")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(cfg.options)


__all__ = ["METHODS", "Method", "available_methods", "build_method"]
