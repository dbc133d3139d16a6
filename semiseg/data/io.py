"""Reading images and masks from disk with errors that name the file and the fix.

Images come back as (H, W, 3) uint8 RGB arrays, masks as (H, W) uint8 class indices. PIL does the
decoding, so every format PIL reads is accepted (:data:`IMAGE_EXTENSIONS`: png, jpg, bmp, tif, gif, webp, ...).
Palette PNGs (mode "P", as VOC ships them) give their indices directly; RGB colour masks go through a
palette lookup; 0/255 binary masks are mapped to 0/1 only when the caller says they are binary.

What is done so that files read the way they look in an image viewer:
- EXIF orientation (phone photos): applied to images and masks (``exif_transpose``), as annotation tools do.
- 16-bit and float images (microscopy): stretched to 0..255 from each image's own min..max, or from a fixed
  ``image_range`` (the dataset option), instead of PIL's clipping that turns them near-white.
- JPEG index masks are refused: lossy compression changes label values along every edge, and the noise
  often stays inside the class range (phantom classes, no error). Binary masks may be JPEG: the 128
  threshold removes the noise.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, option
from .palettes import colors_to_index

# PIL's formats that only identify a file (stubs) or need an external program are left out.
_NOT_READABLE = {".bufr", ".grib", ".h5", ".hdf", ".wmf", ".emf", ".eps", ".ps", ".mpg", ".mpeg"}


def _pil_extensions() -> tuple[str, ...]:
    Image.init()
    found = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return tuple(sorted(found - _NOT_READABLE))


# every extension PIL can open here (png, jpg/jpeg, bmp, tif/tiff, gif, webp, ppm/pgm/pbm, jp2, tga, ...)
IMAGE_EXTENSIONS = _pil_extensions()
COMMON_EXTENSIONS = ".png, .jpg/.jpeg, .bmp, .tif/.tiff, .gif, .webp, .ppm/.pgm/.pbm"  # for messages and the README
LOSSY_FORMATS = ("JPEG", "MPO")


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    """Open and fully decode a file; a truncated or corrupt file fails here, not later in a worker."""
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise DataError(f"{what} file does not exist", path, "check the path and the dataset layout",
                        kind="missing") from None
    except PermissionError as e:  # an OSError, but the file is fine: say what is wrong
        raise DataError(f"cannot open the {what}: permission denied ({e.strerror})", path,
                        "check the file's permissions and owner (ls -l), or run as a user who may read it") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read the {what}: not an image file PIL recognises", path,
                        "replace or delete the file", kind="unreadable") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated files raise OSError("image file is truncated ...")
        raise DataError(f"cannot decode the {what} ({e}); the file is truncated or corrupt", path,
                        "re-export or re-download it, or delete it with its pair", kind="corrupt") from None


def exif_rotation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored; 5..8 turn the picture by 90 degrees), 1 when absent."""
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block is not worth refusing the picture
        return 1


def _upright(img: Image.Image, exif: bool) -> Image.Image:
    if exif and exif_rotation(img) != 1:
        img = ImageOps.exif_transpose(img)
    return img


