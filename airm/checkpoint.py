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


# Model config fields that only add parts which start as the identity (zero-initialised), so
# that a checkpoint without them, loaded into a model with them, computes the same function.
# A field's own settings are named after it (`skip_gate_pool`).
ADDITIVE_FIELDS = ("skip_gate",)


def load_initial_weights(model: AIRM, path: str | os.PathLike) -> AIRM:
    """Load a checkpoint to train `model` from (`train.py --init`): one of the same variant, or
    one that lacks parts in `ADDITIVE_FIELDS` that `model` has; those keep their initial
    values, with which the model computes the checkpoint's function until training moves them."""
    config, tensors, _ = read_checkpoint(path)
    added = [f for f in ADDITIVE_FIELDS if getattr(model.config, f) and not getattr(config, f)]
    if config == model.config or not added:
        return load_weights(model, path)
    settings = {
        field.name: getattr(model.config, field.name)
        for field in dataclasses.fields(model.config)
        if any(field.name == f or field.name.startswith(f"{f}_") for f in added)
    }
    if dataclasses.replace(config, **settings) != model.config:
        return load_weights(model, path)  # refused, with its message
    own = model.state_dict()
    prefixes = tuple(f"{f}." for f in added)
    tensors = {**tensors, **{k: v for k, v in own.items() if k.startswith(prefixes)}}
    load_state(model, tensors, source=f"{path} (with {', '.join(added)} added)")
    return model


def load_model(path: str | os.PathLike, *, device: str | torch.device | None = None) -> AIRM:
    """Build the network a checkpoint describes, load its weights, and put it in eval mode."""
    config, tensors, _ = read_checkpoint(path)
    try:
        model = build_model(config)
    except (TypeError, ValueError, KeyError, RuntimeError) as e:  # timm: "Unknown model"
        raise CheckpointError(f"{path} carries a model config that builds no model: {e}") from None
    load_state(model, tensors, source=str(path))
    return model.eval().to(device or "cpu")
