"""Make an evaluation folder from image/mask pairs, with coarse masks made as shared/data/val's.

    python tools/coarse_set.py ../shared/data/train runs/train160 --per-source 40

Every source's pairs (by the folder's manifest, else the name's prefix) are thinned to
--per-source, spread over the sorted names; every other one gets the coarse mask of an imitated
low-resolution segmenter (long side 48-128 px), the others CascadePSP's perturbation down to an
IoU drawn from 0.75-0.9, as `shared/data/val`'s were made. The folder is in the BIG layout
(`<name>_im.*` copied, `<name>_gt.png`, `<name>_seg.png`) with a `manifest.json` that gives each
pair's source, size, kind of coarse mask and its IoU, so `python -m eval --data OUT` reports each
source and kind apart. With the training folder it scores a model on images it was trained on,
beside val, which tells an overfit from a model that fits neither. OUT must be new or empty.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.data import find_pairs, spread_pairs  # noqa: E402
from airm.io import read_mask, write_mask  # noqa: E402
from airm.metrics import iou  # noqa: E402
from airm.perturb import lowres_mask, perturb_mask  # noqa: E402

# The IoU range that shared/data/val's perturbed coarse masks were drawn down to.
PERTURB_IOU = (0.75, 0.9)


def make_set(source: Path, out: Path, *, per_source: int | None, seed: int) -> list[dict]:
    """Write the folder; returns its manifest."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; choose a new folder")
    pairs = find_pairs(source)
    if not pairs:
        raise ValueError(f"no image/mask pairs in {source}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest = []
    for name in sorted({p.source for p in pairs}):
        chosen = spread_pairs([p for p in pairs if p.source == name], per_source)
        for i, pair in enumerate(chosen):
            gt = read_mask(pair.mask, max_pixels=None) > 0.5
            kind = "lowres" if i % 2 == 0 else "perturb"
            if kind == "lowres":
                coarse = lowres_mask(gt, rng)
            else:
                coarse = perturb_mask(gt, rng, iou_target=rng.uniform(*PERTURB_IOU))
            shutil.copyfile(pair.image, out / f"{pair.name}_im{pair.image.suffix.lower()}")
            write_mask(out / f"{pair.name}_gt.png", np.multiply(gt, 255, dtype=np.uint8))
            write_mask(out / f"{pair.name}_seg.png", np.multiply(coarse, 255, dtype=np.uint8))
            manifest.append(
                {
                    "name": pair.name,
                    "source": name,
                    "height": gt.shape[0],
                    "width": gt.shape[1],
                    "coarse": kind,
                    "coarse_iou": round(iou(coarse, gt), 4),
                }
            )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="BIG-layout or images/ + masks/ folder")
    p.add_argument("out", type=Path, help="new (or empty) folder to write")
    p.add_argument("--per-source", type=int, default=None, help="pairs per source (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the coarse masks")
    args = p.parse_args(argv)
    if args.per_source is not None and args.per_source < 1:
        p.error("--per-source must be at least 1")
    try:
        manifest = make_set(args.source, args.out, per_source=args.per_source, seed=args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name in sorted({m["source"] for m in manifest}):
        ious = [m["coarse_iou"] for m in manifest if m["source"] == name]
        print(f"{name}: {len(ious)} pairs, mean coarse IoU {np.mean(ious):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
