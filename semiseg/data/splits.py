"""Labeled/unlabeled splits for semi-supervised training.

A split is a deterministic function of (the set of names, fraction or count, seed): names are sorted,
permuted by ``numpy.random.default_rng(seed)``, and the first part is labeled. Because the permutation
does not depend on the fraction, the 1/8 labeled set of a seed is contained in its 1/4 set, which makes
label-fraction sweeps comparable. A split is saved as a plain text file in the run folder and reloaded
from it; ``id_file`` also accepts a plain list of names, one per line, or DeepLab-style list lines.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from semiseg.atomic import atomic_write_text

from .errors import DataError

HEADER = "# semiseg split v1"


# Endings of image file stems that are not part of a sample's name: Cityscapes' images are CITY_SEQ_FRAME_leftImg8bit.png
# and its samples CITY_SEQ_FRAME (semiseg/data/cityscapes.py), so the split lists of UniMatch and others, which name
# the files, select the same samples.
IMAGE_STEM_SUFFIXES = ("_leftImg8bit",)


def sample_name(token: str) -> str:
    """'2007_000032', 'x.jpg' and '/JPEGImages/2007_000032.jpg' all name the sample by its stem;
    'leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png' names aachen_000000_000019."""
    stem = os.path.splitext(os.path.basename(token))[0]
    for suffix in IMAGE_STEM_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def read_names(path: str | os.PathLike, section: str | None = None) -> list[str]:
    """Sample names from a text file: one per line (first token, stem only), '#' comments ignored.

    If the file has ``[section]`` headers (a saved split), only the lines of ``section`` are read
    (default: ``labeled``).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"cannot read the id list ({e.strerror})", path, "check the path") from None
    has_sections = any(line.strip().startswith("[") for line in lines)
    wanted = (section or "labeled") if has_sections else None
    current = None
    names = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            continue
        if wanted is None or current == wanted:
            names.append(sample_name(line.split()[0]))
    return names


@dataclass
class Split:
    labeled: list[str]
    unlabeled: list[str]
    seed: int | None = None
    info: dict = field(default_factory=dict)  # how it was made, written into the file header

    def save(self, path: str | os.PathLike) -> str:
        """Write the split as readable text (atomically: temp file + rename) and return the path."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        header = [HEADER, f"# seed: {self.seed}", f"# labeled: {len(self.labeled)}", f"# unlabeled: {len(self.unlabeled)}"]
        header += [f"# {k}: {v}" for k, v in self.info.items()]
        text = "\n".join(header + ["[labeled]", *self.labeled, "[unlabeled]", *self.unlabeled]) + "\n"
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        labeled = read_names(path, "labeled")
        unlabeled = read_names(path, "unlabeled")
        seed = None
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
            if first != HEADER:
                raise DataError("not a saved semiseg split (first line is not the header)", path,
                                "use Split.load on files written by Split.save; a plain id list goes to make_split(id_file=...)")
            for line in f:
                if line.startswith("# seed:"):
                    value = line.split(":", 1)[1].strip()
                    seed = None if value == "None" else int(value)
        if not labeled:
            raise DataError("the split has no labeled samples", path, "write it again with make_split(...).save()")
        return cls(labeled, unlabeled, seed)

    def indices(self, names: Sequence[str]) -> tuple[list[int], list[int]]:
        """Positions of the labeled and unlabeled samples in a dataset's ``names``."""
        where = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.labeled + self.unlabeled if n not in where]
        if missing:
            raise DataError(f"{len(missing)} split names are not in the dataset, e.g. {missing[:5]}", None,
                            "the split was made for another dataset or split; make a new one")
        return [where[n] for n in self.labeled], [where[n] for n in self.unlabeled]


