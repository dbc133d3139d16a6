"""The one exception type for problems a user can fix in their data, and how its fixes name options.

``DataError`` is a ``ValueError`` so callers that already catch bad values keep working. Every message
names the file (or folder) at fault and says what to do about it. ``err.kind`` (optional) names the sort
of problem, so that a report can group 300 files with the same problem into one entry.

A fix names options the way the user typed them: ``binary=True`` from Python, ``--binary`` on the
``semiseg data`` command line, ``data.options.binary=true`` in a training recipe. Messages spell an option
with :func:`option`; the interface that builds a dataset says which spelling applies with
:func:`option_style` (datasets remember the spelling they were built under, so errors raised later,
in DataLoader workers too, keep it).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading

# The spelling of options in messages: style "python" | "cli" | "config"; for "config" the recipe keys that
# hold the dataset options and the split name. Per thread: `semiseg data check` reads files in a thread pool,
# and a style shared by all threads would be restored out of order (one thread's exit undoing another's).
_DEFAULT_STYLE = {"style": "python", "options": "data.options", "split": "data.train_split"}
_LOCAL = threading.local()


class _Style:
    """The current thread's style as a read-only mapping (the default when no option_style is active)."""

    def __getitem__(self, key: str) -> str:
        return (getattr(_LOCAL, "style", None) or _DEFAULT_STYLE)[key]


_STYLE = _Style()

# `semiseg data` flags that differ from "--" + the option name with dashes
_CLI_FLAGS = {"require_masks": "--allow-unlabeled"}


def current_style() -> dict:
    return dict(getattr(_LOCAL, "style", None) or _DEFAULT_STYLE)


@contextlib.contextmanager
def option_style(style: str | dict, *, options: str = "data.options", split: str = "data.train_split"):
    """Spell options in ``style`` ("python", "cli", "config" or a dict from :func:`current_style`) inside the
    block, in this thread."""
    previous = getattr(_LOCAL, "style", None)
    new = current_style()
    new.update(style if isinstance(style, dict) else {"style": style, "options": options, "split": split})
    _LOCAL.style = new
    try:
        yield
    finally:
        _LOCAL.style = previous


def options_key() -> str:
    """Where the user writes dataset options: ``data.options`` in a recipe, else "options"."""
    return _STYLE["options"] if _STYLE["style"] == "config" else "options"


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def option(name: str, value=None) -> str:
    """How the user would set dataset option ``name`` (to ``value``) in the current interface."""
    style = _STYLE["style"]
    if name == "root":
        return {"config": "data.root", "cli": "the PATH argument"}.get(style, "root") + (
            "" if value is None or style == "cli" else f"={value}")
    if name == "split":
        if style == "config":
            return f"{_STYLE['split']}={_yaml_value(value)}" if value is not None else _STYLE["split"]
        if style == "cli":
            return f"--split {value}" if value is not None else "--split"
        return f"split={value!r}" if value is not None else "split"
    if style == "config":
        return f"{_STYLE['options']}.{name}" + ("" if value is None else f"={_yaml_value(value)}")
    if style == "cli":
        flag = _CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
        if value is None or isinstance(value, bool) or name in _CLI_FLAGS:
            return flag
        sep = " " if name == "image_range" else ","  # --image-range LOW HIGH; --classes a,b
        shown = (sep.join(str(v) for v in value) if isinstance(value, (list, tuple)) else
                 ",".join(f"{k}:{v}" for k, v in value.items()) if isinstance(value, dict) else str(value))
        return f"{flag} {shown}"
    return name if value is None else f"{name}={value!r}"


# A DataError raised in a DataLoader worker comes back re-created from the worker's whole traceback text
# ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback ..."): keep only the original message.
_WORKER_TRACEBACK = re.compile(r"^Caught \w+ in DataLoader worker", re.ASCII)
_LAST_DATA_ERROR = re.compile(r"\n[\w.]*DataError: ")


