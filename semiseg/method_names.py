"""The training-method registry as names only: ``method.name`` -> ``"module:Class"``.

It sits below the engine so that loading a recipe can reject a misspelt ``method.name`` (as it does an unknown
model, loss or dataset) without importing the engine; ``semiseg.engine.methods.build_method`` imports the class on
first use.
"""

from __future__ import annotations

METHODS: dict[str, str] = {
    "supervised": "semiseg.engine.methods.supervised:Supervised",
    "advsemiseg": "semiseg.engine.methods.advsemiseg:AdvSemiSeg",
    "unimatch": "semiseg.engine.methods.unimatch:UniMatch",
}


def available_methods() -> list[str]:
    return sorted(METHODS)


__all__ = ["METHODS", "available_methods"]
