"""Reading images and masks from disk with errors that name the file and the fix.

Images come back as (H, W, 3) uint8 RGB arrays, masks as (H, W) uint8 class indices. PIL does the
decoding: palette PNGs (mode "P", as VOC ships them) give their indices directly; RGB colour masks go
through a palette lookup; 0/255 binary masks are mapped to 0/1 only when the caller says they are binary.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .palettes import colors_to_index

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    """Open and fully decode a file; a truncated or corrupt file fails here, not later in a worker."""
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise DataError(f"{what} file does not exist", path, "check the path and the dataset layout") from None
    except PermissionError as e:  # an OSError, but the file is fine: say what is wrong
        raise DataError(f"cannot open the {what}: permission denied ({e.strerror})", path,
                        "check the file's permissions and owner (ls -l), or run as a user who may read it") from None
    except UnidentifiedImageError:
        raise DataError(
            f"cannot read the {what}: not an image file PIL recognises", path, "replace or delete the file"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated files raise OSError("image file is truncated ...")
        raise DataError(f"cannot decode the {what} ({e}); the file is truncated or corrupt", path,
                        "re-export or re-download it, or delete it with its pair") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB. Grayscale, palette and RGBA images are converted to RGB."""
    img = _open(path, "image")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img)  # a writable copy: torch.from_numpy warns on read-only PIL buffers


def read_mask(
    path: str | os.PathLike,
    *,
    palette: np.ndarray | None = None,
    ignore_colors: tuple = (),
    ignore_index: int = 255,
    binary: bool = False,
) -> np.ndarray:
    """(H, W) uint8 class indices.

    - mode "P" (palette PNG) and "L": the stored values are the indices.
    - RGB/RGBA: if all channels are equal the mask is a grey mask saved as RGB and is read as such;
      otherwise it is converted through ``palette`` (``ignore_colors`` -> ``ignore_index``), and without a
      palette it is an error that says to give one.
    - ``binary=True``: the mask is foreground/background; values >= 128 become 1, the rest 0 (this also
      absorbs the grey edge pixels of a resized 0/255 mask). Masks that already hold 0/1 stay 0/1.
    """
    img = _open(path, "mask")
    mode = img.mode
    if mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        rgb = np.asarray(img.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            mask = rgb[..., 0].copy()
        elif palette is None:
            raise DataError(
                f"mask is an RGB colour image ({mode}); class indices are expected",
                path,
                "pass the palette the colours come from (folder option palette='voc'/'camvid'/[[r, g, b], ...], "
                "CLI --palette), or save masks as single-channel index PNGs",
            )
        else:
            mask = colors_to_index(rgb, palette, ignore_index=ignore_index, ignore_colors=ignore_colors, path=str(path))
    elif mode in ("P", "L", "1"):
        mask = np.array(img, dtype=np.uint8)
    else:  # 16/32-bit integer or float masks
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(np.equal(np.mod(arr, 1), 0))):
            raise DataError(
                f"{mode} mask holds values from {arr.min()} to {arr.max()}; class indices must be integers 0..255",
                path,
                "save masks as 8-bit index PNGs (mode L or P) with 255 for ignored pixels",
            )
        mask = arr.astype(np.uint8)

    if binary:
        mask = (mask >= 128).astype(np.uint8) if mask.size and mask.max() > 1 else mask.astype(np.uint8)
    return mask


def check_mask_values(
    mask: np.ndarray, num_classes: int, ignore_index: int, path: str | os.PathLike | None, *, binary: bool = False
) -> np.ndarray:
    """Raise DataError if ``mask`` holds values that are neither a class nor ``ignore_index``.

    Returns the 256-bin histogram of the mask, which callers reuse for statistics.
    """
    hist = np.bincount(mask.ravel(), minlength=256)
    valid = np.zeros(256, dtype=bool)
    valid[:num_classes] = True
    if 0 <= ignore_index < 256:
        valid[ignore_index] = True
    bad = np.flatnonzero((hist > 0) & ~valid)
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (f" (+{bad.size - 10} more)" if bad.size > 10 else "")
        present = set(np.flatnonzero(hist).tolist())
        if present <= {0, 255} and not binary:
            fix = "this looks like a binary mask stored as 0/255: pass binary=True (CLI --binary) to read 255 as class 1"
        elif present <= {0, 1, 255} and num_classes == 1:
            fix = "a foreground/background dataset has 2 classes: give both names, e.g. classes='background,foreground'"
        else:
            fix = (f"the dataset has {num_classes} classes (0..{num_classes - 1}) and ignore index {ignore_index}: "
                   "check the class list (--classes), or remap these values to class indices or to the ignore index")
        raise DataError(f"mask has values {shown} outside 0..{num_classes - 1} that are not the ignore index {ignore_index}",
                        path, fix)
    return hist


def looks_like_binary_0_255(hist: np.ndarray, ignore_index: int) -> bool:
    """True when a mask holds exactly the values 0 and 255 and 255 is the ignore index.

    Such a mask passes the value check (0 = first class, 255 = ignored) but is far more often a 0/255
    foreground mask, which would then train every object pixel as "ignore".
    """
    present = set(np.flatnonzero(hist).tolist())
    return ignore_index == 255 and present == {0, 255}


def warn_binary_0_255(path) -> None:
    warnings.warn(
        f"{path}: mask holds only 0 and 255 and 255 is the ignore index, so its foreground would be ignored; "
        "if masks are binary 0/255, pass binary=True (CLI --binary)",
        stacklevel=3,
    )
