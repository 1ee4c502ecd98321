"""Reading and normalising images and masks (SPEC section 6).

Images become HxWx3 uint8 RGB: grayscale is replicated, alpha is dropped, 16-bit is scaled
to 8-bit, EXIF orientation is applied. Masks become HxW float32 probabilities in [0, 1]:
0/255, 0/1 and bool masks are binary, other values are read as soft (float masks a little
outside [0, 1], as resampling leaves them, are clipped; see `normalize_mask`); RGB masks take the
channel maximum, RGBA masks with a non-constant alpha take the alpha, palette masks are
foreground wherever the index is non-zero, 16-bit masks are scaled by 65535 (unless no value
exceeds 255: that is an 8-bit mask stored in 16 bits). Label maps (`read_labels`) are read as
they are, one integer per pixel, with none of these rules. The Python API takes an array or a
file's path wherever it takes an image, a mask or a label map (`as_image`, `as_mask`,
`as_labels`).

Every file is written atomically: into a temporary `.<name>.<random>.tmp` beside it, then
renamed, so a reader never sees a half-written file (nor takes a temporary for an image: its
suffix is .tmp); `remove_stale_temporaries` clears the temporaries a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

# Refuse inputs above this many pixels unless the caller raises it (about 8000 x 8000).
DEFAULT_MAX_PIXELS = 64_000_000
# How far outside [0, 1] a float mask may stray and still be probabilities (clipped).
PROBABILITY_SLACK = 0.5


class InputError(ValueError):
    """An image or mask that cannot be used, with a one-line reason."""


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600; the usual permissions, set after `write`, which may have made
        # the file anew (safetensors' save_file does)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())  # the data reaches the disk before the name does
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_target(name: str) -> str | None:
    """The file name a temporary of `atomic_write` was to become, or None if `name` is not one."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    target, dot, random = name[1:-4].rpartition(".")
    return target if target and dot and random else None


