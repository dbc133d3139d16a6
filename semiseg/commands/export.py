"""``semiseg export CHECKPOINT|RUN_DIR``: the model as an ONNX file, checked against onnxruntime.

    semiseg export runs/quickstart --out quickstart.onnx --dynamic --check
    semiseg export runs/voc/best.pt --out voc.onnx --height 512 --width 512 --opset 17

The ONNX model takes a normalised float32 batch ``images`` (N, 3, H, W) and returns ``logits`` (N, C, H, W),
exactly what the PyTorch model does (float32, eval mode, NCHW). The input size defaults to the run's training
crop; with --dynamic the batch, height and width are free (the export traces one size, and --check then also
runs a second, odd size). The normalisation, classes and palette are stored in the file's metadata
(``semiseg.*`` keys). --check runs onnxruntime on random inputs and fails when the largest difference from
PyTorch exceeds --tolerance. The file is written atomically and an existing one is kept unless --force.
Needs the optional packages onnx and onnxruntime: pip install 'semiseg[onnx]'.
"""

from __future__ import annotations

import argparse
import os
import sys

from semiseg.commands.flags import add_allow_code_argument, add_teacher_argument, apply_threads, describe
from semiseg.export import DEFAULT_OPSET, DEFAULT_TOLERANCE


def configure(parser: argparse.ArgumentParser) -> None:
    describe(parser, __doc__)
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR", help="a .pt file, or a run folder (best.pt, else last.pt)")
    parser.add_argument("--out", help="the .onnx file to write (default: the checkpoint's name with .onnx; "
                                      "last_teacher.onnx for last.pt --teacher)")
    parser.add_argument("--height", type=int, help="input height to trace (default: the run's data.crop_size)")
    parser.add_argument("--width", type=int, help="input width to trace (default: the run's data.crop_size)")
    parser.add_argument("--dynamic", action="store_true", help="free batch, height and width axes")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset version (default {DEFAULT_OPSET})")
    parser.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch on random inputs")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest absolute logit difference --check accepts (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per core)")
    add_teacher_argument(parser)
    add_allow_code_argument(parser)


def check_sizes(height: int, width: int, dynamic: bool) -> list[tuple[int, int, int]]:
    """(batch, height, width) inputs --check runs: the traced shape, and with --dynamic another, odd one."""
    sizes = [(1, height, width)]
    if dynamic:
        sizes.append((2, height // 2 + 7, width // 2 + 5))
    return sizes


def run(args: argparse.Namespace) -> int:
    import torch

    apply_threads(args)
    from semiseg.config import ConfigError
    from semiseg.engine.checkpoint import CheckpointError
    from semiseg.engine.predict import load_trained_model
    from semiseg.export import INPUT_NAME, OUTPUT_NAME, ExportError, check_onnx, checkpoint_metadata, export_onnx

    try:
        loaded = load_trained_model(args.checkpoint, device=torch.device("cpu"), precision="fp32", channels_last=False,
                                    allow_code=args.allow_code, teacher=args.teacher)
        out = args.out or os.path.splitext(loaded.checkpoint_path)[0] + ("_teacher" if args.teacher else "") + ".onnx"
        if os.path.exists(out) and not args.force:
            raise ExportError(f"{out} exists; pass --force to overwrite it, or choose another --out")
        height = args.height or loaded.cfg.data.crop_size[0]
        width = args.width or loaded.cfg.data.crop_size[1]
        if min(height, width) < 1:
            raise ExportError(f"--height and --width must be positive, got {height} x {width}")
        info = loaded.info
        export_onnx(loaded.model, out, height=height, width=width, dynamic=args.dynamic, opset=args.opset,
                    metadata=checkpoint_metadata(loaded))
        shape = "(batch, 3, height, width)" if args.dynamic else f"(1, 3, {height}, {width})"
        print(f"wrote {out} ({os.path.getsize(out) / 2**20:.1f} MiB): {INPUT_NAME} {shape} float32, "
              f"{info.normalization}-normalised -> {OUTPUT_NAME} with {info.num_classes} classes, opset {args.opset}")
        if args.check:
            worst = 0.0
            generator = torch.Generator().manual_seed(0)
            for n, h, w in check_sizes(height, width, args.dynamic):
                diff = check_onnx(loaded.model, out, torch.randn(n, 3, h, w, generator=generator))
                print(f"check {n}x3x{h}x{w}: max |onnxruntime - PyTorch| = {diff:.3g}")
                worst = max(worst, diff)
            if not worst <= args.tolerance:
                print(f"error: {out} differs from PyTorch by {worst:.3g} > --tolerance {args.tolerance}", file=sys.stderr)
                return 1
        return 0
    except (CheckpointError, ConfigError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
