"""``semiseg predict CHECKPOINT|RUN_DIR INPUT_DIR OUTPUT_DIR``: a palette PNG mask for every image of a folder.

    semiseg predict runs/quickstart my_images/ masks/
    semiseg predict runs/camvid big_images/ masks/ --mode slide --crop 512 512 --scales 0.75 1 1.25 --flip

Each mask is a PIL "P" image named after its image (``photo.jpg`` -> ``photo.png``), with the image's
size and the dataset's palette, so its pixel values are class indices and it displays in colour.
Images that share a name (``x.jpg`` and ``x.png``) keep their extension in the mask's name (``x.jpg.png``,
``x.png.png``), so no mask overwrites another. An image that cannot be read is reported and skipped; the
others are written, and the command exits with status 1 and a list of the skipped files.
The inference mode is the run's ``eval`` section (whole image by default) unless the flags change it.
"""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    from semiseg.runtime import PRECISIONS

    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR")
    parser.add_argument("input_dir", metavar="INPUT_DIR", help="folder of images (jpg, png, ...)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="where the masks go (created)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: the run's")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (default: one per core; 1 is faster on a busy machine)")
    from semiseg.engine.predict import add_allow_code_argument, add_inference_arguments

    add_allow_code_argument(parser)
    add_inference_arguments(parser)


class PredictResult(list):
    """The written mask paths (a list), and ``failed``: (image path, reason) for each image that could not be read."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[tuple[str, str]] = []


def mask_names(images: list[str]) -> dict[str, str]:
    """The mask file name of each image: ``stem.png``, or ``name.ext.png`` when stems collide (``x.jpg``, ``x.png``;
    compared without case, for case-insensitive file systems)."""
    from collections import Counter

    from semiseg.data.errors import DataError

    stems = Counter(os.path.splitext(os.path.basename(p))[0].lower() for p in images)
    names = {}
    for p in images:
        base = os.path.basename(p)
        stem = os.path.splitext(base)[0]
        names[p] = (base if stems[stem.lower()] > 1 else stem) + ".png"
    clashes = Counter(n.lower() for n in names.values())
    same = sorted(os.path.basename(p) for p, n in names.items() if clashes[n.lower()] > 1)
    if same:
        raise DataError(f"these images would write the same mask file: {', '.join(same)}", os.path.dirname(images[0]),
                        "rename one of them")
    return names


def predict_folder(checkpoint: str, input_dir: str, output_dir: str, *, device: str = "auto",
                   precision: str | None = None, progress: bool = True, inference_overrides=(),
                   allow_code: bool | None = None) -> list[str]:
    """Write one palette PNG per image of ``input_dir``; returns the written paths (a :class:`PredictResult`, whose
    ``failed`` lists the images that could not be read: they are skipped, the others written).

    ``inference_overrides``: dotted ``eval.*`` overrides of the run's inference settings (``eval.mode=slide``).
    """
    from semiseg.data.base import list_images
    from semiseg.data.errors import DataError
    from semiseg.data.io import read_image
    from semiseg.runtime import resolve_device
    from semiseg.engine.predict import load_trained_model, predict_mask, save_mask_png

    if not os.path.isdir(input_dir):
        raise DataError("input folder not found", input_dir, "pass a folder of images")
    images = list_images(input_dir)
    if not images:
        raise DataError("no images in the input folder", input_dir, "put .jpg/.png files there")
    names = mask_names(images)
    loaded = load_trained_model(checkpoint, device=resolve_device(device), precision=precision,
                                overrides=inference_overrides, allow_code=allow_code)
    if os.path.abspath(output_dir) == os.path.abspath(input_dir):
        raise DataError("the output folder is the input folder", output_dir, "masks would overwrite PNG inputs; choose another")
    os.makedirs(output_dir, exist_ok=True)
    report = print
    if progress:
        from tqdm import tqdm

        images = tqdm(images, desc="predict", dynamic_ncols=True)
        report = tqdm.write
    written = PredictResult()
    for path in images:
        try:
            image = read_image(path)
        except DataError as e:  # one unreadable file does not stop the batch
            written.failed.append((path, str(e)))
            report(f"skipped: {e}", file=sys.stderr)
            continue
        mask = predict_mask(loaded, image, os.path.basename(path))
        written.append(save_mask_png(mask, loaded.info.palette, os.path.join(output_dir, names[path])))
    return written


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from semiseg.config import ConfigError
    from semiseg.data.errors import DataError
    from semiseg.engine.checkpoint import CheckpointError
    from semiseg.engine.predict import inference_overrides

    try:
        written = predict_folder(args.checkpoint, args.input_dir, args.output_dir, device=args.device,
                                 precision=args.precision, inference_overrides=inference_overrides(args),
                                 allow_code=args.allow_code)
    except (CheckpointError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} masks to {args.output_dir}")
    if getattr(written, "failed", None):
        print(f"error: {len(written.failed)} image(s) could not be read and have no mask:\n  "
              + "\n  ".join(path for path, _ in written.failed), file=sys.stderr)
        return 1
    return 0