def header_size(path: str | os.PathLike, *, exif: bool = True) -> tuple[int, int, str, str]:
    """(width, height, mode, format) from the file header, without decoding the pixels (EXIF applied)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if exif and exif_rotation(img) in (5, 6, 7, 8):
                w, h = h, w
            return w, h, img.mode, img.format or ""
    except FileNotFoundError:
        raise DataError("file does not exist", path, "check the path and the dataset layout", kind="missing") from None
    except UnidentifiedImageError:
        raise DataError("cannot read the file: not an image file PIL recognises", path,
                        "replace or delete the file", kind="unreadable") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read the file header ({e}); the file is truncated or corrupt", path,
                        "re-export or re-download it, or delete it with its pair", kind="corrupt") from None


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_uint8(values: np.ndarray, value_range=None) -> np.ndarray:
    """Scale 16-bit / 32-bit / float pixel values to 0..255: ``value_range`` = (low, high) maps low -> 0 and
    high -> 255 (values outside are clipped); None uses the image's own min..max."""
    x = values.astype(np.float64)
    lo, hi = (float(x.min()), float(x.max())) if value_range is None else map(float, value_range)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((x - lo) * scale), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike, *, image_range=None, exif: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 RGB. Grayscale, palette and RGBA images are converted to RGB; 16-bit and float images
    are scaled by :func:`to_uint8` (``image_range``); the EXIF orientation is applied unless ``exif=False``."""
    img = _upright(_open(path, "image"), exif)
    if img.mode in HIGH_DEPTH_MODES:
        grey = to_uint8(np.asarray(img), image_range)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img)  # a writable copy: torch.from_numpy warns on read-only PIL buffers


def _jpeg_mask_error(path) -> DataError:
    return DataError(
        "mask is a JPEG file: lossy compression changes label values along every edge, and the changed values "
        "can still be valid classes (phantom classes that no check catches)",
        path,
        f"save the masks losslessly (PNG); if they are binary foreground masks (0/255), {option('binary', True)} "
        "reads them with a threshold that removes the noise",
        kind="jpeg_mask",
    )


def read_mask(
    path: str | os.PathLike,
    *,
    palette: np.ndarray | None = None,
    ignore_colors: tuple = (),
    ignore_index: int = 255,
    binary: bool = False,
    ignore_value: int | None = None,
    exif: bool = True,
) -> np.ndarray:
    """(H, W) uint8 class indices.

    - mode "P" (palette PNG) and "L": the stored values are the indices.
    - RGB/RGBA: if all channels are equal the mask is a grey mask saved as RGB and is read as such;
      otherwise it is converted through ``palette`` (``ignore_colors`` -> ``ignore_index``), and without a
      palette it is an error that says to give one.
    - ``binary=True``: the mask is foreground/background; values >= 128 become 1, the rest 0 (this also
      absorbs the grey edge pixels of a resized 0/255 mask, and JPEG noise). Masks that already hold 0/1
      stay 0/1. ``ignore_value`` (e.g. 128) marks ignored pixels of binary masks (255 already means foreground).
    - JPEG masks that are not binary are an error (see the module docstring).
    """
    img = _open(path, "mask")
    if img.format in LOSSY_FORMATS and not binary:
        raise _jpeg_mask_error(path)
    img = _upright(img, exif)
    mode = img.mode
    if mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        rgb = np.asarray(img.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            mask = rgb[..., 0].copy()
        elif palette is None:
            raise DataError(
                f"mask is an RGB colour image ({mode}); class indices are expected",
                path,
                f"give the palette the colours come from ({option('palette', 'voc')}, 'camvid' or a list of "
                "[r, g, b] colours), or save masks as single-channel index PNGs",
                kind="rgb_mask",
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
                kind="mask_depth",
            )
        mask = arr.astype(np.uint8)

    if binary:
        ignored = mask == ignore_value if ignore_value is not None else None
        mask = (mask >= 128).astype(np.uint8) if mask.size and mask.max() > 1 else mask.astype(np.uint8)
        if ignored is not None:
            mask[ignored] = ignore_index
    return mask


def read_region(path: str | os.PathLike, *, exif: bool = True) -> np.ndarray:
    """A region-of-interest mask (e.g. a microscope's or a fundus camera's field of view) as a bool (H, W)
    array: True inside. Non-zero pixels are inside (values >= 128 when the mask holds more than 0/1)."""
    img = _upright(_open(path, "region mask"), exif)
    values = np.asarray(img.convert("L"))
    return values >= 128 if values.size and values.max() > 1 else values > 0


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
            fix = (f"this looks like a binary mask stored as 0/255: set {option('binary', True)} to read 255 as class 1 "
                   f"(with 2 classes, e.g. {option('classes', ['background', 'foreground'])})")
        elif present <= {0, 1, 255} and num_classes == 1:
            fix = ("a foreground/background dataset has 2 classes: give both names, e.g. "
                   f"{option('classes', ['background', 'foreground'])}")
        else:
            fix = (f"the dataset has {num_classes} classes (0..{num_classes - 1}) and ignore index {ignore_index}: "
                   f"check the class list ({option('classes')}), or remap these values to class indices or to the "
                   "ignore index")
        raise DataError(f"mask has values {shown} outside 0..{num_classes - 1} that are not the ignore index {ignore_index}",
                        path, fix, kind="mask_values")
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
        f"if masks are binary 0/255, set {option('binary', True)}",
        stacklevel=3,
    )
