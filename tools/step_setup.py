"""What the training-step tools share: a model and batches prepared as `train.py` prepares
them, and a function that takes step i."""

from __future__ import annotations

from collections.abc import Callable


def step_runner(args: dict, steps: int) -> Callable[[int], None]:
    """A function `step(i)` that runs `airm.training.training_step` i (0-based) of the first
    `steps` on its batch, moved to args["device"] beforehand; the model of args["variant"]
    with random weights (a step's speed does not depend on them), channels-last, in training
    mode, its depthwise convolutions float32 where CPU training makes them so, and Adam as
    training makes it. args["backend"], when set and not "eager", names the torch.compile
    backend the step's forward and backward run through."""
    import torch

    from airm.build import build_model
    from airm.training import (
        TrainConfig,
        adam,
        float32_depthwise,
        parameter_groups,
        query_window,
        training_autocast,
        training_items,
        training_loader,
        training_step,
    )

    device = torch.device(args.get("device", "cpu"))
    config = TrainConfig(
        data=tuple(args["data"]),
        out="",
        variant=args["variant"],
        batch_size=args["batch_size"],
        precision=args["precision"],
        workers=0,
    )
    torch.manual_seed(0)
    model = build_model(config.variant)
    autocast = training_autocast(config, device)
    if device.type == "cpu" and autocast == torch.bfloat16:
        float32_depthwise(model)
    model.to(device=device, memory_format=torch.channels_last).train()
    backend = args.get("backend", "eager")
    net = model if backend == "eager" else torch.compile(model, backend=backend)
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
        training_step(net, optimizer, batches[i], window, config, device=device, autocast=autocast)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step