def make_split(
    names: Iterable[str],
    *,
    fraction: float | None = None,
    count: int | None = None,
    id_file: str | os.PathLike | None = None,
    seed: int = 0,
    stratify: str | None = None,
) -> Split:
    """Split ``names`` into labeled and unlabeled; exactly one of fraction, count or id_file.

    ``fraction`` in (0, 1] labels floor(fraction * N) samples (at least 1); ``count`` labels that many;
    ``id_file`` labels the names it lists (a saved split's [labeled] section, or one name per line).
    ``stratify``: a separator; the names are grouped by their part before its first occurrence (CamVid's
    ``0001TP_008550`` -> ``0001TP``, the video sequence) and every group gets its share of the labels, at least one
    each when there are enough (:func:`allocate`). Without it the labeled samples are a plain random draw, which with
    few labels can miss a group entirely (BENCHMARKS.md: a CamVid split of 12 frames with no dusk frame).
    """
    names = sorted(set(names))
    if not names:
        raise DataError("cannot split an empty dataset", None, "check the dataset path and split name")
    given = [x is not None for x in (fraction, count, id_file)]
    if sum(given) != 1:
        raise DataError("give exactly one of fraction, count or id_file", None,
                        "e.g. make_split(names, fraction=0.125, seed=0)")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    if id_file is not None and stratify:
        raise DataError("stratify draws the labeled samples, but an id list names them", id_file,
                        "drop stratify, or give fraction/count instead of the id list")
    if id_file is not None:
        wanted = read_names(id_file)
        if not wanted:
            raise DataError("the id list is empty", id_file, "list one labeled sample name per line")
        known = set(names)
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise DataError(f"{len(unknown)} names in the id list are not in the dataset, e.g. {unknown[:5]}",
                            id_file, "use names (file stems) of this dataset and split")
        chosen = set(wanted)
        labeled = [n for n in dict.fromkeys(wanted)]
        unlabeled = [n for n in order if n not in chosen]
        return Split(labeled, unlabeled, seed, {"id_file": os.fspath(id_file), "total": len(names)})
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise DataError(f"fraction must be in (0, 1], got {fraction}", None, "e.g. fraction=0.125 for 1/8 labels")
        n = max(1, int(fraction * len(names)))
        info = {"fraction": fraction}
    else:
        if not 0 < count <= len(names):
            raise DataError(f"count must be in 1..{len(names)}, got {count}", None, "label at least one and at most all samples")
        n = int(count)
        info = {"count": count}
    info["total"] = len(names)
    if not stratify:
        return Split(order[:n], order[n:], seed, info)
    if not any(stratify in name for name in names):
        # every name would be a group of its own, and the draw would not be random (allocate breaks ties by name)
        raise DataError(f"stratify={stratify!r}: no sample name contains it (e.g. {names[0]!r}), so there are no "
                        "groups to draw from", None, "give the separator that ends the group part of the names "
                        "(CamVid: '_' in 0001TP_008550), or drop stratify")
    groups: dict[str, list[str]] = {}
    for name in order:  # each group in the seeded order
        groups.setdefault(group_of(name, stratify), []).append(name)
    shares = allocate({g: len(members) for g, members in groups.items()}, n)
    chosen = {name for g, members in groups.items() for name in members[:shares[g]]}
    info["stratify"] = f"{stratify!r}: " + ", ".join(f"{g} {shares[g]}/{len(groups[g])}" for g in sorted(groups))
    return Split([x for x in order if x in chosen], [x for x in order if x not in chosen], seed, info)


def group_of(name: str, separator: str) -> str:
    """A name's group for a stratified split: its part before the first ``separator`` (all of it if none)."""
    return name.split(separator, 1)[0]


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """How many of ``n`` labels each group of ``sizes`` gets: one each first (when ``n`` allows), then one at a time
    to the group furthest below its proportional share ``n * size / total`` (ties: the larger group, then the name),
    never more than a group has."""
    total = sum(sizes.values())
    shares = dict.fromkeys(sizes, 0)
    if n >= len(sizes):
        shares = dict.fromkeys(sizes, 1)
    for _ in range(n - sum(shares.values())):
        open_groups = [g for g in sizes if shares[g] < sizes[g]]
        g = max(open_groups, key=lambda g: (n * sizes[g] / total - shares[g], sizes[g], g))
        shares[g] += 1
    return shares
