"""Model checkpoints: safetensors files that carry their ModelConfig in the metadata.

Loading needs only the path, never unpickles anything, and is strict: a file whose tensors
do not match the network its config describes is refused with a message naming the keys.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from airm.build import build_model
from airm.config import ModelConfig
from airm.io import atomic_write
from airm.modeling.airm import AIRM
from airm.modeling.implicit_decoder import COLOUR_DIMS

FORMAT = "airm-model-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the network."""


def save_model(
    model: AIRM, path: str | os.PathLike, *, metadata: dict[str, str] | None = None
) -> None:
    """Write the model's weights and config to `path` (safetensors), atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": model.config.to_json(), **(metadata or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """Read (config, tensors, metadata) from an airm safetensors checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint (truncated, or another format: "
            f"only .safetensors model files are accepted): {e}"
        ) from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not an airm model checkpoint")
    try:
        config = ModelConfig.from_json(metadata["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} carries an invalid model config: {e}") from None
    return config, tensors, metadata


def load_state(model: AIRM, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Strictly load tensors into model, with one clear error on any mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(
            f"{source} does not fit this network ({model.config.encoder}): " + "; ".join(parts)
        )
    model.load_state_dict(tensors, strict=True)


def load_weights(model: AIRM, path: str | os.PathLike) -> AIRM:
    """Load a checkpoint into an already built model; refuses a checkpoint of another variant."""
    config, tensors, _ = read_checkpoint(path)
    if config != model.config:
        raise CheckpointError(
            f"{path} holds a different variant (encoder={config.encoder}, "
            f"modulation={config.modulation}) than this model (encoder={model.config.encoder}, "
            f"modulation={model.config.modulation}); use airm.load_model(path) to build its own"
        )
    load_state(model, tensors, source=str(path))
    return model


def load_initial_weights(model: AIRM, path: str | os.PathLike) -> AIRM:
    """Load a checkpoint to train `model` on from (`train.py --init`): one of the same variant,
    or one whose f does not read the query's colour into a model whose f does. The new inputs
    start at zero weight (and zero modulation factors), so the model computes the checkpoint's
    function until training moves them."""
    config, tensors, _ = read_checkpoint(path)
    if config != model.config and dataclasses.replace(config, query_colour=True) == model.config:
        tensors = _with_colour_inputs(tensors, model)
        load_state(model, tensors, source=f"{path} (given colour inputs)")
        return model
    return load_weights(model, path)


def _with_colour_inputs(tensors: dict[str, torch.Tensor], model: AIRM) -> dict[str, torch.Tensor]:
    """The tensors of a model without query colour, fitted to `model` (which reads it): zero
    columns in f's first weight for the colour inputs (the last ones), and in the
    hypernetwork's head, zero rows for the matching columns of that layer's factor B."""
    tensors = dict(tensors)
    out_dim, in_dim = model.implicit_function.layer_shapes[0]
    old_in = in_dim - COLOUR_DIMS
    key = "implicit_function.weights.0"
    first = tensors[key]
    tensors[key] = torch.cat([first, first.new_zeros(out_dim, COLOUR_DIMS)], dim=1)
    if model.hypernetwork is not None:
        rank = model.hypernetwork.rank
        # The head emits, per layer, A (rank x out), B (rank x in, row-major) and a bias offset;
        # layer 0's block comes first.
        for key in ("hypernetwork.head.weight", "hypernetwork.head.bias"):
            head = tensors[key]
            rest = head.shape[0] - rank * out_dim - rank * old_in
            a, b, after = head.split([rank * out_dim, rank * old_in, rest])
            b = b.reshape(rank, old_in, *head.shape[1:])
            b = torch.cat([b, b.new_zeros(rank, COLOUR_DIMS, *head.shape[1:])], dim=1)
            tensors[key] = torch.cat([a, b.reshape(rank * in_dim, *head.shape[1:]), after])
    return tensors


def load_model(path: str | os.PathLike, *, device: str | torch.device | None = None) -> AIRM:
    """Build the network a checkpoint describes, load its weights, and put it in eval mode."""
    config, tensors, _ = read_checkpoint(path)
    model = build_model(config)
    load_state(model, tensors, source=str(path))
    return model.eval().to(device or "cpu")
