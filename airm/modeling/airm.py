"""AIRM: the network that refines a coarse mask (Zhang et al., ECCV 2024).

encoder (AEE) -> pixel features F -> [hypernetwork psi -> per-image modulation] ->
implicit function f, queried LIIF-style at any coordinate. The parts are built elsewhere
(`airm.build`) and injected here.

One addition to the paper: the output logit at a query is f's logit plus a learned multiple of
the coarse mask there (2 m(q) - 1, m sampled bilinearly). Refinement mostly keeps the coarse
mask, so f starts from "copy the input" and only learns corrections; without this skip a
network trained from few steps first spends them learning to copy (SPEC section 3). With
`ModelConfig.skip_gate` that multiple is weighed per encoded window by `SkipGate`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from airm.config import ModelConfig
from airm.modeling import implicit_decoder
from airm.modeling.affinity import AttentionAffinity, FeatureDistanceAffinity
from airm.modeling.encoder import CNNEncoder, MixTransformerEncoder
from airm.modeling.hypernetwork import Hypernetwork
from airm.modeling.implicit_decoder import DecoderState
from airm.modeling.implicit_function import ImplicitFunction
from airm.modeling.pixel_features import FoldedPixelFeatureFusion, PixelFeatureFusion


class SkipGate(nn.Module):
    """Pixel features (B, C, h, w) and the coarse mask (B, 1, H, W) -> the skip's weight per
    window (B,), in (0, 2).

    One strided Conv+BN+ReLU, an average over the window's cells (pool "window") or over the
    cells within one cell of the coarse mask's boundary (pool "band"; all cells where it has
    none), and a linear layer g that starts at zero, so that every window starts at weight
    2 sigmoid(0) = 1: the shared skip, unchanged.
    """

    def __init__(self, feature_dim: int, hidden_dim: int = 32, *, pool: str = "window") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(feature_dim, hidden_dim, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
        )
        self.pool = pool
        self.g = nn.Linear(hidden_dim, 1)
        nn.init.zeros_(self.g.weight)
        nn.init.zeros_(self.g.bias)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features: (B, C, h, w); mask: (B, 1, H, W) in [0, 1], the encoded view's."""
        cells = self.body(features)  # (B, D, h', w')
        if self.pool == "band":
            # The band: cells whose 3 x 3 neighbourhood holds both object and background (a
            # boundary along cell edges included). `mask` is the encoded (padded) view's, so
            # its cells are the features' cells.
            fraction = F.adaptive_avg_pool2d(mask.float(), cells.shape[-2:])
            spread = F.max_pool2d(fraction, 3, 1, 1) + F.max_pool2d(-fraction, 3, 1, 1)
            band = (spread > 0.02).float()
            empty = band.sum((2, 3), keepdim=True) == 0
            weights = torch.where(empty, torch.ones_like(band), band)
            weights = weights / weights.sum((2, 3), keepdim=True)
            pooled = (cells.float() * weights).sum((2, 3))
        else:
            pooled = cells.float().mean((2, 3))
        return 2.0 * torch.sigmoid(self.g(pooled.to(cells.dtype)).float()[:, 0])


# Inputs are padded to a multiple of this so that every stage tiles the view exactly.
SIZE_DIVISOR = 32


@dataclass
class Encoded:
    """One encoded batch, ready to be queried.

    decoder: f's parameters and the projected pixel features.
    mask: (B, 1, H, W) the coarse mask that was encoded, for the skip.
    skip_weight: (B,) the skip's weight per window (`SkipGate`), or None for the shared one.
    view_scale: (H / H_pad, W / W_pad), where the unpadded input sits inside the padded one.
    affinity: (B, N, N) in (0, 1) when requested, else None; affinity_size: its grid (h, w).
    """

    decoder: DecoderState
    mask: torch.Tensor
    view_scale: tuple[float, float]
    affinity: torch.Tensor | None
    affinity_size: tuple[int, int]
    skip_weight: torch.Tensor | None = None

    def trusting(self, factor: float) -> Encoded:
        """The same windows, the coarse mask's skip weighed `factor` times as much."""
        weight = self.skip_weight
        if weight is None:
            weight = torch.ones(self.mask.shape[0], device=self.mask.device)
        return replace(self, skip_weight=weight * factor)


@dataclass
class AIRMOutput:
    """logits: (B, 1, H, W) refined-mask logits; affinity: (B, N, N) or None."""

    logits: torch.Tensor
    affinity: torch.Tensor | None
    affinity_size: tuple[int, int]


