"""Finding recipe files: a path as typed, or a recipe name shipped with the package.

    semiseg train --config my_recipe.yaml                                   # a file, relative to the current folder
    semiseg train --config camvid/deeplabv3plus_mobilenetv2_scratch          # a shipped recipe, from any folder
    semiseg train --config configs/camvid/deeplabv3plus_mobilenetv2_scratch.yaml   # the same, as the repo spells it

The recipes live in the repository's ``configs/`` folder (the one place to add or edit them). The package sees
them as ``semiseg/configs``: a symlink to ``../configs`` in the source tree, which an editable install uses
as is and a wheel build copies as package data (``[tool.setuptools.package-data]`` in pyproject.toml), so a
pip-installed semiseg has them too. A name is looked up in the packaged folder first, then in the
repository's ``configs/`` next to the package (a checkout where the symlink did not survive, e.g. Windows
without symlink support).
"""

from __future__ import annotations

import os
from pathlib import Path

from semiseg.config import ConfigError

_PACKAGE = Path(__file__).resolve().parent


def recipe_dirs() -> list[Path]:
    """Folders that hold the shipped recipes, most specific first (existing ones only, no duplicates)."""
    out: list[Path] = []
    for candidate in (_PACKAGE / "configs", _PACKAGE.parent / "configs"):
        if candidate.is_dir() and not any(candidate.resolve() == d.resolve() for d in out):
            out.append(candidate)
    return out


def available_recipes() -> list[str]:
    """Names of the shipped recipes (``camvid/deeplabv3plus_mobilenetv2_scratch``, ...), sorted."""
    names: set[str] = set()
    for folder in recipe_dirs():
        for path in folder.rglob("*.yaml"):
            if path.name.startswith("study_"):  # `semiseg study` files live beside the recipes; they are not recipes
                continue
            names.add(path.relative_to(folder).with_suffix("").as_posix())
    return sorted(names)


def find_recipe(name: str | os.PathLike) -> str:
    """The file a ``--config`` value means: an existing path as typed, else a shipped recipe of that name.

    ``configs/`` in front and ``.yaml`` at the end are optional for shipped recipes. Raises ConfigError
    listing the shipped recipes when nothing matches.
    """
    text = os.fspath(name)
    if os.path.isfile(text):
        return text
    key = text.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    if key.startswith("configs/"):
        key = key[len("configs/"):]
    stems = [key] if key.endswith((".yaml", ".yml")) else [key + ".yaml", key + ".yml", key]
    for folder in recipe_dirs():
        for stem in stems:
            path = folder / stem
            if path.is_file():
                return str(path)
    shown = available_recipes()
    where = f"{os.path.abspath(text)} does not exist"
    listing = ", ".join(shown) if shown else "(none: the package's configs/ folder is missing)"
    raise ConfigError(f"recipe not found: {text} ({where}, and it is not a shipped recipe name)\n"
                      f"  fix: give the path of a YAML file, or a shipped recipe: {listing}")


__all__ = ["available_recipes", "find_recipe", "recipe_dirs"]
