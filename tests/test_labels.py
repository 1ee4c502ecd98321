import time

import cv2
import numpy as np
import pytest

import airm
from airm import InferenceOptions, InputError, Refiner
from airm.io import write_labels
from airm.labels import fuse_probabilities, refine_labels

from conftest import label_pair, tiny_model


@pytest.fixture(scope="module")
def refiner():
    return Refiner(
        tiny_model("airm_efficientnet_lite0"), device="cpu", options=InferenceOptions(min_size=32)
    )


def test_fusion_takes_the_most_probable_class():
    labels = np.array([[0, 0, 1, 1, 255]], np.uint8)
    probabilities = [
        (0, np.array([[0.9, 0.3, 0.6, 0.1, 0.9]])),
        (1, np.array([[0.1, 0.6, 0.7, 0.8, 0.9]])),
    ]
    fused = fuse_probabilities(labels, probabilities, ignore_label=255)
    assert fused.tolist() == [[0, 1, 1, 1, 255]]  # the ignore pixel stays ignored
    assert fused.dtype == np.uint8


def test_fusion_ties_and_unclaimed_pixels_keep_their_label():
    labels = np.array([[0, 1, 2, 0]], np.int32)
    probabilities = [
        (0, np.array([[0.0, 0.4, 0.0, 0.5]])),
        (1, np.array([[0.0, 0.4, 0.0, 0.5]])),
        (2, np.array([[0.0, 0.0, 0.0, 0.5]])),
    ]
    # unclaimed (all 0), a tie between two other classes, unclaimed, a three-way tie
    assert fuse_probabilities(labels, probabilities, ignore_label=None).tolist() == [[0, 1, 2, 0]]
    # a tie between classes other than the pixel's own goes to the first of them
    labels = np.array([[2]], np.int32)
    probabilities = [(0, np.array([[0.7]])), (1, np.array([[0.7]])), (2, np.array([[0.2]]))]
    assert fuse_probabilities(labels, probabilities).tolist() == [[0]]


def test_fusion_unrefined_class_yields_only_above_one_half():
    labels = np.array([[7, 7, 7, 1]], np.int64)
    probabilities = [(1, np.array([[0.4, 0.5, 0.6, 0.9]]))]  # class 7 is not refined
    assert fuse_probabilities(labels, probabilities).tolist() == [[7, 7, 1, 1]]


def test_fusion_with_a_negative_ignore_label():
    labels = np.array([[-1, 3, 4]], np.int16)
    probabilities = [(3, np.array([[1.0, 0.2, 0.9]])), (4, np.array([[0.0, 0.0, 0.1]]))]
    fused = fuse_probabilities(labels, probabilities, ignore_label=-1)
    assert fused.tolist() == [[-1, 3, 3]] and fused.dtype == np.int16


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_refine_labels_keeps_shape_dtype_and_ignore(refiner, dtype):
    image, labels = label_pair(56, 72)
    labels = labels.astype(dtype)
    if dtype != np.uint8:
        labels[labels == 2] = 1000  # labels beyond 8 bits
    out = refiner.refine_labels(image, labels, ignore_label=255)
    assert out.shape == labels.shape and out.dtype == labels.dtype
    assert set(np.unique(out)) <= set(np.unique(labels))
    ignore = labels == 255
    assert np.array_equal(out[ignore], labels[ignore]) and not np.any(out[~ignore] == 255)


def test_a_label_map_file_gives_what_its_array_gives(refiner, tmp_path):
    image, labels = label_pair(48, 64, seed=4)
    write_labels(tmp_path / "labels.png", labels, palette=[0, 0, 0, 255, 0, 0, 0, 255, 0])
    out = refiner.refine_labels(image, tmp_path / "labels.png")
    assert np.array_equal(out, refiner.refine_labels(image, labels)) and out.dtype == np.uint8


def test_refine_labels_matches_a_fusion_of_per_class_refinements(refiner):
    image, labels = label_pair(48, 64, seed=3)
    expected = fuse_probabilities(
        labels, [(c, refiner.refine(image, labels == c, soft=True)) for c in (0, 1, 2)]
    )
    assert np.array_equal(refiner.refine_labels(image, labels), expected)


def test_module_function_equals_the_refiner_method(tiny_checkpoint):
    image, labels = label_pair(48, 64, seed=1)
    direct = Refiner.from_checkpoint(tiny_checkpoint, device="cpu", options=InferenceOptions())
    out = airm.refine_labels(image, labels, checkpoint=tiny_checkpoint, device="cpu")
    assert np.array_equal(out, direct.refine_labels(image, labels))


class RecordingRefiner:
    """Stands in for a Refiner: records the masks it is given, returns them as probabilities."""

    def __init__(self):
        self.masks = []

    def refine(self, image, coarse, *, soft):
        self.masks.append(coarse.copy())
        return coarse.astype(np.float32)


def test_only_the_requested_present_classes_are_refined():
    image, labels = label_pair(40, 40)
    stub = RecordingRefiner()
    out = refine_labels(stub, image, labels, classes=[2, 9])  # 9 is absent
    assert len(stub.masks) == 1 and np.array_equal(stub.masks[0], labels == 2)
    assert np.array_equal(out, labels)
    stub = RecordingRefiner()
    refine_labels(stub, image, labels, ignore_label=None)  # 255 is now a class like any other
    assert len(stub.masks) == 4


