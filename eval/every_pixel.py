"""Where refinement that queries every pixel goes wrong and the default path does not.

    python -m eval.every_pixel runs/eval --data ../shared/data/val \\
        [--default airm --every airm_exhaustive] [--top 8] [--rerun 3 --checkpoint W]

Reads the masks that two methods of one `python -m eval` run wrote: the default path and
`InferenceOptions.exhaustive()`. Counts the pixels that only the every-pixel masks get wrong,
as false foreground or false background, by their distance from the coarse mask's boundary
(and the pixels that only the default path gets wrong), beside all the pixels each path gets
wrong; then pooled IoU and wrong pixels per source, and the images with the most extra errors.

Any two methods of the run compare the same way: `--default coarse --every airm` counts the
pixels refinement gets wrong that the coarse mask had right, counts and lists the images it
makes worse.

--rerun K refines those K images again with every pixel queried except at the first scale,
which keeps the default band. Where that removes the extra errors, they are made at the first
scale, where the network sees the whole image.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from airm.data import Pair, find_pairs
from airm.io import read_image, read_mask
from airm.metrics import iou_counts
from airm.morphology import boundaries
from eval.last_scale import checked_checkpoint
from eval.run import mask_path

# Edges of the distance bins, in pixels from the coarse mask's boundary; 32 is the default
# band's reach (InferenceOptions.band), beyond which the default path does not query.
BINS = (0, 12, 24, 32, 48, 96)


@dataclass
class Gap:
    """Pixel counts of one image or of several added up."""

    false_fg: np.ndarray  # (len(BINS),) wrong only on the every-pixel path, by distance bin
    false_bg: np.ndarray
    wrong_default: np.ndarray  # (len(BINS),) every pixel the default path gets wrong, by bin
    wrong_every: np.ndarray
    fixed: int  # wrong only on the default path
    inter_default: int
    union_default: int
    inter_every: int
    union_every: int

    @property
    def extra(self) -> int:
        """Pixels the every-pixel path gets wrong, less those it gets right and the default not."""
        return int(self.false_fg.sum() + self.false_bg.sum()) - self.fixed

    def __add__(self, other: Gap) -> Gap:
        return Gap(*(getattr(self, f) + getattr(other, f) for f in _FIELDS))


_FIELDS = tuple(f.name for f in fields(Gap))


def boundary_distance(mask: np.ndarray) -> np.ndarray:
    """float32 HxW: each pixel's distance from the boundary of bool `mask`."""
    off_edge = (boundaries([mask]) == 0).view(np.uint8)
    return cv2.distanceTransform(off_edge, cv2.DIST_L2, 3)


def image_gap(gt: np.ndarray, coarse: np.ndarray, default: np.ndarray, every: np.ndarray) -> Gap:
    """The Gap of one image, from its bool HxW truth, coarse mask and the two paths' masks."""
    only_every = (every != gt) & (default == gt)
    distance = boundary_distance(coarse)
    edges = [*BINS, np.inf]

    def binned(wrong: np.ndarray) -> np.ndarray:
        return np.histogram(distance[wrong], edges)[0]

    return Gap(
        binned(only_every & every),
        binned(only_every & ~every),
        binned(default != gt),
        binned(every != gt),
        int(((default != gt) & (every == gt)).sum()),
        *iou_counts(default, gt),
        *iou_counts(every, gt),
    )


def _iou(inter: int, union: int) -> float:
    return 100.0 * inter / union if union else 100.0


def read_gaps(out: Path, pairs: list[Pair], default: str, every: str) -> dict[str, Gap]:
    """name -> Gap for every pair with a coarse mask and both methods' masks."""
    gaps = {}
    for pair in pairs:
        paths = [mask_path(out, method, pair) for method in (default, every)]
        if pair.coarse is None or not all(p.is_file() for p in paths):
            continue
        gt, coarse = (read_mask(p) > 0.5 for p in (pair.mask, pair.coarse))
        gaps[pair.name] = image_gap(gt, coarse, *(read_mask(p) > 0.5 for p in paths))
    return gaps


