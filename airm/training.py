"""The training loop of SPEC section 3, on one CPU, one GPU or many (torchrun + DDP).

`train(config)` runs until `config.iterations`, writing to `config.out`:
- `last.pt`: a self-describing training checkpoint (model, its weights' moving average when
  one is kept, optimiser, step, configs), written atomically and read back with
  `weights_only=True`; `--resume` continues from it exactly (same schedule, same data order
  and augmentations, as these derive from the step);
- `best.safetensors` / `final.safetensors`: inference checkpoints (see `airm.checkpoint`), of
  the weights' moving average when `ema_decay` is set (`export_training_state`, `airm export`,
  writes one from `last.pt` of a run that has not finished);
- `log.jsonl`: one JSON object per logged step or validation, and one where each job starts
  and ends (the step, the time, what it ran on), from which `run_record` reads a run's samples,
  wall time and hardware across the short jobs that may make it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, pairwise
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from airm.allocator import retain_freed_memory
from airm.build import VARIANTS, build_model
from airm.checkpoint import CheckpointError, load_initial_weights, load_state, save_model
from airm.config import ModelConfig
from airm.data import (
    Pair,
    RefinementDataset,
    check_augmentations,
    check_pairs,
    find_pairs,
    spread_pairs,
)
from airm.inference import InferenceOptions, autocast_dtype
from airm.io import atomic_write, read_image, remove_stale_temporaries
from airm.losses import Losses, LossWeights, refinement_losses
from airm.perturb import LOWRES_SIDES
from airm.pretrained import load_encoder_rgb_weights
from airm.refiner import Refiner
from airm.scoring import read_coarse, score_pairs


@dataclass(frozen=True)
class TrainConfig:
    """The one training configuration (its defaults are the only defaults)."""

    data: tuple[str, ...]  # training roots (BIG or images/+masks/ layout)
    out: str  # output folder
    variant: str = "airm_efficientnet_lite0"
    val: str | None = None  # a BIG-layout folder with <name>_seg.png coarse masks
    encoder_weights: str | None = None  # RGB ImageNet weights for the encoder (local file)
    init: str | None = None  # start from this airm checkpoint's weights (fine-tuning)
    batch_size: int = 8  # per process
    iterations: int = 45_000
    lr: float = 2.25e-4
    lr_milestones: tuple[float, float] = (0.5, 0.83)  # x0.1 at these fractions of iterations
    crop_size: int = 224
    # Side of the window of each crop whose pixels are queried and scored (random position;
    # crops are centred near a boundary). Smaller windows make steps cheaper.
    query_size: int = 112
    # Fraction of crops centred far from every boundary, where refinement must keep the coarse
    # mask (without them the model invents foreground there when queried).
    far_fraction: float = 0.2
    # Fraction of steps whose queried window lies anywhere in the crop, its borders included,
    # rather than near its centre. Inference that queries every pixel of an encoded window
    # (the coarsest scale is the whole image) asks near the window's borders too, where a model
    # trained on central windows only invents foreground.
    query_anywhere: float = 0.5
    # Fraction of items that paste another pair's object onto the photograph, the photograph's
    # own object left unmarked (copy-paste). At equal iterations it narrowed the gap between
    # every-pixel and banded refinement on val twice, the banded path unmoved; 12,000
    # iterations of it closed that gap (docs/model-history.md).
    paste_fraction: float = 0.3
    # Fraction of items seen whole, as inference's first scale sees them (the image's shorter
    # side rescaled to the crop size); off until an equal-budget run shows it helps on val.
    whole_fraction: float = 0.0
    # Fraction of items whose coarse mask is the truth as a coarser scale of inference hands
    # it on (shrunk 1.5-4 times, enlarged back: soft, nearly right), the input of every later
    # scale. Off: in three A/Bs from the shipped weights it moved val by less than the
    # images' spread, trading val's nearly right coarse masks against its wrong ones
    # (docs/model-history.md).
    cascade_fraction: float = 0.0
    # Items turned by a random angle in [-d, d] degrees (0: none; CascadePSP and CRM train with
    # a random affine, SPEC section 3 only with flips).
    rotate_degrees: float = 0.0
    # The long sides (px, inclusive) that the imitated low-resolution segmenters work at; the
    # default is shared/data/val's range.
    lowres_sides: tuple[int, int] = LOWRES_SIDES
    # Crops seen below full resolution keep their masks' area fractions (truth and coarse)
    # instead of thresholding them halfway (see `RefinementDataset`); off until val says so.
    soft_masks: bool = False
    # DataLoader workers per process; None: this process's share of the machine's cores.
    workers: int | None = None
    # Decode the training pairs once and keep them in memory, shared by the workers (see
    # `RefinementDataset`): for a GPU that the loader cannot keep busy.
    cache_images: bool = False
    # Arithmetic of forward and backward: "float32", "bfloat16" (autocast; the weights, the
    # optimiser and the checkpoints stay float32, so --resume stays exact), or "auto":
    # bfloat16 where the hardware computes it natively (see `training_autocast`).
    precision: str = "auto"
    # A torch.compile backend for the network's forward and loss, and so their backward
    # ("inductor", PyTorch's own, fuses elementwise work into few kernels), or None: eager. A
    # GPU step of this small network is bound by launching its kernels, not by their
    # arithmetic (see the README's Training). The first step compiles (minutes); the query
    # window's offsets are tensors, so later windows run the same graph.
    compile: str | None = None
    # inductor's mode (`torch._inductor.list_mode_options()`): "reduce-overhead" replays each
    # step's kernels as CUDA graphs, one launch for all of them; None: inductor's default.
    compile_mode: str | None = None
    seed: int = 0
    log_interval: int = 20
    val_interval: int = 1000
    val_limit: int | None = None  # validate on an evenly spread subset of this many images
    checkpoint_interval: int = 200
    loss: LossWeights = field(default_factory=LossWeights)
    model_overrides: tuple[tuple[str, object], ...] = ()
    # (prefix, factor): parameters whose names start with prefix learn at lr x factor (the
    # first matching prefix wins), e.g. a part that starts from scratch in a model otherwise
    # fine-tuned from --init.
    lr_scales: tuple[tuple[str, float], ...] = ()
    # Prefixes of the parameters that learn; when set, every other parameter is frozen (no
    # gradient, not in the optimiser, its batch norms' running statistics kept), e.g. a part
    # added to a trained model, taught what it is for while the rest cannot compensate.
    train_only: tuple[str, ...] = ()
    # Every batch norm normalises with its running statistics and keeps them, as at inference;
    # its scale and shift still learn. For fine-tuning with small batches (4 crops a process
    # in the CPU runs), whose batch statistics are noisy and unlike inference's.
    frozen_norms: bool = False
    # Per-step decay of an exponential moving average of the weights (0.999: about the last
    # 1,000 steps), which is then what validation scores and the exported weights hold (batch
    # norms' statistics averaged too); None: the trained weights themselves.
    ema_decay: float | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


class StepSampler(Sampler):
    """Batches of sample ids for steps start..iterations-1, identical after a resume.

    Each epoch is a seeded permutation of the dataset, split across processes; an id encodes
    (epoch, index) as epoch * n + index so that augmentations depend on the epoch too.
    """

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        start_step: int,
        iterations: int,
    ) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.start_step, self.iterations = seed, start_step, iterations
        self.per_epoch = max(1, n // world)

    def __len__(self) -> int:
        return max(0, self.iterations - self.start_step)

    def _ids(self, start: int) -> Iterator[int]:
        epoch, offset = divmod(start, self.per_epoch)
        while True:
            perm = np.random.default_rng((self.seed, epoch)).permutation(self.n)
            mine = perm[self.rank :: self.world][: self.per_epoch]
            for index in mine[offset:]:
                yield epoch * self.n + int(index)
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        ids = self._ids(self.start_step * self.batch_size)
        for _ in range(len(self)):
            yield [next(ids) for _ in range(self.batch_size)]


class EpochIndexedDataset(torch.utils.data.Dataset):
    """Decodes StepSampler ids into (epoch, index) for RefinementDataset."""

    def __init__(self, dataset: RefinementDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, sample_id: int):
        epoch, index = divmod(sample_id, len(self.dataset))
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def query_window(step: int, config: TrainConfig) -> tuple[int, int, int, int]:
    """(top, left, size, size) of the queried window at this step (deterministic per step)."""
    size = min(config.query_size, config.crop_size)
    rng = np.random.default_rng((config.seed, step, 7))
    if config.query_anywhere and rng.random() < config.query_anywhere:
        top, left = rng.integers(0, config.crop_size - size + 1, size=2)
        return int(top), int(left), size, size
    centre, jitter = (config.crop_size - size) // 2, size // 4
    top, left = np.clip(
        centre + rng.integers(-jitter, jitter + 1, size=2), 0, config.crop_size - size
    )
    return int(top), int(left), size, size


def augmentations(config: TrainConfig) -> dict:
    """The options of `RefinementDataset` that `check_augmentations` checks."""
    names = ("far", "paste", "whole", "cascade")
    return {
        **{f"{name}_fraction": getattr(config, f"{name}_fraction") for name in names},
        "rotate_degrees": config.rotate_degrees,
        "lowres_sides": config.lowres_sides,
    }


def training_items(config: TrainConfig, *, threads: int = 1) -> RefinementDataset:
    """The dataset a run with `config` draws its items from: every pair under `config.data`,
    decoded into memory by `threads` threads when `config.cache_images`."""
    return RefinementDataset(
        [p for root in config.data for p in find_pairs(root)],
        crop_size=config.crop_size,
        **augmentations(config),
        soft_masks=config.soft_masks,
        seed=config.seed,
        cache=config.cache_images,
        cache_threads=threads,
    )


def training_loader(
    items: RefinementDataset,
    config: TrainConfig,
    *,
    rank: int,
    world: int,
    start: int,
    stop: int,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """The batches of steps start..stop-1 of this process (see `StepSampler`)."""
    sampler = StepSampler(
        len(items),
        batch_size=config.batch_size,
        rank=rank,
        world=world,
        seed=config.seed,
        start_step=start,
        iterations=stop,
    )
    return ItemLoader(
        EpochIndexedDataset(items),
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
    )


class ItemLoader(DataLoader):
    """A DataLoader whose worker processes make their items on one OpenCV thread each.

    OpenCV gives every process a pool of a thread per core, so N workers would set N pools
    against one another for the cores (15 workers on a 16-core GPU host: 240 threads). Imitated
    with 2 workers of 16 OpenCV threads each on 2 cores, one thread each made 1.12-1.28x more
    samples/s (README, Training); the items are the same. Forked workers inherit the setting,
    made here around their start: setting it inside a forked worker can wait forever on the
    pool threads the parent had, which the child does not. Spawned workers set it themselves.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, worker_init_fn=_one_opencv_thread, **kwargs)

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        before = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            return super().__iter__()  # starts (forks) the workers
        finally:
            cv2.setNumThreads(before)