def remove_stale_temporaries(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temporaries that writes of `paths` killed mid-way left behind.

    Only `.<name>.<random>.tmp` files beside each path are touched (each folder is listed
    once). A process writing one of these paths at the same time would lose its temporary, so
    call this before writing them, not while another process does. Returns the deleted paths.
    """
    folders: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        folders.setdefault(path.parent, set()).add(path.name)
    removed = []
    for folder, names in folders.items():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if temporary_target(entry.name) in names and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_size(height: int, width: int, max_pixels: int | None, what: str) -> None:
    if height < 1 or width < 1:
        raise InputError(f"{what} is empty ({height}x{width})")
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(
            f"{what} has {height}x{width} = {height * width} pixels, above the limit of "
            f"{max_pixels} (raise max_pixels / --max-pixels to allow it)"
        )


def _open(path: str | os.PathLike, max_pixels: int | None) -> Image.Image:
    """The file's first frame, decoded, EXIF orientation applied; the file is closed."""
    with _header(path) as image:
        check_size(image.height, image.width, max_pixels, str(path))
        # decode now, so that truncated files fail here (Pillow checks a TIFF's size again)
        with _no_pillow_limit() if image.format == "TIFF" else contextlib.nullcontext():
            image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy of the pixels
        return image


def read_size(
    path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """An image file's (height, width) as `read_image` would return it (EXIF orientation
    applied), from its header alone; InputError when it cannot be read or is above
    `max_pixels`. (A PNG's EXIF is looked for only where its header holds it: Pillow would
    decode the image to find one stored after the pixels.)"""
    with _header(path) as image:
        check_size(image.height, image.width, max_pixels, str(path))
        has_exif = image.format != "PNG" or "exif" in image.info
        turned = has_exif and image.getexif().get(0x0112) in (5, 6, 7, 8)  # a quarter turn
        return (image.width, image.height) if turned else (image.height, image.width)


_PILLOW_LIMIT = threading.Lock()


@contextlib.contextmanager
def _no_pillow_limit() -> Iterator[None]:
    """Pillow's own pixel limit lifted (`max_pixels` is airm's), under a lock: the limit is
    Pillow's global, so other threads' opens go unchecked meanwhile."""
    with _PILLOW_LIMIT:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


@contextlib.contextmanager
def _header(path: str | os.PathLike) -> Iterator[Image.Image]:
    """An image file opened by Pillow (its header read), open while the block runs.

    The caller's `max_pixels` alone bounds the size: Pillow's own limit (about 179 megapixels,
    against decompression bombs) is lifted while the header is read, under a lock. Any failure
    of Pillow's, in the block too, is an InputError (a truncated file raises OSError when
    decoded, a malformed EXIF block TypeError)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    try:
        with open(path, "rb") as file:
            with _no_pillow_limit():
                image = Image.open(file)
            yield image
    except InputError:
        raise
    except Exception as e:
        reason = str(e) if isinstance(e, (OSError, ValueError, SyntaxError)) else repr(e)
        raise InputError(f"cannot read {path}: {reason}") from None


def normalize_image(image: np.ndarray) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array -> HxWx3 uint8 RGB. Floats are read as [0, 1]
    (or 0..255 when a value exceeds 1); uint16 as 16-bit; other integers as 8-bit values."""
    image = np.asarray(image)
    if image.ndim in (2, 3) and 0 in image.shape[:2]:
        raise InputError(f"image is empty ({image.shape[0]}x{image.shape[1]})")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"image must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise InputError(f"unsupported image dtype {image.dtype}")
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise InputError("image has NaN or infinite values")
        hi = 1.0 if image.max() <= 1.0 else 255.0
        return (np.clip(image / hi, 0, 1) * 255).round().astype(np.uint8)
    if not np.issubdtype(image.dtype, np.integer):
        raise InputError(f"unsupported image dtype {image.dtype}")
    low, top = int(image.min()), int(image.max())
    _check_bits(low, top, "image")
    if image.dtype == np.uint16:
        return (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    if top > 255:  # not 8-bit, and only uint16 says 16-bit
        raise InputError(f"image values {low}..{top}: 8-bit images hold 0..255 (16-bit: uint16)")
    return image.astype(np.uint8)


def normalize_mask(mask: np.ndarray) -> np.ndarray:
    """bool, 0/1 or 0/255 integers, 16-bit, or float probabilities -> HxW float32 in [0, 1].

    Float masks within [-0.5, 1.5] are probabilities, clipped to [0, 1] (a resampled mask
    overshoots a little); beyond 1.5, and within 0..255, they are read as 0..255."""
    mask = np.asarray(mask)
    if mask.ndim in (2, 3) and 0 in mask.shape[:2]:
        raise InputError(f"mask is empty ({mask.shape[0]}x{mask.shape[1]})")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        mask = mask[..., :3].max(axis=2)
    if mask.ndim != 2:
        raise InputError(f"mask must be HxW, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask.astype(np.float32)
    if np.issubdtype(mask.dtype, np.floating):
        if not np.isfinite(mask).all():
            raise InputError("mask has NaN or infinite values")
        low, top = float(mask.min()), float(mask.max())
        if -PROBABILITY_SLACK <= low and top <= 1 + PROBABILITY_SLACK:
            return mask.astype(np.float32).clip(0, 1)
        if 0 <= low and top <= 255:
            return (mask / 255.0).astype(np.float32)
        raise InputError(
            f"a float mask must hold probabilities in [0, 1] (or 0..255), got {low:g}..{top:g}"
        )
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"unsupported mask dtype {mask.dtype}")
    return mask.astype(np.float32) / mask_scale(int(mask.min()), int(mask.max()))


def mask_scale(low: int, top: int) -> float:
    """What an integer mask whose values run from low to top is divided by to be read as [0,
    1]: 1 for 0/1, 255 for 8 bits, 65535 for 16; InputError beyond 16 bits or below 0."""
    _check_bits(low, top, "mask")
    return 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0


def _check_bits(low: int, top: int, what: str) -> None:
    if low < 0 or top > 65535:
        raise InputError(f"{what} values {low}..{top} are outside 8- and 16-bit ranges")


def read_image(
    path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (EXIF orientation applied)."""
    image = _open(path, max_pixels)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # one channel of 16, 32 bits
        array = np.asarray(image)
        if image.mode == "I" and array.size and 255 < array.max() <= 65535:
            array = array.astype(np.uint16)  # a 16-bit file, as some Pillows open them
        return normalize_image(array)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image)  # writable, unlike np.asarray of a PIL image


def read_mask(
    path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a mask file as HxW float32 in [0, 1] (see the module docstring for the rules)."""
    image = _open(path, max_pixels)
    if image.mode == "P":
        return (np.asarray(image) > 0).astype(np.float32)
    if image.mode in ("RGBA", "LA"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() != alpha.max():
            return normalize_mask(alpha)
        image = image.convert("RGB" if image.mode == "RGBA" else "L")
    if image.mode in ("1", "L", "RGB", "I;16", "I;16B", "I;16L", "I", "F"):
        return normalize_mask(np.asarray(image))
    return normalize_mask(np.asarray(image.convert("L")))


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write an HxW uint8 mask as PNG atomically (never a half-written file)."""
    atomic_write(path, lambda tmp: Image.fromarray(mask).save(tmp, format="PNG"))


class LabelMap(NamedTuple):
    """A label map read from a file: HxW integers, and the file's palette if it had one."""

    labels: np.ndarray  # HxW uint8 or uint16
    palette: list[int] | None  # flat [r, g, b, r, g, b, ...] of a palette PNG


def read_labels(
    path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> LabelMap:
    """Read an integer label map: palette images give their indices, grayscale (8 or 16-bit)
    its values, bilevel images 0/1. Colour images are refused: their colours are not labels."""
    image = _open(path, max_pixels)
    if image.format in ("JPEG", "MPO"):
        raise InputError(
            f"{path} is a JPEG: its lossy compression invents labels; save label maps as PNG"
        )
    if image.mode == "P":
        return LabelMap(np.array(image, dtype=np.uint8), image.getpalette())
    if image.mode in ("1", "L"):
        return LabelMap(np.array(image, dtype=np.uint8), None)
    if image.mode.startswith("I"):
        labels = np.array(image)
        if labels.size and (labels.min() < 0 or labels.max() > 65535):
            raise InputError(f"{path} holds labels outside 0..65535")
        return LabelMap(labels.astype(np.uint16), None)
    raise InputError(
        f"{path} is not a label map (a {image.mode} image): save one integer per pixel, as a "
        "palette or grayscale PNG"
    )


def as_image(
    image: np.ndarray | str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """An image array (`normalize_image`) or an image file's path (`read_image`) -> HxWx3 uint8
    RGB: what the Python API accepts wherever it takes an image."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels=max_pixels)
    return normalize_image(image)


def as_mask(
    mask: np.ndarray | str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """A mask array (`normalize_mask`) or a mask file's path (`read_mask`) -> HxW float32."""
    if isinstance(mask, (str, os.PathLike)):
        return read_mask(mask, max_pixels=max_pixels)
    return normalize_mask(mask)


def as_labels(
    labels: np.ndarray | str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """A label map array, as it is, or a label map file's path (`read_labels`, its palette
    dropped: `read_labels` and `write_labels` keep it)."""
    if isinstance(labels, (str, os.PathLike)):
        return read_labels(labels, max_pixels=max_pixels).labels
    return np.asarray(labels)


def write_labels(
    path: str | os.PathLike, labels: np.ndarray, palette: list[int] | None = None
) -> None:
    """Write an HxW integer label map as PNG atomically: 16-bit grayscale for a 16-bit array
    (as a 16-bit file is read) or labels above 255, else 8-bit (a palette PNG when `palette` is
    given)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise InputError("a PNG holds labels in 0..65535 only")
    if labels.dtype.itemsize != 2 and (labels.size == 0 or labels.max() <= 255):
        image = Image.fromarray(labels.astype(np.uint8))
        if palette is not None:
            # an L image with a palette becomes P; PIL renumbers the indices that a short palette
            # lacks, so it is padded (black) to hold every label
            missing = 3 * (int(labels.max()) + 1) - len(palette) if labels.size else 0
            image.putpalette(list(palette) + [0] * max(0, missing))
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
