"""The band around a binary mask's boundary, in torch, shared by training and inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mixed_windows(binary: torch.Tensor, radius: int) -> torch.Tensor:
    """(..., H, W) bool -> bool (..., H, W): pixels whose (2 radius + 1)-square window, clipped
    to the image, holds both values; that is, where a dilation and an erosion of `binary` by
    that square differ: the band of `radius` pixels each side of the boundary.

    Counted with a summed-area table in int32 (exact for up to 2**31 pixels): the cost does
    not grow with the radius, and on a CPU it is 25 times faster than max pooling for the
    training loss's 11 px windows (max pooling of one channel runs a slow kernel there).
    """
    h, w = binary.shape[-2:]
    ones = _window_sums(binary.to(torch.int32), radius)

    def extent(n: int) -> torch.Tensor:  # pixels of each position's window inside the image
        i = torch.arange(n, device=binary.device, dtype=torch.int32)
        return (i + radius).clamp(max=n - 1) - (i - radius).clamp(min=0) + 1

    inside = extent(h)[:, None] * extent(w)[None, :]
    return (ones > 0) & (ones < inside)


def _window_sums(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sums of int32 x (..., H, W) over each pixel's (2 radius + 1)-square window (zeros
    outside)."""
    k = 2 * radius + 1
    table = F.pad(x, (radius + 1, radius, radius + 1, radius))
    table = table.cumsum(-1, dtype=torch.int32).cumsum(-2, dtype=torch.int32)
    return table[..., k:, k:] - table[..., :-k, k:] - table[..., k:, :-k] + table[..., :-k, :-k]