class AIRM(nn.Module):
    def __init__(
        self,
        *,
        config: ModelConfig,
        encoder: MixTransformerEncoder | CNNEncoder,
        pixel_features: PixelFeatureFusion | FoldedPixelFeatureFusion,
        implicit_function: ImplicitFunction,
        hypernetwork: Hypernetwork | None,
        affinity_head: AttentionAffinity | FeatureDistanceAffinity | None,
        skip_gate: SkipGate | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.pixel_features = pixel_features
        self.implicit_function = implicit_function
        self.hypernetwork = hypernetwork
        self.affinity_head = affinity_head
        self.skip_gate = skip_gate
        self.mask_skip = nn.Parameter(torch.tensor(3.0))
        self.register_buffer(
            "pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False
        )

    def encode(
        self, image: torch.Tensor, mask: torch.Tensor, *, with_affinity: bool = False
    ) -> Encoded:
        """image: (B, 3, H, W) RGB in [0, 1]; mask: (B, 1, H, W) probability in [0, 1]."""
        height, width = image.shape[-2:]
        x = torch.cat([(image - self.pixel_mean) / self.pixel_std, mask * 2.0 - 1.0], dim=1)
        pad_h = -height % SIZE_DIVISOR
        pad_w = -width % SIZE_DIVISOR
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        want_affinity = with_affinity and self.affinity_head is not None
        out = self.encoder(x, with_affinity=want_affinity)
        features = self.pixel_features(out.stages)  # (B, C, h, w)
        modulation = self.hypernetwork(features) if self.hypernetwork is not None else None
        params = self.implicit_function.layer_params(modulation)
        affinity = self.affinity_head(out.affinity_source) if want_affinity else None
        return Encoded(
            decoder=implicit_decoder.prepare(features, params),
            mask=mask,
            view_scale=(height / (height + pad_h), width / (width + pad_w)),
            affinity=affinity,
            affinity_size=out.affinity_size,
            skip_weight=(
                self.skip_gate(features, (x[:, 3:4] + 1.0) / 2.0)
                if self.skip_gate is not None
                else None
            ),
        )

    def query(
        self,
        encoded: Encoded,
        coords: torch.Tensor,
        *,
        out_size: tuple[int, int],
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Logits (B, Q) at coords (B, Q, 2), (y, x) in [-1, 1] over the unpadded input.

        out_size: (H_out, W_out) of the pixel grid the queries sample, which sets the cell size.
        """
        sy, sx = encoded.view_scale
        scale = coords.new_tensor([sy, sx])
        padded = (coords + 1.0) * scale - 1.0
        h, w = encoded.decoder.grid
        cell = coords.new_tensor([h * sy / out_size[0], w * sx / out_size[1]])
        cell = cell.expand(coords.shape[0], 2)
        logits = implicit_decoder.query(encoded.decoder, padded, cell, chunk_size=chunk_size)
        # grid_sample takes (x, y); align_corners=False matches the pixel-centre convention.
        grid = coords.flip(-1).unsqueeze(1)  # (B, 1, Q, 2)
        mask = F.grid_sample(encoded.mask, grid, mode="bilinear", align_corners=False)
        skip = self.mask_skip
        if encoded.skip_weight is not None:
            skip = skip * encoded.skip_weight[:, None]
        return logits + skip * (2.0 * mask[:, 0, 0] - 1.0)

    def forward(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        *,
        window: tuple[int | torch.Tensor, int | torch.Tensor, int, int] | None = None,
        chunk_size: int | None = None,
    ) -> AIRMOutput:
        """Dense refinement at the input's resolution (training and tests).

        image: (B, 3, H, W) in [0, 1]; mask: (B, 1, H, W) in [0, 1].
        window: (top, left, height, width) to query only that part of the pixel grid (training
        samples queries this way, as LIIF does, to spend its time on the encoder too); top and
        left may be integer tensors (see `implicit_decoder.pixel_centres`).
        Returns logits (B, 1, h, w) for the window (the whole input by default).
        """
        b, _, height, width = image.shape
        top, left, win_h, win_w = window or (0, 0, height, width)
        encoded = self.encode(image, mask, with_affinity=self.training)
        coords = implicit_decoder.pixel_centres(
            height, width, window=(top, left, win_h, win_w), device=image.device
        )
        coords = coords.unsqueeze(0).expand(b, -1, -1)
        logits = self.query(encoded, coords, out_size=(height, width), chunk_size=chunk_size)
        return AIRMOutput(
            logits=logits.reshape(b, 1, win_h, win_w),
            affinity=encoded.affinity,
            affinity_size=encoded.affinity_size,
        )
