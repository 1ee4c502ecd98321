"""CascadePSP-protocol scores accumulated over a dataset (the loops around `airm.metrics`).

Training validation and `python -m eval` both score through `score_pairs`, so the numbers in a
training log and in an evaluation table are the same computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from airm.data import Pair
from airm.io import read_mask
from airm.metrics import binarize, boundary_accuracy, iou_counts


@dataclass(frozen=True)
class ImageScore:
    name: str
    source: str
    iou: float  # per-image IoU, 0..1
    boundary_accuracy: float | None  # None when the truth has no boundary
    coarse_kind: str = ""  # how its coarse mask was made, when the data says (`Pair`)
    intersection: int = 0  # pixels, for pooled IoU over any group of images
    union: int = 0


@dataclass
class ScoreAccumulator:
    """Pooled IoU, mean per-image IoU and mBA over the images added so far."""

    intersection: int = 0
    union: int = 0
    images: list[ImageScore] = field(default_factory=list)

    def add(
        self, name: str, pred: np.ndarray, gt: np.ndarray, source: str = "", coarse_kind: str = ""
    ) -> ImageScore:
        """pred, gt: HxW bool of the same size."""
        inter, union = iou_counts(pred, gt)
        iou = inter / union if union else 1.0
        score = ImageScore(
            name, source, iou, boundary_accuracy(pred, gt), coarse_kind, inter, union
        )
        self.add_score(score)
        return score

    def add_score(self, score: ImageScore) -> None:
        """Count an image already scored (by another accumulator's `add`)."""
        self.intersection += score.intersection
        self.union += score.union
        self.images.append(score)

    @property
    def skipped_mba(self) -> list[str]:
        """Images whose truth has no boundary (reported, left out of mBA)."""
        return [s.name for s in self.images if s.boundary_accuracy is None]

    @property
    def pooled_iou(self) -> float:
        return 100.0 * self.intersection / self.union if self.union else 100.0

    @property
    def mean_iou(self) -> float:
        return 100.0 * float(np.mean([s.iou for s in self.images])) if self.images else np.nan

    @property
    def mba(self) -> float:
        bas = [s.boundary_accuracy for s in self.images if s.boundary_accuracy is not None]
        return 100.0 * float(np.mean(bas)) if bas else float("nan")

    def summary(self) -> dict[str, float]:
        return {
            "iou": self.pooled_iou,
            "mean_iou": self.mean_iou,
            "mba": self.mba,
            "n": len(self.images),
        }


def to_truth_size(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A prediction (HxW bool, or uint8 0..255) as HxW bool at the truth's size.

    The protocol resizes an output of another size bilinearly, then thresholds at > 127.
    """
    if pred.shape == shape:
        return binarize(pred)
    u8 = pred.astype(np.uint8) * 255 if pred.dtype == bool else pred
    return cv2.resize(u8, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) > 127


def read_coarse(pair: Pair) -> np.ndarray:
    """The pair's `_seg` coarse mask as HxW bool (thresholded at > 127)."""
    return read_mask(pair.coarse, max_pixels=None) > 0.5


# What is scored for one pair: HxW bool (or uint8 0..255) at any size.
Predict = Callable[[Pair], np.ndarray]


def coarse_group(source: str, coarse_kind: str) -> str:
    """The name of the group of a source's images whose coarse masks are of one kind."""
    return f"{source} / {coarse_kind}"


def score_pairs(pairs: list[Pair], predict: Predict) -> dict:
    """Score `predict` over BIG-layout pairs against their `_gt` truths.

    Returns the overall summary, "skipped_mba" (images whose truth has no boundary),
    per-source "sources" summaries, "coarse_kinds" summaries per source and kind of coarse
    mask ("Kvasir-SEG / lowres"; empty when the data does not say how its coarse masks were
    made) and per-image "images" scores.
    """
    overall = ScoreAccumulator()
    sources: dict[str, ScoreAccumulator] = {}
    kinds: dict[str, ScoreAccumulator] = {}
    for pair in pairs:
        gt = read_mask(pair.mask, max_pixels=None) > 0.5
        pred = to_truth_size(predict(pair), gt.shape)
        score = overall.add(pair.name, pred, gt, pair.source, pair.coarse_kind)
        sources.setdefault(pair.source, ScoreAccumulator()).add_score(score)
        if pair.coarse_kind:
            group = coarse_group(pair.source, pair.coarse_kind)
            kinds.setdefault(group, ScoreAccumulator()).add_score(score)
    return {
        **overall.summary(),
        "skipped_mba": overall.skipped_mba,
        "sources": {k: v.summary() for k, v in sorted(sources.items())},
        "coarse_kinds": {k: v.summary() for k, v in sorted(kinds.items())},
        "images": [asdict(s) for s in overall.images],
    }
