"""Coarse masks made from a ground truth, for training.

`perturb_mask` follows CascadePSP's perturbation: simplify the contours to polygons, then
add and remove random discs on the boundary (local dilations and erosions) until the IoU with
the truth falls under a target. `lowres_mask` imitates a low-resolution semantic segmenter:
shrink, blur, threshold with a small bias, enlarge back (blobby, thin parts lost).
`cascade_mask` imitates what the later scales of inference are given: the previous, coarser
scale's refined probabilities, enlarged (soft, and nearly right).
"""

from __future__ import annotations

import cv2
import numpy as np

from airm.morphology import nonzero_points


def simplify_contours(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Redraw every contour as a polygon simplified by a random tolerance (HxW bool)."""
    u8 = mask.astype(np.uint8)
    contours, hierarchy = cv2.findContours(u8, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return mask.copy()
    out = np.zeros_like(u8)
    for contour, info in zip(contours, hierarchy[0], strict=True):
        eps = rng.uniform(0.002, 0.02) * cv2.arcLength(contour, True)
        poly = cv2.approxPolyDP(contour, eps, True)
        is_hole = info[3] >= 0
        cv2.fillPoly(out, [poly], 0 if is_hole else 1)
    return out.astype(bool)


def perturb_mask(
    gt: np.ndarray, rng: np.random.Generator, *, iou_target: float, max_steps: int = 200
) -> np.ndarray:
    """A coarse version of the HxW bool mask `gt` with IoU just under `iou_target`."""
    h, w = gt.shape
    out = simplify_contours(gt, rng).astype(np.uint8)
    truth = gt.astype(np.uint8)
    size = max(np.sqrt(gt.sum()), 8.0)
    for _ in range(max_steps):
        # IoU as `airm.metrics.iou` defines it, counted by OpenCV: this loop runs at full size.
        union = cv2.countNonZero(cv2.bitwise_or(out, truth))
        inter = cv2.countNonZero(cv2.bitwise_and(out, truth))
        if (inter / union if union else 1.0) < iou_target:
            break
        edges = cv2.morphologyEx(out, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        ys, xs = nonzero_points(edges)
        if len(ys) == 0:
            break
        for _ in range(4):
            k = rng.integers(len(ys))
            radius = int(rng.uniform(0.02, 0.12) * size) + 1
            cv2.circle(out, (int(xs[k]), int(ys[k])), radius, int(rng.random() < 0.5), -1)
    return out.astype(bool) if h and w else gt.copy()


# The long sides (px, inclusive) at which shared/data/val's low-resolution masks were made.
LOWRES_SIDES = (48, 128)


def lowres_mask(
    gt: np.ndarray, rng: np.random.Generator, *, sides: tuple[int, int] = LOWRES_SIDES
) -> np.ndarray:
    """Imitate a low-resolution segmenter's output for the HxW bool mask `gt`: its long side
    drawn from `sides` (inclusive)."""
    h, w = gt.shape
    long_side = int(rng.integers(sides[0], sides[1] + 1))
    scale = long_side / max(h, w)
    small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(gt.astype(np.float32), small_size, interpolation=cv2.INTER_AREA)
    sigma = rng.uniform(0.5, 2.0)
    small = cv2.GaussianBlur(small, (0, 0), sigma)
    threshold = 0.5 + rng.uniform(-0.15, 0.15)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return big > threshold


def cascade_mask(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The HxW bool mask `gt` as a coarser scale of inference would hand it on (see
    `handed_on`): shrunk by 1.5 to 4 times (the ratio of two refined scales) and slightly
    blurred there. HxW float32 in [0, 1]."""
    factor = float(np.exp(rng.uniform(np.log(1.5), np.log(4.0))))
    return handed_on(gt, factor, sigma=rng.uniform(0.0, 1.0))


def handed_on(gt: np.ndarray, factor: float, *, sigma: float = 0.0) -> np.ndarray:
    """HxW bool `gt` shrunk `factor` times (area), blurred there by `sigma` pixels (none under
    0.1), and enlarged back bilinearly, as `airm.inference.resize` enlarges one scale's
    probabilities for the next. HxW float32 in [0, 1]."""
    h, w = gt.shape
    small_size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = cv2.resize(gt.astype(np.float32), small_size, interpolation=cv2.INTER_AREA)
    if sigma > 0.1:
        small = cv2.GaussianBlur(small, (0, 0), sigma)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
