"""The one model configuration. A checkpoint stores it, so loading needs only the path."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's ImageNet weights expect (x - 127) / 128 on 0..255 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

MIT_VARIANTS = {
    # name: (embed_dims, num_heads); depths 2/2/2/2 and sr ratios 8/4/2/1 are shared.
    "mit_b0": ((32, 64, 160, 256), (1, 2, 5, 8)),
    "mit_b1": ((64, 128, 320, 512), (1, 2, 5, 8)),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an AIRM network (not its weights)."""

    # "mit_b0" / "mit_b1" (the paper's Affinity Empowered Encoder), or the name of a timm CNN
    # ("tf_efficientnet_lite0", "resnet18", "resnet50", ...) built with 4 input channels.
    encoder: str = "mit_b0"
    # Channels C of the pixel features F that the implicit decoder reads.
    feature_dim: int = 64
    # Stride of F relative to the encoded input: 4, or 2 (CNN encoders only).
    feature_stride: int = 4
    # Hidden widths of the implicit MLP f (CRM: 32/32/32/32); it ends in one logit.
    hidden_dims: tuple[int, ...] = (32, 32, 32, 32)
    # AIRMF (True): per-image low-rank modulation of f's weights. SIRMF (False): shared f.
    modulation: bool = True
    # Rank r of the factors A_l (out x r) and B_l (r x in).
    rank: int = 20
    # Width of the hypernetwork psi.
    hyper_dim: int = 64
    # Standardise the vector psi pools from the window (BatchNorm1d over the batch, running
    # statistics at inference) before psi's linear head: the head then sees only how an image
    # differs from the others, at unit scale, and its bias must carry the modulation every
    # image shares. An experiment (issue 11): without it, that vector varies by 16% between
    # val images and the shipped head passes on 7% (`python -m eval.modulation`).
    hyper_input_norm: bool = False
    # Weigh the coarse mask's skip (see `airm.modeling.airm`) per encoded window by 2 sigmoid(g),
    # g read from the pixel features by a small head that starts at zero (so at first the
    # weight is the shared one): the network may then trust a nearly right coarse mask more
    # than a wrong one. An experiment: on val the shipped model spoils nearly right `lowres`
    # masks, and training it to trust its input more cost as much on the wrong ones; in 3,000
    # iterations from the shipped weights the gate learned nearly one weight for all of val's
    # windows, and val tied (docs/model-history.md).
    skip_gate: bool = False
    # What the gate pools: "window" (every cell of the window's features) or "band" (the cells
    # the coarse mask's boundary crosses, and their neighbours; the whole window where it
    # crosses none), where a nearly right mask and a wrong one differ.
    skip_gate_pool: str = "window"
    # Learn affinity (attention-derived for MiT, feature-distance for CNNs) during training.
    affinity: bool = True
    # Width of the embedding whose L1 distances give a CNN encoder's affinity.
    affinity_dim: int = 64
    # Per-channel RGB normalisation applied to 0..1 pixels.
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.feature_stride not in (2, 4):
            raise ValueError(f"feature_stride must be 2 or 4, got {self.feature_stride}")
        if self.feature_stride == 2 and self.is_mit:
            raise ValueError("feature_stride=2 needs a CNN encoder (MiT has no stride-2 stage)")
        if self.skip_gate_pool not in ("window", "band"):
            raise ValueError(
                f"skip_gate_pool must be 'window' or 'band', got {self.skip_gate_pool!r}"
            )
        if self.rank < 1 or not self.hidden_dims:
            raise ValueError("rank must be >= 1 and hidden_dims non-empty")

    @property
    def is_mit(self) -> bool:
        return self.encoder.startswith("mit_")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}")
        # JSON has no tuples; the dataclass is frozen and hashed, so restore them.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def field_overrides(specs: list[str], cls: type, flag: str) -> tuple[tuple[str, object], ...]:
    """FIELD=VALUE command-line flags for the dataclass `cls` -> ((field, value), ...); VALUE is
    JSON (lists become tuples, as the configurations hold them). An unknown field or an
    unreadable value is a ValueError that names `flag`."""
    known = {f.name for f in dataclasses.fields(cls)}
    overrides = []
    for spec in specs:
        name, sep, text = spec.partition("=")
        if not sep or name not in known:
            raise ValueError(
                f"{flag} wants FIELD=VALUE with FIELD one of {sorted(known)}, got {spec!r}"
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(
                f"{flag} {spec!r}: the value is not JSON (e.g. 8, 1.5, true, [64,64])"
            ) from None
        overrides.append((name, tuple(value) if isinstance(value, list) else value))
    return tuple(overrides)