def _one_opencv_thread(worker_id: int) -> None:
    if cv2.getNumThreads() != 1:  # a spawned worker; a forked one inherited 1
        cv2.setNumThreads(1)


def loader_workers(config: TrainConfig, world: int) -> int:
    if config.workers is not None:
        return config.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // world)


def check_compile(backend: str | None, mode: str | None = None) -> None:
    """Raise ValueError unless `backend` is None or a torch.compile backend of this PyTorch,
    and `mode` None or one of inductor's modes, with inductor."""
    if backend is None:
        if mode is not None:
            raise ValueError(f"compile mode {mode!r} needs a backend to compile with: inductor")
        return
    import torch._dynamo  # noqa: PLC0415 (2 s to import, and only --compile needs it)

    if backend not in torch._dynamo.list_backends(exclude_tags=()):  # debugging ones too
        raise ValueError(
            f"unknown torch.compile backend {backend!r}; choose from "
            f"{torch._dynamo.list_backends()} (or a debugging one, such as aot_eager)"
        )
    if mode is None:
        return
    import torch._inductor  # noqa: PLC0415

    modes = list(torch._inductor.list_mode_options())
    if mode not in modes or backend != "inductor":
        raise ValueError(
            f"compile mode {mode!r} with backend {backend!r}: modes are inductor's, one of {modes}"
        )


