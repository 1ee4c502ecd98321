"""Pictures of a refinement: the coarse and the refined boundaries drawn over the image."""

from __future__ import annotations

import os
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


def write_picture(path: str | os.PathLike, picture: np.ndarray) -> None:
    """Write an HxWx3 uint8 RGB picture atomically, in the format the path's suffix names."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise InputError(f"cannot tell an image format from the name {path.name} (use .jpg/.png)")
    extra = {"quality": 90} if image_format == "JPEG" else {}
    atomic_write(path, lambda tmp: Image.fromarray(picture).save(tmp, format=image_format, **extra))
