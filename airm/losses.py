"""Training losses: BCE, L1, L2 and gradient on the refined mask, plus AFA's affinity loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from airm.morphology import mixed_windows


@dataclass(frozen=True)
class LossWeights:
    """The loss weights, defined here only."""

    bce: float = 1.0
    l1: float = 1.0
    l2: float = 1.0
    gradient: float = 1.0
    affinity: float = 0.2
    # Extra BCE weight inside the truth's boundary band (band_radius pixels each side).
    boundary: float = 2.0
    band_radius: int = 5
    # Affinity pairs are cells at most this many grid cells apart (the paper's best: 14).
    affinity_radius: int = 14

    def __post_init__(self) -> None:
        for name in ("bce", "l1", "l2", "gradient", "affinity", "boundary"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"loss weight {name} must be a number >= 0, got {value!r}")
        for name in ("band_radius", "affinity_radius"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"loss {name} must be an integer >= 1, got {value!r}")


@dataclass
class Losses:
    total: torch.Tensor
    bce: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    gradient: torch.Tensor
    affinity: torch.Tensor

    NAMES = ("total", "bce", "l1", "l2", "gradient", "affinity")

    def stacked(self) -> torch.Tensor:
        """The terms in `NAMES` order as one detached tensor on their device, so that a
        training loop can sum them over steps without waiting for the device each step."""
        return torch.stack([getattr(self, k).detach().float() for k in self.NAMES])


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, H, W) gradient magnitude: Sobel's [-1, 0, 1] difference across,
    smoothed by [1, 2, 1] / 4 along, each way, with replicated borders.

    Written with slices rather than a convolution by a kernel: a kernel made on the host is
    copied to the device at every call, and a copy from the host waits for the device (a
    training step then could not run ahead of the GPU); and on a CPU a one-channel
    convolution runs a slow kernel (forward and backward of batch 8 at 112 px on one thread:
    7-18 ms by convolution, 2-3 by slices).
    """
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    across = padded[..., 2:] - padded[..., :-2]  # (B, 1, H + 2, W)
    down = padded[..., 2:, :] - padded[..., :-2, :]  # (B, 1, H, W + 2)
    gx = (across[..., :-2, :] + 2 * across[..., 1:-1, :] + across[..., 2:, :]) / 4
    gy = (down[..., :-2] + 2 * down[..., 1:-1] + down[..., 2:]) / 4
    return torch.sqrt(gx * gx + gy * gy + 1e-8)


def boundary_band(gt: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 1, H, W) {0, 1} -> float band of the truth's boundary, `radius` pixels each side."""
    return mixed_windows(gt > 0.5, radius).float()


def affinity_labels(
    gt: torch.Tensor, size: tuple[int, int], radius: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative pair masks (B, N, N) for an affinity grid of `size`.

    A cell is foreground (background) when at least 90% of it is foreground (background) in
    the truth; mixed cells take part in no pair. Pairs are distinct cells within `radius`.
    """
    h, w = size
    frac = F.adaptive_avg_pool2d(gt, size).flatten(1)  # (B, N)
    fg, bg = frac >= 0.9, frac <= 0.1
    ys, xs = torch.meshgrid(
        torch.arange(h, device=gt.device), torch.arange(w, device=gt.device), indexing="ij"
    )
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    near = torch.cdist(pos, pos) <= radius
    near.fill_diagonal_(False)
    same = (fg[:, :, None] & fg[:, None, :]) | (bg[:, :, None] & bg[:, None, :])
    differ = (fg[:, :, None] & bg[:, None, :]) | (bg[:, :, None] & fg[:, None, :])
    return same & near, differ & near


def affinity_loss(
    affinity: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> torch.Tensor:
    """AFA's form: mean(1 - a) over positive pairs plus mean(a) over negative pairs (a term
    with no pairs is 0). Written as masked sums, without selecting the pairs, so that the
    host does not wait for the device to learn how many there are."""
    pos = ((1 - affinity) * positive).sum() / positive.sum().clamp_min(1)
    neg = (affinity * negative).sum() / negative.sum().clamp_min(1)
    return pos + neg


def refinement_losses(
    logits: torch.Tensor,
    gt: torch.Tensor,
    weights: LossWeights,
    *,
    affinity: torch.Tensor | None = None,
    affinity_size: tuple[int, int] | None = None,
) -> Losses:
    """logits, gt: (B, 1, H, W); gt in [0, 1] (a pixel's covered fraction where soft).
    affinity: (B, N, N) over affinity_size."""
    prob = torch.sigmoid(logits)
    pixel_weight = 1.0 + weights.boundary * boundary_band(gt, weights.band_radius)
    bce = (F.binary_cross_entropy_with_logits(logits, gt, reduction="none") * pixel_weight).mean()
    l1 = (prob - gt).abs().mean()
    l2 = ((prob - gt) ** 2).mean()
    gradient = (sobel_magnitude(prob) - sobel_magnitude(gt)).abs().mean()
    if affinity is not None and affinity_size is not None:
        positive, negative = affinity_labels(gt, affinity_size, weights.affinity_radius)
        aff = affinity_loss(affinity, positive, negative)
    else:
        aff = logits.new_zeros(())
    total = (
        weights.bce * bce
        + weights.l1 * l1
        + weights.l2 * l2
        + weights.gradient * gradient
        + weights.affinity * aff
    )
    return Losses(total=total, bce=bce, l1=l1, l2=l2, gradient=gradient, affinity=aff)
