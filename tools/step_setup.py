"""What the training-step tools share: a model and batches prepared as `train.py` prepares
them, and a function that takes step i."""

from __future__ import annotations

from collections.abc import Callable


def compile_options(backend: str) -> tuple[str | None, str | None]:
    """The `TrainConfig` fields (compile, compile_mode) of a backend named as "eager" (no
    compiling: None, None), "BACKEND" or "BACKEND:MODE"."""
    name, _, mode = backend.partition(":")
    return (None if name == "eager" else name), (mode or None)


def step_runner(args: dict, steps: int) -> Callable[[int], None]:
    """A function `step(i)` that runs `airm.training.training_step` i (0-based) of the first
    `steps` on its batch, moved to args["device"] beforehand; the model of args["variant"]
    with random weights (a step's speed does not depend on them), channels-last, in training
    mode, its depthwise convolutions float32 where CPU training makes them so, and Adam as
    training makes it: `airm.training.prepare_model` and `step_objective`, which `train` calls.
    args["backend"], when set and not "eager", names the torch.compile backend the step's
    forward, loss and backward run through, as "BACKEND" or "BACKEND:MODE" (inductor's mode:
    "inductor:reduce-overhead")."""
    import torch

    from airm.build import build_model
    from airm.training import (
        TrainConfig,
        adam,
        parameter_groups,
        prepare_model,
        query_window,
        step_objective,
        training_items,
        training_loader,
        training_step,
    )

    device = torch.device(args.get("device", "cpu"))
    backend, mode = compile_options(args.get("backend", "eager"))
    config = TrainConfig(
        data=tuple(args["data"]),
        out="",
        variant=args["variant"],
        batch_size=args["batch_size"],
        precision=args["precision"],
        workers=0,
        compile=backend,
        compile_mode=mode,
    )
    torch.manual_seed(0)
    model = build_model(config.variant)
    objective, cuda_graphs = step_objective(model, config, prepare_model(model, config, device))
    optimizer = adam(parameter_groups(model, ()), 1e-6)
    loader = training_loader(
        training_items(config),
        config,
        rank=0,
        world=1,
        start=0,
        stop=steps,
        workers=0,
        pin_memory=False,
    )
    batches = [tuple(t.to(device) for t in batch) for batch in loader]

    def step(i: int) -> None:
        window = query_window(i + 1, config)
        training_step(
            objective, optimizer, batches[i], window, device=device, cuda_graphs=cuda_graphs
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step
