"""Paired bootstrap of per-image scores between methods of one `python -m eval` run.

    python -m eval.compare runs/eval --reference airm [--resamples 5000] [--by coarse]

For each method beside the reference, the mean over images of (method - reference) per-image
IoU and boundary accuracy (the quantities whose means are the table's mean IoU and mBA), and a
95% percentile interval from resampling the images with replacement, the same resample for
both methods (so the interval is of the paired difference). An interval that excludes zero says
the difference is larger than the spread of the images would make by chance. The last column
counts the images whose IoU the method lowers. Reads the `OUT/<method>/scores.json` files that
`python -m eval` writes. `--by source` (or `--by coarse`: source and kind of coarse mask, where
the data's manifest says) adds a row per group, each resampled within itself: two changes that
trade one kind of input against another can tie overall.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from airm.scoring import coarse_group


@dataclass(frozen=True)
class Difference:
    """mean (method - reference) over n images and its 95% interval, in points (x 100); lower:
    how many of the n images score below the reference."""

    mean: float
    low: float
    high: float
    n: int = 0
    lower: int = 0

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def paired_bootstrap(
    ours: np.ndarray, reference: np.ndarray, *, resamples: int = 5000, seed: int = 0
) -> Difference:
    """ours, reference: per-image scores in [0, 1] of the same images, in the same order."""
    diff = 100.0 * (np.asarray(ours, float) - np.asarray(reference, float))
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Difference(float(diff.mean()), float(low), float(high), len(diff), int((diff < 0).sum()))


def read_scores(out: Path, method: str) -> dict[str, dict]:
    """name -> {"iou", "boundary_accuracy", ...} of one method's images."""
    path = out / method / "scores.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: was {method} run into {out}?")
    return {s["name"]: s for s in json.loads(path.read_text())}


def group_names(scores: dict[str, dict], by: str) -> dict[str, list[str]]:
    """group -> names of one method's images, by "source" or by "coarse" (source and kind of
    coarse mask; images whose kind is unknown form their source's own group)."""
    if by not in ("source", "coarse"):
        raise ValueError(f"by must be 'source' or 'coarse', got {by!r}")
    groups: dict[str, list[str]] = {}
    for name, s in sorted(scores.items()):
        key = s.get("source", "")
        if by == "coarse" and s.get("coarse_kind"):
            key = coarse_group(key, s["coarse_kind"])
        groups.setdefault(key, []).append(name)
    return dict(sorted(groups.items()))


def compare(
    out: Path,
    method: str,
    reference: str,
    *,
    resamples: int = 5000,
    seed: int = 0,
    only: Iterable[str] | None = None,
) -> dict[str, Difference]:
    """{"iou": ..., "mba": ...} differences of `method` against `reference` over their common
    images, or those of them in `only` (for mBA, those whose truth has a boundary; None when
    no truth has one)."""
    ours, ref = read_scores(out, method), read_scores(out, reference)
    names = sorted(ours.keys() & ref.keys() & (set(only) if only is not None else ref.keys()))
    if not names:
        raise ValueError(f"{method} and {reference} share no images")
    bounded = [n for n in names if ref[n]["boundary_accuracy"] is not None]

    def pick(scores: dict, key: str, keys: list[str]) -> np.ndarray:
        return np.array([scores[n][key] for n in keys])

    mba = None
    if bounded:
        mba = paired_bootstrap(
            pick(ours, "boundary_accuracy", bounded),
            pick(ref, "boundary_accuracy", bounded),
            resamples=resamples,
            seed=seed,
        )
    return {
        "iou": paired_bootstrap(
            pick(ours, "iou", names), pick(ref, "iou", names), resamples=resamples, seed=seed
        ),
        "mba": mba,
    }


def scored_methods(out: Path) -> list[str]:
    """The methods a `python -m eval` run into `out` scored: those of its results.json, or
    where there is none, every folder holding a scores.json."""
    results = out / "results.json"
    if results.is_file():
        return [row["method"] for row in json.loads(results.read_text())]
    return sorted(d.name for d in out.iterdir() if (d / "scores.json").is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", help="the --out folder of a `python -m eval` run")
    p.add_argument("--reference", default="airm", help="the method the others are compared to")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods (default: every one OUT/results.json lists)",
    )
    p.add_argument("--resamples", type=int, default=5000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    p.add_argument(
        "--by",
        choices=("source", "coarse"),
        default=None,
        help="also a row per source, or per source and kind of coarse mask",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        if args.resamples < 1:
            raise ValueError(f"--resamples must be >= 1, got {args.resamples}")
        if not out.is_dir():
            raise ValueError(f"{out} is not a folder")
        scored = scored_methods(out)
        if not scored:
            raise ValueError(f"{out} holds no scored methods: is it the --out of python -m eval?")
        methods = args.methods.split(",") if args.methods else scored
        unscored = [m for m in [args.reference, *methods] if m not in scored]
        if unscored:
            raise ValueError(f"{unscored} not scored in {out}; choose from {scored}")
        methods = [m for m in methods if m != args.reference]
        groups = {"all": None}
        if args.by:
            groups.update(group_names(read_scores(out, args.reference), args.by))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"| method - {args.reference} | images | n | mean IoU (95% interval) "
        "| mBA (95% interval) | IoU lower |"
    )
    print("|---|---|--:|---|---|--:|")
    for method in methods:
        for group, names in groups.items():
            try:
                d = compare(
                    out,
                    method,
                    args.reference,
                    resamples=args.resamples,
                    seed=args.seed,
                    only=names,
                )
            except (FileNotFoundError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            iou, mba = d["iou"], d["mba"] or "n/a"
            print(f"| {method} | {group} | {iou.n} | {iou} | {mba} | {iou.lower} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
