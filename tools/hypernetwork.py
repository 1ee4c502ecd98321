"""Change what a trained AIRMF's hypernetwork sees: add its input norm, fold it back, or fix it.

    python tools/hypernetwork.py norm IN.safetensors OUT.safetensors --data ../shared/data/train
    python tools/hypernetwork.py fold IN.safetensors OUT.safetensors
    python tools/hypernetwork.py share IN.safetensors OUT.safetensors --data ../shared/data/train

The hypernetwork pools each window's features into a vector h and its linear head maps h to
the modulation of f (README, "The adaptive implicit function"). Each command keeps the network
computing what it computed, or says what it drops:

- `norm` gives a checkpoint trained without `hyper_input_norm` that norm, standardising with
  the mean and variance of h over `--items` training items (made as training makes them, crops
  of `--crop-size`), and rescales the head so that the function is the same: `train.py --init
  OUT --model hyper_input_norm=true --frozen-norms` then continues it with the head seeing only
  how each window differs from the others, at unit scale, where before the part every window
  shares was most of its input.
- `fold` puts a norm's running statistics back into the head (with `--frozen-norms` they never
  moved, so exactly): a checkpoint without the norm, the shipped network's shape, which
  `tools/average_weights.py` can average with it.
- `share` fixes every window's modulation at the one the mean h over `--items` training items
  gives, baked into f: a SIRMF checkpoint (`modulation=False`, no hypernetwork) that computes
  the part of the modulation all windows share, so that scoring it beside IN measures what the
  per-window part adds, and training it beside IN compares the two functions from one start.
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
    """`plain`'s network (an AIRMF without `hyper_input_norm`) with that norm added, as the
    identity (the same function)."""
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


def training_batches(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """About `args.items` training items from `args.data`, made as training makes them, in
    batches of (image, coarse mask)."""
    pairs = [p for root in args.data for p in find_pairs(root)]
    if not pairs:
        raise CheckpointError(f"no image/mask pairs under {', '.join(args.data)}")
    items = RefinementDataset(pairs, crop_size=args.crop_size, seed=args.seed)
    torch.manual_seed(args.seed)
    batches = []
    for image, coarse, _truth in DataLoader(items, batch_size=16, shuffle=True):
        batches.append((image, coarse))
        if 16 * len(batches) >= args.items:
            break
    return batches


def norm(args: argparse.Namespace) -> str:
    plain = load_model(args.input)
    if plain.hypernetwork is None:
        raise CheckpointError(f"{args.input} has no hypernetwork: its f is shared")
    if plain.config.hyper_input_norm:
        raise CheckpointError(f"{args.input} already has the hypernetwork's input norm")
    model = with_input_norm(plain)
    batches = training_batches(args)
    mean, var = head_input_statistics(model, batches)
    model.hypernetwork.standardise_input(mean, var)
    save_model(model, args.output, metadata={"hyper_norm_from": Path(args.input).name})
    return (
        f"{args.output}: input norm added over {sum(len(b[0]) for b in batches)} items; h varies "
        f"by {var.sum().sqrt().item():.3f} (root of the summed variances) about a mean of norm "
        f"{mean.norm().item():.3f}"
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


def shared(model: AIRM, mean: torch.Tensor) -> AIRM:
    """SIRMF computing `model`'s f as modulated for the pooled vector `mean` (hidden_dim,)."""
    config = dataclasses.replace(model.config, modulation=False, hyper_input_norm=False)
    plain = build_model(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("hypernetwork.")}
    with torch.no_grad():
        modulation = model.hypernetwork.modulation(mean[None])
        params = model.implicit_function.layer_params(modulation)
    for i, layer in enumerate(params):
        state[f"implicit_function.weights.{i}"] = layer.weight[0]
        state[f"implicit_function.biases.{i}"] = layer.bias[0]
    plain.load_state_dict(state)
    return plain.eval()


def share(args: argparse.Namespace) -> str:
    model = load_model(args.input)
    if model.hypernetwork is None:
        raise CheckpointError(f"{args.input} has no hypernetwork: its f is shared already")
    batches = training_batches(args)
    mean, _ = head_input_statistics(model, batches)
    save_model(shared(model, mean), args.output, metadata={"shared_from": Path(args.input).name})
    items = sum(len(b[0]) for b in batches)
    return f"{args.output}: f fixed at the modulation of the mean h over {items} items (SIRMF)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    commands = {"norm": norm, "fold": fold, "share": share}
    helps = {
        "norm": "add the input norm, standardising over training items",
        "fold": "fold the input norm's statistics into the head",
        "share": "fix the modulation at the mean input's: a SIRMF checkpoint",
    }
    for name in commands:
        c = sub.add_parser(name, help=helps[name])
        c.add_argument("input", help="an AIRMF checkpoint")
        c.add_argument("output", help="the checkpoint to write (.safetensors)")
        if name != "fold":
            c.add_argument("--data", action="append", required=True, help="training root(s)")
            c.add_argument("--items", type=int, default=512, help="training items to average")
            c.add_argument("--crop-size", type=int, default=224)
            c.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.command != "fold" and args.items < 2:
        p.error("--items must be at least 2")
    try:
        print(commands[args.command](args))
    except (CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
