"""Seconds of one refinement under two or more settings, alternated in one process.

    python tools/bench_refine.py --checkpoint prev=runs/prev.safetensors \\
        [--inference 12px:band=12 ...] [--sizes 1164x1746,2328x3492,4000x6000] [--rounds 4]

The benchmark's scene (the example image and its coarse mask, resized; `eval.benchmark`) is
refined at each size under each setting in turn, --rounds times over, after a round that is
not timed. The first setting, `default`, is the shipped weights with the default inference;
each --checkpoint NAME=PATH or --inference NAME:FIELD=VALUE (an `InferenceOptions` field, VALUE
JSON, repeatable) adds or changes the setting NAME (a setting named only by --inference has the
shipped weights). Every other round runs the settings in reverse order. Printed per size: each
setting's median seconds and the median, over the rounds, of its time over `default`'s in the
same round, with the rounds' range. Ratios taken round by round do not drift with this shared
machine's speed the way times in separate processes do (20% from minute to minute), which is
why two weights or two options are compared here and not in two runs of `eval.benchmark`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.cli.refine import add_precision_argument  # noqa: E402
from airm.config import field_overrides  # noqa: E402
from airm.inference import InferenceOptions  # noqa: E402
from eval.benchmark import EXAMPLE, load_scene, parse_size, timed_refine  # noqa: E402
from eval.run import named_checkpoint  # noqa: E402

BASELINE = "default"


@dataclass
class Setting:
    """The weights (None: shipped) and `InferenceOptions` fields of one timed setting."""

    checkpoint: Path | None = None
    inference: dict[str, object] = field(default_factory=dict)


def parse_settings(checkpoints: list[str], inference: list[str]) -> dict[str, Setting]:
    """--checkpoint NAME=PATH and --inference NAME:FIELD=VALUE flags -> {name: Setting}, the
    baseline first, then in the order the names first appear. ValueError names the bad flag."""
    settings = {BASELINE: Setting()}
    for spec in checkpoints:
        name, path = named_checkpoint(spec)
        settings.setdefault(name, Setting()).checkpoint = path
    for spec in inference:
        name, sep, override = spec.partition(":")
        if not sep or not name:
            raise ValueError(f"--inference wants NAME:FIELD=VALUE, got {spec!r}")
        settings.setdefault(name, Setting()).inference.update(
            field_overrides([override], InferenceOptions, "--inference")
        )
    for setting in settings.values():
        InferenceOptions(**setting.inference)  # a bad value fails here, before any timing
    if len(settings) < 2:
        raise ValueError("name at least one setting to time against the default")
    return settings


def ratio_summary(seconds: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """Round-by-round seconds of a setting and of the baseline -> (median, lowest, highest) of
    their ratios, each round against the same round's baseline."""
    ratios = [s / b for s, b in zip(seconds, baseline, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def time_settings(
    settings: dict[str, Setting],
    sizes: list[tuple[int, int]],
    *,
    rounds: int,
    precision: str,
    device: str | None,
    image: str,
    coarse: str,
) -> dict[tuple[int, int], dict[str, list[float]]]:
    """{size: {setting: [seconds of each round]}}, the settings alternated within each size."""
    from airm.api import get_refiner

    refiners = {
        name: get_refiner(s.checkpoint, device).with_options(
            InferenceOptions(**{"precision": precision, **s.inference}), max_pixels=None
        )
        for name, s in settings.items()
    }
    scenes = {size: load_scene(image, coarse, size) for size in sizes}
    for refiner in refiners.values():  # the round that is not timed
        for scene in scenes.values():
            refiner.refine(*scene)
    times = {size: {name: [] for name in refiners} for size in sizes}
    for r in range(rounds):
        order = list(refiners) if r % 2 == 0 else list(reversed(refiners))
        for size, scene in scenes.items():
            for name in order:
                refiner = refiners[name]
                times[size][name].append(
                    timed_refine(refiner.refine, *scene, refiner.device.type)[1]
                )
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python tools/bench_refine.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a setting NAME with these weights (repeatable)",
    )
    p.add_argument(
        "--inference",
        action="append",
        default=[],
        metavar="NAME:FIELD=VALUE",
        help="an InferenceOptions field of the setting NAME (repeatable; VALUE is JSON), e.g. "
        "12px:band=12",
    )
    p.add_argument(
        "--sizes",
        default="1164x1746,2328x3492,4000x6000",
        help="comma-separated HxW sizes (default: 2, 8 and 24 megapixels)",
    )
    p.add_argument("--rounds", type=int, default=4, help="timed rounds (default 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="torch device (default: the refiner's)")
    p.add_argument("--image", default=str(EXAMPLE / "composite_im.jpg"), help="image to resize")
    p.add_argument("--coarse", default=str(EXAMPLE / "composite_seg.png"), help="its coarse mask")
    add_precision_argument(p)
    args = p.parse_args(argv)
    try:
        settings = parse_settings(args.checkpoint, args.inference)
        sizes = [parse_size(s) for s in args.sizes.split(",")]
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    times = time_settings(
        settings,
        sizes,
        rounds=args.rounds,
        precision=args.precision,
        device=args.device,
        image=args.image,
        coarse=args.coarse,
    )
    others = [name for name in settings if name != BASELINE]
    print(
        f"| HxW | {BASELINE} s | " + " | ".join(f"{n} s | {n} / {BASELINE}" for n in others) + " |"
    )
    print("|---|--:|" + "--:|--:|" * len(others))
    for (h, w), by_setting in times.items():
        base = by_setting[BASELINE]
        cells = [f"{statistics.median(base):.2f}"]
        for name in others:
            ratio, low, high = ratio_summary(by_setting[name], base)
            cells += [
                f"{statistics.median(by_setting[name]):.2f}",
                f"x{ratio:.2f} ({low:.2f}-{high:.2f})",
            ]
        print(f"| {h}x{w} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
