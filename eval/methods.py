"""The refiners `python -m eval` runs side by side (SPEC section 4).

Every method is built by name into a function (HxWx3 uint8 RGB image, HxW bool coarse mask) ->
HxW uint8 mask (0..255; the protocol thresholds it at > 127). A method that cannot run here
raises `MethodUnavailable` with a one-line reason, and the evaluation skips it.

- `coarse`: the coarse input itself.
- `airm`: the shipped model, or the checkpoint given as `airm=PATH`; `airm_untiled`: the same
  with every scale encoded whole (the band still limits the queries); `airm_exhaustive`: the
  same without either shortcut (every pixel queried, every scale encoded whole);
  `airm_every_pixel`: every pixel queried, scales encoded in tiles as by default.
- `sirmf`, `crm`: the paper's ablation (shared implicit function) and the CRM-style baseline
  (shared function, no affinity learning), trained with the same data and budget as the
  shipped model; their weights are in `eval/weights/`. Any other `NAME=PATH` is an airm
  checkpoint too.
- `cascadepsp`: CascadePSP's pip package `segmentation-refinement` (full mode, L=900) when its
  weights are on disk (the package downloads them at run time, which is not assumed here).
- `guided_filter`: He et al.'s guided filter of the coarse mask with the colour image as guide
  (kornia).
- `dense_crf`: a fully connected CRF on the coarse labels (pydensecrf2), DeepLab's settings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from airm.inference import EVERY_PIXEL, NO_SHORTCUTS, InferenceOptions

RefineFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

WEIGHTS = Path(__file__).resolve().parent / "weights"
BASELINES = {
    "sirmf": WEIGHTS / "sirmf_efficientnet_lite0.safetensors",
    "crm": WEIGHTS / "crm_efficientnet_lite0.safetensors",
}
CLASSICAL = ("cascadepsp", "guided_filter", "dense_crf")


def _mode(**mode_fields) -> Callable[..., InferenceOptions]:
    """The options of an airm mode: `mode_fields` over any other fields given."""
    return lambda **fields: InferenceOptions(**{**fields, **mode_fields})


# The shipped model (or airm=PATH) under each inference mode.
AIRM_OPTIONS: dict[str, Callable[..., InferenceOptions]] = {
    "airm": _mode(),
    "airm_untiled": _mode(tile_size=None),
    "airm_exhaustive": _mode(**NO_SHORTCUTS),
    "airm_every_pixel": _mode(**EVERY_PIXEL),
}
CASCADEPSP_FOLDER = Path("~/.segmentation-refinement").expanduser()


class MethodUnavailable(Exception):
    """A method that cannot run on this machine; the message says why in one line."""


def known_methods(checkpoints: dict[str, Path]) -> list[str]:
    named = [n for n in checkpoints if n != "airm"]
    return ["coarse", *AIRM_OPTIONS, *BASELINES, *CLASSICAL, *named]


def build_method(
    name: str,
    *,
    checkpoints: dict[str, Path] | None = None,
    device: str | None = None,
    cascadepsp_folder: Path | None = None,
    precision: str = "auto",
    inference: dict | None = None,
) -> RefineFn:
    """The refine function of method `name` (see the module docstring); airm models run at
    `precision` (`InferenceOptions.precision`) with the other `InferenceOptions` fields of
    `inference` (a mode's own fields win: `airm_exhaustive` queries every pixel whatever
    `inference` says)."""
    checkpoints = checkpoints or {}
    inference = {**(inference or {}), "precision": precision}
    if name == "coarse":
        return _coarse
    if name in AIRM_OPTIONS:
        options = AIRM_OPTIONS[name](**inference)
        return _airm(checkpoints.get("airm"), device, options)
    if name in checkpoints or name in BASELINES:
        options = InferenceOptions(**inference)
        return _airm(checkpoints.get(name) or BASELINES[name], device, options)
    if name == "cascadepsp":
        return _cascadepsp(cascadepsp_folder or CASCADEPSP_FOLDER, device)
    if name == "guided_filter":
        return _guided_filter()
    if name == "dense_crf":
        return _dense_crf()
    raise ValueError(f"unknown method {name!r}; choose from {known_methods(checkpoints)}")


def _coarse(image: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    return coarse.astype(np.uint8) * 255


def _airm(checkpoint: Path | None, device: str | None, options: InferenceOptions) -> RefineFn:
    from airm.api import default_checkpoint
    from airm.refiner import Refiner

    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    if not path.is_file():
        raise MethodUnavailable(f"checkpoint not found: {path}")
    refiner = Refiner.from_checkpoint(path, device=device, options=options, max_pixels=None)
    return refiner.refine


def _cascadepsp(folder: Path, device: str | None) -> RefineFn:
    try:
        import segmentation_refinement
    except ImportError:
        raise MethodUnavailable(
            "the segmentation-refinement package is not installed (pip install -e '.[eval]')"
        ) from None
    if not (folder / "model").is_file():
        raise MethodUnavailable(
            f"CascadePSP's weights are not in {folder}/model (its package downloads them at run "
            "time; put them there or pass --cascadepsp-folder)"
        )
    refiner = segmentation_refinement.Refiner(
        device=device or "cpu", model_folder=str(folder), download_and_check_model=False
    )

    def refine(image: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        # Its README passes OpenCV's BGR images; the network was trained on RGB.
        return refiner.refine(image, coarse.astype(np.uint8) * 255, fast=False, L=900)

    return refine


def guided_filter_radius(height: int, width: int) -> int:
    """The filter's window radius: the protocol's largest boundary radius, (h + w) / 300."""
    return max(2, round((height + width) / 300))


def _guided_filter(eps: float = 1e-3) -> RefineFn:
    try:
        import torch
        from kornia.filters import guided_blur
    except ImportError:
        raise MethodUnavailable("kornia is not installed (pip install -e '.[eval]')") from None

    def refine(image: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        r = guided_filter_radius(*coarse.shape)
        guide = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        mask = torch.from_numpy(coarse)[None, None].float()
        out = guided_blur(guide, mask, (2 * r + 1, 2 * r + 1), eps)
        return (out[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    return refine


def _dense_crf(iterations: int = 5) -> RefineFn:
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError:
        raise MethodUnavailable("pydensecrf2 is not installed (pip install -e '.[eval]')") from None

    def refine(image: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        h, w = coarse.shape
        crf = dcrf.DenseCRF2D(w, h, 2)
        labels = coarse.astype(np.int32)
        crf.setUnaryEnergy(unary_from_labels(labels, 2, gt_prob=0.8, zero_unsure=False))
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(
            sxy=60, srgb=10, rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=5
        )
        q = np.asarray(crf.inference(iterations)).reshape(2, h, w)
        return (q[1] > q[0]).astype(np.uint8) * 255

    return refine
