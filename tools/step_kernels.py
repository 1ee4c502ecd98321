"""What one training step launches, eager and through torch.compile, and how long it takes.

    python tools/step_kernels.py /root/data/train --device cuda --batch-size 16 64
    python tools/step_kernels.py ../shared/data/train --device cpu --backends eager inductor

A GPU step of this small network is bound by launching kernels, not by their arithmetic, so
the number of launches is what `train --compile` is meant to cut. Each backend ("eager": no
compile) runs in a fresh process: the model of --variant with random weights, prepared as
`train.py` prepares it (its Adam included), --warmup steps (the compiling ones), then one
profiled step and --steps timed ones, on batches moved to the device beforehand (each step
its own query window, as in training). Printed per
batch size and backend: on CUDA the kernels (and copies) the profiled step ran on the
device, the host's calls that launched them (one per kernel, or one per CUDA graph replayed
with "inductor:reduce-overhead"), and how busy they kept the device (their time over the
median step's); on a CPU
the operators of forward, loss and backward that compute (views, allocations, metadata and
the optimiser's per-parameter loop left out), the nearest thing it has; then the median
seconds a step, samples a second, and the seconds of each warm-up step (compiling).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.training import check_compile  # noqa: E402
from eval.child import run_in_process  # noqa: E402
from tools.step_setup import compile_options  # noqa: E402

# The CUDA runtime's and driver's calls that start work on the device (kernels, graphs).
LAUNCH_CALLS = ("cudaLaunch", "cuLaunch", "cudaGraphLaunch", "cuGraphLaunch")

# Operators that only allocate, view or describe tensors: no kernel on a GPU.
NOT_COMPUTING = frozenset(
    "aten::" + name
    for name in (
        "empty empty_strided empty_like new_empty new_empty_strided as_strided as_strided_ "
        "view view_as _reshape_alias _unsafe_view reshape unflatten flatten resize_ detach "
        "detach_ resolve_conj lift_fresh alias t transpose permute movedim expand expand_as "
        "slice select narrow unsqueeze squeeze unbind split split_with_sizes chunk contiguous "
        "to _to_copy result_type item _local_scalar_dense is_nonzero set_ zeros"
    ).split()
)


def _computes(event) -> bool:
    """A CPU profiler event that is an operator's own computation: an aten operator none of
    whose children computes, or one of inductor's generated kernels."""
    if "cpp_fused" in event.name:
        return True
    if not event.name.startswith("aten::") or event.name in NOT_COMPUTING:
        return False
    return not any(
        c.name.startswith("aten::") and c.name not in NOT_COMPUTING for c in event.cpu_children
    )


def _in_optimizer(event) -> bool:
    """Inside Adam's step, which a CPU runs as a loop over the parameters (two operators for
    each of them even fused, counting its steps) and a GPU as a few multi-tensor kernels."""
    while event is not None:
        if event.name.startswith("Optimizer.step"):
            return True
        event = event.cpu_parent
    return False


def measure(args: dict) -> dict:
    """Profile and time training steps with args["backend"] (run in a fresh process)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tools.step_setup import step_runner

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    if args["device"] == "cpu":
        import torch._inductor.config  # noqa: PLC0415

        from airm.allocator import retain_freed_memory  # noqa: PLC0415

        torch._inductor.config.cpp.enable_kernel_profile = True  # names its kernels
        # As `train` runs on a CPU: without it the eager step's large tensors cost it page
        # faults that compiled code, which reuses its buffers, mostly does not pay.
        retain_freed_memory()
    device = torch.device(args["device"])
    steps = args["warmup"] + 1 + args["steps"]
    step = step_runner(args, steps)

    warmup = []
    for i in range(args["warmup"]):
        tic = time.perf_counter()
        step(i)
        warmup.append(time.perf_counter() - tic)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(args["warmup"])
    events = prof.events()
    on_device = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    if device.type == "cuda":
        launched = len(on_device)
        calls = sum(1 for e in events if e.name.startswith(LAUNCH_CALLS))
    else:
        launched = sum(1 for e in events if _computes(e) and not _in_optimizer(e))
        calls = None
    seconds = []
    for i in range(args["warmup"] + 1, steps):
        tic = time.perf_counter()
        step(i)
        seconds.append(time.perf_counter() - tic)
    median = statistics.median(seconds)
    busy = sum(e.time_range.elapsed_us() for e in on_device) / 1e6 / median
    return {
        "launched": launched,
        "calls": calls,
        "seconds": median,
        "warmup": warmup,
        "busy": busy if on_device else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="+", help="training roots (BIG or images/+masks/)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--backends",
        nargs="+",
        default=["eager", "inductor"],
        help="eager (no compile) and torch.compile backends to compare, as BACKEND or "
        "BACKEND:MODE (inductor:reduce-overhead: CUDA graphs)",
    )
    p.add_argument("--variant", default="airm_efficientnet_lite0", help="network variant")
    p.add_argument(
        "--batch-size", type=int, nargs="+", default=[16], help="samples per step (each in turn)"
    )
    p.add_argument(
        "--precision", default="auto", choices=("auto", "float32", "bfloat16"), help="autocast"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--warmup", type=int, default=3, help="steps before profiling (compiling)")
    p.add_argument("--steps", type=int, default=20, help="steps timed after the profiled one")
    args = p.parse_args(argv)
    if min(args.warmup, args.steps, *args.batch_size) < 1 or args.threads < 0:
        p.error("--warmup, --steps and --batch-size must be at least 1, --threads at least 0")
    for name in args.backends:
        try:  # here, before a child process has started (or a lease's minutes gone by)
            check_compile(*compile_options(name))
        except ValueError as e:
            p.error(f"--backends {name}: {e}")
    kind = "kernels run" if args.device.startswith("cuda") else "operators that compute"
    for batch in args.batch_size:
        print(f"{args.variant}, batch {batch}, {args.precision}, on {args.device}")
        for backend in args.backends:
            job = {**vars(args), "batch_size": batch, "backend": backend}
            result = run_in_process(measure, job)
            calls = "" if result["calls"] is None else f"{result['calls']:,} launch calls, "
            busy = "" if result["busy"] is None else f", the GPU busy {result['busy']:.0%}"
            print(
                f"{backend:>10}: {result['launched']:,} {kind} in a step, {calls}"
                f"{result['seconds'] * 1000:.1f} ms a step "
                f"({batch / result['seconds']:,.0f} samples/s){busy}; warm-up steps "
                + ", ".join(f"{t:.1f}" for t in result["warmup"])
                + " s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
