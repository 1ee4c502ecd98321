"""Diagnostics of AIRMF's per-image modulation: does the hypernetwork adapt f to each image?

    python -m eval.modulation --data ../shared/data/val --limit 24 [--out modulation.json]

AIRMF applies W_l = W_shared,l * g_l and b_l = b_shared,l + db_l in every linear layer l of the
implicit function f, with the gate g_l = sigma(A_l B_l) = 2 sigmoid(A_l B_l) in (0, 2) and A_l,
B_l, db_l predicted by the hypernetwork psi from each encoded window (AIRM Sec. 4.2). This
script measures, on a checkpoint and a BIG-layout folder:

1. how far the modulation moves f from its shared weights, per layer: mean and spread of
   |g - 1|, the fraction of saturated gates (g < 0.05 or > 1.95), and the bias shift |db|;
2. how much it varies between images (each image encoded whole at the first scale inference
   refines at, from the image and coarse mask resized as inference resizes them) and between
   the tiles of one large image (its full-resolution scale in the tiles inference encodes):
   the std across images (tiles) of each gate entry, averaged over entries, that std relative
   to the mean |g - 1|, and the relative change of the effective weight W * g from the mean
   one, ||W (g_i - mean g)|| / ||W mean g||, averaged over images (tiles);
3. what refinement scores (pooled IoU, mean IoU, mBA; `airm.scoring`, default options in
   float32, so that a fixed modulation computed in float32 reproduces the trained
   hypernetwork's exactly) when the modulation is replaced by a fixed one. The refiner's model
   (the inference copy, batchnorm folded) gets a `FixedModulation` for its hypernetwork, which
   every tile at every scale then uses:
   - own: the trained hypernetwork, a modulation per encoded window (the baseline);
   - own_fixed: the image's own first-scale modulation for all its windows;
   - swap: image (i + k) mod n's first-scale modulation (k = n // 2 by default, so that the
     donor is usually another source's image);
   - mean: the mean gate and mean bias shift over the n images (means of what f applies,
     not of the factors A, B);
   - none: no modulation (gate 1, shift 0): the shared weights alone, as SIRMF applies them.
   Beside the scores: the pixels whose label differs from the baseline's, as a share of all
   pixels and of the pixels the baseline changed from the coarse mask.
If swap and mean score as own does, the modulation carries no per-image information that
refinement uses; own_fixed against own says the same of per-window (tile, scale) information.

4. where the per-image information goes missing: the hypernetwork ends in a linear head,
   head(h) = W h + b, on a vector h pooled from the window's features. Over the images (their
   first-scale windows): how much h varies, mean ||h_i - mean h|| / ||mean h||, and per layer
   of f, the part of the head's output (that layer's A, B and db) that varies with the image,
   mean ||W (h_i - mean h)||, against the part every image gets, ||W mean h + b||, of which
   ||b|| comes from the bias. A small ratio with a varying h means the head ignores the image;
   a small ratio with a nearly constant h means the pooled input carries little to adapt to.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):  # `python eval/modulation.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.data import Pair, find_pairs, spread_pairs  # noqa: E402
from airm.inference import (  # noqa: E402
    InferenceOptions,
    TileGrid,
    as_float,
    boundary_band,
    resize,
    scale_sizes,
)
from airm.modeling.airm import AIRM  # noqa: E402
from airm.modeling.implicit_function import LayerModulation, modulation_gate  # noqa: E402

MODES = ("own", "own_fixed", "swap", "mean", "none")
SATURATED = (0.05, 1.95)  # gates this close to sigma's bounds 0 and 2


class RecordingHypernetwork(nn.Module):
    """Wraps a hypernetwork and keeps every modulation it returns, in call order, and the
    input of its linear head (`Hypernetwork.head`) for each call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.records: list[list[LayerModulation]] = []
        self.head_inputs: list[torch.Tensor] = []

    def forward(self, features: torch.Tensor) -> list[LayerModulation]:
        def keep(_module, args, _out):
            self.head_inputs.append(args[0].detach())

        hook = self.inner.head.register_forward_hook(keep)
        try:
            out = self.inner(features)
        finally:
            hook.remove()
        self.records.append(out)
        return out


