"""Add the hypernetwork's input norm to a trained checkpoint, or fold it back out.

    python tools/hyper_norm.py add IN.safetensors OUT.safetensors --data ../shared/data/train
    python tools/hyper_norm.py fold IN.safetensors OUT.safetensors

`add` gives a checkpoint trained without `hyper_input_norm` that norm, standardising with the
mean and variance of the head's input over `--items` training items (made as training makes
them, crops of `--crop-size`), and rescales the head so that the network computes the same
function: `train.py --init OUT --model hyper_input_norm=true --frozen-norms` then continues it
with the head seeing only how each window differs from the others, at unit scale, where
before the part every window shares was most of its input (README, "The adaptive implicit
function"). With `--frozen-norms` the statistics stay fixed, so `fold` can put them back into
the head exactly: a checkpoint without the norm, the same network as the shipped one, which
`tools/average_weights.py` can average with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from airm.build import build_model  # noqa: E402
from airm.checkpoint import CheckpointError, load_model, save_model  # noqa: E402
from airm.data import RefinementDataset, find_pairs  # noqa: E402
from airm.modeling.airm import AIRM  # noqa: E402


def with_input_norm(plain: AIRM) -> AIRM:
    """`plain`'s network with `hyper_input_norm` added, as the identity (the same function)."""
    if plain.hypernetwork is None:
        raise CheckpointError(f"{plain.config.variant}: this network has no hypernetwork")
    if plain.config.hyper_input_norm:
        raise CheckpointError("this checkpoint already has the hypernetwork's input norm")
    model = build_model(dataclasses.replace(plain.config, hyper_input_norm=True))
    norm = model.hypernetwork.norm
    state = {k: v for k, v in model.state_dict().items() if k.startswith("hypernetwork.norm.")}
    model.load_state_dict({**plain.state_dict(), **state})
    with torch.no_grad():
        norm.running_var.fill_(1.0 - norm.eps)  # (h - 0) / sqrt(1 - eps + eps) = h
    return model.eval()


@torch.no_grad()
def head_input_statistics(model: AIRM, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and (population) variance of the hypernetwork's pooled features over the
    windows of `batches` (image, coarse mask) that the model encodes."""
    seen: list[torch.Tensor] = []
    hook = model.hypernetwork.norm.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].double())
    )
    try:
        for image, mask in batches:
            model.encode(image, mask)
    finally:
        hook.remove()
    h = torch.cat(seen)
    return h.mean(0).float(), h.var(0, correction=0).float()


def add(args: argparse.Namespace) -> str:
    model = with_input_norm(load_model(args.input))
    pairs = [p for root in args.data for p in find_pairs(root)]
    if not pairs:
        raise CheckpointError(f"no image/mask pairs under {', '.join(args.data)}")
    items = RefinementDataset(pairs, crop_size=args.crop_size, seed=args.seed)
    torch.manual_seed(args.seed)
    loader = DataLoader(items, batch_size=16, shuffle=True)
    chosen = []
    for image, coarse, _truth in loader:
        chosen.append((image, coarse))
        if 16 * len(chosen) >= args.items:
            break
    mean, var = head_input_statistics(model, chosen)
    model.hypernetwork.standardise_input(mean, var)
    save_model(model, args.output, metadata={"hyper_norm_from": Path(args.input).name})
    shared = mean.norm().item()
    spread = var.sum().sqrt().item()
    return (
        f"{args.output}: input norm added over {16 * len(chosen)} items; the head's input "
        f"varies by {spread:.3f} (root of the summed variances) about a mean of norm {shared:.3f}"
    )


def fold(args: argparse.Namespace) -> str:
    model = load_model(args.input)
    if not model.config.hyper_input_norm:
        raise CheckpointError(f"{args.input} has no hypernetwork input norm to fold")
    model.hypernetwork.fold_input_norm()
    plain = build_model(dataclasses.replace(model.config, hyper_input_norm=False))
    plain.load_state_dict(model.state_dict())
    save_model(plain, args.output, metadata={"hyper_norm_folded_from": Path(args.input).name})
    return f"{args.output}: input norm folded into the head"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="add the norm, standardising over training items")
    a.add_argument("input", help="an airm checkpoint without hyper_input_norm")
    a.add_argument("output", help="the checkpoint to write (.safetensors)")
    a.add_argument("--data", action="append", required=True, help="a training root (repeatable)")
    a.add_argument("--items", type=int, default=512, help="training items to take statistics of")
    a.add_argument("--crop-size", type=int, default=224)
    a.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fold", help="fold the norm's statistics into the head")
    f.add_argument("input", help="an airm checkpoint with hyper_input_norm")
    f.add_argument("output", help="the checkpoint to write (.safetensors)")
    args = p.parse_args(argv)
    if args.command == "add" and args.items < 2:
        p.error("--items must be at least 2")
    try:
        print((add if args.command == "add" else fold)(args))
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
