"""Pixel features F: the encoder's stages fused into one map (SegFormer's all-MLP fusion)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def to_size(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear (pixel centres aligned); unchanged when equal."""
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


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
        maps = [to_size(p(s), size) for p, s in zip(self.proj, stages, strict=True)]
        return self.fuse(torch.cat(maps, dim=1))

    def folded(self) -> FoldedPixelFeatureFusion:
        """The same function for inference, with the fusing 1x1 convolution and its batch norm
        folded into each stage's projection (eval mode only; see `FoldedPixelFeatureFusion`)."""
        if self.training:
            raise ValueError("folded() needs the module in eval mode")
        fuse = fuse_conv_bn_eval(self.fuse[0], self.fuse[1])
        parts = fuse.weight[:, :, 0, 0].split(fuse.out_channels, dim=1)  # (C, C) per stage
        proj = nn.ModuleList()
        with torch.no_grad():
            for p, part in zip(self.proj, parts, strict=True):
                conv = nn.Conv2d(p.in_channels, fuse.out_channels, kernel_size=1).to(part)
                conv.weight.copy_((part @ p.weight[:, :, 0, 0])[:, :, None, None])
                conv.bias.copy_(part @ p.bias)
                proj.append(conv)
            proj[0].bias += fuse.bias
        return FoldedPixelFeatureFusion(proj=proj, tail=nn.Sequential(*self.fuse[2:]))


class FoldedPixelFeatureFusion(nn.Module):
    """`PixelFeatureFusion` rewritten for inference: F = tail(sum_i up(W_i s_i + b_i)).

    The fusing 1x1 convolution acts on the concatenated projections, so it is a sum of one
    1x1 convolution per stage; bilinear upsampling is linear with weights that sum to one, so
    it commutes with them. Each stage's two 1x1 convolutions then compose into one, and the
    C x len(stages) channel concatenation at the finest resolution is never made.
    """

    def __init__(self, *, proj: nn.ModuleList, tail: nn.Sequential) -> None:
        super().__init__()
        self.proj = proj
        self.tail = tail

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        size = stages[0].shape[-2:]
        x = self.proj[0](stages[0])
        for p, s in zip(self.proj[1:], stages[1:], strict=True):
            x = x + to_size(p(s), size)
        return self.tail(x)
