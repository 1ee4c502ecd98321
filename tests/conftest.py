import numpy as np
import pytest
import torch

from airm import build_model, save_model

# Small heads so that every variant runs in well under a second on a CPU.
TINY = {"feature_dim": 16, "hidden_dims": (16, 16), "rank": 4, "hyper_dim": 16, "affinity_dim": 8}


def tiny_model(variant: str = "airm_mit_b0", **overrides):
    torch.manual_seed(0)
    return build_model(variant, **{**TINY, **overrides}).eval()


def disc_pair(height: int, width: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image with a bright disc and a coarse mask of a shifted disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx, r = height / 2, width / 2, min(height, width) / 3
    truth = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    image[truth] += 150
    coarse = (yy - cy - 3) ** 2 + (xx - cx + 2) ** 2 < (0.9 * r) ** 2
    return image, coarse.astype(np.uint8) * 255


@pytest.fixture
def tiny_checkpoint(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(tiny_model("airm_efficientnet_lite0"), path)
    return path


def label_pair(height: int, width: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image of a bright disc and a dark square on noise, and a coarse uint8 label map:
    0 background, 1 the disc (shifted), 2 the square (grown), 255 (ignore) on the top row."""
    image, disc = disc_pair(height, width, seed=seed)
    top, left, side = height // 10, width // 10, min(height, width) // 4
    image[top : top + side, left : left + side] = (20, 20, 200)
    labels = np.where(disc > 0, 1, 0).astype(np.uint8)
    labels[max(0, top - 2) : top + side + 2, max(0, left - 2) : left + side + 2] = 2
    labels[0] = 255
    return image, labels