class FixedModulation(nn.Module):
    """A stand-in hypernetwork that returns one fixed modulation, expanded to the batch.

    modulation: one LayerModulation per layer of f with batch size 1 (A (1, out, r), B (1, r,
    in), bias (1, out)), e.g. what `encode_modulation` captured.
    """

    def __init__(self, modulation: list[LayerModulation]) -> None:
        super().__init__()
        self.layers = len(modulation)
        for i, m in enumerate(modulation):
            if m.a.shape[0] != 1 or m.b.shape[0] != 1 or m.bias.shape[0] != 1:
                raise ValueError("FixedModulation wants a modulation of batch size 1")
            self.register_buffer(f"a{i}", m.a.detach().clone())
            self.register_buffer(f"b{i}", m.b.detach().clone())
            self.register_buffer(f"bias{i}", m.bias.detach().clone())

    @classmethod
    def from_gates(cls, gates: list[torch.Tensor], biases: list[torch.Tensor]) -> FixedModulation:
        """Apply given gates (out, in) in (0, 2) and bias shifts (out,) per layer.

        A = logit(g / 2) (out x in) and B = the identity (rank = in), so sigma(A B) = g up to
        rounding; gates at the bounds are clamped to within 1e-6 of them.
        """
        layers = []
        for g, db in zip(gates, biases, strict=True):
            half = (g / 2.0).clamp(1e-6, 1.0 - 1e-6)
            eye = torch.eye(g.shape[1], dtype=g.dtype, device=g.device)
            layers.append(LayerModulation(torch.logit(half)[None], eye[None], db[None]))
        return cls(layers)

    @classmethod
    def identity(cls, layer_shapes: list[tuple[int, int]]) -> FixedModulation:
        """Gate 1 and bias shift 0 in every layer: f applies its shared weights (SIRMF)."""
        return cls(
            [
                LayerModulation(torch.zeros(1, o, 1), torch.zeros(1, 1, i), torch.zeros(1, o))
                for o, i in layer_shapes
            ]
        )

    def forward(self, features: torch.Tensor) -> list[LayerModulation]:
        batch = features.shape[0]  # (B, C, h, w)
        return [
            LayerModulation(
                a=getattr(self, f"a{i}").expand(batch, -1, -1),
                b=getattr(self, f"b{i}").expand(batch, -1, -1),
                bias=getattr(self, f"bias{i}").expand(batch, -1),
            )
            for i in range(self.layers)
        ]


@contextlib.contextmanager
def substituted(model: AIRM, hypernetwork: nn.Module | None) -> Iterator[AIRM]:
    """Run `model` with another hypernetwork (None: no modulation), restoring it afterwards."""
    original = model.hypernetwork
    model.hypernetwork = hypernetwork
    try:
        yield model
    finally:
        model.hypernetwork = original


@torch.no_grad()
def encode_modulation(
    model: AIRM, image: torch.Tensor, mask: torch.Tensor, *, head_inputs: list | None = None
) -> list[LayerModulation]:
    """The modulation `model.encode` computes for one window, as inference encodes it.

    image: (1, 3, h, w) uint8 RGB or float RGB in [0, 1]; mask: (1, 1, h, w) in [0, 1].
    Returns one LayerModulation per layer of f, batch size 1; appends the hypernetwork head's
    input (1, hidden) to `head_inputs` when it is given.
    """
    if model.hypernetwork is None:
        raise ValueError("the model has no hypernetwork (SIRMF or CRM): there is no modulation")
    recorder = RecordingHypernetwork(model.hypernetwork)
    with substituted(model, recorder):
        model.encode(as_float(image), mask)
    (modulation,) = recorder.records
    if head_inputs is not None:
        head_inputs.extend(recorder.head_inputs)
    return modulation


