"""Segmentation metrics of CascadePSP's evaluation protocol, as pure numpy functions.

Every function takes binary masks as HxW bool arrays (threshold uint8 masks at > 127 first,
see `binarize`).
"""

from __future__ import annotations

import cv2
import numpy as np


def binarize(mask: np.ndarray) -> np.ndarray:
    """HxW uint8 0..255 (or bool) -> HxW bool, thresholded at > 127 as the protocol says."""
    if mask.dtype == bool:
        return mask
    return mask > 127


def iou_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts of two HxW bool masks, for pooled IoU."""
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two HxW bool masks; 1.0 when both are empty."""
    inter, union = iou_counts(pred, gt)
    return inter / union if union else 1.0


def boundary_radii(height: int, width: int, steps: int = 5) -> list[int]:
    """The protocol's radii: 1 + int((max_r - 1) / steps * i), max_r = (h + w) / 300."""
    max_radius = (height + width) / 300
    return [1 + int((max_radius - 1) / steps * i) for i in range(steps)]


def boundary_accuracy(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """mBA of one image: mean over 5 radii of the accuracy inside the truth's boundary band.

    The band at radius r is where the morphological gradient of the truth with an elliptical
    (2r + 1) x (2r + 1) kernel is non-zero. Returns None when the truth has no boundary
    (empty or full), which the protocol reports and skips.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and truth {gt.shape} differ in size")
    gt_u8 = gt.astype(np.uint8)
    scores = []
    for radius in boundary_radii(*gt.shape):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        band = cv2.morphologyEx(gt_u8, cv2.MORPH_GRADIENT, kernel) > 0
        count = int(band.sum())
        if count == 0:
            return None
        scores.append(float((pred[band] == gt[band]).sum()) / count)
    return float(np.mean(scores))
