"""``semiseg data``: inspect and validate datasets.

    semiseg data check PATH --classes camvid          validate a folder dataset (CamVid names/colours)
    semiseg data check PATH --classes background,fg --binary
    semiseg data check VOCdevkit --kind voc --split val
    semiseg data check cityscapes --split val          Cityscapes as downloaded (label ids -> the 19 train ids)
    semiseg data check ADE/training --classes ade.txt --label-map reduce_zero_label   stored values -> classes
    (check exits 1 when it finds an error; --strict also on warnings such as a suspected 0/255 mask)
    semiseg data info synthetic                       classes, palette and size of a dataset
    semiseg data split PATH --classes camvid --fraction 0.125 --seed 0 -o split.txt
    semiseg data preview synthetic --out DIR -n 8     image | coloured mask PNGs to look at
    semiseg data sbd benchmark_RELEASE VOCdevkit      SBD .mat masks -> SegmentationClassAug + train_aug.txt

PATH's kind is guessed (a VOC tree -> voc, a folder with leftImg8bit/ -> cityscapes, one with images/training and
annotations/ -> ade20k, the words synthetic and synthetic_thin -> built-in data, otherwise a folder of images + masks,
which needs --classes); --kind overrides the guess.
"""

from __future__ import annotations

import argparse
import os
import sys

