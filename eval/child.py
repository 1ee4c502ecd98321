"""Run one measurement in a fresh process, so that its peak memory is its own.

The child and the parent take each other down: an exception in the child is raised again in
the parent (with the child's traceback), a child that dies without answering (killed, out of
memory) is an error instead of a wait for ever, and a child whose parent dies (killed,
interrupted) exits instead of running on alone.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import threading
import traceback
from collections.abc import Callable

# How long the parent waits for an answer before it looks whether the child still lives.
POLL_SECONDS = 0.5
# How long a child is given to exit on SIGTERM before it is killed.
TERMINATE_SECONDS = 5.0


class ChildError(RuntimeError):
    """The measurement process raised, or died without answering."""

    @property
    def summary(self) -> str:
        """The message's first line (what went wrong, without the child's traceback)."""
        return str(self).splitlines()[0]


def _exit_with_parent() -> None:
    # The parent's sentinel becomes ready when the parent exits, however it exits (SIGKILL too).
    mp.parent_process().join()
    os._exit(1)


def _call(fn: Callable, args: tuple, answers: mp.Queue) -> None:
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    try:
        answers.put((True, fn(*args)))
    except BaseException as e:  # KeyboardInterrupt too: the parent must hear, not wait
        answers.put((False, (f"{type(e).__name__}: {e}", traceback.format_exc())))


def _stop(proc: mp.Process) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(TERMINATE_SECONDS)
    if proc.is_alive():
        proc.kill()
        proc.join()


def run_in_process(fn: Callable, *args):
    """fn(*args) in a spawned process (fn must be importable); returns its result.

    Raises ChildError if fn raises there (the message's first line names the exception, the
    rest is the child's traceback) or if the process ends without a result (the message gives
    its exit code or signal).
    """
    ctx = mp.get_context("spawn")
    answers = ctx.Queue()
    proc = ctx.Process(target=_call, args=(fn, args, answers))
    proc.start()
    try:
        while True:
            # Read before waiting: a child that answered and then exited is still heard.
            alive = proc.is_alive()
            try:
                ok, value = answers.get(timeout=POLL_SECONDS)
                break
            except queue_module.Empty:
                if not alive:
                    raise ChildError(_death(fn, proc.exitcode)) from None
        proc.join()
    finally:
        _stop(proc)  # on an error or an interrupt here, the child does not run on
    if not ok:
        summary, trace = value
        raise ChildError(f"{_name(fn)} raised {summary}\n(in its measurement process)\n{trace}")
    return value


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _death(fn: Callable, exitcode: int | None) -> str:
    how = f"killed by signal {-exitcode}" if exitcode and exitcode < 0 else f"code {exitcode}"
    hint = " (out of memory?)" if exitcode == -9 else ""
    return f"{_name(fn)}'s measurement process ended without a result: {how}{hint}"
