"""Train an AIRM refiner (SPEC section 3). Run `python train.py --help`.

One process: `python train.py --data DIR ... --out runs/x`.
Several (DDP): `torchrun --nproc_per_node N train.py ...` (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import argparse
import os
import sys

from airm.build import VARIANTS
from airm.training import TrainConfig, train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", nargs="+", required=True, help="training roots (BIG or images/+masks/)"
    )
    p.add_argument("--out", required=True, help="output folder for checkpoints and the log")
    p.add_argument("--val", default=None, help="BIG-layout validation folder with _seg.png masks")
    p.add_argument("--variant", default=None, choices=sorted(VARIANTS), help="network variant")
    p.add_argument(
        "--encoder-weights", default=None, help="local RGB ImageNet weights for the encoder"
    )
    p.add_argument(
        "--init", default=None, help="start from the weights of this airm checkpoint (same variant)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="batch size per process")
    p.add_argument("--iterations", type=int, default=None, help="total optimiser steps")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate")
    p.add_argument("--crop-size", type=int, default=None, help="training crop side in pixels")
    p.add_argument(
        "--query-size", type=int, default=None, help="side of the queried window of each crop"
    )
    p.add_argument(
        "--far-fraction", type=float, default=None, help="fraction of crops far from boundaries"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers per process (default: cores)"
    )
    p.add_argument(
        "--precision",
        default=None,
        choices=["auto", "float32", "bfloat16"],
        help="arithmetic (default auto: bfloat16 autocast on CUDA, float32 elsewhere)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of data order and augmentation")
    p.add_argument("--log-interval", type=int, default=None, help="steps between log lines")
    p.add_argument("--val-interval", type=int, default=None, help="steps between validations")
    p.add_argument("--val-limit", type=int, default=None, help="validate on this many images")
    p.add_argument(
        "--checkpoint-interval", type=int, default=None, help="steps between checkpoints"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if present")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fields = {
        "variant": args.variant,
        "val": args.val,
        "encoder_weights": args.encoder_weights,
        "init": args.init,
        "batch_size": args.batch_size,
        "iterations": args.iterations,
        "lr": args.lr,
        "crop_size": args.crop_size,
        "query_size": args.query_size,
        "far_fraction": args.far_fraction,
        "workers": args.workers,
        "precision": args.precision,
        "seed": args.seed,
        "log_interval": args.log_interval,
        "val_interval": args.val_interval,
        "val_limit": args.val_limit,
        "checkpoint_interval": args.checkpoint_interval,
    }
    config = TrainConfig(
        data=tuple(args.data), out=args.out, **{k: v for k, v in fields.items() if v is not None}
    )
    final = train(config, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 writes the weights
        print(f"final weights: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