class DataError(ValueError):
    """A dataset file or option is wrong in a way the user can fix. The message says where and how."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, fix: str | None = None,
                 kind: str | None = None):
        if path is None and fix is None and _WORKER_TRACEBACK.match(message):
            found = list(_LAST_DATA_ERROR.finditer(message))
            if found:
                message = message[found[-1].end():].rstrip()
                message, _, fix_text = message.partition("\n  fix: ")
                fix = fix_text or None
        self.path = None if path is None else str(path)
        self.fix = fix
        self.kind = kind
        self.message = message
        text = message if self.path is None else f"{self.path}: {message}"
        if fix:
            text = f"{text}\n  fix: {fix}"
        super().__init__(text)


# ---------------------------------------------------------------------------------------------------
# problems found in a dataset, and how a list of them reads


class Problem:
    """One thing wrong (``severity`` "error": the sample cannot be used as is) or suspicious ("warning")."""

    def __init__(self, severity: str, message: str, path: str | None = None, fix: str | None = None,
                 kind: str | None = None):
        self.severity, self.message, self.path, self.fix, self.kind = severity, message, path, fix, kind

    @classmethod
    def from_error(cls, err: DataError, severity: str = "error") -> Problem:
        message = getattr(err, "message", None)
        if message is None:  # a DataError re-created from text (pickled): split what the text holds
            message = str(err).split("\n  fix:")[0]
            if err.path and message.startswith(err.path + ": "):
                message = message[len(err.path) + 2:]
        return cls(severity, message, err.path, err.fix, getattr(err, "kind", None))

    def __eq__(self, other) -> bool:
        return isinstance(other, Problem) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Problem({self.severity!r}, {self.message!r}, {self.path!r}, kind={self.kind!r})"

    def __str__(self) -> str:
        text = f"{self.severity}: " + (f"{self.path}: " if self.path else "") + self.message
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


# How a group of problems of one kind is introduced ("299 masks ..."); kinds without a title are grouped
# when their message is the same text (e.g. "image has no mask").
KIND_TITLES = {
    "size_scale": "masks are their image at another resolution (same aspect ratio)",
    "size_turned": "masks are their image turned by 90 degrees",
    "size": "masks differ in size from their image",
    "mask_values": "masks hold values that are neither a class nor the ignore index",
    "binary_0_255": "masks hold only 0 and 255 (255 is the ignore index)",
    "jpeg_mask": "masks are JPEG files (lossy)",
    "rgb_mask": "masks are RGB colour images without a palette",
    "mask_colours": "colour masks use colours outside the palette",
    "corrupt": "files are truncated or corrupt",
    "unreadable": "files are not images PIL can read",
    "missing": "files do not exist",
    "no_mask": "images have no mask",
    "no_image": "masks have no image",
    "region_size": "region masks differ in size from their image",
    "no_region": "images have no region mask",
}

DEFAULT_EXAMPLES = 5


def group_problems(problems: list[Problem]) -> list[list[Problem]]:
    """Problems of the same severity and kind (or the same message) together, in order of first appearance."""
    groups: dict[tuple, list[Problem]] = {}
    for p in problems:
        key = (p.severity, p.kind or None, None if p.kind else p.message)
        groups.setdefault(key, []).append(p)
    return list(groups.values())


def format_problems(problems: list[Problem], max_examples: int | None = DEFAULT_EXAMPLES, indent: str = "  ") -> list[str]:
    """Lines for ``problems``: one entry per group, with its count, up to ``max_examples`` files (None or 0:
    all of them) and the fix of the first one (the others' fixes differ only in the file they name)."""
    lines: list[str] = []
    for group in group_problems(problems):
        first = group[0]
        if len(group) == 1:
            lines.append(indent + str(first).replace("\n", "\n" + indent))
            continue
        title = KIND_TITLES.get(first.kind) if first.kind else None
        title = title or first.message
        lines.append(f"{indent}{first.severity}: {len(group)} {title}")
        shown = group if not max_examples else group[:max_examples]
        for p in shown:
            detail = "" if (not first.kind and p.message == first.message) else f": {p.message}"
            lines.append(f"{indent}    {p.path or ''}{detail}")
        if len(shown) < len(group):
            lines.append(f"{indent}    ... and {len(group) - len(shown)} more (`semiseg data check ... --max-errors 0` lists them all)")
        if first.fix:
            lines.append(f"{indent}    fix{' (first file)' if len({p.fix for p in group}) > 1 else ''}: {first.fix}")
    return lines
