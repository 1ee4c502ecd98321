"""LIIF-style query decoding of the implicit function f (Chen et al., CVPR 2021; CRM).

A query is a continuous coordinate q = (y, x) in [-1, 1]^2 over the encoded view, with pixel
centres at (2 * (i + 0.5) / H - 1). Feature cell centres sit at the same convention for the
feature grid (h, w). For each query, f is evaluated on each of its 4 nearest feature vectors
(the local ensemble) with:

- the relative offset q - p, in feature-cell units,
- the absolute coordinate q (CRM),
- the cell size, i.e. one output pixel's extent in feature-cell units (cell decoding),

and the 4 logits are blended by the area of the diagonally opposite rectangle, normalised to
sum to one (bilinear weights away from the borders).

f's first layer is linear in its input, so it is split by input: the feature part runs once
per feature cell as a 1x1 convolution, stored as a channels-last table that each query gathers
rows of (instead of the raw features); the absolute coordinate and cell size are the same for
a query's 4 neighbours, so their part runs once per query, not 4 times; only the relative
offset's part runs per neighbour. That is the same function as LIIF's concatenation, with the
heaviest products moved off the per-neighbour path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from airm.modeling.implicit_function import LayerParams, apply_linear, run_mlp

COORD_DIMS = 6  # relative offset (2), absolute coordinate (2), cell size (2)


@dataclass
class DecoderState:
    """What decoding needs from one encoded batch.

    feature_proj: (B, h, w, h1) contiguous, f's first layer applied to the pixel features F
    (no bias); channels last, so that a query's gather reads whole rows.
    coord_weight: (out, 6) or (B, out, 6), f's first layer on [rel, abs, cell].
    params: every layer's weight and bias (the first layer's bias is used, not its weight).
    """

    feature_proj: torch.Tensor
    coord_weight: torch.Tensor
    params: list[LayerParams]

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the feature grid."""
        return self.feature_proj.shape[1], self.feature_proj.shape[2]


def prepare(features: torch.Tensor, params: list[LayerParams]) -> DecoderState:
    """Split f's first layer: features (B, C, h, w) -> DecoderState."""
    channels = features.shape[1]
    first = params[0].weight
    feat_w, coord_w = first[..., :channels], first[..., channels:]
    if feat_w.dim() == 2:
        proj = torch.einsum("oc,bchw->bhwo", feat_w, features)
    else:
        proj = torch.einsum("boc,bchw->bhwo", feat_w, features)
    return DecoderState(feature_proj=proj.contiguous(), coord_weight=coord_w, params=params)


def pixel_centres(
    height: int,
    width: int,
    *,
    window: tuple[int | torch.Tensor, int | torch.Tensor, int, int] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(h * w, 2) query coordinates (y, x) of the pixel centres of a (height, width) grid,
    row-major: every pixel, or those of `window` (top, left, h, w). Its top and left may be
    integer tensors on `device`: then a compiled training step sees the same graph for every
    window (Python integers would be specialised on, or made symbols)."""
    top, left, rows, cols = window or (0, 0, height, width)
    ys = (torch.arange(rows, device=device) + top + 0.5) * (2.0 / height) - 1.0
    xs = (torch.arange(cols, device=device) + left + 0.5) * (2.0 / width) - 1.0
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def neighbours(
    coords: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The local ensemble of each query.

    coords: (B, Q, 2) (y, x) in [-1, 1]. size: feature grid (h, w).
    Returns flat cell indices (B, Q, 4) into h * w, relative offsets (B, Q, 4, 2) in cell
    units, and blending weights (B, Q, 4) that sum to one over the last axis.
    """
    h, w = size
    scale = coords.new_tensor([h, w])
    u = (coords + 1.0) * 0.5 * scale - 0.5  # continuous cell coordinates, centres at integers
    base = torch.floor(u)
    corners = coords.new_tensor([[0, 0], [0, 1], [1, 0], [1, 1]])  # (4, 2)
    cells = base.unsqueeze(-2) + corners  # (B, Q, 4, 2)
    hi = coords.new_tensor([h - 1, w - 1])
    cells = torch.minimum(torch.clamp(cells, min=0), hi)
    rel = u.unsqueeze(-2) - cells  # (B, Q, 4, 2)
    area = (rel[..., 0] * rel[..., 1]).abs() + 1e-9  # (B, Q, 4)
    weights = area.flip(-1)  # corner k blends with the area of corner 3 - k
    weights = weights / weights.sum(-1, keepdim=True)
    index = (cells[..., 0] * w + cells[..., 1]).long()
    return index, rel, weights


def query(
    state: DecoderState,
    coords: torch.Tensor,
    cell: torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Evaluate f at query coordinates.

    coords: (B, Q, 2) float, (y, x) in [-1, 1] over the encoded view.
    cell: (B, 2) one query pixel's size (y, x) in feature-cell units.
    chunk_size: evaluate at most this many queries per image at once (bounds memory).
    Returns logits (B, Q) float32.
    """
    total = coords.shape[1]
    if chunk_size is None or chunk_size >= total:
        return _query_chunk(state, coords, cell)
    return torch.cat(
        [_query_chunk(state, part, cell) for part in coords.split(chunk_size, dim=1)], dim=1
    )


def _query_chunk(state: DecoderState, coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    b, h, w, hidden = state.feature_proj.shape
    q = coords.shape[1]
    index, rel, weights = neighbours(coords, (h, w))
    # One flat gather over the batch: rows of (B * h * w, h1) at b * h * w + cell index.
    table = state.feature_proj.view(b * h * w, hidden)
    offsets = torch.arange(b, device=coords.device).reshape(b, 1, 1) * (h * w)
    gathered = table.index_select(0, (index + offsets).reshape(-1)).reshape(b, q, 4, hidden)
    # f's first layer on [rel, abs, cell]: the offset per neighbour, the rest once per query.
    weight, bias = state.coord_weight, state.params[0].bias
    shared = torch.cat([coords, cell.reshape(b, 1, 2).expand(b, q, 2)], dim=-1)
    per_query = apply_linear(shared, LayerParams(weight[..., 2:], bias))  # (B, Q, h1)
    per_offset = apply_linear(rel.reshape(b, q * 4, 2), LayerParams(weight[..., :2], None))
    pre = gathered + per_offset.reshape(b, q, 4, hidden) + per_query.unsqueeze(2)
    logits = run_mlp(pre.reshape(b, q * 4, hidden), state.params).reshape(b, q, 4)
    return (logits * weights).sum(-1)
