"""The image encoders: AIRM's Affinity Empowered Encoder (MiT) and timm CNNs.

Both take the 4-channel input (normalised RGB + coarse mask in [-1, 1]) and return a pyramid
of feature maps plus what the affinity head needs.

MiT follows SegFormer (Xie et al., NeurIPS 2021) through timm's PyramidVisionTransformerV2,
which is the same network with mlp_ratios=(4, 4, 4, 4). As in AFA (Ru et al., CVPR 2022),
the last stage runs at stride 16 rather than 32 so that the affinity grid is twice as fine,
and that stage's self-attention (spatial reduction 1, hence N x N) is returned for the
affinity head.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import timm
import torch
from einops import rearrange
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from torch import nn

from airm.config import MIT_VARIANTS


@dataclass
class EncoderOutput:
    """stages: feature maps (B, C_i, h_i, w_i) at `Encoder.strides`.

    affinity_source: for MiT, the last stage's attention logits (B, blocks * heads, N, N) over
    its h x w grid; for CNNs, the stride-16 feature map (B, C, h, w). None unless requested.
    affinity_size: the (h, w) grid the affinity is defined on.
    """

    stages: list[torch.Tensor]
    affinity_source: torch.Tensor | None
    affinity_size: tuple[int, int]


class MixTransformerEncoder(nn.Module):
    """MiT-b0/b1 with 4 input channels and its last stage at stride 16."""

    strides = (4, 8, 16, 16)

    def __init__(self, *, variant: str) -> None:
        super().__init__()
        if variant not in MIT_VARIANTS:
            raise ValueError(f"unknown MiT variant {variant!r}; choose from {sorted(MIT_VARIANTS)}")
        embed_dims, num_heads = MIT_VARIANTS[variant]
        self.body = PyramidVisionTransformerV2(
            in_chans=4,
            num_classes=0,
            depths=(2, 2, 2, 2),
            embed_dims=embed_dims,
            num_heads=num_heads,
            sr_ratios=(8, 4, 2, 1),
            mlp_ratios=(4, 4, 4, 4),
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        # AFA: keep the last stage at stride 16 (its 3x3 patch embedding, padding 1, stride 1).
        self.body.stages[3].downsample.proj.stride = (1, 1)
        self.channels = tuple(embed_dims)
        self.num_affinity_maps = 2 * num_heads[3]  # blocks x heads of the last stage

    def forward(self, x: torch.Tensor, *, with_affinity: bool = False) -> EncoderOutput:
        x = self.body.patch_embed(x)  # (B, H/4, W/4, C0)
        stages = []
        for stage in self.body.stages[:3]:
            x = stage(x)  # (B, C_i, h_i, w_i)
            stages.append(x)
        last = self.body.stages[3]
        x = last.downsample(x)  # (B, h, w, C3)
        _, h, w, _ = x.shape
        x = rearrange(x, "b h w c -> b (h w) c")
        maps = []
        for block in last.blocks:
            if with_affinity:
                x, attn = _block_with_attention(block, x, (h, w))
                maps.append(attn)
            else:
                x = block(x, (h, w))
        x = rearrange(last.norm(x), "b (h w) c -> b c h w", h=h, w=w)
        stages.append(x)
        source = torch.cat(maps, dim=1) if with_affinity else None
        return EncoderOutput(stages=stages, affinity_source=source, affinity_size=(h, w))


def _block_with_attention(
    block: nn.Module, x: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One timm PVTv2 block (spatial reduction 1) that also returns its attention logits.

    The arithmetic is timm's Block/Attention forward written out, because the fused attention
    kernel does not expose the N x N map. Returns x (B, N, C) and logits (B, heads, N, N).
    """
    attn = block.attn
    y = block.norm1(x)
    q = rearrange(attn.q(y), "b n (h d) -> b h n d", h=attn.num_heads)
    k, v = rearrange(attn.kv(y), "b n (two h d) -> two b h n d", two=2, h=attn.num_heads)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
    out = rearrange(logits.softmax(dim=-1) @ v, "b h n d -> b n (h d)")
    x = x + block.drop_path1(attn.proj_drop(attn.proj(out)))
    x = x + block.drop_path2(block.mlp(block.norm2(x), size))
    return x, logits


class CNNEncoder(nn.Module):
    """A timm CNN (features_only) with 4 input channels: strides (2,) 4, 8, 16, 32."""

    def __init__(self, *, name: str, with_stride2: bool = False) -> None:
        super().__init__()
        probe = timm.create_model(name, features_only=True, in_chans=4, pretrained=False)
        reductions = probe.feature_info.reduction()
        wanted = (2, 4, 8, 16, 32) if with_stride2 else (4, 8, 16, 32)
        missing = [s for s in wanted if s not in reductions]
        if missing:
            raise ValueError(f"timm model {name!r} has no feature maps at strides {missing}")
        indices = tuple(reductions.index(s) for s in wanted)
        self.body = timm.create_model(
            name, features_only=True, in_chans=4, pretrained=False, out_indices=indices
        )
        self.strides = wanted
        self.channels = tuple(self.body.feature_info.channels())
        self._affinity_index = wanted.index(16)

    @property
    def affinity_channels(self) -> int:
        return self.channels[self._affinity_index]

    def forward(self, x: torch.Tensor, *, with_affinity: bool = False) -> EncoderOutput:
        stages = self.body(x)
        source = stages[self._affinity_index]
        return EncoderOutput(
            stages=stages,
            affinity_source=source if with_affinity else None,
            affinity_size=(source.shape[-2], source.shape[-1]),
        )
