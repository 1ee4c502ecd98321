"""eval.child: the measurement process answers, fails loudly, and never outlives its parent."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.child import ChildError, run_in_process

ROOT = Path(__file__).resolve().parents[1]


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def write_pid_and_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def running(pid: int) -> bool:
    """Whether pid is a live process (a zombie nobody reaped does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def test_returns_the_result():
    assert run_in_process(pow, 2, 10) == 1024


def test_an_exception_in_the_child_is_raised_in_the_parent():
    with pytest.raises(ChildError, match="^int raised ValueError: invalid literal"):
        run_in_process(int, "not a number")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_child_killed_without_answering_is_an_error_not_a_hang():
    with pytest.raises(ChildError, match="killed by signal 9"):
        run_in_process(kill_self)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_the_child_exits_when_its_parent_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from eval.child import run_in_process; "
            "from test_child import write_pid_and_sleep; "
            "run_in_process(write_pid_and_sleep, sys.argv[1])",
            str(pid_file),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None, "the child never started"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert running(child)
    parent.kill()  # SIGKILL: the parent runs no clean-up of its own
    parent.wait()
    deadline = time.monotonic() + 10
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = running(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the measurement process outlived its parent"
