"""Pixel features F: the encoder's stages fused into one map (SegFormer's all-MLP fusion)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelFeatureFusion(nn.Module):
    """Project every stage to C channels, upsample to the finest stage, concatenate, fuse.

    Input: stages (B, C_i, h_i, w_i), finest first. Output: F (B, C, h_0, w_0).
    """

    def __init__(self, *, in_dims: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(d, out_dim, kernel_size=1) for d in in_dims)
        self.fuse = nn.Sequential(
            nn.Conv2d(out_dim * len(in_dims), out_dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        size = stages[0].shape[-2:]
        maps = [
            F.interpolate(p(s), size=size, mode="bilinear", align_corners=False)
            if s.shape[-2:] != size
            else p(s)
            for p, s in zip(self.proj, stages, strict=True)
        ]
        return self.fuse(torch.cat(maps, dim=1))
