"""Average airm checkpoints uniformly, weight by weight (a "model soup").

    python tools/average_weights.py OUT.safetensors A.safetensors B.safetensors [...]

The checkpoints must describe the same network (the same `ModelConfig`), as runs continued from
one start do. Every floating-point tensor, batch-norm running statistics included, is the mean
of the inputs'; integer buffers (batch-norm's count of batches seen) are taken from the first.
OUT records the inputs' file names in its metadata (`averaged_from`). The shipped model is such
an average, made twice: each time of the weights a 10,000-iteration run started from and that
run's final weights (README, The shipped model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.build import build_model  # noqa: E402
from airm.checkpoint import CheckpointError, load_state, read_checkpoint, save_model  # noqa: E402
from airm.config import ModelConfig  # noqa: E402


def average(paths: list[Path]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The checkpoints' shared config and the uniform average of their tensors; raises
    CheckpointError on a mismatch."""
    config, first, _ = read_checkpoint(paths[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in first.items()}
    for path in paths[1:]:
        other_config, tensors, _ = read_checkpoint(path)
        if other_config != config:
            raise CheckpointError(f"{path} is another network than {paths[0]} (its config differs)")
        if tensors.keys() != total.keys():
            raise CheckpointError(f"{path} holds other tensors than {paths[0]}")
        for k, v in tensors.items():
            if v.is_floating_point():
                total[k] += v.double()
    return config, {
        k: (v / len(paths)).to(first[k].dtype) if v.is_floating_point() else v
        for k, v in total.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the averaged checkpoint to write (.safetensors)")
    p.add_argument("inputs", type=Path, nargs="+", help="two or more airm checkpoints")
    args = p.parse_args(argv)
    if len(args.inputs) < 2:
        p.error("give at least two checkpoints to average")
    try:
        config, tensors = average(args.inputs)
        model = build_model(config)
        load_state(model, tensors, source=str(args.inputs[0]))
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    save_model(model, args.out, metadata={"averaged_from": ",".join(p.name for p in args.inputs)})
    print(f"{args.out}: the average of {len(args.inputs)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
