"""Speed and memory of refinement (SPEC section 5): `python -m eval.benchmark --help`.

For each size, the example image and its coarse mask are resized to that size and refined in
a fresh process, which reports seconds (after one warm-up run at the smallest size, so the
figure excludes start-up) and its peak memory (max RSS, the whole process). With --compare,
the same image is also refined without the shortcuts (every pixel queried, every scale encoded
whole) and the agreement between the two results is printed as IoU and the fraction of pixels
that differ.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.child import run_in_process  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples"


def _load(image_path: str, coarse_path: str, size: tuple[int, int]):
    import cv2

    from airm.io import read_image, read_mask

    image = read_image(image_path, max_pixels=None)
    coarse = read_mask(coarse_path, max_pixels=None)
    h, w = size
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)
    coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return image, coarse


def measure(args: dict) -> dict:
    import torch

    from airm.api import get_refiner
    from airm.inference import InferenceOptions
    from airm.refiner import Refiner

    base = get_refiner(args["checkpoint"], args["device"])
    options = InferenceOptions(**args["options"])
    refiner = Refiner(base.model, device=base.device, options=options, max_pixels=None)
    warm_image, warm_coarse = _load(args["image"], args["coarse"], (480, 720))
    refiner.refine(warm_image, warm_coarse)
    image, coarse = _load(args["image"], args["coarse"], tuple(args["size"]))
    if base.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    mask = refiner.refine(image, coarse)
    if base.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    result = {
        "size": args["size"],
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if base.device.type == "cuda"
        else None,
    }
    if args.get("save"):
        import numpy as np

        np.save(args["save"], mask > 127)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: shipped model)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--image", default=str(EXAMPLE / "composite_im.jpg"), help="image to resize")
    p.add_argument("--coarse", default=str(EXAMPLE / "composite_seg.png"), help="its coarse mask")
    p.add_argument("--sizes", default="2328x3492,4000x6000", help="comma-separated HxW sizes")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also refine without shortcuts and print the agreement",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    common = {
        "checkpoint": args.checkpoint,
        "device": args.device,
        "image": args.image,
        "coarse": args.coarse,
    }
    results = []
    print(f"{'size':>12}{'mode':>12}{'seconds':>10}{'peak RSS MB':>13}{'GPU MB':>9}")
    for size in sizes:
        runs = [("shortcuts", {})]
        if args.compare:
            runs.append(("full", {"band": None, "first_band": None, "tile_size": None}))
        saved = {}
        for mode, options in runs:
            out = Path(f"/tmp/airm_bench_{mode}_{size[0]}x{size[1]}.npy")
            r = run_in_process(
                measure, {"size": list(size), "options": options, "save": str(out), **common}
            )
            r["mode"] = mode
            saved[mode] = out
            results.append(r)
            gpu = f"{r['gpu_peak_mb']:9.0f}" if r["gpu_peak_mb"] is not None else f"{'-':>9}"
            print(
                f"{size[0]:>5}x{size[1]:<6}{mode:>12}{r['seconds']:10.2f}{r['peak_rss_mb']:13.0f}{gpu}"
            )
        if args.compare:
            import numpy as np

            a, b = np.load(saved["shortcuts"]), np.load(saved["full"])
            iou = (a & b).sum() / max(1, (a | b).sum())
            print(
                f"{'':>12}{'agreement':>12}  IoU {100 * iou:.3f}, pixels differing "
                f"{100 * (a != b).mean():.4f}%"
            )
            results.append(
                {
                    "size": list(size),
                    "mode": "agreement",
                    "iou": float(iou),
                    "differing": float((a != b).mean()),
                }
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
