"""One training job on a lent GPU, kept inside the call's limits, and what it brings back.

    PYTHONPATH=. python3 tools/lease_job.py --minutes 7 --bring "$OUT" -- \\
        --data /root/data/train --out /root/runs/x --batch-size 64 --iterations 4000 ...

A lent machine runs one command for at most 10 minutes and brings back at most 8 files of at
most 16 MiB each. This runs `train.py` with the arguments after `--`, continued from the run's
`last.pt` where there is one (`--resume`) and stopped by `--time-limit`: first through
`torch.compile` (--compile; its first step compiles), and if that job fails, the same job
eager, resumed, in what is left of --minutes, so that the two together stay inside them. Beside
it the GPU's load and memory are sampled once a second into BRING/gpu.csv, where nvidia-smi is.
Then the run's `last.pt` (weights, Adam's state, the moving average where the run keeps one) is
split into BRING/last.pt.part-000, -001, ... of --piece-mb each, to be joined where it arrives
with `cat last.pt.part-* > last.pt`, and its `log.jsonl` is copied beside them.

The training arguments are parsed before anything runs, and `train.py` checks the run before it
trains (exit 2 when it refuses it, which is not tried again eager); the job's
own flags (--resume, --time-limit, --compile, --compile-mode) are this tool's to set. The pieces
are written whenever the run has a `last.pt`. Exits with the last job's status (0: it ended as
asked, at its last iteration or its time limit), 2 for arguments it refuses, 1 when a job that
reported success left no `last.pt`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from airm.cli import train as train_cli  # noqa: E402
from airm.training import check_compile  # noqa: E402
from tools.step_setup import compile_options  # noqa: E402

MIB = 2**20
# What one call brings back (the device tool's limits): files, bytes a file, bytes in all.
BRING_FILES = 8
BRING_FILE_BYTES = 16 * MIB
BRING_BYTES = 64 * MIB
# Flags of train.py that the job sets itself, and where its parser puts them.
OWN_FLAGS = {
    "--resume": "resume",
    "--time-limit": "time_limit",
    "--compile": "compile",
    "--compile-mode": "compile_mode",
}

# Runs train.py with these arguments; returns its exit status.
Runner = Callable[[list[str]], int]


def run_train(argv: list[str]) -> int:
    """train.py in a process of its own (a failed compile leaves nothing behind in this one)."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv]).returncode


def run_jobs(
    train_args: Sequence[str],
    *,
    minutes: float,
    compile_flags: Sequence[str],
    runner: Runner = run_train,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """The compiled job, then, if it fails (not refused: exit 2), the eager one in the minutes
    left; the last status.

    compile_flags: train.py's flags for compiling (empty: one eager job only).
    """
    deadline = clock() + minutes * 60
    base = [*train_args, "--resume"]
    if compile_flags:
        status = runner([*base, *compile_flags, "--time-limit", f"{minutes:g}"])
        if status in (0, 2):  # 2: train.py refused the run before it began; so would eager
            return status
        left = (deadline - clock()) / 60
        if left <= 0:
            print(f"the compiled job failed (exit {status}); no minutes left for an eager one")
            return status
        print(f"the compiled job failed (exit {status}); eager, {left:.1f} minutes left")
        return runner([*base, "--time-limit", f"{left:.2f}"])
    return runner([*base, "--time-limit", f"{minutes:g}"])


def split_file(path: Path, dest: Path, piece_bytes: int) -> list[Path]:
    """`path` cut into dest/NAME.part-000, -001, ... of at most piece_bytes each, in order
    (pieces of an earlier split there removed first, so that a join takes only these)."""
    for stale in dest.glob(f"{path.name}.part-*"):
        stale.unlink()
    pieces = []
    with path.open("rb") as f:
        while chunk := f.read(piece_bytes):
            piece = dest / f"{path.name}.part-{len(pieces):03d}"
            piece.write_bytes(chunk)
            pieces.append(piece)
    return pieces


def gpu_sampler(csv: Path) -> subprocess.Popen | None:
    """nvidia-smi writing the GPU's load and memory to `csv` once a second; None without it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = "--query-gpu=timestamp,utilization.gpu,memory.used"
    with csv.open("w") as out:
        return subprocess.Popen([smi, query, "--format=csv", "-lms", "1000"], stdout=out)


def bring(run: Path, dest: Path, piece_mb: float) -> list[Path]:
    """The run's last.pt in pieces and its log.jsonl, in dest; the files written."""
    written = split_file(run / "last.pt", dest, int(piece_mb * MIB))
    if (run / "log.jsonl").exists():
        written.append(Path(shutil.copy(run / "log.jsonl", dest)))
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/lease_job.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --minutes M --bring DIR [options] -- TRAIN_ARGS...",
    )
    p.add_argument("--minutes", type=float, required=True, help="training time of both tries")
    p.add_argument("--bring", type=Path, required=True, help="folder that comes back ($OUT)")
    p.add_argument(
        "--compile",
        default="inductor",
        metavar="BACKEND[:MODE]",
        help="torch.compile backend of the first try, with inductor's mode after a colon "
        "(inductor:reduce-overhead); eager: no compiled try (default: inductor)",
    )
    p.add_argument(
        "--piece-mb", type=float, default=12, help="size of last.pt's pieces (default 12 MiB)"
    )
    return p


