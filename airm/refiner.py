"""`Refiner`: a loaded model and the options to refine with, for repeated calls."""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from airm.checkpoint import load_model
from airm.inference import InferenceOptions, refine_probability
from airm.io import (
    DEFAULT_MAX_PIXELS,
    PROBABILITY_SLACK,
    InputError,
    as_image,
    as_labels,
    as_mask,
    check_size,
    mask_scale,
)
from airm.labels import refine_labels
from airm.modeling.airm import AIRM
from airm.modeling.fusion import inference_copy


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()  # `Refiner.with_options`: the value of this Refiner


class Refiner:
    """Refines coarse masks with one model.

    Build it from a model (`Refiner(model)`) or a checkpoint path
    (`Refiner.from_checkpoint(path)`); `airm.refine` keeps a default one.
    """

    def __init__(
        self,
        model: AIRM,
        *,
        device: str | torch.device | None = None,
        options: InferenceOptions | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = inference_copy(model, self.device)  # the caller's model is untouched
        self.options = options or InferenceOptions()
        self.max_pixels = max_pixels

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> Refiner:
        return cls(load_model(path), **kwargs)

    def with_options(
        self,
        options: InferenceOptions | None = None,
        *,
        max_pixels: int | None | _Keep = KEEP,
        **fields,
    ) -> Refiner:
        """A Refiner that shares this one's prepared model, with other options: `options`
        replaces this one's, `fields` (of `InferenceOptions`) change some of them, and what is
        not given stays as it is (max_pixels=None lifts the pixel limit)."""
        other = copy.copy(self)
        other.options = dataclasses.replace(options or self.options, **fields)
        if max_pixels is not KEEP:
            other.max_pixels = max_pixels
        return other

    def refine(
        self,
        image: np.ndarray | str | os.PathLike,
        coarse: np.ndarray | str | os.PathLike,
        *,
        soft: bool = False,
    ) -> np.ndarray:
        """Refine one mask.

        image: HxWx3 uint8 RGB (grayscale, RGBA and 16-bit are normalised, see `airm.io`), or
        an image file's path. coarse: HxW bool, 0/1 or 0/255 uint8, or float probabilities in
        [0, 1], or a mask file's path (read as `airm.read_mask` reads it).
        Returns HxW uint8 0/255, or with soft=True HxW float32 probabilities in [0, 1].
        """
        image = as_image(image, max_pixels=self.max_pixels)
        mask = as_mask(coarse, max_pixels=self.max_pixels)
        if image.shape[:2] != mask.shape:
            raise InputError(
                f"image is {image.shape[0]}x{image.shape[1]} but the mask is "
                f"{mask.shape[0]}x{mask.shape[1]}; they must be the same size"
            )
        image_t = torch.from_numpy(image).permute(2, 0, 1)
        prob = self.refine_torch(image_t, torch.from_numpy(mask))[0].cpu().numpy()
        if soft:
            return prob
        return np.multiply(prob > 0.5, 255, dtype=np.uint8)

    def refine_labels(
        self,
        image: np.ndarray | str | os.PathLike,
        labels: np.ndarray | str | os.PathLike,
        *,
        ignore_label: int | None = 255,
        classes: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Refine every class of an HxW integer label map (or a label map file's path) and fuse
        them into one map.

        Returns an HxW map of the labels' dtype; `airm.labels` documents the fusion.
        """
        image = as_image(image, max_pixels=self.max_pixels)
        labels = as_labels(labels, max_pixels=self.max_pixels)
        return refine_labels(self, image, labels, ignore_label=ignore_label, classes=classes)

    def refine_torch(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Tensor twin of `refine`.

        image: (3, H, W) uint8 RGB, or float RGB in [0, 1].
        coarse: (H, W) or (1, H, W), bool, integers (0/1, 0..255 or 16-bit, as
        `airm.io.normalize_mask` reads them) or float probabilities in [0, 1].
        Returns (1, H, W) float32 probabilities in [0, 1] on the refiner's device.
        """
        if image.dim() != 3 or image.shape[0] != 3:
            raise InputError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
        if coarse.dim() == 3 and coarse.shape[0] == 1:
            coarse = coarse[0]
        if coarse.dim() != 2:
            raise InputError(f"mask tensor must be (H, W) or (1, H, W), got {tuple(coarse.shape)}")
        height, width = image.shape[-2:]
        if tuple(coarse.shape) != (height, width):
            raise InputError(
                f"image is {height}x{width} but the mask is "
                f"{coarse.shape[0]}x{coarse.shape[1]}; they must be the same size"
            )
        check_size(height, width, self.max_pixels, "image")
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise InputError(f"image tensor must be uint8 or float in [0, 1], got {image.dtype}")
        image = image.to(self.device)
        if image.dtype != torch.uint8:
            image = image.float()
        mask = _probabilities(coarse.to(self.device))
        binary = mask > 0.5
        if not binary.any() or binary.all():
            warnings.warn("the coarse mask is empty or full; returning it unchanged", stacklevel=2)
            return mask[None]
        prob = refine_probability(self.model, image[None], mask[None, None], self.options)
        return prob[0]


def _probabilities(mask: torch.Tensor) -> torch.Tensor:
    """An (H, W) mask tensor (bool; integers as 0/1, 0..255 or 0..65535 by their largest
    value; float probabilities, clipped within `PROBABILITY_SLACK` of [0, 1]) -> a new
    float32 tensor in [0, 1]."""
    if mask.dtype == torch.bool:
        return mask.float()
    if not mask.is_floating_point():  # integers, as `airm.io.normalize_mask` reads them
        return mask.float() / mask_scale(int(mask.min()), int(mask.max()))
    if not torch.isfinite(mask).all():
        raise InputError("mask has NaN or infinite values")
    low, top = mask.min().item(), mask.max().item()
    if low < -PROBABILITY_SLACK or top > 1 + PROBABILITY_SLACK:
        raise InputError(
            f"a float mask tensor must hold probabilities in [0, 1], got {low:g}..{top:g}"
        )
    return mask.float().clamp(0, 1)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
