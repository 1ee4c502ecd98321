"""Accumulating CascadePSP-protocol scores over a dataset (the loops around `airm.metrics`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from airm.data import Pair
from airm.io import read_image, read_mask
from airm.metrics import boundary_accuracy, iou_counts


@dataclass
class ScoreAccumulator:
    """Pooled IoU, mean per-image IoU and mBA over the images added so far."""

    intersection: int = 0
    union: int = 0
    ious: list[float] = field(default_factory=list)
    bas: list[float] = field(default_factory=list)
    skipped_mba: list[str] = field(default_factory=list)

    def add(self, name: str, pred: np.ndarray, gt: np.ndarray) -> None:
        """pred, gt: HxW bool of the same size."""
        inter, union = iou_counts(pred, gt)
        self.intersection += inter
        self.union += union
        self.ious.append(inter / union if union else 1.0)
        ba = boundary_accuracy(pred, gt)
        if ba is None:
            self.skipped_mba.append(name)
        else:
            self.bas.append(ba)

    @property
    def pooled_iou(self) -> float:
        return 100.0 * self.intersection / self.union if self.union else 100.0

    @property
    def mean_iou(self) -> float:
        return 100.0 * float(np.mean(self.ious)) if self.ious else float("nan")

    @property
    def mba(self) -> float:
        return 100.0 * float(np.mean(self.bas)) if self.bas else float("nan")

    def summary(self) -> dict[str, float]:
        return {
            "iou": self.pooled_iou,
            "mean_iou": self.mean_iou,
            "mba": self.mba,
            "n": len(self.ious),
        }


# A refiner as scored: (HxWx3 uint8 RGB image, HxW bool coarse mask) -> HxW bool mask.
Refine = Callable[[np.ndarray, np.ndarray], np.ndarray]


def score_pairs(pairs: list[Pair], refine: Refine | None) -> dict:
    """Score `refine` (None: the coarse masks themselves) over BIG-layout pairs with `_seg`.

    Returns the overall summary plus "seconds" (mean time inside `refine` per image),
    "skipped_mba" (images whose truth has no boundary) and per-source "sources" summaries.
    """
    overall = ScoreAccumulator()
    sources: dict[str, ScoreAccumulator] = {}
    seconds = 0.0
    for pair in pairs:
        gt = read_mask(pair.mask, max_pixels=None) > 0.5
        pred = read_mask(pair.coarse, max_pixels=None) > 0.5
        if refine is not None:
            image = read_image(pair.image, max_pixels=None)
            tic = time.perf_counter()
            pred = refine(image, pred)
            seconds += time.perf_counter() - tic
        overall.add(pair.name, pred, gt)
        sources.setdefault(pair.source, ScoreAccumulator()).add(pair.name, pred, gt)
    return {
        **overall.summary(),
        "seconds": seconds / max(1, len(pairs)),
        "skipped_mba": overall.skipped_mba,
        "sources": {k: v.summary() for k, v in sorted(sources.items())},
    }
