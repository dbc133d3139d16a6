"""The single `semiseg` entry point.

Each sub-command has its module in semiseg/commands/ (its argparse, and nothing but the command line: the work is
done by the engine, data, export ... modules it calls); this file only maps command names to those modules. A command module exposes ``configure(parser)`` (adds its arguments, or nested sub-commands)
and ``run(args) -> int`` (the exit code). Modules are imported only when their command is chosen, so
``semiseg data check`` does not pay for importing the training engine.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("semiseg.commands.quickstart", "train a small model on the built-in synthetic data"),
    "train": ("semiseg.commands.train", "train a model from a YAML recipe"),
    "eval": ("semiseg.commands.eval", "evaluate a checkpoint on a dataset"),
    "predict": ("semiseg.commands.predict", "write coloured masks for a folder of images"),
    "export": ("semiseg.commands.export", "export a checkpoint to ONNX"),
    "report": ("semiseg.commands.report", "write an HTML report of a run: curves, per-class IoU, confusion matrix, samples"),
    "study": ("semiseg.commands.study", "a grid of runs (methods x labels x seeds) and the table: do my unlabeled images help?"),
    "data": ("semiseg.commands.data", "inspect and validate datasets"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semiseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).configure(p)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as the user should read them: ``warning: <text>``, without the source line that raised them."""
    stream = sys.stderr if file is None else file
    try:
        stream.write(f"warning: {message}\n")
    except OSError:  # no stderr (e.g. a closed pipe): a warning is not worth a crash
        pass


@contextlib.contextmanager
def clean_warnings():
    """Install :func:`_one_line_warning` for the duration of a command (and restore the previous hook)."""
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    with clean_warnings():
        return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
