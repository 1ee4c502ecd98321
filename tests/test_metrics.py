import cv2
import numpy as np
import pytest

from airm.evaluation import ScoreAccumulator
from airm.metrics import boundary_accuracy, boundary_radii, iou, iou_counts


def square(size: int, lo: int, hi: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[lo:hi, lo:hi] = True
    return m


def test_iou_known_values():
    a, b = square(10, 0, 4), square(10, 2, 6)  # 16 and 16 pixels, 4 shared
    assert iou_counts(a, b) == (4, 28)
    assert iou(a, b) == pytest.approx(4 / 28)
    assert iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


def test_radii_follow_the_protocol():
    assert boundary_radii(300, 300) == [1, 1, 1, 1, 1]
    # max_r = (1500 + 1500) / 300 = 10 -> 1 + int(9 / 5 * i)
    assert boundary_radii(1500, 1500) == [1, 2, 4, 6, 8]


def test_boundary_accuracy_perfect_and_inverted():
    gt = square(64, 16, 48)
    assert boundary_accuracy(gt, gt) == 1.0
    assert boundary_accuracy(~gt, gt) == 0.0


def test_boundary_accuracy_hand_computed():
    # 100 x 100 image: every radius is 1, the band is the 3x3-ellipse gradient of the square.
    gt = square(100, 30, 70)
    pred = gt.copy()
    pred[30, 30:70] = False  # lose the top row of the object: 40 band pixels wrong
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    band = int((cv2.morphologyEx(gt.astype(np.uint8), cv2.MORPH_GRADIENT, kernel) > 0).sum())
    assert boundary_accuracy(pred, gt) == pytest.approx(1 - 40 / band)


def test_empty_truth_is_skipped_not_a_crash():
    acc = ScoreAccumulator()
    acc.add("empty", np.zeros((50, 50), bool), np.zeros((50, 50), bool))
    acc.add("one", square(50, 10, 20), square(50, 10, 20))
    assert acc.skipped_mba == ["empty"]
    assert acc.summary()["mba"] == 100.0


def test_pooled_iou_is_not_the_mean():
    acc = ScoreAccumulator()
    acc.add("a", square(10, 0, 4), square(10, 0, 4))  # 16 / 16
    acc.add("b", square(10, 0, 2), square(10, 0, 4))  # 4 / 16
    assert acc.pooled_iou == pytest.approx(100 * 20 / 32)
    assert acc.mean_iou == pytest.approx(100 * (1 + 0.25) / 2)
