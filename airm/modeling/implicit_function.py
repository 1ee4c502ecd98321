"""The implicit representation mapping function f, shared (SIRMF) or adaptive (AIRMF).

f is an MLP from one query's input vector [feature, relative offset, absolute coordinate,
cell size] to one logit (CRM's function). In AIRM (Sec. 4.2) each linear layer l's weight is
modulated per image by a low-rank product predicted by the hypernetwork, as in factorised
multiplicative modulation (Skorokhodov et al., CVPR 2021):

    W_l = W_shared,l * sigma(A_l @ B_l),   b_l = b_shared,l + db_l

with sigma(x) = 2 * sigmoid(x), so that sigma(0) = 1: a zero product leaves the shared
weight unchanged, which makes SIRMF the exact special case and lets AIRMF start from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerModulation:
    """Per-image modulation of one linear layer: A (B, out, r), B (B, r, in), bias (B, out)."""

    a: torch.Tensor
    b: torch.Tensor
    bias: torch.Tensor


@dataclass
class LayerParams:
    """The weight and bias one layer applies: (out, in) and (out,), or batched (B, out, in) and
    (B, out); no bias: None."""

    weight: torch.Tensor
    bias: torch.Tensor | None


def modulation_gate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sigma(A @ B) = 2 * sigmoid(A @ B): (B, out, r) x (B, r, in) -> (B, out, in) in (0, 2)."""
    return 2.0 * torch.sigmoid(a @ b)


class ImplicitFunction(nn.Module):
    """The MLP f: in_dim -> hidden_dims... -> 1, with ReLU between layers."""

    def __init__(self, *, in_dim: int, hidden_dims: tuple[int, ...]) -> None:
        super().__init__()
        dims = (in_dim, *hidden_dims, 1)
        self.layer_shapes: list[tuple[int, int]] = list(zip(dims[1:], dims[:-1], strict=True))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for out_dim, layer_in in self.layer_shapes:
            # nn.Linear's default initialisation.
            bound = 1.0 / math.sqrt(layer_in)
            self.weights.append(
                nn.Parameter(torch.empty(out_dim, layer_in).uniform_(-bound, bound))
            )
            self.biases.append(nn.Parameter(torch.empty(out_dim).uniform_(-bound, bound)))

    def layer_params(self, modulation: list[LayerModulation] | None) -> list[LayerParams]:
        """The weights f applies: shared, or modulated per image when `modulation` is given."""
        if modulation is None:
            return [LayerParams(w, b) for w, b in zip(self.weights, self.biases, strict=True)]
        return [
            LayerParams(w * modulation_gate(m.a, m.b), b + m.bias)
            for w, b, m in zip(self.weights, self.biases, modulation, strict=True)
        ]


def apply_linear(x: torch.Tensor, params: LayerParams) -> torch.Tensor:
    """x (B, Q, in) -> (B, Q, out) with shared (out, in) or per-image (B, out, in) weights."""
    if params.weight.dim() == 2:
        return torch.nn.functional.linear(x, params.weight, params.bias)
    if params.bias is None:
        return torch.bmm(x, params.weight.transpose(1, 2))
    return torch.baddbmm(params.bias.unsqueeze(1), x, params.weight.transpose(1, 2))


def run_mlp(first_layer_out: torch.Tensor, params: list[LayerParams]) -> torch.Tensor:
    """Finish f given its first layer's pre-activation (B, Q, h1) -> logits (B, Q)."""
    x = first_layer_out
    for layer in params[1:]:
        x = apply_linear(torch.relu(x), layer)
    return x.squeeze(-1)
