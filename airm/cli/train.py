"""Train an AIRM refiner (SPEC section 3): `airm train --help` or `python train.py --help`.

One process: `airm train --data DIR ... --out runs/x` (or `python train.py ...`).
Several (DDP): `torchrun --nproc_per_node N train.py ...` (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from airm.build import VARIANTS
from airm.config import ModelConfig, field_overrides
from airm.losses import LossWeights
from airm.perturb import LOWRES_SIDES
from airm.training import ConfigError, TrainConfig, train

DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of training, on `p` (train.py's parser, or `airm train`'s)."""
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
    p.add_argument(
        "--lr-milestones",
        type=float,
        nargs=2,
        default=None,
        metavar=("A", "B"),
        help="the learning rate drops x0.1 at these fractions of the iterations (default 0.5 "
        "0.83; 1 1: constant)",
    )
    p.add_argument("--crop-size", type=int, default=None, help="training crop side in pixels")
    p.add_argument(
        "--query-size", type=int, default=None, help="side of the queried window of each crop"
    )
    p.add_argument(
        "--far-fraction", type=float, default=None, help="fraction of crops far from boundaries"
    )
    p.add_argument(
        "--query-anywhere",
        type=float,
        default=None,
        help="fraction of steps whose queried window may touch the crop's borders",
    )
    p.add_argument(
        "--paste-fraction",
        type=float,
        default=None,
        help="fraction of items that paste another pair's object onto the photograph "
        "(default 0.3; 0: none)",
    )
    p.add_argument(
        "--whole-fraction",
        type=float,
        default=None,
        help="fraction of items seen whole (shorter side at the crop size), as the first scale",
    )
    p.add_argument(
        "--cascade-fraction",
        type=float,
        default=None,
        help="fraction of items whose coarse mask is the truth as a coarser scale hands it on",
    )
    p.add_argument(
        "--rotate-degrees",
        type=float,
        default=None,
        help="turn each item by a random angle in [-D, D] degrees (default 0: none)",
    )
    p.add_argument(
        "--lowres-sides",
        type=int,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="long sides (px) the imitated low-resolution segmenters work at (default "
        f"{LOWRES_SIDES[0]} {LOWRES_SIDES[1]}, as shared/data/val's coarse masks)",
    )
    p.add_argument(
        "--soft-masks",
        action="store_true",
        default=None,
        help="crops seen below full resolution keep their masks' area fractions instead of "
        "thresholding them",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers per process (default: its share of the cores)",
    )
    p.add_argument(
        "--cache-images",
        action="store_true",
        default=None,
        help="decode the training pairs once and keep them in memory for the workers",
    )
    p.add_argument(
        "--precision",
        default=None,
        choices=["auto", "float32", "bfloat16"],
        help="arithmetic (default auto: bfloat16 autocast where the hardware computes it natively: "
        "CUDA, CPUs with AVX512-BF16 or AMX; float32 elsewhere)",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="run forward, loss and backward through torch.compile (default backend: "
        "inductor); for GPUs, whose steps are bound by kernel launches; the first step compiles",
    )
    p.add_argument(
        "--compile-mode",
        default=None,
        metavar="MODE",
        help="inductor's mode with --compile: reduce-overhead replays a step as CUDA graphs",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of the variant's ModelConfig (repeatable; VALUE in JSON: "
        "rank=8, hyper_input_norm=true, hidden_dims=[64,64])",
    )
    p.add_argument(
        "--loss",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of the loss weights (repeatable; e.g. affinity=0 to train "
        "without the affinity loss, boundary=4; see airm.losses.LossWeights)",
    )
    p.add_argument(
        "--lr-scale",
        action="append",
        default=[],
        metavar="PREFIX=FACTOR",
        help="parameters whose names start with PREFIX learn at lr x FACTOR (repeatable; "
        "e.g. skip_gate=30 for a part that --init's checkpoint lacks)",
    )
    p.add_argument(
        "--train-only",
        action="append",
        default=[],
        metavar="PREFIX",
        help="only parameters whose names start with PREFIX learn; the rest are frozen, "
        "batch norm statistics included (repeatable; e.g. skip_gate with --init)",
    )
    p.add_argument(
        "--frozen-norms",
        action="store_true",
        default=None,
        help="batch norms normalise with their running statistics and keep them (their "
        "scale and shift still learn): for fine-tuning with small batches",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        metavar="DECAY",
        help="validate and export a moving average of the weights, DECAY per step (e.g. 0.999; "
        "default: none, the trained weights themselves)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of data order and augmentation")
    p.add_argument("--log-interval", type=int, default=None, help="steps between log lines")
    p.add_argument("--val-interval", type=int, default=None, help="steps between validations")
    p.add_argument("--val-limit", type=int, default=None, help="validate on this many images")
    p.add_argument(
        "--checkpoint-interval", type=int, default=None, help="steps between checkpoints"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if present")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop this job after MINUTES of training, at the next log line, checkpointed "
        "(OUT/last.pt; --resume continues it): for short or preemptible jobs",
    )


def build_parser() -> argparse.ArgumentParser:
    """train.py's parser (`airm train` adds the same flags to its own)."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Train as the parsed flags say; the exit status (0 when the job ends as asked: the final
    weights written, or stopped at --time-limit, checkpointed)."""
    fields = {
        "variant": args.variant,
        "val": args.val,
        "encoder_weights": args.encoder_weights,
        "init": args.init,
        "batch_size": args.batch_size,
        "iterations": args.iterations,
        "lr": args.lr,
        "lr_milestones": tuple(args.lr_milestones) if args.lr_milestones else None,
        "crop_size": args.crop_size,
        "query_size": args.query_size,
        "far_fraction": args.far_fraction,
        "paste_fraction": args.paste_fraction,
        "whole_fraction": args.whole_fraction,
        "cascade_fraction": args.cascade_fraction,
        "rotate_degrees": args.rotate_degrees,
        "lowres_sides": tuple(args.lowres_sides) if args.lowres_sides else None,
        "soft_masks": args.soft_masks,
        "query_anywhere": args.query_anywhere,
        "workers": args.workers,
        "cache_images": args.cache_images,
        "precision": args.precision,
        "compile": args.compile,
        "compile_mode": args.compile_mode,
        "ema_decay": args.ema_decay,
        "frozen_norms": args.frozen_norms,
        "seed": args.seed,
        "log_interval": args.log_interval,
        "val_interval": args.val_interval,
        "val_limit": args.val_limit,
        "checkpoint_interval": args.checkpoint_interval,
    }
    try:
        overrides = field_overrides(args.model, ModelConfig, "--model")
        loss = dataclasses.replace(
            LossWeights(), **dict(field_overrides(args.loss, LossWeights, "--loss"))
        )
        lr_scales = tuple(_lr_scale(text) for text in args.lr_scale)
        if args.time_limit is not None and not args.time_limit >= 0:
            raise ValueError(f"--time-limit takes minutes >= 0, got {args.time_limit}")
        config = TrainConfig(
            data=tuple(args.data),
            out=args.out,
            model_overrides=overrides,
            loss=loss,
            lr_scales=lr_scales,
            train_only=tuple(args.train_only),
            **{k: v for k, v in fields.items() if v is not None},
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    time_limit = None if args.time_limit is None else args.time_limit * 60
    try:  # train checks the run before it writes anything (check_config)
        written = train(config, resume=args.resume, time_limit=time_limit)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 writes the weights
        return 0
    if written.suffix == ".safetensors":
        print(f"final weights: {written}")
    else:  # last.pt: the job ended before the run's last iteration
        why = "stopped at the time limit" if time_limit is not None else "not finished"
        print(
            f"{why}: {written} continues the run with --resume; "
            f"`airm export {written} WEIGHTS.safetensors` writes its weights"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


def _lr_scale(text: str) -> tuple[str, float]:
    """Parse "PREFIX=FACTOR" into (prefix, factor), FACTOR a positive number."""
    prefix, sep, value = text.partition("=")
    try:
        factor = float(value)
    except ValueError:
        factor = -1.0
    if not sep or not prefix or not factor > 0:
        raise ValueError(f"--lr-scale takes PREFIX=FACTOR with FACTOR > 0, got {text!r}")
    return prefix, factor
