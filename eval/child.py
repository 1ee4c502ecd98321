"""Run one measurement in a fresh process, so that its peak memory is its own."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable


def _call(fn: Callable, args: tuple, queue: mp.Queue) -> None:
    queue.put(fn(*args))


def run_in_process(fn: Callable, *args):
    """fn(*args) in a spawned process (fn must be importable); returns its result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_call, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"measurement process exited with code {proc.exitcode}")
    return result
