"""The hypernetwork psi of AIRMF (AIRM Sec. 4.2).

A few Conv+BN+ReLU layers over the pixel features F, global average pooling, then linear
layers that emit, for every linear layer l of the implicit function f, the low-rank factors
A_l (out x r), B_l (r x in) and a bias offset. The last linear layer starts at zero weight so
that every image starts with the same factors: A_l from a small random bias, B_l and the bias
offset at zero, hence A_l B_l = 0 and f starts as the shared function, while the gradient with
respect to B_l is non-zero from the first step.
"""

from __future__ import annotations

import torch
from torch import nn

from airm.modeling.implicit_function import LayerModulation


def conv_bn_relu(in_dim: int, out_dim: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_dim),
        nn.ReLU(inplace=True),
    )


class Hypernetwork(nn.Module):
    """psi: pixel features (B, C, h, w) -> one LayerModulation per layer of f."""

    def __init__(
        self,
        *,
        feature_dim: int,
        hidden_dim: int,
        layer_shapes: list[tuple[int, int]],
        rank: int,
        input_norm: bool = False,
    ) -> None:
        super().__init__()
        self.layer_shapes = list(layer_shapes)
        self.rank = rank
        self.body = nn.Sequential(
            conv_bn_relu(feature_dim, hidden_dim, stride=2),
            conv_bn_relu(hidden_dim, hidden_dim, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
        )
        # The head's input standardised over the batch (`ModelConfig.hyper_input_norm`).
        self.norm = nn.BatchNorm1d(hidden_dim, affine=False) if input_norm else nn.Identity()
        sizes = [rank * out + rank * inp + out for out, inp in self.layer_shapes]
        self.head = nn.Linear(hidden_dim, sum(sizes))
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.zero_()
            start = 0
            for (out, _), size in zip(self.layer_shapes, sizes, strict=True):
                self.head.bias[start : start + rank * out].normal_(0.0, 0.1)
                start += size
        self.sizes = sizes

    def _input_norm(self) -> nn.BatchNorm1d:
        if not isinstance(self.norm, nn.BatchNorm1d):
            raise ValueError("this hypernetwork has no input norm (ModelConfig.hyper_input_norm)")
        return self.norm

    @torch.no_grad()
    def standardise_input(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Make the input norm standardise with these statistics (the mean and variance of the
        head's input over some images), rescaling the head so that the function is unchanged
        wherever the norm uses its running statistics (inference, training with frozen norms):
        only how training sees the head changes, each input at unit scale about its mean."""
        norm = self._input_norm()
        old_std = (norm.running_var + norm.eps).sqrt()
        new_std = (var + norm.eps).sqrt()
        self.head.bias += self.head.weight @ ((mean - norm.running_mean) / old_std)
        self.head.weight *= (new_std / old_std)[None, :]
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)

    @torch.no_grad()
    def fold_input_norm(self) -> None:
        """Fold the input norm's running statistics into the head and drop the norm: the same
        function at inference, as a hypernetwork without `hyper_input_norm`."""
        norm = self._input_norm()
        self.head.weight /= (norm.running_var + norm.eps).sqrt()[None, :]
        self.head.bias -= self.head.weight @ norm.running_mean
        self.norm = nn.Identity()

    def forward(self, features: torch.Tensor) -> list[LayerModulation]:
        return self.modulation(self.body(features))

    def modulation(self, pooled: torch.Tensor) -> list[LayerModulation]:
        """The modulation of each layer of f for pooled vectors (B, hidden_dim), the input of
        the head that `body` gives each window."""
        flat = self.head(self.norm(pooled))  # (B, P)
        batch = flat.shape[0]
        out: list[LayerModulation] = []
        for chunk, (o, i) in zip(flat.split(self.sizes, dim=1), self.layer_shapes, strict=True):
            a, b, bias = chunk.split([self.rank * o, self.rank * i, o], dim=1)
            out.append(
                LayerModulation(
                    a=a.reshape(batch, o, self.rank),
                    b=b.reshape(batch, self.rank, i),
                    bias=bias,
                )
            )
        return out