def image_tensors(image: np.ndarray, coarse: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 RGB and HxW bool -> (1, 3, H, W) uint8 and (1, 1, H, W) float32 {0, 1}."""
    image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    return image_t, torch.from_numpy(coarse.astype(np.float32))[None, None]


def first_scale_modulation(
    model: AIRM,
    image: torch.Tensor,
    mask: torch.Tensor,
    options: InferenceOptions,
    *,
    head_inputs: list | None = None,
) -> list[LayerModulation]:
    """The modulation of the whole image at the first scale inference refines at.

    image: (1, 3, H, W) uint8 RGB; mask: (1, 1, H, W) coarse mask in [0, 1]. This is the
    window inference encodes first when that scale fits in one tile (with the default options,
    any image up to 4096 px a side that is not very elongated; every image of val).
    """
    device = next(model.parameters()).device
    size = scale_sizes(*image.shape[-2:], options)[0]
    return encode_modulation(
        model,
        resize(image, size).to(device),
        resize(mask, size).clamp(0, 1).to(device),
        head_inputs=head_inputs,
    )


@torch.no_grad()
def tile_modulations(
    model: AIRM, image: torch.Tensor, mask: torch.Tensor, options: InferenceOptions
) -> tuple[list[list[LayerModulation]], list[bool]]:
    """The modulation of every tile of the image's full-resolution scale.

    image: (1, 3, H, W) uint8 RGB; mask: (1, 1, H, W) in [0, 1]. Inference encodes this scale
    with the mask the previous scale refined; the coarse mask stands in for it here.
    Returns every tile's modulation and, per tile, whether it holds pixels of the mask's
    boundary band (`options.band`), i.e. whether inference would encode it given this mask.
    """
    device = next(model.parameters()).device
    height, width = image.shape[-2:]
    band = options.band if options.band is not None else max(height, width)
    wanted = boundary_band(mask, band, options.uncertain)[0, 0]
    grid = TileGrid.plan(height, width, options.tile_size, options.tile_context)
    modulations, encoded = [], []
    for index in range(grid.shape[0] * grid.shape[1]):
        top, bottom, left, right = grid.tile_box(index)
        ys, xs = wanted[top:bottom, left:right].nonzero(as_tuple=True)
        encoded.append(len(ys) > 0)
        # The window inference encodes: around the tile's queried pixels (the whole tile when
        # it has none, which inference skips).
        if encoded[-1]:
            top, bottom = top + int(ys.min()), top + int(ys.max()) + 1
            left, right = left + int(xs.min()), left + int(xs.max()) + 1
        origins, (window_h, window_w) = grid.windows([(top, bottom, left, right)])
        y0, x0 = origins[0]
        window = (..., slice(y0, y0 + window_h), slice(x0, x0 + window_w))
        modulations.append(
            encode_modulation(model, image[window].to(device), mask[window].to(device))
        )
    return modulations, encoded


def stack_gates(modulations: list[list[LayerModulation]]) -> list[torch.Tensor]:
    """Per layer, the gates of N modulations (batch 1 each) as (N, out, in) float64 on the CPU."""
    layers = len(modulations[0])
    return [
        torch.cat([modulation_gate(m[i].a, m[i].b) for m in modulations]).double().cpu()
        for i in range(layers)
    ]


def stack_biases(modulations: list[list[LayerModulation]]) -> list[torch.Tensor]:
    """Per layer, the bias shifts of N modulations as (N, out) float64 on the CPU."""
    layers = len(modulations[0])
    return [torch.cat([m[i].bias for m in modulations]).double().cpu() for i in range(layers)]


@dataclass(frozen=True)
class Variation:
    """How one layer's modulation varies over N samples (images or tiles)."""

    n: int
    gate_std: float  # std over the samples of each gate entry, mean over entries
    gate_std_ratio: float  # gate_std / the mean |g - 1|
    weight_change: float  # mean over samples of ||W (g_i - mean g)|| / ||W mean g||
    bias_std: float  # std over the samples of each bias shift entry, mean over entries


@dataclass(frozen=True)
class LayerStats:
    """One layer of f: how far its modulation moves from the shared weights."""

    layer: int
    shape: tuple[int, int]  # (out, in)
    gate_deviation: float  # mean |g - 1| over samples and entries
    gate_deviation_std: float  # std of |g - 1| over samples and entries
    saturated: float  # fraction of gates < 0.05 or > 1.95
    bias_shift: float  # mean |db|
    shared_bias: float  # mean |b_shared|, the scale to read bias_shift against


def magnitude(
    gates: torch.Tensor, shifts: torch.Tensor, shared_bias: torch.Tensor, layer: int
) -> LayerStats:
    """LayerStats of one layer: gates (N, out, in), shifts (N, out), shared_bias (out,)."""
    deviation = (gates - 1.0).abs()
    lo, hi = SATURATED
    return LayerStats(
        layer=layer,
        shape=tuple(gates.shape[1:]),
        gate_deviation=float(deviation.mean()),
        gate_deviation_std=float(deviation.std(correction=0)),
        saturated=float(((gates < lo) | (gates > hi)).double().mean()),
        bias_shift=float(shifts.abs().mean()),
        shared_bias=float(shared_bias.abs().mean()),
    )


def variation(gates: torch.Tensor, shifts: torch.Tensor, weight: torch.Tensor) -> Variation:
    """Variation of one layer over N >= 2 samples: gates (N, out, in), shifts (N, out), weight
    (out, in) the shared W. Stds are population stds (correction 0)."""
    n = gates.shape[0]
    if n < 2:
        nan = float("nan")
        return Variation(n, nan, nan, nan, nan)
    weight = weight.double().cpu()
    mean_gate = gates.mean(0)
    spread = float(gates.std(0, correction=0).mean())
    change = (weight * (gates - mean_gate)).flatten(1).norm(dim=1) / (weight * mean_gate).norm()
    deviation = float((gates - 1.0).abs().mean())
    return Variation(
        n=n,
        gate_std=spread,
        gate_std_ratio=spread / deviation if deviation > 0 else float("nan"),
        weight_change=float(change.mean()),
        bias_std=float(shifts.std(0, correction=0).mean()),
    )


@dataclass(frozen=True)
class HeadUsage:
    """How the hypernetwork's head, W h + b, makes one layer's factors (A, B, db) over N
    images: the part that varies with the image against the part they all get."""

    layer: int
    varying: float  # mean over images of ||W (h_i - mean h)||
    shared: float  # ||W mean h + b||
    bias: float  # ||b||, the head bias's share of `shared`
    ratio: float  # varying / shared


def head_usage(
    inputs: torch.Tensor, head: nn.Linear, sizes: list[int]
) -> tuple[float, list[HeadUsage]]:
    """inputs (N, hidden): the head's input per image; sizes: the head's outputs per layer of
    f, in order. Returns mean ||h_i - mean h|| / ||mean h||, and one HeadUsage per layer."""
    h = inputs.double().cpu()
    mean = h.mean(0)
    spread = float(((h - mean).norm(dim=1) / mean.norm().clamp_min(1e-12)).mean())
    usage = []
    weights = head.weight.detach().double().cpu().split(sizes)
    biases = head.bias.detach().double().cpu().split(sizes)
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        varying = float(((h - mean) @ w.T).norm(dim=1).mean())
        shared = float((w @ mean + b).norm())
        ratio = varying / shared if shared > 0 else float("nan")
        usage.append(HeadUsage(layer, varying, shared, float(b.norm()), ratio))
    return spread, usage


def head_table(spread: float, usage: list[HeadUsage], n: int) -> str:
    rows = [
        f"the head's input h over {n} images: mean norm(h_i - mean h) / norm(mean h) = "
        f"{spread:.3f}",
        "",
        "| layer | varying: mean norm(W (h_i - mean h)) | shared: norm(W mean h + b) "
        "| of it norm(b) | varying / shared |",
        "|---|--:|--:|--:|--:|",
    ]
    for u in usage:
        rows.append(
            f"| {u.layer} | {u.varying:.3f} | {u.shared:.3f} | {u.bias:.3f} | {u.ratio:.3f} |"
        )
    return "\n".join(rows)


def mean_modulation(modulations: list[list[LayerModulation]]) -> FixedModulation:
    """The mean gate and mean bias shift over N modulations, as a FixedModulation."""
    gates = [g.mean(0).float() for g in stack_gates(modulations)]
    shifts = [s.mean(0).float() for s in stack_biases(modulations)]
    device = modulations[0][0].a.device
    return FixedModulation.from_gates(gates, shifts).to(device)


@dataclass
class ModeScores:
    """Scores of one substitution over the images (percent)."""

    iou: float
    mean_iou: float
    mba: float
    flipped: float  # pixels whose label differs from own's, % of all pixels
    flipped_of_edits: float  # the same, % of the pixels own changed from the coarse mask
    # Pixels whose label differs from own_fixed's, % of all pixels (None without own_fixed):
    # against swap and mean, the per-image part of the change, without the per-window part.
    flipped_fixed: float | None
    image_ious: list[float]


def evaluate(
    refiner,
    pairs: list[Pair],
    first: list[list[LayerModulation]],
    modes: list[str],
    donor_shift: int,
    progress=None,
) -> dict[str, ModeScores]:
    """Refine every pair under every mode (see the module docstring) and score them.

    refiner: an `airm.Refiner`; its model's hypernetwork is swapped per mode and restored.
    first: each pair's first-scale modulation, in the order of `pairs`.
    """
    from airm.io import read_image, read_mask
    from airm.scoring import ScoreAccumulator, read_coarse, to_truth_size

    model = refiner.model
    n = len(pairs)
    device = next(model.parameters()).device
    stand_ins = {
        "own_fixed": lambda i: FixedModulation(first[i]).to(device),
        "swap": lambda i: FixedModulation(first[(i + donor_shift) % n]).to(device),
        "none": lambda i: None,
    }
    if "mean" in modes:
        mean = mean_modulation(first)
        stand_ins["mean"] = lambda i: mean
    scores = {m: ScoreAccumulator() for m in modes}
    flipped = dict.fromkeys(modes, 0)
    flipped_fixed = dict.fromkeys(modes, 0)
    edits = total = 0
    for i, pair in enumerate(pairs):
        image = read_image(pair.image, max_pixels=None)
        coarse = read_coarse(pair)
        gt = read_mask(pair.mask, max_pixels=None) > 0.5
        preds = {}
        for mode in ("own", *(m for m in modes if m != "own")):
            if mode == "own":
                preds[mode] = refiner.refine(image, coarse, soft=True) > 0.5
            else:
                with substituted(model, stand_ins[mode](i)):
                    preds[mode] = refiner.refine(image, coarse, soft=True) > 0.5
        own = preds["own"]
        edits += int((own != coarse).sum())
        total += own.size
        for mode in modes:
            flipped[mode] += int((preds[mode] != own).sum())
            if "own_fixed" in preds:
                flipped_fixed[mode] += int((preds[mode] != preds["own_fixed"]).sum())
            scores[mode].add(pair.name, to_truth_size(preds[mode], gt.shape), gt, pair.source)
        if progress is not None:
            progress(i + 1, n, pair.name)
    return {
        mode: ModeScores(
            iou=acc.pooled_iou,
            mean_iou=acc.mean_iou,
            mba=acc.mba,
            flipped=100.0 * flipped[mode] / max(total, 1),
            flipped_of_edits=100.0 * flipped[mode] / max(edits, 1),
            flipped_fixed=100.0 * flipped_fixed[mode] / max(total, 1)
            if "own_fixed" in modes
            else None,
            image_ious=[100.0 * s.iou for s in acc.images],
        )
        for mode, acc in scores.items()
    }


def layer_table(layers: list[LayerStats], images: list[Variation], tiles: list[Variation]) -> str:
    head = (
        "| layer | out x in | mean abs(g-1) | std abs(g-1) | saturated % | mean abs(db) "
        "| mean abs(b) | std over images | / mean abs(g-1) | W change over images "
        "| std over tiles | / mean abs(g-1) | W change over tiles | db std images / tiles |"
    )
    rows = [head, "|" + "---|" * 14]
    for s, v, t in zip(layers, images, tiles, strict=True):
        rows.append(
            f"| {s.layer} | {s.shape[0]} x {s.shape[1]} | {s.gate_deviation:.3f} "
            f"| {s.gate_deviation_std:.3f} | {100 * s.saturated:.1f} | {s.bias_shift:.4f} "
            f"| {s.shared_bias:.4f} | {v.gate_std:.4f} | {v.gate_std_ratio:.3f} "
            f"| {v.weight_change:.4f} | {t.gate_std:.4f} | {t.gate_std_ratio:.3f} "
            f"| {t.weight_change:.4f} | {v.bias_std:.4f} / {t.bias_std:.4f} |"
        )
    return "\n".join(rows)


def scores_table(scores: dict[str, ModeScores]) -> str:
    rows = [
        "| modulation | IoU | mean IoU | mBA | IoU - own | mBA - own | pixels flipped vs own % "
        "| flipped / own's edits % | pixels flipped vs own_fixed % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    own = scores["own"]
    for mode, s in scores.items():
        vs_fixed = "" if s.flipped_fixed is None else f"{s.flipped_fixed:.3f}"
        rows.append(
            f"| {mode} | {s.iou:.2f} | {s.mean_iou:.2f} | {s.mba:.2f} | {s.iou - own.iou:+.2f} "
            f"| {s.mba - own.mba:+.2f} | {s.flipped:.3f} | {s.flipped_of_edits:.2f} | {vs_fixed} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.modulation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="an AIRMF checkpoint (default: the shipped model, airm/weights/airm_default)",
    )
    p.add_argument("--data", required=True, help="BIG-layout folder with _im, _gt and _seg files")
    p.add_argument(
        "--limit", type=int, default=None, help="use N images evenly spread over the folder"
    )
    p.add_argument(
        "--modes",
        default=None,
        help=f"comma-separated substitutions to score, from {','.join(MODES)} (default: all); "
        "'own' is always run, as the baseline the others are compared with",
    )
    p.add_argument(
        "--donor-shift",
        type=int,
        default=None,
        help="swap: image i takes the modulation of image (i + K) mod n (default n // 2)",
    )
    p.add_argument(
        "--tile-image",
        default=None,
        metavar="NAME",
        help="the image whose full-resolution tiles are compared (default: the largest one)",
    )
    p.add_argument(
        "--stats-only", action="store_true", help="only the statistics, no refinement scores"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from airm.api import default_checkpoint
    from airm.checkpoint import CheckpointError, load_model
    from airm.io import read_image
    from airm.refiner import Refiner
    from airm.scoring import read_coarse

    modes = list(MODES) if args.modes is None else [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        print(f"error: unknown modes {unknown}; choose from {list(MODES)}", file=sys.stderr)
        return 2
    modes = ["own", *(m for m in MODES if m in modes and m != "own")]
    try:
        path = args.checkpoint if args.checkpoint is not None else default_checkpoint()
        model = load_model(path)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if model.hypernetwork is None:
        print(
            f"error: {path} has no hypernetwork (modulation=False: SIRMF or CRM), so there is "
            "no modulation to diagnose",
            file=sys.stderr,
        )
        return 2
    try:
        pairs = [p for p in find_pairs(args.data) if p.coarse is not None]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pairs = spread_pairs(pairs, args.limit)
    if len(pairs) < 2:
        print(f"error: need at least 2 pairs with a _seg.png in {args.data}", file=sys.stderr)
        return 2
    options = InferenceOptions(precision="float32")  # the modulations are computed in float32
    refiner = Refiner(model, device=args.device, options=options, max_pixels=None)
    inference_model = refiner.model  # what refinement runs: batchnorm folded

    # 1, 2: every image at its first scale, and the tiles of one image at full resolution.
    first, sizes, head_inputs = [], [], []
    for pair in pairs:
        image, mask = image_tensors(read_image(pair.image, max_pixels=None), read_coarse(pair))
        first.append(
            first_scale_modulation(inference_model, image, mask, options, head_inputs=head_inputs)
        )
        sizes.append(image.shape[-2] * image.shape[-1])
    names = [p.name for p in pairs]
    if args.tile_image is None:
        tile_pair = pairs[int(np.argmax(sizes))]
    elif args.tile_image in names:
        tile_pair = pairs[names.index(args.tile_image)]
    else:
        print(f"error: --tile-image {args.tile_image!r} is not among the images", file=sys.stderr)
        return 2
    image_np = read_image(tile_pair.image, max_pixels=None)
    image, mask = image_tensors(image_np, read_coarse(tile_pair))
    tiles, encoded = tile_modulations(inference_model, image, mask, options)
    tiles_used = [m for m, e in zip(tiles, encoded, strict=True) if e]

    weights = [w.detach() for w in inference_model.implicit_function.weights]
    shared_biases = [b.detach().double().cpu() for b in inference_model.implicit_function.biases]
    gates, shifts = stack_gates(first), stack_biases(first)
    layers = [
        magnitude(g, s, b, i)
        for i, (g, s, b) in enumerate(zip(gates, shifts, shared_biases, strict=True))
    ]
    over_images = [variation(g, s, w) for g, s, w in zip(gates, shifts, weights, strict=True)]
    over_tiles = [
        variation(g, s, w)
        for g, s, w in zip(stack_gates(tiles_used), stack_biases(tiles_used), weights, strict=True)
    ]
    over_all_tiles = [
        variation(g, s, w)
        for g, s, w in zip(stack_gates(tiles), stack_biases(tiles), weights, strict=True)
    ]
    height, width = image_np.shape[:2]
    print(f"checkpoint {path}")
    print(f"{len(pairs)} images from {args.data}; each encoded whole at its first scale\n")
    print(
        f"tiles: {tile_pair.name} ({width} x {height}) at full resolution, "
        f"{sum(encoded)} of {len(tiles)} tiles of {options.tile_size} px + {options.tile_context} "
        "px context hold the coarse mask's boundary band (the ones inference encodes)\n"
    )
    print(layer_table(layers, over_images, over_tiles))
    hypernetwork = inference_model.hypernetwork
    spread, usage = head_usage(torch.cat(head_inputs), hypernetwork.head, hypernetwork.sizes)
    print("\n" + head_table(spread, usage, len(pairs)))
    result = {
        "checkpoint": str(path),
        "data": str(args.data),
        "images": names,
        "tile_image": {"name": tile_pair.name, "size": [height, width], "encoded": encoded},
        "layers": [dataclasses.asdict(s) for s in layers],
        "over_images": [dataclasses.asdict(v) for v in over_images],
        "over_tiles": [dataclasses.asdict(v) for v in over_tiles],
        "over_all_tiles": [dataclasses.asdict(v) for v in over_all_tiles],
        "head_input_spread": spread,
        "head_usage": [dataclasses.asdict(u) for u in usage],
    }

    # 3: refinement under each substitution.
    if not args.stats_only:
        shift = args.donor_shift if args.donor_shift is not None else len(pairs) // 2
        if "swap" in modes and shift % len(pairs) == 0:
            print("error: --donor-shift must not be a multiple of n", file=sys.stderr)
            return 2

        def progress(done: int, total: int, name: str) -> None:
            print(f"  [{done}/{total}] {name}", file=sys.stderr, flush=True)

        scores = evaluate(refiner, pairs, first, modes, shift, progress)
        print(f"\nrefinement with the modulation replaced (swap: donor i + {shift} mod n)\n")
        print(scores_table(scores))
        result["donor_shift"] = shift
        result["scores"] = {m: dataclasses.asdict(s) for m, s in scores.items()}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