def test_one_class_comes_back_unchanged_with_a_warning(refiner):
    image, labels = label_pair(40, 40)
    single = np.where(labels == 255, 255, 1).astype(np.uint8)  # one class and ignore pixels
    with pytest.warns(UserWarning, match="fewer than two classes"):
        out = refiner.refine_labels(image, single)
    assert np.array_equal(out, single) and out is not single


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((40, 40), np.float32), "integers"),
        (np.zeros((40, 40), bool), "integers"),
        (np.zeros((40, 40, 3), np.uint8), "HxW"),
        (np.zeros((40, 41), np.uint8), "same size"),
    ],
)
def test_bad_label_maps_are_refused(refiner, labels, message):
    image, _ = label_pair(40, 40)
    with pytest.raises(InputError, match=message):
        refiner.refine_labels(image, labels)


def shapes_scene(size: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured background (0) with a wobbly blob (1), an ellipse (2) and a rectangle (3),
    each of its own colour: (HxWx3 uint8 image, HxW uint8 true labels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) * (320 / size)
    angle = np.arctan2(yy - 110, xx - 115)
    radius = 70 + 10 * np.sin(3 * angle + 0.5) + 6 * np.cos(5 * angle)
    truth = np.zeros((size, size), np.uint8)
    truth[np.hypot(yy - 110, xx - 115) < radius] = 1
    truth[((yy - 220) / 60) ** 2 + ((xx - 215) / 85) ** 2 < 1] = 2
    truth[(np.abs(yy - 235) < 45) & (np.abs(xx - 70) < 35)] = 3
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32), (0, 0), 2)
    background = 110 + 40 * noise + 30 * (np.sin(xx / 9) * np.cos(yy / 13))[..., None]
    colors = np.array([[0, 0, 0], [220, 60, 40], [40, 90, 210], [60, 190, 70]], np.float32)
    objects = colors[truth] + 12 * rng.normal(0, 1, (size, size, 3))
    image = np.where(truth[..., None] > 0, objects, background)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def pooled_iou(pred: np.ndarray, truth: np.ndarray, ignore_label: int = 255) -> float:
    """Sum over classes of intersections over sum of unions, outside ignore pixels."""
    valid = truth != ignore_label
    inter = union = 0
    for c in np.unique(truth[valid]):
        p, t = (pred == c) & valid, (truth == c) & valid
        inter += int((p & t).sum())
        union += int((p | t).sum())
    return inter / union


def test_default_model_improves_a_blocky_label_map():
    """A label map from a segmenter at 1/16 resolution (nearest upsampling), with an ignored
    frame: the shipped model brings its pooled IoU (over all classes) up."""
    image, truth = shapes_scene()
    small = cv2.resize(truth, (20, 20), interpolation=cv2.INTER_NEAREST)
    coarse = cv2.resize(small, (320, 320), interpolation=cv2.INTER_NEAREST)
    coarse[:, :4] = truth[:, :4] = 255  # an ignored strip
    start = time.perf_counter()
    refined = airm.get_refiner(device="cpu").refine_labels(image, coarse)
    seconds = time.perf_counter() - start
    before, after = pooled_iou(coarse, truth), pooled_iou(refined, truth)
    print(f"pooled IoU coarse {before:.4f} -> refined {after:.4f} in {seconds:.1f} s")
    assert np.array_equal(refined[:, :4], coarse[:, :4])
    assert after > before + 0.05


def test_fusion_a_refined_class_gives_up_pixels_to_the_nearest_unrefined_class():
    """With `classes`, a refined class used to keep every pixel it gave up (nothing refined
    took them), so it could grow but never shrink."""
    labels = np.array([[0, 1, 1, 1, 1, 2]], np.uint8)
    probabilities = [(1, np.array([[0.0, 0.1, 0.9, 0.9, 0.2, 0.0]]))]  # 0 and 2 unrefined
    assert fuse_probabilities(labels, probabilities).tolist() == [[0, 0, 1, 1, 2, 2]]
    everything = [*probabilities, (0, np.zeros((1, 6))), (2, np.zeros((1, 6)))]
    assert fuse_probabilities(labels, everything).tolist() == [[0, 1, 1, 1, 1, 2]]  # unclaimed


def test_refining_one_class_shrinks_it_to_its_refined_mask():
    image, labels = label_pair(40, 40)
    kept = (labels == 2) & np.roll(labels == 2, 3, axis=1)  # class 2 less 3 columns

    class Shrinking:
        def refine(self, image, coarse, *, soft):
            return (coarse & kept).astype(np.float32)

    out = refine_labels(Shrinking(), image, labels, classes=[2])
    assert np.array_equal(out == 2, kept)
    released = (labels == 2) & ~kept
    assert set(np.unique(out[released])) <= {0, 1}  # unrefined classes; never ignore (255)
    assert np.array_equal(out == 255, labels == 255)
