"""Refining every class of a label map, and fusing the classes back into one map.

Each class c present in an HxW integer map is refined on its own, as the binary mask
`labels == c` (ignore pixels count as not-c), to HxW probabilities p_c. The refined map then
takes, at every pixel, the class with the highest probability, with three rules:

- the original label wins ties, so a pixel that no class claims (every p_c is 0) or that two
  classes claim equally keeps its label;
- a pixel whose class was not refined (see `classes`) counts as having probability 0.5 for
  its own class: a refined class takes it over only with a probability above 0.5; the other
  way round, a pixel that its refined class gives up (below 0.5) and that no refined class
  claims goes to the nearest pixel's class among those not refined, so a refined class
  shrinks as well as grows (when every class is refined, such a pixel keeps its label);
- ignore pixels stay ignore_label, and no class takes them over.

The fusion keeps one running maximum, so memory does not grow with the number of classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from airm.io import InputError, normalize_image

if TYPE_CHECKING:
    from airm.refiner import Refiner

# The probability an unrefined class keeps on its own pixels (see the module docstring).
UNREFINED_PROBABILITY = 0.5


def check_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Refuse anything but an HxW integer array of the image's size."""
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"a label map must hold integers, got dtype {labels.dtype} (use airm.refine for a "
            "binary or soft mask)"
        )
    if labels.ndim != 2:
        raise InputError(f"a label map must be HxW, got shape {labels.shape}")
    if labels.shape != (height, width):
        raise InputError(
            f"image is {height}x{width} but the label map is {labels.shape[0]}x"
            f"{labels.shape[1]}; they must be the same size"
        )
    return labels


def present_classes(
    labels: np.ndarray, ignore_label: int | None, classes: Sequence[int] | None = None
) -> list[int]:
    """The labels in the map (those of `classes` only, when given), ignore_label excluded."""
    found = [int(c) for c in np.unique(labels) if ignore_label is None or c != ignore_label]
    if classes is None:
        return found
    wanted = {int(c) for c in classes}
    return [c for c in found if c in wanted]


def fuse_probabilities(
    labels: np.ndarray,
    probabilities: Iterable[tuple[int, np.ndarray]],
    *,
    ignore_label: int | None = 255,
) -> np.ndarray:
    """Fuse per-class probabilities into one label map (rules in the module docstring).

    labels: HxW integer map, the original labels. probabilities: (class, HxW float in [0, 1])
    pairs, consumed one at a time (a generator keeps only one in memory).
    Returns an HxW map of the same dtype as `labels`.
    """
    fused = labels.copy()
    best = np.zeros(labels.shape, np.float32)  # the highest probability of any refined class
    own = np.full(labels.shape, UNREFINED_PROBABILITY, np.float32)  # p of the original label
    refined = []
    for c, prob in probabilities:
        refined.append(c)
        prob = np.asarray(prob, np.float32)
        if prob.shape != labels.shape:
            raise InputError(f"probabilities of class {c} are {prob.shape}, not {labels.shape}")
        is_c = labels == c
        own[is_c] = prob[is_c]
        higher = prob > best
        fused[higher] = c
        best[higher] = prob[higher]
    keep = own >= best  # ties and unclaimed pixels keep their label
    ignored = labels == ignore_label if ignore_label is not None else np.zeros_like(keep)
    keep |= ignored
    fused[keep] = labels[keep]
    unrefined = ~np.isin(labels, refined) & ~ignored
    released = keep & (own < UNREFINED_PROBABILITY)  # only refined classes' pixels are below
    if unrefined.any() and released.any():
        fused[released] = nearest_labels(labels, unrefined)[released]
    return fused


def nearest_labels(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """HxW: at every pixel, the label of the nearest pixel where `sources` (HxW bool, not all
    False) holds (OpenCV's 5x5 approximation of the Euclidean distance)."""
    _, index = cv2.distanceTransformWithLabels(
        (~sources).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    return labels[sources][index - 1]  # OpenCV numbers the source pixels from 1, row by row


def refine_labels(
    refiner: Refiner,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    ignore_label: int | None = 255,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Refine every class of a label map with `refiner` and fuse them (see the module docstring).

    image: HxWx3 uint8 RGB (or any image `airm.io.normalize_image` accepts).
    labels: HxW integer map (any integer dtype); ignore_label marks pixels that belong to no
    class (None: every value is a class). classes: refine only these labels (default: all).
    Returns an HxW map of the same dtype. A map with fewer than two classes comes back
    unchanged, with a warning: there is no boundary between classes to refine.
    """
    image = normalize_image(image)
    labels = check_labels(labels, *image.shape[:2])
    if len(present_classes(labels, ignore_label)) < 2:
        warnings.warn(
            "the label map has fewer than two classes; returning it unchanged", stacklevel=2
        )
        return labels.copy()
    probabilities = (
        (c, refiner.refine(image, labels == c, soft=True))
        for c in present_classes(labels, ignore_label, classes)
    )
    return fuse_probabilities(labels, probabilities, ignore_label=ignore_label)