from semiseg.commands.flags import parse_label_map
from semiseg.data import DATASETS, build_dataset
from semiseg.data.errors import DataError


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="dataset folder, or 'synthetic' / 'synthetic_thin' (built in)")
    p.add_argument("--kind", choices=["auto", *DATASETS], default="auto", help="dataset kind (default: guessed from PATH)")
    p.add_argument("--split", default=None, help="split name (train/val/test; VOC: train/val/trainval)")
    p.add_argument("--classes", default=None,
                   help="folder datasets: a preset (ade20k, camvid, cityscapes, voc), 'a,b,c', a number, or a text file with one name per line")
    p.add_argument("--palette", default=None, help="colours of RGB colour masks: a preset name (voc, camvid, cityscapes)")
    p.add_argument("--binary", action="store_true", help="masks are binary, stored as 0/255 (255 -> class 1)")
    p.add_argument("--ignore-index", type=int, default=255)
    p.add_argument("--image-dir", default=None, help="image folder inside PATH (default: images/, img/, ...)")
    p.add_argument("--mask-dir", default=None, help="mask folder inside PATH (default: masks/, labels/, ...)")
    p.add_argument("--mask-suffix", default="", help="mask stem = image stem + this (e.g. _mask)")
    p.add_argument("--image-suffix", default="", help="an ending of the image stems left out when matching (e.g. _training)")
    p.add_argument("--allow-unlabeled", action="store_true", help="images without masks are unlabeled, not an error")
    p.add_argument("--ignore-value", type=int, default=None,
                   help="binary masks: the stored value that marks ignored pixels (e.g. 128; 255 is foreground)")
    p.add_argument("--roi-dir", default=None,
                   help="folder of region-of-interest masks (e.g. a field of view), matched like the masks: "
                        "pixels where it is 0 are ignored")
    p.add_argument("--roi-suffix", default="", help="region mask stem = image stem + this")
    p.add_argument("--match-size", choices=["resize_mask", "resize_image"], default=None,
                   help="masks at another resolution with the image's aspect ratio: resize the mask (nearest) "
                        "or the image to match")
    p.add_argument("--image-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="16-bit/float images: values mapped to 0 and 255 (default: each image's own min and max)")
    p.add_argument("--exif", default=True, action=argparse.BooleanOptionalAction,
                   help="apply the EXIF orientation of images and masks (default: yes, as image viewers do)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="a folder without train/val subfolders: hold out this fraction as split 'val'")
    p.add_argument("--label-map", type=parse_label_map, default=None, metavar="MAP",
                   help="stored mask values -> class indices: 'STORED:CLASS,...' (e.g. 0:255,1:0,2:1) or a preset "
                        "(cityscapes, reduce_zero_label); values not listed are kept")
    p.add_argument("--masks", choices=["labelIds", "labelTrainIds"], default=None,
                   help="Cityscapes: which gtFine masks to read (default labelIds, as downloaded)")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = sub.add_parser("check", help="validate a dataset: counts, sizes, class frequencies, every problem")
    _add_dataset_args(p)
    p.add_argument("--limit", type=int, default=None, help="check only the first N samples")
    p.add_argument("--workers", type=int, default=2, help="reader threads")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too (e.g. a suspected 0/255 binary mask)")
    p.add_argument("--max-errors", type=int, default=5, metavar="N",
                   help="files listed per kind of problem (default 5; 0 = all)")
    p.add_argument("--headers-only", action="store_true",
                   help="read file headers (sizes, formats) and masks, not the image pixels: faster on large sets")

    p = sub.add_parser("info", help="classes, palette and size of a dataset")
    _add_dataset_args(p)

    p = sub.add_parser("split", help="write a labeled/unlabeled split file")
    _add_dataset_args(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--fraction", type=float, help="labeled fraction, e.g. 0.125")
    group.add_argument("--count", type=int, help="number of labeled samples")
    group.add_argument("--id-file", help="labeled sample names, one per line")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stratify", metavar="SEP", default=None,
                   help="draw labels from every group of names in proportion, a group being the part of a name "
                        "before SEP (CamVid: --stratify _ -> its video sequences)")
    p.add_argument("-o", "--output", required=True, help="split file to write")

    p = sub.add_parser("preview", help="write image | coloured mask PNGs for a few samples")
    _add_dataset_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("-n", "--count", type=int, default=8)

    p = sub.add_parser("sbd", help="build voc_aug's SegmentationClassAug and train_aug.txt from SBD + VOC 2012")
    p.add_argument("sbd_root", help="SBD's benchmark_RELEASE folder (or its dataset/ folder)")
    p.add_argument("voc_root", help="VOCdevkit (or VOCdevkit/VOC2012): the masks and the list are written inside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing SegmentationClassAug and train_aug.txt")
    p.add_argument("--workers", type=int, default=4, help="writer threads")
    p.add_argument("--no-progress", action="store_true")
    parser.set_defaults(_data_parser=parser)


def guess_kind(path: str) -> str:
    if path in ("synthetic", "synthetic_thin"):
        return path
    from semiseg.data.ade20k import find_ade20k_root
    from semiseg.data.cityscapes import find_cityscapes_root
    from semiseg.data.voc import find_voc_root

    for kind, find in (("voc", find_voc_root), ("cityscapes", find_cityscapes_root), ("ade20k", find_ade20k_root)):
        try:
            find(path)
            return kind
        except DataError:
            pass
    return "folder"


def open_dataset(args: argparse.Namespace, *, strict: bool):
    kind = guess_kind(args.path) if args.kind == "auto" else args.kind
    if kind.startswith("synthetic"):
        return kind, build_dataset(kind, split=args.split or "train")
    if kind in ("voc", "voc_aug"):
        return kind, build_dataset(kind, args.path, args.split or "train", strict=strict)
    if kind == "cityscapes":
        return kind, build_dataset(kind, args.path, args.split or "train", strict=strict,
                                   **({"masks": args.masks} if args.masks else {}))
    if kind == "ade20k":
        return kind, build_dataset(kind, args.path, args.split or "train", strict=strict)
    options = dict(palette=args.palette, ignore_index=args.ignore_index, binary=args.binary,
                   image_dir=args.image_dir, mask_dir=args.mask_dir, mask_suffix=args.mask_suffix,
                   image_suffix=args.image_suffix,
                   require_masks=not args.allow_unlabeled, strict=strict, ignore_value=args.ignore_value,
                   roi_dir=args.roi_dir, roi_suffix=args.roi_suffix, match_size=args.match_size,
                   image_range=args.image_range, exif=args.exif, val_fraction=args.val_fraction,
                   label_map=args.label_map)
    if kind == "camvid":
        if args.classes is not None:
            options["classes"] = args.classes
        return kind, build_dataset("camvid", args.path, args.split or "train",
                                   **{k: v for k, v in options.items() if v is not None})
    if args.classes is None:
        raise DataError("a folder dataset needs its class list", args.path,
                        "pass --classes background,object (names in mask-value order), a preset (ade20k, camvid, cityscapes, voc), "
                        "a number or a text file; or --kind voc/camvid/cityscapes/ade20k")
    return kind, build_dataset("folder", args.path, args.split, classes=args.classes, **options)


def _preview(dataset, out: str, count: int) -> None:
    import numpy as np
    from PIL import Image

    from semiseg.data.palettes import index_to_colors

    os.makedirs(out, exist_ok=True)
    for i in range(min(count, len(dataset))):
        image, mask = dataset.read(i)
        tile = np.concatenate([image, index_to_colors(mask, dataset.palette)], axis=1)
        path = os.path.join(out, f"{dataset.names[i]}.png")
        Image.fromarray(tile).save(path)
        print(path)


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "data_command", None):
        args._data_parser.print_help()
        return 2
    from semiseg.data.errors import option_style

    with option_style("cli"):  # fixes name this command's flags (--binary), not Python or recipe keys
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.data_command == "sbd":
            from semiseg.data.sbd import convert_sbd

            print(convert_sbd(args.sbd_root, args.voc_root, overwrite=args.overwrite, workers=args.workers,
                              progress=not args.no_progress).format())
            return 0
        if args.data_command == "check":
            from semiseg.data.check import check_dataset

            kind, dataset = open_dataset(args, strict=False)
            where = f"{args.path} (split {args.split})" if args.split else args.path
            report = check_dataset(dataset, description=f"{kind} {where}", limit=args.limit, workers=args.workers,
                                   decode_images=not args.headers_only)
            print(report.format(max_examples=args.max_errors))
            return 0 if report.ok and not (args.strict and report.warnings) else 1
        kind, dataset = open_dataset(args, strict=True)
        if args.data_command == "info":
            print(f"{kind} {args.path}: {len(dataset)} samples, ignore index {dataset.ignore_index}")
            for i, (name, rgb) in enumerate(zip(dataset.classes, dataset.palette.tolist())):
                print(f"  {i:>3} {name:<16} {tuple(rgb)}")
        elif args.data_command == "split":
            from semiseg.data.splits import make_split

            split = make_split(dataset.names, fraction=args.fraction, count=args.count, id_file=args.id_file,
                               seed=args.seed, stratify=args.stratify)
            path = split.save(args.output)
            print(f"{path}: {len(split.labeled)} labeled, {len(split.unlabeled)} unlabeled (seed {args.seed})")
        elif args.data_command == "preview":
            _preview(dataset, args.out, args.count)
        return 0
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
