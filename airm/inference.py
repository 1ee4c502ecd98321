"""Coarse-to-fine refinement (CRM's schedule, AIRM Sec. 5).

For each scale s (default 0.125, 0.25, 0.5, 1.0 of the image, never below the training crop on
the shorter side): resize the image and the current mask, encode them, query the implicit
decoder at that scale's pixel centres, and feed the probabilities to the next scale. The last
scale is the image's full resolution.

The shortcut that makes large images cheap: after the first scale, only pixels near the
current boundary (within `band` pixels of the 0.5 level set, at that scale) or still uncertain
are queried; the others keep the current probability. `band=None` queries every pixel, which
is what the shortcut is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from airm.modeling.airm import AIRM
from airm.modeling.implicit_decoder import pixel_centres


@dataclass(frozen=True)
class InferenceOptions:
    # Fractions of the image size to refine at, coarse to fine.
    scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    # No scale's shorter side goes below this (the training crop size).
    min_size: int = 224
    # Query only pixels within this many pixels of the current boundary after the first scale;
    # None queries every pixel.
    band: int | None = 12
    # Probabilities strictly between these are "uncertain" and always queried.
    uncertain: tuple[float, float] = (0.02, 0.98)
    # Queries evaluated at once per image (bounds the decoder's memory).
    chunk_size: int = 65536

    def __post_init__(self) -> None:
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be in (0, 1], got {self.scales}")
        if list(self.scales) != sorted(self.scales):
            raise ValueError(f"scales must go from coarse to fine, got {self.scales}")
        if self.band is not None and self.band < 1:
            raise ValueError(f"band must be >= 1 pixel or None, got {self.band}")


def scale_sizes(height: int, width: int, options: InferenceOptions) -> list[tuple[int, int]]:
    """The (h, w) refined at, coarse to fine, duplicates removed; the last is (height, width)."""
    sizes: list[tuple[int, int]] = []
    short = min(height, width)
    for s in (*options.scales, 1.0):
        s = min(1.0, max(s, options.min_size / short))
        size = (max(1, round(height * s)), max(1, round(width * s)))
        if not sizes or sizes[-1] != size:
            sizes.append(size)
    return sizes


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def boundary_band(prob: torch.Tensor, band: int, uncertain: tuple[float, float]) -> torch.Tensor:
    """(B, 1, h, w) probabilities -> bool (B, 1, h, w): near the 0.5 boundary or uncertain."""
    binary = (prob > 0.5).float()
    k = 2 * band + 1
    dilated = F.max_pool2d(F.max_pool2d(binary, (1, k), 1, (0, band)), (k, 1), 1, (band, 0))
    eroded = -F.max_pool2d(F.max_pool2d(-binary, (1, k), 1, (0, band)), (k, 1), 1, (band, 0))
    lo, hi = uncertain
    return (dilated != eroded) | ((prob > lo) & (prob < hi))


@torch.no_grad()
def refine_at_scale(
    model: AIRM,
    image: torch.Tensor,
    prob: torch.Tensor,
    *,
    band: int | None,
    uncertain: tuple[float, float] = (0.02, 0.98),
    chunk_size: int | None = None,
) -> torch.Tensor:
    """One step of the loop at the inputs' own size.

    image: (1, 3, h, w) RGB in [0, 1]; prob: (1, 1, h, w) current mask in [0, 1].
    band: query only the boundary band of `prob` (see `boundary_band`), or every pixel (None).
    Returns the new (1, 1, h, w) probabilities; unqueried pixels keep `prob`.
    """
    size = tuple(image.shape[-2:])
    encoded = model.encode(image, prob)
    coords = pixel_centres(*size, device=image.device)
    selected = None
    if band is not None:
        selected = boundary_band(prob, band, uncertain).flatten().nonzero()[:, 0]
        coords = coords[selected]
        if coords.shape[0] == 0:
            return prob
    logits = model.query(encoded, coords.unsqueeze(0), out_size=size, chunk_size=chunk_size)
    refined = torch.sigmoid(logits[0].float())
    if selected is None:
        return refined.reshape(1, 1, *size)
    return prob.flatten().index_put((selected,), refined).reshape(1, 1, *size)


def refine_probability(
    model: AIRM, image: torch.Tensor, mask: torch.Tensor, options: InferenceOptions
) -> torch.Tensor:
    """Coarse-to-fine refinement of one image.

    image: (1, 3, H, W) float RGB in [0, 1]; mask: (1, 1, H, W) float in [0, 1].
    Returns (1, 1, H, W) float32 probabilities on the input's device.
    """
    height, width = image.shape[-2:]
    prob = mask
    for i, size in enumerate(scale_sizes(height, width, options)):
        prob = refine_at_scale(
            model,
            _resize(image, size),
            _resize(prob, size).clamp(0, 1),
            band=None if i == 0 else options.band,
            uncertain=options.uncertain,
            chunk_size=options.chunk_size,
        )
    return prob
