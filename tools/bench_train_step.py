"""Seconds per CPU training step, with glibc's default malloc and with freed memory retained.

    python tools/bench_train_step.py ../shared/data/train --threads 1 --rounds 3

Each measurement runs in a fresh process (`airm.allocator.retain_freed_memory` changes the
whole process): the model of --variant with random weights (the speed of a step does not
depend on them), prepared as `train.py` prepares it, takes --warmup steps, then --steps timed
steps of `airm.training.training_step` on batches decoded beforehand, so that only the step is
timed. The two modes alternate, round after round (the order flips each round), since this
shared machine's speed drifts from minute to minute. Printed per mode: the median seconds a
step, the page faults a step (minor faults: each is a 4 KiB page the kernel had to hand over),
and the peak resident memory; then the ratio of the medians.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.child import run_in_process  # noqa: E402

MODES = ("glibc default", "retained")


def measure(args: dict) -> dict:
    """Time training steps in this process (run in a fresh one), in mode args["mode"]."""
    import torch

    from airm.allocator import retain_freed_memory
    from tools.step_setup import step_runner

    torch.set_num_threads(args["threads"])
    retained = args["mode"] == "retained" and retain_freed_memory()
    steps = args["warmup"] + args["steps"]
    step = step_runner(args, steps)

    for i in range(args["warmup"]):
        step(i)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tic = time.perf_counter()
    for i in range(args["warmup"], steps):
        step(i)
    seconds = (time.perf_counter() - tic) / args["steps"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "retained": retained,
        "seconds": seconds,
        "faults": (usage.ru_minflt - faults) / args["steps"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="+", help="training roots (BIG or images/+masks/)")
    p.add_argument("--variant", default="airm_efficientnet_lite0", help="network variant")
    p.add_argument("--batch-size", type=int, default=8, help="samples per step")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument(
        "--precision", default="auto", choices=("auto", "float32", "bfloat16"), help="autocast"
    )
    p.add_argument("--warmup", type=int, default=3, help="steps before timing")
    p.add_argument("--steps", type=int, default=8, help="steps timed per measurement")
    p.add_argument("--rounds", type=int, default=3, help="measurements per mode, alternated")
    args = p.parse_args(argv)
    if min(args.warmup, args.steps, args.rounds, args.threads, args.batch_size) < 1:
        p.error("--warmup, --steps, --rounds, --threads and --batch-size must be at least 1")
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else reversed(MODES):
            result = run_in_process(measure, {**vars(args), "mode": mode})
            results[mode].append(result)
            print(
                f"round {r + 1} {mode:>13}: {result['seconds']:.3f} s/step, "
                f"{result['faults']:,.0f} page faults/step, "
                f"peak {result['peak_rss_mb']:,.0f} MB",
                flush=True,
            )
    if not results["retained"][0]["retained"]:
        print("this C library is not glibc: retain_freed_memory() changed nothing")
    median = {mode: statistics.median(r["seconds"] for r in results[mode]) for mode in MODES}
    for mode in MODES:
        faults = statistics.median(r["faults"] for r in results[mode])
        print(f"{mode:>13}: median {median[mode]:.3f} s/step, {faults:,.0f} page faults/step")
    print(f"retained / default speed: {median['glibc default'] / median['retained']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
