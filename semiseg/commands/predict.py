"""``semiseg predict CHECKPOINT|RUN_DIR INPUT_DIR OUTPUT_DIR``: a palette PNG mask for every image of a folder.

    semiseg predict runs/quickstart my_images/ masks/
    semiseg predict runs/camvid big_images/ masks/ --mode slide --crop 512 512 --scales 0.75 1 1.25 --flip

Each mask is a PIL "P" image named after its image (``photo.jpg`` -> ``photo.png``), with the image's
size and the dataset's palette, so its pixel values are class indices and it displays in colour.
Images that share a name (``x.jpg`` and ``x.png``) keep their extension in the mask's name (``x.jpg.png``,
``x.png.png``), so no mask overwrites another. An image that cannot be read is reported and skipped; the
others are written, and the command exits with status 1 and a list of the skipped files.
The inference mode is the run's ``eval`` section (whole image by default) unless the flags change it.
``--stored-values MAP`` writes grayscale masks in the values a dataset stores instead of class indices (the
inverse of a label map): ``--stored-values cityscapes`` writes Cityscapes label ids, the evaluation server's format.
"""

from __future__ import annotations

import argparse
import sys

from semiseg.commands.flags import (
    add_allow_code_argument, add_inference_arguments, add_runtime_arguments, add_teacher_argument, apply_threads, describe,
    inference_overrides, parse_label_map,
)


def configure(parser: argparse.ArgumentParser) -> None:
    describe(parser, __doc__)
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR")
    parser.add_argument("input_dir", metavar="INPUT_DIR", help="folder of images (jpg, png, ...)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="where the masks go (created)")
    add_runtime_arguments(parser)
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="onnxruntime: run the model exported to ONNX, on the CPU (CHECKPOINT may then be an .onnx "
                             "file from semiseg export --dynamic); faster than float32 PyTorch, slower than bf16 where "
                             "the CPU has it (BENCHMARKS.md)")
    add_teacher_argument(parser)
    add_allow_code_argument(parser)
    add_inference_arguments(parser)
    parser.add_argument("--stored-values", type=parse_label_map, default=None, metavar="MAP",
                        help="write grayscale masks of the values the dataset stores, the inverse of this label map "
                             "(a preset such as cityscapes: label ids for its evaluation server, or STORED:CLASS,...)")


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    from semiseg.config import ConfigError
    from semiseg.data.errors import DataError
    from semiseg.engine.checkpoint import CheckpointError
    from semiseg.engine.predict import predict_folder
    from semiseg.export import ExportError

    try:
        written = predict_folder(args.checkpoint, args.input_dir, args.output_dir, device=args.device,
                                 precision=args.precision, inference_overrides=inference_overrides(args),
                                 allow_code=args.allow_code, backend=args.backend, teacher=args.teacher,
                                 stored_values=args.stored_values)
    except (CheckpointError, ConfigError, DataError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} masks to {args.output_dir}")
    if getattr(written, "failed", None):
        print(f"error: {len(written.failed)} image(s) could not be read and have no mask:\n  "
              + "\n  ".join(path for path, _ in written.failed), file=sys.stderr)
        return 1
    return 0
