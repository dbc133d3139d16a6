"""Training methods: the registry (``semiseg.method_names``: ``method.name`` -> ``"module:Class"``), imported on first use."""

from __future__ import annotations

import importlib

from semiseg.config import ConfigError, MethodConfig
from semiseg.engine.methods.base import Method
from semiseg.method_names import METHODS, available_methods


def build_method(cfg: MethodConfig) -> Method:
    target = METHODS.get(cfg.name, cfg.name if ":" in cfg.name else None)
    if target is None:
        raise ConfigError(f"unknown method.name {cfg.name!r}; available: {', '.join(available_methods())}")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(cfg.options)


__all__ = ["METHODS", "Method", "available_methods", "build_method"]