def main(argv: list[str] | None = None, *, runner: Runner = run_train) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    ours, train_args = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(ours)
    backend, mode = compile_options(args.compile)
    try:
        if not args.minutes > 0:
            raise ValueError(f"--minutes must be > 0, got {args.minutes}")
        if not 0 < args.piece_mb * MIB <= BRING_FILE_BYTES:
            raise ValueError(
                f"--piece-mb must be in (0, {BRING_FILE_BYTES // MIB}] (a file brought back), "
                f"got {args.piece_mb}"
            )
        if not train_args:
            raise ValueError("give train.py's arguments after --")
        check_compile(backend, mode)
        parsed = train_cli.parse_args(train_args)  # argparse refuses bad arguments (exit 2)
        # Read from what the parser made of them, so that an abbreviation (--time) is seen too.
        own = [
            flag for flag, dest in OWN_FLAGS.items() if getattr(parsed, dest) not in (None, False)
        ]
        if own:
            raise ValueError(f"{', '.join(own)}: this tool sets them (see --minutes, --compile)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = Path(parsed.out)
    compile_flags = [] if backend is None else ["--compile", backend]
    if mode is not None:
        compile_flags += ["--compile-mode", mode]
    args.bring.mkdir(parents=True, exist_ok=True)
    sampler = gpu_sampler(args.bring / "gpu.csv")
    try:
        status = run_jobs(
            train_args, minutes=args.minutes, compile_flags=compile_flags, runner=runner
        )
    finally:
        if sampler is not None:
            sampler.terminate()
            sampler.wait()
    if not (run / "last.pt").exists():
        print(f"no {run / 'last.pt'} to bring (the job's exit status: {status})", file=sys.stderr)
        return status or 1
    written = bring(run, args.bring, args.piece_mb)
    if sampler is not None:
        written.append(args.bring / "gpu.csv")
    total = sum(path.stat().st_size for path in written)
    for path in written:
        print(f"{path} ({path.stat().st_size / MIB:.1f} MiB)")
    if len(written) > BRING_FILES or total > BRING_BYTES:
        print(
            f"warning: {len(written)} files, {total / MIB:.1f} MiB: more than a call brings "
            f"back ({BRING_FILES} files, {BRING_BYTES // MIB} MiB); copy the rest to $OUT in "
            "the next call, while the machine is warm",
            file=sys.stderr,
        )
    print("join the pieces with: cat last.pt.part-* > last.pt")
    if status != 0:
        print(f"the job failed (exit {status}); last.pt is its last checkpoint", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
