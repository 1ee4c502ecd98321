"""What the last scale of refinement does to a nearly right mask.

    python -m eval.last_scale --data ../shared/data/val [--factor 2] [--checkpoint W]

Every scale after the first is handed the previous, coarser scale's probabilities, enlarged.
Here that input is the truth itself as a scale `factor` times coarser would hand it on
(`airm.perturb.handed_on`: shrunk, enlarged back bilinearly; soft and nearly right), and only
the last scale runs on it: the image's full resolution, with the default band and tiles. A
refiner that keeps what is right scores about as well as its input; one that re-draws the
boundary from the image alone falls to its own accuracy. Prints pooled IoU, mean IoU and mBA
of the input and of the output, per source.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np

from airm.data import Pair, find_pairs
from airm.io import read_image, read_mask
from airm.perturb import handed_on
from airm.refiner import Refiner
from airm.scoring import score_pairs
from eval.run import points


def last_scale_only(refiner: Refiner) -> Refiner:
    """`refiner` with one scale, the full resolution, queried in the later scales' band around
    the mask it is given and trusting it as they do (no band of a separate coarse mask, no
    first scale's trust)."""
    options = refiner.options
    return refiner.with_options(
        replace(
            options, scales=(1.0,), first_band=options.band, first_trust=1.0, coarse_band=False
        ),
        max_pixels=None,
    )


def score_last_scale(refiner: Refiner, pairs: list[Pair], factor: float) -> tuple[dict, dict]:
    """`airm.scoring.score_pairs` results of the input (each pair's truth as a scale `factor`
    times coarser hands it on) and of what `last_scale_only(refiner)` makes of it."""
    last = last_scale_only(refiner)

    def given(pair: Pair) -> np.ndarray:
        return handed_on(read_mask(pair.mask, max_pixels=None) > 0.5, factor)

    before = score_pairs(pairs, lambda pair: given(pair) > 0.5)
    after = score_pairs(
        pairs, lambda pair: last.refine(read_image(pair.image, max_pixels=None), given(pair))
    )
    return before, after


def checked_checkpoint(checkpoint: str | None) -> None:
    """Raise ValueError (CheckpointError) unless `checkpoint`, or the shipped model when None,
    reads as an airm checkpoint; FileNotFoundError when None and no model is shipped."""
    from airm.api import default_checkpoint
    from airm.checkpoint import read_checkpoint

    read_checkpoint(checkpoint if checkpoint is not None else default_checkpoint())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.last_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="a BIG-layout folder (its truths are used)")
    p.add_argument("--factor", type=float, default=2.0, help="how much coarser the input is")
    p.add_argument("--checkpoint", default=None, help="weights (default: the shipped model)")
    p.add_argument("--device", default=None, help="device (default: CUDA when available)")
    p.add_argument("--limit", type=int, default=None, help="score only this many pairs")
    args = p.parse_args(argv)
    if not args.factor >= 1:
        print(f"error: --factor must be >= 1, got {args.factor}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    try:
        checked_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        pairs = find_pairs(args.data)[: args.limit]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not pairs:
        print(f"error: no image/truth pairs in {args.data}", file=sys.stderr)
        return 2
    from airm.api import get_refiner

    results = score_last_scale(get_refiner(args.checkpoint, args.device), pairs, args.factor)
    print(f"the truth {args.factor:g} times coarser, then the last scale alone:\n")
    print("| source | images | input: pooled IoU / mean IoU / mBA | after the last scale |")
    print("|---|--:|---|---|")
    for key in [*results[0]["sources"], "all"]:
        before, after = (r if key == "all" else r["sources"][key] for r in results)
        row = [
            " / ".join(points(s[k]) for k in ("iou", "mean_iou", "mba")) for s in (before, after)
        ]
        print(f"| {key} | {before['n']} | {row[0]} | {row[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
