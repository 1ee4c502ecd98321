"""Affinity heads of the Affinity Empowered Encoder (AIRM Sec. 4.1, after AFA and AffinityNet).

An affinity map is (B, N, N) in (0, 1) over the N = h * w cells of the encoder's affinity grid
(row-major), symmetric: entry (i, j) is the predicted probability that cells i and j belong to
the same class. It only shapes the encoder during training; inference never computes it.
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionAffinity(nn.Module):
    """AFA: symmetrise the attention maps (A + A^T), stack them as channels, 1x1 conv, sigmoid."""

    def __init__(self, *, num_maps: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(num_maps, 1, kernel_size=1)

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        """attention: (B, K, N, N) logits -> affinity (B, N, N)."""
        symmetric = attention + attention.transpose(-2, -1)
        return torch.sigmoid(self.proj(symmetric)).squeeze(1)


class FeatureDistanceAffinity(nn.Module):
    """For CNN encoders (the paper's Table 2, after Ahn & Kwak, CVPR 2018).

    affinity(i, j) = exp(-mean_c |e_i - e_j|) over a learned 1x1 embedding e of the stride-16
    features; symmetric by construction.
    """

    def __init__(self, *, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_dim, embed_dim, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, C, h, w) -> affinity (B, N, N)."""
        e = self.embed(features).flatten(2).transpose(1, 2)  # (B, N, D)
        distance = torch.cdist(e, e, p=1) / e.shape[-1]
        return torch.exp(-distance)