def uses_cuda_graphs(mode: str | None) -> bool:
    """Whether inductor's `mode` replays compiled code as CUDA graphs."""
    if mode is None:
        return False
    import torch._inductor  # noqa: PLC0415

    return bool(torch._inductor.list_mode_options(mode).get("triton.cudagraphs"))


def adam(groups: list[dict], lr: float) -> torch.optim.Adam:
    """Adam over `groups`, its update fused into one kernel where PyTorch has one (CUDA; CPUs
    from PyTorch 2.4); the same update, to rounding. Unfused, a CPU step of it loops over the
    parameters, about 1,800 operators for this network's 181 tensors (6.6 ms instead of 26 on
    two cores), and a GPU step launches several multi-tensor kernels per group."""
    fused = all(
        p.device.type == "cuda" or (p.device.type == "cpu" and torch.__version__ >= "2.4")
        for g in groups
        for p in g["params"]
    )
    return torch.optim.Adam(groups, lr=lr, fused=fused or None)


def training_autocast(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bfloat16 or None (float32); float16 would need a loss scaler, and is not offered.
    "auto" is what inference's "auto" is: bfloat16 on GPUs and CPUs that compute it natively
    (on this project's AVX512-BF16 CPU, with `float32_depthwise`, about twice as fast as
    float32; the shipped model's last 12,000 iterations trained so), float32 elsewhere."""
    if config.precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision must be auto, float32 or bfloat16, got {config.precision!r}")
    return autocast_dtype(device, config.precision)


class _Float32InCPUTraining:
    """Mixed into a depthwise convolution's class: in training on a CPU under bfloat16
    autocast it runs in float32. There oneDNN's bfloat16 depthwise backward is 2 to 7 times
    slower than its float32 one (EfficientNet-Lite0's 5 x 5 one of 144 channels at 59 px,
    batch 8: 179 against 25 ms forward and backward), while its bfloat16 forward is the faster
    one; so in eval mode, and on other devices, the convolution runs as autocast says."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


@functools.cache
def _float32_in_cpu_training(cls: type) -> type:
    return type(f"Float32InCPUTraining{cls.__name__}", (_Float32InCPUTraining, cls), {})


def float32_depthwise(model: nn.Module) -> int:
    """Give every depthwise convolution of `model` (timm's padded `Conv2dSame` included) the
    behaviour of `_Float32InCPUTraining`, in place, by changing its class to a subclass of its
    own (as `torch.nn.utils.parametrize` does), so that parameters, state dicts and optimisers
    see no change; returns how many."""
    swapped = 0
    for conv in model.modules():
        if (
            isinstance(conv, nn.Conv2d)
            and not isinstance(conv, _Float32InCPUTraining)
            and 1 < conv.groups == conv.in_channels
        ):
            conv.__class__ = _float32_in_cpu_training(type(conv))
            swapped += 1
    return swapped


class TrainingObjective(nn.Module):
    """What a training step differentiates: the loss terms of `net` (the model, or its DDP
    wrapper) on a batch, queried in a window, the forward in `autocast` (bfloat16, or None:
    float32) and the loss in float32. Forward and loss are one module so that `torch.compile`
    traces them together: one graph a step, its elementwise work fused."""

    def __init__(self, net: nn.Module, weights: LossWeights, autocast: torch.dtype | None) -> None:
        super().__init__()
        self.net, self.weights, self.autocast = net, weights, autocast

    def forward(
        self,
        image: torch.Tensor,
        coarse: torch.Tensor,
        gt: torch.Tensor,
        window: tuple[torch.Tensor, torch.Tensor, int, int],
    ) -> Losses:
        """window: (top, left, height, width), top and left integer tensors on the batch's
        device, so that every window runs the same compiled graph."""
        top, left, height, width = window
        precision = (
            torch.autocast(image.device.type, dtype=self.autocast)
            if self.autocast
            else contextlib.nullcontext()
        )
        with precision:
            output = self.net(image, coarse, window=window)
        rows = torch.arange(height, device=gt.device) + top
        cols = torch.arange(width, device=gt.device) + left
        return refinement_losses(
            output.logits.float(),
            gt.index_select(2, rows).index_select(3, cols),
            self.weights,
            affinity=None if output.affinity is None else output.affinity.float(),
            affinity_size=output.affinity_size,
        )


def prepare_model(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> torch.dtype | None:
    """Make `model` what a training step runs, in place: on `device`, channels-last (the fast
    convolutions on GPUs, and oneDNN's on CPUs), in training mode, its depthwise convolutions
    float32 where a CPU trains in bfloat16 (`float32_depthwise`). Returns the steps' autocast
    dtype (None: float32)."""
    autocast = training_autocast(config, device)
    if device.type == "cpu" and autocast == torch.bfloat16:
        float32_depthwise(model)
    model.to(device=device, memory_format=torch.channels_last).train()
    return autocast


def step_objective(
    net: nn.Module, config: TrainConfig, autocast: torch.dtype | None
) -> tuple[nn.Module, bool]:
    """What `training_step` calls for `net` (the model, or its DDP wrapper): its
    `TrainingObjective`, through `torch.compile` with config.compile's backend and mode when
    one is named; and whether that compiled code replays CUDA graphs (`training_step`'s
    `cuda_graphs`)."""
    objective = TrainingObjective(net, config.loss, autocast)
    if config.compile:
        # Around DDP's wrapper, so that its buckets' communication stays between graphs.
        objective = torch.compile(objective, backend=config.compile, mode=config.compile_mode)
    return objective, uses_cuda_graphs(config.compile_mode)


def training_step(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    window: tuple[int, int, int, int],
    *,
    device: torch.device,
    cuda_graphs: bool = False,
) -> Losses:
    """One optimiser step of `objective` (a `TrainingObjective`, or it compiled) on a batch
    (image, coarse, gt) from the loader, queried in `window` (see `query_window`); returns
    the losses, still on the device. Nothing here makes the host wait for the device.
    cuda_graphs: `objective` replays CUDA graphs (see `step_objective`)."""
    if cuda_graphs:
        # A new step: CUDA graphs may write over the last step's outputs (read by now).
        torch.compiler.cudagraph_mark_step_begin()
    image, coarse, gt = (
        t.to(device, non_blocking=True, memory_format=torch.channels_last) for t in batch
    )
    offset = torch.tensor(window[:2])
    if device.type == "cuda":
        offset = offset.pin_memory()  # a copy from pageable memory would wait for the device
    top, left = offset.to(device, non_blocking=True).unbind()
    losses = objective(image, coarse, gt, (top, left, *window[2:]))
    optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    optimizer.step()
    return losses


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def freeze_all_but(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    """Freeze every parameter whose name starts with none of `prefixes`, and put the batch
    norms of the frozen parts in eval mode, so that their running statistics stay those the
    layers around them were fitted with (call after `model.train()`). A prefix that
    names no parameter is an error; no prefixes: nothing frozen."""
    if not prefixes:
        return
    named = list(model.named_parameters())
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n, _ in named):
            raise ValueError(f"train_only {prefix!r} names no parameter of this model")
    for name, param in named:
        param.requires_grad_(name.startswith(prefixes))
    for name, module in model.named_modules():
        # By its tensors' names, statistics included: a norm without affine parameters (the
        # hypernetwork's) learns its statistics when its prefix is named.
        tensors = chain(module.named_parameters(prefix=name), module.named_buffers(prefix=name))
        if isinstance(module, BATCH_NORMS) and not any(n.startswith(prefixes) for n, _ in tensors):
            module.eval()


def freeze_norm_statistics(model: nn.Module) -> None:
    """Put every batch norm of `model` in eval mode (call after `model.train()`): it
    normalises with its running statistics and keeps them, its affine parameters still
    learning."""
    for module in model.modules():
        if isinstance(module, BATCH_NORMS):
            module.eval()


def parameter_groups(model: nn.Module, lr_scales: tuple[tuple[str, float], ...]) -> list[dict]:
    """The optimiser's parameter groups: one per prefix of `lr_scales` (its parameters and
    its "lr_scale"), then the rest at scale 1; frozen parameters in none. A prefix that names
    no parameter that learns is an error."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups, taken = [], set()
    for prefix, factor in lr_scales:
        params = [p for n, p in named if n.startswith(prefix) and n not in taken]
        if not params:
            raise ValueError(f"lr scale {prefix!r} names no parameter of this model that learns")
        taken |= {n for n, _ in named if n.startswith(prefix)}
        groups.append({"params": params, "lr_scale": float(factor)})
    rest = [p for n, p in named if n not in taken]
    return [*groups, {"params": rest, "lr_scale": 1.0}] if rest else groups


def lr_factor(step: int, config: TrainConfig) -> float:
    return 0.1 ** sum(step >= int(m * config.iterations) for m in config.lr_milestones)


def validate(model: torch.nn.Module, pairs: list[Pair], device: torch.device) -> dict:
    """Coarse vs refined pooled IoU / mean IoU / mBA, overall and per source."""
    # The refiner works on a copy in eval mode: `model`'s own modes (frozen batch norms
    # included, see `freeze_all_but`) are untouched.
    refiner = Refiner(model, device=device, options=InferenceOptions(), max_pixels=None)

    def refine(pair: Pair) -> np.ndarray:
        return refiner.refine(read_image(pair.image, max_pixels=None), read_coarse(pair)) > 127

    scores = {"coarse": score_pairs(pairs, read_coarse), "refined": score_pairs(pairs, refine)}
    return {name: {k: v for k, v in s.items() if k != "images"} for name, s in scores.items()}


def weight_average(model: nn.Module, decay: float | None) -> ModelEmaV3 | None:
    """The exponential moving average of `model`'s weights (timm's), started from them, or
    None without a decay. Its decay depends on the step alone (see `ModelEmaV3.get_decay`:
    step 1 copies the weights), so a resumed run averages as a straight one."""
    return None if decay is None else ModelEmaV3(model, decay=decay)


def save_training_state(
    path: Path,
    model,
    optimizer,
    step: int,
    config: TrainConfig,
    best: float,
    average: ModelEmaV3 | None = None,
) -> None:
    state = {
        "model": model.state_dict(),
        **({"average": average.module.state_dict()} if average is not None else {}),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "best": best,
        "model_config": model.config.to_json(),
        "train_config": config.to_json(),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def export_training_state(
    state: str | os.PathLike, out: str | os.PathLike, *, average: bool = True
) -> int:
    """Write the inference checkpoint of a training state (`last.pt`) to `out`, as `train`
    exports one (safetensors, atomically): the weights' moving average where the run keeps one
    (with `average`), else the trained weights. For a run stopped before its last iteration (a
    time limit, a lease that ended), whose `final.safetensors` is not written yet, or for the
    trained weights of one that kept an average. Returns the state's step; raises
    `CheckpointError` for a file that is not a readable airm training state."""
    path = Path(state)
    if not path.is_file():
        raise CheckpointError(f"training state not found: {path}")
    if Path(out).resolve() == path.resolve():
        raise CheckpointError(f"the checkpoint would overwrite the training state {path}")
    saved = read_training_state(path)
    try:
        config = ModelConfig.from_json(saved["model_config"])
        weights = saved["average"] if average and "average" in saved else saved["model"]
        step = int(saved["step"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} is not an airm training state (last.pt): {e!r}") from None
    model = build_model(config)
    load_state(model, weights, source=str(path))
    save_model(model, out, metadata={"step": str(step)})
    return step


def _is_safetensors(path: Path) -> bool:
    """Whether `path` is a safetensors file (which `torch.load` reads too, as a plain dict)."""
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except Exception:  # noqa: BLE001 (any failure to open it says no)
        return False


def _setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, device
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    rank = dist.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def device_name(device: torch.device) -> str:
    """What a job's steps run on, as its log records it: the GPU's name, or the CPU's model
    and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        models = []
    model = models[0] if models else platform.processor() or platform.machine() or "CPU"
    return f"{model}, {torch.get_num_threads()} threads"


@dataclass(frozen=True)
class RunRecord:
    """What a run's log says of its budget: samples and wall time are those of the steps that
    count (a job's steps after its last checkpoint, done again by the next job, are counted
    once, and the time spent on them not at all); `seconds` is None where the log lacks the
    times of some of its steps (see `run_record`)."""

    variant: str
    step: int
    samples: int
    seconds: float | None
    devices: tuple[str, ...]
    train: dict

    @property
    def jobs(self) -> int:
        return len(self.devices)


def run_record(log_path: str | os.PathLike) -> RunRecord:
    """Read a run's `log.jsonl` (see `train`): its config, the last step it logged, and, from
    its jobs' start records, the samples its steps saw, its wall time and its hardware.

    Steps logged before any job's start record (a log written before jobs were recorded, or
    one that began at a resumption because the earlier log did not travel with the
    checkpoint) count as samples at the config's batch size and the first job's processes,
    and leave the wall time unknown (None)."""
    records = []
    for line in Path(log_path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a stopped job
    config = next((r for r in records if r.get("event") == "config"), None)
    if config is None:
        raise ValueError(f"{log_path} has no config record: is it a training log?")
    train_config = config["train"]
    step = max((r.get("step", 0) for r in records), default=0)
    starts = [i for i, r in enumerate(records) if r.get("event") == "start"]
    first = records[starts[0]] if starts else {"step": step, "world": 1}
    batch = train_config["batch_size"]
    samples = first["step"] * batch * first["world"]
    seconds: float | None = None if first["step"] else 0.0
    devices = []
    # Each job runs from its start record to the next job's (the last one to the last step).
    for i, j in pairwise([*starts, len(records)]):
        job = records[i]
        end = records[j]["step"] if j < len(records) else step
        samples += (end - job["step"]) * batch * job["world"]
        if seconds is not None:
            seconds += max(r.get("time", job["time"]) for r in records[i:j]) - job["time"]
        world = job["world"]
        devices.append(job["device"] if world == 1 else f"{world} x {job['device']}")
    variant = train_config["variant"]
    return RunRecord(variant, step, samples, seconds, tuple(devices), train_config)


def _drop_records_after(log_path: Path, step: int) -> None:
    """Remove the log's records of steps after `step`: a run stopped after its last checkpoint
    logged steps that its resumption does again, and each step is then logged once. A line cut
    short by the stop goes too."""

    def keep(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= step
        except json.JSONDecodeError:
            return False

    lines = log_path.read_text().splitlines()
    kept = [line for line in lines if keep(line)]
    if len(kept) < len(lines):
        atomic_write(log_path, lambda tmp: Path(tmp).write_text("".join(f"{x}\n" for x in kept)))


class ConfigError(ValueError):
    """A run that cannot start or continue (`check_config`), in one line."""


# TrainConfig fields that a resumed run may change: where its files are and how it is run,
# not what it learns (the data's folder may move; its pairs are not compared). Any other
# field must be the one the run started with, or --resume would not continue it exactly.
RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "data",
        "val",
        "val_limit",
        "val_interval",
        "log_interval",
        "checkpoint_interval",
        "iterations",
        "workers",
        "cache_images",
        "precision",
        "compile",
        "compile_mode",
        "init",
        "encoder_weights",
        # Kept, or started from the weights when a run takes it up (see `train`); the trained
        # weights go on as they would have.
        "ema_decay",
    }
)
# What an output folder holds once a run has taken a step in it (a run that failed before its
# first checkpoint leaves a log.jsonl alone, and may be run again).
RUN_FILES = ("last.pt", "final.safetensors")


def check_config(config: TrainConfig, *, resume: bool = False) -> None:
    """Raise ConfigError for a run that cannot start or continue: all that `train` would find
    only later (some of it hours in, at the step that reads a bad file), before it makes its
    output folder. Reads the pairs' headers, builds the model the overrides describe, and with
    `resume` reads the run's last.pt. `train` calls it first."""
    try:
        _check_config(config, resume=resume)
    except ConfigError:
        raise
    except ValueError as e:  # CheckpointError and InputError included
        raise ConfigError(str(e)) from None


def _check_config(config: TrainConfig, *, resume: bool) -> None:
    if config.variant not in VARIANTS:
        raise ValueError(f"unknown variant {config.variant!r}; choose from {sorted(VARIANTS)}")
    for name, least in [
        ("iterations", 0),
        ("batch_size", 1),
        ("crop_size", 32),
        ("query_size", 1),
        ("log_interval", 1),
        ("val_interval", 1),
        ("checkpoint_interval", 1),
    ]:
        if not getattr(config, name) >= least:
            raise ValueError(f"{name} must be >= {least}, got {getattr(config, name)}")
    if config.query_size > config.crop_size:
        raise ValueError(f"query_size {config.query_size} exceeds crop_size {config.crop_size}")
    if config.workers is not None and config.workers < 0:
        raise ValueError(f"workers must be >= 0, got {config.workers}")
    if config.val_limit is not None and config.val_limit < 1:
        raise ValueError(f"val_limit must be >= 1, got {config.val_limit}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"lr must be a number > 0, got {config.lr}")
    if not all(0 <= m <= 1 for m in config.lr_milestones):
        raise ValueError(
            f"lr_milestones are fractions of the iterations (0 to 1), got {config.lr_milestones}"
        )
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        raise ValueError(f"ema_decay must lie between 0 and 1, got {config.ema_decay}")
    check_compile(config.compile, config.compile_mode)
    check_augmentations(**augmentations(config))
    resuming = resume and (Path(config.out) / "last.pt").is_file()
    for name in ("init", "encoder_weights"):  # read only when a run starts
        if getattr(config, name) and not resuming and not Path(getattr(config, name)).is_file():
            raise ValueError(f"{name} not found: {getattr(config, name)}")
    check_pairs([p for root in config.data for p in _pairs(root)], "training")
    if config.val:
        if not [p for p in _pairs(config.val) if p.coarse is not None]:
            raise ValueError(f"{config.val} holds no <name>_seg.png coarse masks to validate with")
        check_pairs(validation_pairs(config), "validation")
    try:
        model = build_model(config.variant, **dict(config.model_overrides))
    except Exception as e:  # what a bad override raises is the builders' (timm: RuntimeError)
        overrides = dict(config.model_overrides)
        reason = str(e) if isinstance(e, (ValueError, RuntimeError)) else repr(e)
        raise ValueError(f"--model {overrides} builds no model: {reason}") from None
    if model.config.hyper_input_norm and config.batch_size < 2:
        raise ValueError("hyper_input_norm standardises over the batch: batch_size must be >= 2")
    names = [name for name, _ in model.named_parameters()]
    for prefix in (*config.train_only, *(prefix for prefix, _ in config.lr_scales)):
        if not any(name.startswith(prefix) for name in names):
            raise ValueError(f"prefix {prefix!r} names no parameter of {config.variant}")
    _check_output(config, model.config, resume)


def _pairs(root: str) -> list[Pair]:
    try:
        return find_pairs(root)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None


def validation_pairs(config: TrainConfig) -> list[Pair]:
    """The pairs of `config.val` that validation scores: those with coarse masks, spread."""
    if not config.val:
        return []
    pairs = [p for p in find_pairs(config.val) if p.coarse is not None]
    return spread_pairs(pairs, config.val_limit)


def _check_output(config: TrainConfig, model_config: ModelConfig, resume: bool) -> None:
    """A run's output folder: a new run must not write over another; a resumed one must
    continue its last.pt exactly."""
    out = Path(config.out)
    last = out / "last.pt"
    if not (resume and last.is_file()):
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found:
            hint = "--resume continues it" if last.is_file() else "it has ended (no last.pt)"
            raise ValueError(
                f"{out} holds a run already ({', '.join(found)}): {hint}; name another --out "
                "for a new one"
            )
        return
    state = read_training_state(last)
    saved = ModelConfig.from_json(state["model_config"])
    if saved != model_config:
        raise ValueError(f"{last} was trained with another model config: {saved}")
    before = _comparable(train_config_with_defaults(json.loads(state["train_config"])))
    now = _comparable(json.loads(config.to_json()))
    changed = sorted(k for k in now.keys() - RESUMABLE_CHANGES if before.get(k) != now[k])
    if changed:
        listed = ", ".join(f"{k} {before.get(k)} -> {now[k]}" for k in changed)
        raise ValueError(f"{last} continues exactly only with its own settings: {listed}")
    if int(state["step"]) > config.iterations:
        raise ValueError(f"{last} is at step {state['step']}, past iterations {config.iterations}")


def train_config_with_defaults(saved: dict) -> dict:
    """A TrainConfig as JSON from a log or a last.pt, its fields added since filled with their
    defaults (what the run ran with before they existed; the loss's weights likewise)."""
    defaults = json.loads(TrainConfig(data=(), out="").to_json())
    filled = {**defaults, **saved}
    filled["loss"] = {**defaults["loss"], **saved.get("loss", {})}
    return filled


def _comparable(train: dict) -> dict:
    """`train` with the fields whose order means nothing sorted (flags given in another order
    describe the same run; lr_scales' order counts: the first matching prefix wins)."""
    return {
        **train,
        "model_overrides": sorted(map(json.dumps, train["model_overrides"])),
        "train_only": sorted(train["train_only"]),
    }


def read_training_state(path: str | os.PathLike) -> dict:
    """A training state (`last.pt`) as `save_training_state` wrote it; `CheckpointError`, in
    one line, for anything else (a truncated copy, a piece missing, another file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state not found: {path}")
    if _is_safetensors(path):
        raise CheckpointError(f"{path} is an inference checkpoint already, not a training state")
    if not zipfile.is_zipfile(path):  # what torch.save writes; torch's own errors mislead
        raise CheckpointError(
            f"{path} is not a readable training state (last.pt): not a whole torch.save file "
            "(a copy cut short, or another kind of file)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not its own
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{path} is not a readable training state (last.pt): {reason}"
        ) from None
    keys = {"model", "optimizer", "step", "model_config", "train_config"}
    if not isinstance(state, dict) or not keys <= state.keys():
        raise CheckpointError(f"{path} is not an airm training state (last.pt)")
    return state


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    time_limit: float | None = None,
) -> Path:
    """Train; returns the path of the final inference checkpoint, or, for a job that ended
    before the last iteration, of the training state (`last.pt`) that `resume` continues.

    stop_at: end after this step (checkpointed) as an interrupted run would, without exporting.
    time_limit: seconds this job may train, from the call (a short job on a lent or preemptible
        machine): the run stops at the first log line past it (every `log_interval` steps,
        where the host reads the device anyway), checkpointed, without exporting. The job can
        outlast it by one log interval, a validation and a checkpoint.
    """
    started = time.monotonic()
    if time_limit is not None and not time_limit >= 0:
        raise ValueError(f"time_limit must be a number of seconds >= 0, got {time_limit}")
    check_config(config, resume=resume)
    rank, world, device = _setup_distributed()
    if device.type == "cpu":
        retain_freed_memory()  # 1.23x faster steps on this project's CPU: see airm.allocator
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    if rank == 0:  # what a killed job left half-written (last.pt's are 43-58 MB)
        remove_stale_temporaries(out / name for name in (*RUN_FILES, "best.safetensors"))
    # --resume without a checkpoint yet (the first of a series of short jobs) starts the run
    # as configured, --init and --encoder-weights included.
    resuming = resume and last.is_file()
    torch.manual_seed(config.seed)

    model = build_model(config.variant, **dict(config.model_overrides))
    if config.encoder_weights and not resuming:
        load_encoder_rgb_weights(model, config.encoder_weights)
    if config.init and not resuming:
        load_initial_weights(model, config.init)
    autocast = prepare_model(model, config, device)
    freeze_all_but(model, config.train_only)
    if config.frozen_norms:
        freeze_norm_statistics(model)
    optimizer = adam(parameter_groups(model, config.lr_scales), config.lr)
    start, best = 0, -math.inf
    if resuming:
        state = read_training_state(last)  # on the CPU; load_state_dict copies to the device
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = int(state["step"]), float(state["best"])
    # A run resumed with an average that it did not keep before starts it from its weights.
    average = weight_average(model, config.ema_decay)
    if resuming and average is not None and "average" in state:
        average.module.load_state_dict(state["average"])
    # What validation scores and the run exports.
    exported = model if average is None else average.module
    net = DistributedDataParallel(model) if world > 1 else model
    objective, cuda_graphs = step_objective(net, config, autocast)

    workers = loader_workers(config, world)
    items = training_items(config, threads=max(1, workers))
    if config.cache_images and rank == 0:
        tqdm.write(f"{len(items)} training pairs decoded: {items.cached_bytes / 2**30:.2f} GiB")
    loader = training_loader(
        items,
        config,
        rank=rank,
        world=world,
        start=start,
        stop=min(config.iterations, stop_at or config.iterations),
        workers=workers,
        pin_memory=device.type == "cuda",
    )
    val_pairs = validation_pairs(config)
    log_path = out / "log.jsonl"
    # A resumed run whose log did not travel with its checkpoint starts a log of its own.
    if rank == 0 and not (resuming and log_path.is_file()):
        log_path.write_text(
            json.dumps(
                {
                    "event": "config",
                    "train": json.loads(config.to_json()),
                    "model": json.loads(model.config.to_json()),
                }
            )
            + "\n"
        )
    elif rank == 0:
        _drop_records_after(log_path, start)

    def log(record: dict) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps({**record, "time": time.time()}) + "\n")

    if rank == 0:
        log({"event": "start", "step": start, "device": device_name(device), "world": world})

    bar = tqdm(total=config.iterations, initial=start, disable=rank != 0, dynamic_ncols=True)
    # Loss terms summed on the device since the last log line: reading them back every step
    # would make the host wait for each step's kernels, and a GPU then idles between steps.
    running = torch.zeros(len(Losses.NAMES), device=device)
    tic = time.time()
    step, out_of_time = start, False
    for step, batch in enumerate(loader, start=start + 1):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * group["lr_scale"] * lr_factor(step - 1, config)
        losses = training_step(
            objective,
            optimizer,
            batch,
            query_window(step, config),
            device=device,
            cuda_graphs=cuda_graphs,
        )
        if average is not None:
            average.update(model, step=step)
        running += losses.stacked()
        bar.update(1)
        if step % config.log_interval == 0:
            means = (running / config.log_interval).tolist()
            avg = dict(zip(Losses.NAMES, means, strict=True))
            speed = config.log_interval / (time.time() - tic)
            bar.set_postfix(loss=f"{avg['total']:.4f}", it_s=f"{speed:.2f}")
            if rank == 0:
                log(
                    {
                        "event": "train",
                        "step": step,
                        "lr": config.lr * lr_factor(step - 1, config),
                        "it_per_s": speed,
                        "samples_per_s": speed * config.batch_size * world,
                        **avg,
                    }
                )
            running.zero_()
            tic = time.time()
        out_of_time = (
            time_limit is not None
            and step % config.log_interval == 0
            and _agreed(time.monotonic() - started >= time_limit, device, world)
        )
        if rank == 0 and (
            step % config.checkpoint_interval == 0
            or step in (config.iterations, stop_at)
            or out_of_time
        ):
            save_training_state(last, model, optimizer, step, config, best, average)
        if (
            rank == 0
            and val_pairs
            and (step % config.val_interval == 0 or step == config.iterations)
        ):
            scores = validate(exported, val_pairs, device)
            log({"event": "val", "step": step, **scores})
            gain = (
                scores["refined"]["iou"]
                - scores["coarse"]["iou"]
                + scores["refined"]["mba"]
                - scores["coarse"]["mba"]
            )
            tqdm.write(
                f"step {step}: coarse {scores['coarse']['iou']:.2f}/{scores['coarse']['mba']:.2f}"
                f" refined {scores['refined']['iou']:.2f}/{scores['refined']['mba']:.2f}"
            )
            if gain > best:
                best = gain
                save_model(exported, out / "best.safetensors", metadata={"step": str(step)})
            save_training_state(last, model, optimizer, step, config, best, average)
            tic = time.time()
        if out_of_time:
            break
    bar.close()
    final = out / "final.safetensors"
    if rank == 0 and step == config.iterations:
        save_model(exported, final, metadata={"step": str(step)})
    if rank == 0:
        log({"event": "end", "step": step, **({"stopped": "time_limit"} if out_of_time else {})})
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final if step == config.iterations else last


def _agreed(flag: bool, device: torch.device, world: int) -> bool:
    """Rank 0's `flag` on every process (a collective: all ranks call it at the same step), so
    that the processes of a DDP run stop at the same step."""
    if world == 1:
        return flag
    shared = torch.tensor([flag], dtype=torch.uint8, device=device)
    dist.broadcast(shared, src=0)
    return bool(shared.item())
