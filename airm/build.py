"""Named builders of every AIRM variant.

- AIRM with the paper's encoder: `build_airm_mit_b0`, `build_airm_mit_b1`.
- AIRM with a pretrained-able CNN encoder (the paper's Table 2 ablation, affinity from feature
  distances): `build_airm_efficientnet_lite0`.
- The CRM-style baseline (a CNN, shared implicit function, no affinity learning):
  `build_crm_efficientnet_lite0` (the one trained here, on the only ImageNet CNN weights reachable
  offline) and `build_crm_resnet` (CRM's encoder family, for users who have ResNet weights).
- `build_model(config)` builds any `ModelConfig`; `build_model("name")` builds a named variant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from airm.config import LITE_MEAN, LITE_STD, ModelConfig
from airm.modeling.affinity import AttentionAffinity, FeatureDistanceAffinity
from airm.modeling.airm import AIRM, SkipGate
from airm.modeling.encoder import CNNEncoder, MixTransformerEncoder
from airm.modeling.hypernetwork import Hypernetwork
from airm.modeling.implicit_decoder import COORD_DIMS
from airm.modeling.implicit_function import ImplicitFunction
from airm.modeling.pixel_features import PixelFeatureFusion


def build_model(config: ModelConfig | str, **overrides) -> AIRM:
    """Build an untrained network from a config, or from a variant name plus field overrides."""
    if isinstance(config, str):
        if config not in VARIANTS:
            raise ValueError(f"unknown variant {config!r}; choose from {sorted(VARIANTS)}")
        config = VARIANTS[config]()
    if overrides:
        config = dataclasses.replace(config, **overrides)
    if config.is_mit:
        encoder = MixTransformerEncoder(variant=config.encoder)
        affinity = AttentionAffinity(num_maps=encoder.num_affinity_maps)
    else:
        encoder = CNNEncoder(name=config.encoder, with_stride2=config.feature_stride == 2)
        affinity = FeatureDistanceAffinity(
            in_dim=encoder.affinity_channels, embed_dim=config.affinity_dim
        )
    pixel_features = PixelFeatureFusion(in_dims=encoder.channels, out_dim=config.feature_dim)
    implicit_function = ImplicitFunction(
        in_dim=config.feature_dim + COORD_DIMS, hidden_dims=config.hidden_dims
    )
    hypernetwork = (
        Hypernetwork(
            feature_dim=config.feature_dim,
            hidden_dim=config.hyper_dim,
            layer_shapes=implicit_function.layer_shapes,
            rank=config.rank,
            input_norm=config.hyper_input_norm,
        )
        if config.modulation
        else None
    )
    return AIRM(
        config=config,
        encoder=encoder,
        pixel_features=pixel_features,
        implicit_function=implicit_function,
        hypernetwork=hypernetwork,
        affinity_head=affinity if config.affinity else None,
        skip_gate=SkipGate(config.feature_dim, pool=config.skip_gate_pool)
        if config.skip_gate
        else None,
    )


def airm_mit_b0_config() -> ModelConfig:
    return ModelConfig(encoder="mit_b0")


def airm_mit_b1_config() -> ModelConfig:
    return ModelConfig(encoder="mit_b1")


def airm_efficientnet_lite0_config() -> ModelConfig:
    return ModelConfig(encoder="tf_efficientnet_lite0", pixel_mean=LITE_MEAN, pixel_std=LITE_STD)


def sirmf_efficientnet_lite0_config() -> ModelConfig:
    """The AIRMF ablation: same network as the default, shared implicit function."""
    return dataclasses.replace(airm_efficientnet_lite0_config(), modulation=False)


def crm_efficientnet_lite0_config() -> ModelConfig:
    """CRM-style on the default's pretrained CNN: shared implicit function, no affinity learning."""
    return dataclasses.replace(airm_efficientnet_lite0_config(), modulation=False, affinity=False)


def crm_resnet_config() -> ModelConfig:
    """CRM-style: a ResNet encoder and the shared implicit function, no affinity learning."""
    return ModelConfig(encoder="resnet18", modulation=False, affinity=False)


VARIANTS: dict[str, Callable[[], ModelConfig]] = {
    "airm_mit_b0": airm_mit_b0_config,
    "airm_mit_b1": airm_mit_b1_config,
    "airm_efficientnet_lite0": airm_efficientnet_lite0_config,
    "sirmf_efficientnet_lite0": sirmf_efficientnet_lite0_config,
    "crm_efficientnet_lite0": crm_efficientnet_lite0_config,
    "crm_resnet": crm_resnet_config,
}


def build_airm_mit_b0(**overrides) -> AIRM:
    return build_model("airm_mit_b0", **overrides)


def build_airm_mit_b1(**overrides) -> AIRM:
    return build_model("airm_mit_b1", **overrides)


def build_airm_efficientnet_lite0(**overrides) -> AIRM:
    return build_model("airm_efficientnet_lite0", **overrides)


def build_sirmf_efficientnet_lite0(**overrides) -> AIRM:
    return build_model("sirmf_efficientnet_lite0", **overrides)


def build_crm_efficientnet_lite0(**overrides) -> AIRM:
    return build_model("crm_efficientnet_lite0", **overrides)


def build_crm_resnet(**overrides) -> AIRM:
    return build_model("crm_resnet", **overrides)