def first_scale_rerun(
    out: Path,
    pairs: list[Pair],
    methods: tuple[str, str],
    checkpoint: str | None,
    device: str | None,
) -> None:
    """Refine `pairs` with every pixel queried but the first scale's band kept, and print the
    pixels it gets wrong beside those of the two methods' masks in `out`."""
    from airm.api import get_refiner
    from airm.inference import InferenceOptions

    options = InferenceOptions.exhaustive(first_band=InferenceOptions().first_band)
    refiner = get_refiner(checkpoint, device).with_options(options, max_pixels=None)
    print(f"\n| image | wrong pixels: {methods[0]} | {methods[1]} | every pixel, banded first |")
    print("|---|--:|--:|--:|")
    for pair in pairs:
        gt = read_mask(pair.mask) > 0.5
        wrong = [int(((read_mask(mask_path(out, m, pair)) > 0.5) != gt).sum()) for m in methods]
        mask = refiner.refine(read_image(pair.image), read_mask(pair.coarse)) > 127
        print(f"| {pair.name} | {wrong[0]} | {wrong[1]} | {int((mask != gt).sum())} |")


def _total(gaps: list[Gap]) -> Gap:
    zeros = np.zeros(len(BINS), np.int64)
    return sum(gaps, start=Gap(zeros, zeros, zeros, zeros, 0, 0, 0, 0, 0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.every_pixel",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", help="the --out folder of a `python -m eval` run")
    p.add_argument("--data", required=True, help="the data folder that run scored")
    p.add_argument("--default", default="airm", help="the method of the default path")
    p.add_argument("--every", default="airm_exhaustive", help="the every-pixel method")
    p.add_argument("--top", type=int, default=8, help="images listed, most extra errors first")
    p.add_argument("--rerun", type=int, default=0, help="images refined again (see above)")
    p.add_argument("--checkpoint", default=None, help="weights for --rerun (default: shipped)")
    p.add_argument("--device", default=None, help="device for --rerun")
    args = p.parse_args(argv)
    try:
        if args.rerun:
            checked_checkpoint(args.checkpoint)
        pairs = find_pairs(args.data)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gaps = read_gaps(Path(args.out), pairs, args.default, args.every)
    if not gaps:
        print(
            f"error: no image has a coarse mask and masks of both {args.default} and "
            f"{args.every} in {args.out}",
            file=sys.stderr,
        )
        return 2
    total = _total(list(gaps.values()))
    labels = [f"{lo}-{hi}" for lo, hi in zip(BINS, BINS[1:], strict=False)] + [f">{BINS[-1]}"]
    print(f"{len(gaps)} images; pixels only {args.every} gets wrong (false fg, false bg), and")
    print("all that each gets wrong, by distance (px) from the coarse mask's boundary:\n")
    print("| | " + " | ".join(labels) + " | all |")
    print("|---|" + "--:|" * (len(labels) + 1))
    rows = (
        ("false fg", total.false_fg),
        ("false bg", total.false_bg),
        (f"all wrong, {args.default}", total.wrong_default),
        (f"all wrong, {args.every}", total.wrong_every),
    )
    for name, counts in rows:
        print(f"| {name} | " + " | ".join(str(c) for c in counts) + f" | {counts.sum()} |")
    print(f"\nwrong on {args.default} only: {total.fixed} pixels")
    worse = [g.extra for g in gaps.values() if g.extra > 0]
    print(
        f"images with more pixels wrong on {args.every} than on {args.default}: "
        f"{len(worse)}, {sum(worse)} more in all\n"
    )

    sources = sorted({p.source for p in pairs if p.name in gaps})
    names = f"{args.default} | {args.every} | {args.default} minus {args.every}"
    print(
        f"| source | images | pooled IoU, {names} | wrong pixels, {args.default} | {args.every} |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    for source in [*sources, "all"]:
        picked = [gaps[p.name] for p in pairs if p.name in gaps and source in ("all", p.source)]
        s = _total(picked)
        d, e = _iou(s.inter_default, s.union_default), _iou(s.inter_every, s.union_every)
        wrong = f"{s.union_default - s.inter_default} | {s.union_every - s.inter_every}"
        print(f"| {source} | {len(picked)} | {d:.2f} | {e:.2f} | {d - e:+.2f} | {wrong} |")

    worst = sorted(gaps, key=lambda n: gaps[n].extra, reverse=True)[: args.top]
    print(
        f"\n| image | extra wrong pixels | false fg | false bg "
        f"| IoU: {args.default} / {args.every} |"
    )
    print("|---|--:|--:|--:|--:|")
    for name in worst:
        g = gaps[name]
        d, e = _iou(g.inter_default, g.union_default), _iou(g.inter_every, g.union_every)
        ious = f"{d:.2f} / {e:.2f}"
        print(f"| {name} | {g.extra} | {g.false_fg.sum()} | {g.false_bg.sum()} | {ious} |")
    if args.rerun:
        by_name = {p.name: p for p in pairs}
        first_scale_rerun(
            Path(args.out),
            [by_name[n] for n in worst[: args.rerun]],
            (args.default, args.every),
            args.checkpoint,
            args.device,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
