"""Where refinement's work goes, scale by scale: windows encoded, their area, queries, seconds.

    python tools/window_area.py --sizes 1080x1920,2160x3840

The benchmark's scene (`eval.benchmark`: the example image and its coarse mask, resized) is
refined at each size with the default options, and each scale of the coarse-to-fine loop is
counted: the windows the encoder ran on, their total area (the encoder's work), the least area
any windows could encode for that scale's queried pixels (those pixels with `tile_context`
pixels around each, clipped to the scale: what windows that wasted nothing would cover), the
queried pixels (the decoder's work) and the seconds. The last lines give each figure's ratio
between the last size and the first. The boundary doubles in length from 2 to 8 MP, so time
that grows with the boundary grows about 2x; a figure that grows more says where the rest
comes from, and the least area says how much of it a better choice of windows could remove.

Counting wraps `airm.inference.refine_at_scale` and the model's `encode` and `query` in this
process only; the refinement itself is the one `airm.refine` runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import airm.inference  # noqa: E402
from airm.api import get_refiner  # noqa: E402
from eval.benchmark import EXAMPLE, load_scene, parse_size  # noqa: E402

FIELDS = ("windows", "encoded_mp", "least_mp", "queries", "seconds")


def least_area(queried: torch.Tensor, context: int) -> int:
    """Pixels within `context` pixels (a square) of a queried pixel of bool (h, w) `queried`:
    the area any windows holding each queried pixel with its context must cover."""
    kernel = np.ones((2 * context + 1, 2 * context + 1), np.uint8)
    return int(np.count_nonzero(cv2.dilate(queried.cpu().numpy().view(np.uint8), kernel)))


def count_scales(refiner, image, coarse) -> list[dict]:
    """Refine once; per scale: its size and the figures of FIELDS."""
    scales: list[dict] = []
    model = refiner.model
    encode, query, refine_at_scale = model.encode, model.query, airm.inference.refine_at_scale

    def counted_encode(images, masks, **kwargs):
        scales[-1]["windows"] += images.shape[0]
        scales[-1]["encoded_mp"] += images.shape[0] * images.shape[-2] * images.shape[-1] / 1e6
        return encode(images, masks, **kwargs)

    def counted_query(encoded, coords, **kwargs):
        scales[-1]["queries"] += coords.shape[0] * coords.shape[1]
        return query(encoded, coords, **kwargs)

    def counted_scale(model, image, prob, **kwargs):
        scales.append({"size": tuple(image.shape[-2:]), **dict.fromkeys(FIELDS, 0)})
        queried = airm.inference.queried_pixels(
            prob, kwargs["band"], kwargs["uncertain"], kwargs["coarse"]
        )
        scales[-1]["least_mp"] = least_area(queried, kwargs["tile_context"]) / 1e6
        tic = time.perf_counter()
        out = refine_at_scale(model, image, prob, **kwargs)
        scales[-1]["seconds"] = time.perf_counter() - tic
        return out

    model.encode, model.query = counted_encode, counted_query
    airm.inference.refine_at_scale = counted_scale
    try:
        refiner.refine(image, coarse)
    finally:
        airm.inference.refine_at_scale = refine_at_scale
        del model.encode, model.query  # back to the class's methods
    return scales


def totals(scales: list[dict]) -> dict:
    return {field: sum(s[field] for s in scales) for field in FIELDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="1080x1920,2160x3840", help="comma-separated HxW sizes, as benchmarked"
    )
    parser.add_argument("--checkpoint", help="airm checkpoint (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="refinements per size (median)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    refiner = get_refiner(args.checkpoint, "cpu").with_options(max_pixels=None)
    image_path, coarse_path = EXAMPLE / "composite_im.jpg", EXAMPLE / "composite_seg.png"
    refiner.refine(*load_scene(str(image_path), str(coarse_path), (480, 720)))  # warm-up
    print(
        f"{'size':>11} {'scale':>11} {'windows':>8} {'encoded MP':>11} {'least MP':>9}"
        f" {'queries':>9} {'s':>7}"
    )
    overall = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        scene = load_scene(str(image_path), str(coarse_path), size)
        runs = [count_scales(refiner, *scene) for _ in range(args.repeats)]
        scales = runs[0]  # the counts repeat exactly; only the seconds vary
        for i, scale in enumerate(scales):
            scale["seconds"] = sorted(run[i]["seconds"] for run in runs)[len(runs) // 2]
            label = "x".join(map(str, size))
            print(
                f"{label:>11} {'x'.join(map(str, scale['size'])):>11} {scale['windows']:>8}"
                f" {scale['encoded_mp']:>11.2f} {scale['least_mp']:>9.2f} {scale['queries']:>9}"
                f" {scale['seconds']:>7.3f}"
            )
        overall.append(totals(scales))
    if len(overall) > 1:
        first, last = overall[0], overall[-1]
        ratios = ", ".join(f"{f} {last[f] / max(first[f], 1e-9):.2f}x" for f in FIELDS)
        print(f"last size against the first (all scales): {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
