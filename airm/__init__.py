"""airm: refine coarse object masks into accurate full-resolution masks (AIRM, ECCV 2024)."""

__version__ = "0.1.0"  # the one place of the version (pyproject.toml reads it)

from airm.api import (
    DEFAULT_CHECKPOINT,
    ModelNotFoundError,
    default_checkpoint,
    get_refiner,
    refine,
    refine_labels,
)
from airm.build import (
    VARIANTS,
    build_airm_efficientnet_lite0,
    build_airm_mit_b0,
    build_airm_mit_b1,
    build_crm_efficientnet_lite0,
    build_crm_resnet,
    build_model,
    build_sirmf_efficientnet_lite0,
)
from airm.checkpoint import CheckpointError, load_model, load_weights, save_model
from airm.config import ModelConfig
from airm.inference import InferenceOptions
from airm.io import InputError, read_image, read_labels, read_mask
from airm.modeling.airm import AIRM
from airm.overlay import draw_overlay
from airm.pretrained import load_encoder_rgb_weights
from airm.refiner import Refiner

__all__ = [
    "AIRM",
    "DEFAULT_CHECKPOINT",
    "VARIANTS",
    "CheckpointError",
    "InferenceOptions",
    "InputError",
    "ModelConfig",
    "ModelNotFoundError",
    "Refiner",
    "build_airm_efficientnet_lite0",
    "build_airm_mit_b0",
    "build_airm_mit_b1",
    "build_crm_efficientnet_lite0",
    "build_crm_resnet",
    "build_model",
    "build_sirmf_efficientnet_lite0",
    "default_checkpoint",
    "draw_overlay",
    "get_refiner",
    "load_encoder_rgb_weights",
    "load_model",
    "load_weights",
    "read_image",
    "read_labels",
    "read_mask",
    "refine",
    "refine_labels",
    "save_model",
]
