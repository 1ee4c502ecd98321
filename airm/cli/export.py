"""`airm export STATE OUT`: the inference checkpoint of a training state (`last.pt`)."""

from __future__ import annotations

import argparse
import sys

from airm.checkpoint import CheckpointError
from airm.training import export_training_state

DESCRIPTION = (
    "Write the inference checkpoint (safetensors) of a training state, OUT/last.pt of "
    "`airm train`, as training exports one: the weights' moving average where the run keeps "
    "one (--ema-decay; --trained: the weights themselves), else the weights. For a run stopped "
    "before its last iteration (--time-limit, an interrupted job), which has no "
    "final.safetensors yet."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("state", help="a training state: OUT/last.pt of `airm train`")
    p.add_argument("out", help="the .safetensors checkpoint to write (replaced if it exists)")
    p.add_argument(
        "--trained",
        action="store_true",
        help="the trained weights, not their moving average (for a run with --ema-decay)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        step = export_training_state(args.state, args.out, average=not args.trained)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the checkpoint's folder cannot be made or written
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"weights of step {step}: {args.out}")
    return 0
