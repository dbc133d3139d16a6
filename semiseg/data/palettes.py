"""Class names and colours, and the vectorised conversion between colour masks and class indices.

The PASCAL VOC colormap is defined by a bit trick (bits of the class index spread over the high bits
of R, G and B), so it is generated rather than typed in; that also gives the colour of the VOC "void"
border, index 255 -> (224, 224, 192). CamVid uses the 11-class colours of the SegNet tutorial copy; Cityscapes its
19 evaluated classes' colours.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import DataError, option

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]

CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian", "bicyclist",
]
CAMVID_PALETTE = np.array(
    [
        [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
        [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
    ],
    dtype=np.uint8,
)


# Cityscapes' 19 evaluated classes in train-id order, their colours, and the label id (the value stored in the
# *_gtFine_labelIds.png masks) of each; every other label id (unlabeled, ego vehicle, ground, parking, rail track,
# guard rail, bridge, tunnel, polegroup, caravan, trailer, ...) is not evaluated and reads as ignore. From
# cityscapesScripts' helpers/labels.py.
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
CITYSCAPES_PALETTE = np.array(
    [
        [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
        [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60], [255, 0, 0],
        [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32],
    ],
    dtype=np.uint8,
)
CITYSCAPES_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
CITYSCAPES_NUM_LABEL_IDS = 34  # label ids 0..33
# ADE20K (SceneParsing, ADEChallengeData2016): its 150 classes in the order of the stored values 1..150 (0 = "other",
# not evaluated); shown in the default (VOC colormap) colours.
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colormap, (n, 3) uint8.

    Bit ``3*k + c`` of the index becomes bit ``7 - k`` of channel ``c`` (R, G, B), for k = 0..7.
    """
    index = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for k in range(8):
        for c in range(3):
            cmap[:, c] |= ((index >> (3 * k + c)) & 1) << (7 - k)
    return cmap.astype(np.uint8)


VOC_PALETTE = voc_colormap(21)
VOC_IGNORE_COLOR = tuple(int(v) for v in voc_colormap(256)[255])  # (224, 224, 192), the void border

# name -> (class names, palette); used by --classes / --palette and the folder dataset's presets.
PRESETS: dict[str, tuple[list[str], np.ndarray]] = {
    "voc": (VOC_CLASSES, VOC_PALETTE),
    "camvid": (CAMVID_CLASSES, CAMVID_PALETTE),
    "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    "ade20k": (ADE20K_CLASSES, voc_colormap(256)[: len(ADE20K_CLASSES)]),
}


def default_palette(num_classes: int) -> np.ndarray:
    """Colours for a dataset that brings none: the VOC colormap, which has distinct colours for 256 indices."""
    return voc_colormap(256)[:num_classes].copy()


def _pack(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) uint8 -> one int32 per colour, so colour lookup becomes integer search."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colors_to_index(
    rgb: np.ndarray,
    palette: np.ndarray,
    *,
    ignore_index: int = 255,
    ignore_colors: tuple[tuple[int, int, int], ...] = (),
    path: str | None = None,
) -> np.ndarray:
    """Convert an (H, W, 3) colour mask to (H, W) uint8 class indices through ``palette`` (K, 3).

    Colours in ``ignore_colors`` map to ``ignore_index``. Any other colour is an error listing the
    colours found (JPEG-compressed masks are the usual cause). Vectorised: colours are packed into
    integers and looked up with ``searchsorted`` in the sorted palette, no per-pixel Python.
    """
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    keys = np.concatenate([_pack(palette), _pack(np.asarray(ignore_colors, dtype=np.uint8).reshape(-1, 3))])
    values = np.concatenate(
        [np.arange(len(palette)), np.full(len(ignore_colors), ignore_index)]
    ).astype(np.uint8)
    # First occurrence wins if a palette repeats a colour.
    keys, first = np.unique(keys, return_index=True)
    values = values[first]

    packed = _pack(rgb)
    pos = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    known = keys[pos] == packed
    if not known.all():
        bad, counts = np.unique(packed[~known], return_counts=True)
        order = np.argsort(-counts)[:5]
        shown = ", ".join(
            f"({b >> 16}, {(b >> 8) & 255}, {b & 255}) x{c}" for b, c in zip(bad[order], counts[order])
        )
        more = f" and {len(bad) - len(order)} more" if len(bad) > len(order) else ""
        raise DataError(
            f"colour mask has {int((~known).sum())} pixels whose colour is not in the palette: {shown}{more}",
            path,
            f"give the palette the masks were drawn with ({option('palette')}), or save "
            "masks as index PNGs; masks must be lossless (PNG, not JPEG)",
            kind="mask_colours",
        )
    return values[pos]


def index_to_colors(mask: np.ndarray, palette: np.ndarray, *, ignore_color=(255, 255, 255)) -> np.ndarray:
    """Render (H, W) class indices as an (H, W, 3) uint8 image; indices outside the palette get ``ignore_color``."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
    lut[: len(palette)] = palette[:256]
    mask = np.asarray(mask)
    return lut[np.clip(mask, 0, 255).astype(np.uint8)]


def resolve_classes(classes, palette=None) -> tuple[list[str], np.ndarray]:
    """Turn the user's ``classes`` / ``palette`` options into (names, (K, 3) uint8 palette).

    ``classes``: a preset name ("voc", "camvid"), a comma-separated string, a path to a text file with
    one name per line, an int (names "class0".."classN-1"), or a list of names. ``palette``: None (the
    preset's, else VOC colours), a preset name, or a (K, 3) array-like.
    """
    preset_palette = None
    if isinstance(classes, str):
        if classes.lower() in PRESETS:
            names, preset_palette = PRESETS[classes.lower()]
            names = list(names)
        elif os.path.isfile(classes):
            with open(classes, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        elif "," in classes:
            names = [c.strip() for c in classes.split(",") if c.strip()]
        elif classes.isdigit():
            names = [f"class{i}" for i in range(int(classes))]
        else:
            raise DataError(
                f"unknown class list {classes!r} (not a preset, a list, a number or an existing file)",
                None,
                f"use a preset ({', '.join(PRESETS)}), a list of names ({option('classes', ['background', 'object'])}), "
                "a number, or a text file with one name per line",
            )
    elif isinstance(classes, int):
        names = [f"class{i}" for i in range(classes)]
    elif classes is None:
        raise DataError("no class list given", None,
                        f"name the classes: {option('classes', ['background', 'object'])}, or a preset such as "
                        f"{option('classes', 'camvid')}")
    else:
        names = [str(c) for c in classes]
    if not names:
        raise DataError("the class list is empty", None, "give at least one class name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # the IoU table would show one name twice, and two classes could not be told apart in a report
        raise DataError(f"the class list names {', '.join(repr(n) for n in repeated)} more than once: {names}", None,
                        f"give every class its own name ({option('classes')})")
    if len(names) > 255:
        raise DataError(f"{len(names)} classes; at most 255 fit in uint8 masks with 255 as ignore", None, "merge classes")

    if palette is None:
        pal = preset_palette if preset_palette is not None else default_palette(len(names))
    elif isinstance(palette, str):
        if palette.lower() not in PRESETS:
            raise DataError(f"unknown palette {palette!r}", None,
                            f"use a preset ({', '.join(PRESETS)}) or one [r, g, b] colour per class ({option('palette')})")
        pal = PRESETS[palette.lower()][1]
    else:
        pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(pal) < len(names):
        raise DataError(
            f"palette has {len(pal)} colours for {len(names)} classes", None, "give one colour per class"
        )
    return names, np.ascontiguousarray(pal[: len(names)], dtype=np.uint8)
