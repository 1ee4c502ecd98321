import cv2
import numpy as np
import pytest

from airm.metrics import boundary_accuracy, boundary_radii, iou, iou_counts
from airm.scoring import ScoreAccumulator, to_truth_size


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


def test_radii_of_a_davis_frame():
    # max_r = (480 + 854) / 300 = 4.447 -> 1 + int(3.447 / 5 * i) for i = 0..4
    assert boundary_radii(480, 854) == [1, 1, 2, 3, 3]


def test_band_counted_by_hand():
    # A 5x5 square in a 9x9 image: every radius is 1 and the 3x3 ellipse is a cross. Dilation
    # covers 45 pixels (the square plus 5 on each side), erosion the inner 3x3: a band of 36.
    gt = square(9, 2, 7)
    pred = gt.copy()
    pred[2, 2] = False  # one band pixel wrong
    assert boundary_accuracy(pred, gt) == pytest.approx(35 / 36)
    pred = gt.copy()
    pred[4, 4] = False  # the centre is outside the band: not counted
    assert boundary_accuracy(pred, gt) == 1.0


def test_outputs_of_another_size_are_resized_bilinearly_then_thresholded():
    small = np.zeros((4, 4), np.uint8)
    small[:, 2:] = 255
    big = to_truth_size(small, (8, 8))
    assert big.shape == (8, 8) and big[:, 5:].all() and not big[:, :3].any()
    assert to_truth_size(np.full((8, 8), 128, np.uint8), (8, 8)).all()  # > 127 is foreground
