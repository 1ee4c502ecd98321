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
