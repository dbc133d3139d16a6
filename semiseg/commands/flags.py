"""Flags shared by several commands: the help text from a command's docstring, the device / precision / threads
of the commands that run a trained model (``semiseg eval``, ``semiseg predict``), the inference mode and
``--allow-code``.

The inference flags (``--mode slide --crop H W --stride H W --scales ... --flip``) override the ``eval`` section
of the checkpoint's config (:func:`inference_overrides` turns them into dotted overrides); semiseg.inference does
the work.
"""

from __future__ import annotations

import argparse

from semiseg.config import ALLOW_CODE_ENV, ConfigError


def describe(parser: argparse.ArgumentParser, doc: str) -> None:
    """--help from a command module's docstring: its first paragraph is the description, the rest the epilog."""
    parser.description = doc.split("\n\n")[0].replace("``", "")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = doc.split("\n\n", 1)[1]


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision`` (default: the run's) and ``--threads``; :func:`apply_threads` applies the last."""
    from semiseg.runtime import PRECISIONS

    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: the run's")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (default: one per core; 1 is faster on a busy machine)")


def apply_threads(args: argparse.Namespace) -> None:
    """``--threads N`` (N > 0) sets torch's intra-op threads; 0 keeps torch's default."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inference (default: the run's eval settings; see semiseg.inference)")
    group.add_argument("--mode", choices=["whole", "slide"], help="whole image at once, or sliding windows")
    group.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"),
                       help="sliding window size (implies --mode slide; default: the training crop)")
    group.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"),
                       help="sliding window step (implies --mode slide; default: 2/3 of the window)")
    group.add_argument("--scales", nargs="+", type=float, metavar="S",
                       help="multi-scale test: resize ratios, e.g. 0.5 0.75 1 1.25 1.5 1.75 (softmax averaged)")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="also run the mirror image of every scale and average it in")


def add_teacher_argument(parser: argparse.ArgumentParser) -> None:
    """``--teacher``: the EMA teacher's weights of a semi-supervised run instead of the trained model's."""
    parser.add_argument("--teacher", action="store_true",
                        help="use the run's EMA teacher (a consistency run with method.options.teacher: ema) instead "
                             "of the trained model: Mean-Teacher methods such as UniMatch V2 report both")


def add_allow_code_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-code``: the one opt-in for a checkpoint or run folder whose config names code to import."""
    parser.add_argument("--allow-code", action="store_true", default=None,
                        help="trust the checkpoint / run folder: import the 'package.module:function' names its "
                             "config holds (model.name, data.kind, method.name), which runs that code. Without it "
                             f"such a config is refused (also allowed by {ALLOW_CODE_ENV}=1)")


def inference_overrides(args: argparse.Namespace) -> list[str]:
    """The flags of :func:`add_inference_arguments` as dotted config overrides (``eval.mode=slide`` ...)."""
    mode = args.mode
    if args.crop or args.stride:
        if mode == "whole":
            raise ConfigError("--crop and --stride set the sliding window; use them with --mode slide")
        mode = "slide"
    out = [f"eval.mode={mode}"] if mode else []
    if args.crop:
        out.append(f"eval.crop_size=[{args.crop[0]},{args.crop[1]}]")
    if args.stride:
        out.append(f"eval.stride=[{args.stride[0]},{args.stride[1]}]")
    if args.scales:
        out.append(f"eval.scales=[{','.join(repr(float(s)) for s in args.scales)}]")
    if args.flip is not None:
        out.append(f"eval.flip={str(args.flip).lower()}")
    return out


def parse_label_map(text: str):
    """--label-map (data) and --stored-values (predict): a preset name, 'STORED:CLASS,...' or a YAML mapping
    '{0: 255, 1: 0}' (semiseg/data/label_map.py)."""
    text = text.strip()
    if text.startswith("{"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise argparse.ArgumentTypeError(f"not a YAML mapping: {e}") from None
    if ":" not in text:
        return text  # a preset (checked with the dataset, which lists them)
    try:
        return {int(stored): int(target) for stored, target in (pair.split(":") for pair in text.split(",") if pair)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write STORED:CLASS pairs, e.g. 0:255,1:0,2:1") from None


__all__ = ["add_inference_arguments", "add_allow_code_argument", "inference_overrides", "parse_label_map"]
