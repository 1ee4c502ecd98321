"""Accumulating CascadePSP-protocol scores over a dataset (the loops around `airm.metrics`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
