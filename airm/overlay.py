"""Pictures of a refinement: the coarse and the refined boundaries drawn over the image."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from airm.io import InputError, atomic_write, normalize_image

# Magenta and cyan: told apart by most colour-blind readers, and rare in photographs.
COARSE_COLOR = (255, 0, 255)
REFINED_COLOR = (0, 255, 255)


def boundaries(regions: np.ndarray, *, width: int = 1) -> np.ndarray:
    """HxW bool: pixels beside a pixel of another value (4-neighbourhood), on both sides of
    each change (so lines are 2 pixels wide), widened to about `width` pixels when wider.

    regions: HxW bool or integer array (a binary mask or a label map; every change of value is
    a boundary), or float probabilities, thresholded at 0.5.
    """
    regions = np.asarray(regions)
    if regions.ndim != 2:
        raise InputError(f"a mask or label map must be HxW, got shape {regions.shape}")
    if np.issubdtype(regions.dtype, np.floating):
        regions = regions > 0.5
    edge = np.zeros(regions.shape, bool)
    vertical = regions[1:] != regions[:-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    horizontal = regions[:, 1:] != regions[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    if width > 2:  # the two-pixel line above is already 2 wide
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width - 1, width - 1))
        edge = cv2.dilate(edge.astype(np.uint8), kernel) > 0
    return edge


def draw_overlay(
    image: np.ndarray,
    refined: np.ndarray,
    coarse: np.ndarray | None = None,
    *,
    width: int | None = None,
) -> np.ndarray:
    """Draw the coarse boundary (magenta) and the refined one (cyan, on top) over the image.

    image: HxWx3 uint8 RGB (or anything `airm.io.normalize_image` accepts).
    refined, coarse: HxW masks (0/255, bool or probabilities) or label maps (class boundaries).
    width: line width in pixels (default: 1/400 of the longer side, at least 2).
    Returns a new HxWx3 uint8 RGB picture.
    """
    picture = normalize_image(image).copy()
    height, w = picture.shape[:2]
    width = width if width is not None else max(2, round(max(height, w) / 400))
    for regions, color in ((coarse, COARSE_COLOR), (refined, REFINED_COLOR)):
        if regions is None:
            continue
        if np.shape(regions) != (height, w):
            raise InputError(f"image is {height}x{w} but a mask is {np.shape(regions)}")
        picture[boundaries(regions, width=width)] = color
    return picture


def write_picture(
    path: str | os.PathLike, picture: np.ndarray, *, then: Callable[[], None] | None = None
) -> None:
    """Write an HxWx3 uint8 RGB picture atomically, in the format the path's suffix names.

    then: called once the picture is encoded, before it replaces `path`; if it fails, `path` is
    left as it was (a pair's mask and overlay: both written or neither)."""
    path = Path(path)
    image_format = picture_format(path)
    if image_format is None:
        raise InputError(f"cannot write a picture named {path.name} (use .jpg/.png)")
    extra = {"quality": 90} if image_format == "JPEG" else {}

    def write(tmp: str) -> None:
        Image.fromarray(picture).save(tmp, format=image_format, **extra)
        if then is not None:
            then()

    atomic_write(path, write)


def picture_format(path: str | os.PathLike) -> str | None:
    """The PIL format that a picture file's name asks for, or None when there is none or PIL
    cannot write an RGB picture in it (it reads more formats than it writes)."""
    image_format = Image.registered_extensions().get(Path(path).suffix.lower())
    if image_format not in Image.SAVE:
        return None
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=image_format)
    except Exception:  # what stops PIL writing one pixel (a missing plugin, a mode it lacks)
        return None
    return image_format
