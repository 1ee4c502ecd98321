"""`airm.refine`: refine a mask with the model that ships in the package (or any checkpoint)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from airm.inference import InferenceOptions
from airm.io import DEFAULT_MAX_PIXELS
from airm.refiner import Refiner

DEFAULT_CHECKPOINT = Path(__file__).parent / "weights" / "airm_default.safetensors"


class ModelNotFoundError(FileNotFoundError):
    """No checkpoint was given and no default model is installed."""


def default_checkpoint() -> Path:
    """The path of the model that ships inside the package."""
    if not DEFAULT_CHECKPOINT.is_file():
        raise ModelNotFoundError(
            f"no default model is installed ({DEFAULT_CHECKPOINT} is missing); pass a trained "
            "checkpoint with checkpoint=PATH (command line: --checkpoint PATH)"
        )
    return DEFAULT_CHECKPOINT


@functools.lru_cache(maxsize=4)
def _cached_refiner(checkpoint: str, device: str | None) -> Refiner:
    return Refiner.from_checkpoint(checkpoint, device=device)


def get_refiner(
    checkpoint: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> Refiner:
    """A cached Refiner for `checkpoint` (default: the shipped model) on `device`."""
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    return _cached_refiner(str(path.resolve()), None if device is None else str(device))


def refine(
    image: np.ndarray | str | os.PathLike,
    coarse: np.ndarray | str | os.PathLike,
    *,
    soft: bool = False,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **options,
) -> np.ndarray:
    """Refine one coarse mask.

    image: HxWx3 uint8 RGB. coarse: HxW bool, 0/1 or 0/255 uint8, or float in [0, 1]. Either
    may be a file's path instead (read as `read_image` and `read_mask` read them).
    Returns HxW uint8 0/255, or HxW float32 probabilities with soft=True.
    options: fields of `InferenceOptions` (scales, band, tile_size, tile_batch, precision, ...).
    """
    return _refiner(checkpoint, device, max_pixels, options).refine(image, coarse, soft=soft)


def refine_labels(
    image: np.ndarray | str | os.PathLike,
    labels: np.ndarray | str | os.PathLike,
    *,
    ignore_label: int | None = 255,
    classes: Sequence[int] | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **options,
) -> np.ndarray:
    """Refine every class of a label map and fuse the classes back into one map.

    image: HxWx3 uint8 RGB. labels: HxW integers (either may be a file's path); pixels equal
    to ignore_label stay as they are (None: no ignore label). classes: refine only these labels
    (default: every one).
    Returns an HxW map of the labels' dtype. `airm.labels` documents how classes are fused.
    options: fields of `InferenceOptions`, as for `refine`.
    """
    refiner = _refiner(checkpoint, device, max_pixels, options)
    return refiner.refine_labels(image, labels, ignore_label=ignore_label, classes=classes)


def _refiner(checkpoint, device, max_pixels: int | None, options: dict) -> Refiner:
    """The cached model for `checkpoint` on `device`, with these inference options."""
    return get_refiner(checkpoint, device).with_options(
        InferenceOptions(**options), max_pixels=max_pixels
    )
