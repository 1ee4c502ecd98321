"""How many training samples a second the data loader delivers, with and without the cache.

    python tools/bench_loader.py ../shared/data/train --workers 2 --batches 60

The loader is built as `train.py` builds it (same dataset options and batch size); each mode
first delivers --warmup batches (worker start-up, and for the cached mode the decoding, are
timed apart), then --batches batches are timed. Printed: samples/s per mode, the ratio of the
cached to the decoded mode, and the memory the cache holds. For scale: an H100 trained at
850-930 samples/s at batch 64 with the batch already on it (issue 10), so a GPU run wants its
loader to deliver about that much.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.training import TrainConfig, training_items, training_loader  # noqa: E402


def measure(config: TrainConfig, *, workers: int, warmup: int, batches: int):
    """(samples/s over `batches` timed batches, seconds to build the dataset, the dataset)."""
    tic = time.perf_counter()
    items = training_items(config, threads=max(1, workers))
    built = time.perf_counter() - tic
    loader = training_loader(
        items,
        config,
        rank=0,
        world=1,
        start=0,
        stop=warmup + batches,
        workers=workers,
        pin_memory=False,
    )
    for i, _ in enumerate(loader, start=1):
        if i == warmup:
            tic = time.perf_counter()
    speed = batches * config.batch_size / (time.perf_counter() - tic)
    return speed, built, items


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="+", help="training roots (BIG or images/+masks/)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch")
    p.add_argument("--warmup", type=int, default=10, help="batches delivered before timing")
    p.add_argument("--batches", type=int, default=60, help="batches timed")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.batches < 1:
        p.error("--warmup and --batches must be at least 1")
    speeds = {}
    for cache in (False, True):
        config = TrainConfig(
            data=tuple(args.data), out="-", batch_size=args.batch_size, cache_images=cache
        )
        speed, built, items = measure(
            config, workers=args.workers, warmup=args.warmup, batches=args.batches
        )
        if not cache:
            print(f"{len(items)} pairs, batch {args.batch_size}, {args.workers} workers")
        mode = "cached" if cache else "decoded"
        speeds[mode] = speed
        held = items.cached_bytes / 2**30
        extra = f" (decoded in {built:.1f} s, {held:.2f} GiB held)" if cache else ""
        print(f"{mode:<8}{speed:8.1f} samples/s{extra}")
    print(f"cached / decoded: {speeds['cached'] / speeds['decoded']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
