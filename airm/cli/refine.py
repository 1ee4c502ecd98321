"""The command line of refinement (`airm refine`, `refine.py`): one image/mask pair, or two
folders of them.

Every failure is one line on stderr and a non-zero exit status, never a traceback; an output
is only ever replaced by a complete file (see `airm.io.atomic_write`), a pair's output and
overlay are replaced both or neither, and outputs that would replace inputs (or each other) are
refused. Exit status: 0 when everything was refined, 1 when an input could not be (in folder
mode the other pairs are still done), 2 when the command itself is wrong (flags, checkpoint,
folders whose images and masks cannot be told apart). A single pair that was refined
is reported in one line on stdout (`--quiet` silences it); folders get a progress bar and a
summary on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from airm.api import ModelNotFoundError, get_refiner
from airm.checkpoint import CheckpointError
from airm.data import image_files
from airm.inference import EVERY_PIXEL, PRECISIONS, InferenceOptions
from airm.io import (
    DEFAULT_MAX_PIXELS,
    InputError,
    read_image,
    read_labels,
    read_mask,
    remove_stale_temporaries,
    write_labels,
    write_mask,
)
from airm.overlay import draw_overlay, picture_format, write_picture
from airm.refiner import Refiner

# What is expected to go wrong with one pair (torch reports out-of-memory and other failures
# inside the network as RuntimeError): reported by its message alone. Any other Exception fails
# its pair too, reported with its type; a batch goes on either way.
PAIR_ERRORS = (InputError, OSError, RuntimeError, MemoryError)

T = TypeVar("T")


DESCRIPTION = (
    "Refine coarse masks with AIRM. --image/--coarse/--out are three files, or three folders "
    "(pairs matched by file stem; a BIG-layout name_im.jpg matches name_seg.png, each preferred "
    "over a plain name.*; outputs that already exist are skipped). When --image and --coarse "
    "are one folder, only these names tell images from masks: name_im.* pairs with name_seg.*, "
    "or with a plain name.* when one of the two is missing; two plain files of one name "
    "(name.jpg and name.png) are refused. Outputs never replace inputs: --out and --overlay "
    "must not name --image's or --coarse's file or folder, nor, for one pair, the same file."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of refinement, on `p` (refine.py's parser, or `airm refine`'s)."""
    p.add_argument("--image", required=True, help="image file, or folder of images")
    p.add_argument("--coarse", required=True, help="coarse mask file, or folder of masks")
    p.add_argument(
        "--out", required=True, help="output PNG, or output folder (not an input's folder)"
    )
    p.add_argument("--soft", action="store_true", help="write probabilities (0..255), not 0/255")
    p.add_argument(
        "--labels",
        action="store_true",
        help="the coarse files are integer label maps (palette or 8/16-bit grayscale PNGs): "
        "refine every class and fuse them into one map (a palette is kept)",
    )
    p.add_argument(
        "--ignore-label",
        type=int,
        default=None,
        help="with --labels, the label of pixels that belong to no class; they stay as they "
        "are (default 255)",
    )
    p.add_argument(
        "--overlay",
        default=None,
        help="also draw the coarse (magenta) and refined (cyan) boundaries over the image: a "
        ".jpg/.png file, or in folder mode a folder that receives name.jpg per pair (not an "
        "input's folder; it may be --out's). A pair's output and overlay are written both or "
        "neither",
    )
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: shipped model)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--scales", default=None, help="comma-separated scales, e.g. 0.125,0.25,0.5,1")
    p.add_argument(
        "--min-step",
        type=float,
        default=None,
        help="skip a scale less than this many times the last refined one (default 1.5; 1 "
        "refines every scale)",
    )
    p.add_argument(
        "--first-trust",
        type=float,
        default=None,
        help="weigh the coarse mask this many times the model's own weight at the first scale "
        f"(default {InferenceOptions.first_trust}; more keeps more of a mask that is nearly "
        "right)",
    )
    p.add_argument(
        "--band",
        type=int,
        default=None,
        help="after the first scale, query only pixels within this many pixels of the boundary "
        f"(default {InferenceOptions.band}; wider is slower and closer to --every-pixel)",
    )
    p.add_argument(
        "--every-pixel",
        action="store_true",
        help="query every pixel at every scale, not only bands around the boundary: the "
        "model's own answer everywhere (with the shipped model, on val, 0.2 points less IoU and "
        "0.2 more mBA than the bands), several times slower (8 MP on two CPU cores: 6.4 s "
        "instead of 1.1-1.3 with native bfloat16, 24 s in float32 without)",
    )
    add_precision_argument(p)
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help=f"refuse larger images before reading them (at least 1; default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="in folder mode, redo outputs that exist"
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="print nothing when all goes well: no result line for one pair, no progress bar "
        "for folders (warnings, errors and the folder summary still go to stderr)",
    )


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """--precision, `InferenceOptions.precision` (also used by the evaluation scripts)."""
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", *PRECISIONS],
        help="arithmetic of the airm network (default auto: bfloat16 on GPUs and on CPUs that "
        "compute it natively, else float32)",
    )


def build_parser() -> argparse.ArgumentParser:
    """refine.py's parser (`airm refine` adds the same flags to its own)."""
    p = argparse.ArgumentParser(prog="refine.py", description=DESCRIPTION)
    add_arguments(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@dataclass(frozen=True)
class Job:
    """One pair to refine, and where its results go."""

    image: Path
    coarse: Path
    out: Path
    overlay: Path | None = None

    def done(self) -> bool:
        return self.out.exists() and (self.overlay is None or self.overlay.exists())


@dataclass(frozen=True)
class Settings:
    """How every pair is refined, from the flags."""

    refiner: Refiner
    soft: bool = False
    labels: bool = False
    ignore_label: int | None = None  # None: the library's default


def _stem(path: Path) -> str:
    stem = path.stem
    for suffix in ("_im", "_seg"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def match_folders(
    images: Path, coarse: Path, out: Path, overlay: Path | None = None
) -> tuple[list[Job], list[str]]:
    """A Job for every image with a mask of the same name; and why other images have none.

    out/<name>.png receives the result (and overlay/<name>.jpg the picture). A BIG-layout
    <name>_im.* matches <name>_seg.*, each preferred over a plain <name>.* in its folder. When
    images and masks share a folder, only these names tell them apart: a plain <name>.* is the
    mask of a <name>_im.* or the image of a <name>_seg.*, and two plain files of one name
    without both of those raise ValueError (which one is the image?).
    """
    if _same(images, coarse):
        _check_shared_folder(images)
    masks: dict[str, Path] = {}
    for m in image_files(coarse):
        if m.stem.endswith("_im"):
            continue  # an image, when images and masks share a folder
        if m.stem.endswith("_seg") or _stem(m) not in masks:
            masks[_stem(m)] = m
    jobs, unmatched, seen = [], [], set()
    for image in sorted(image_files(images), key=lambda p: not p.stem.endswith("_im")):  # _im first
        name = _stem(image)
        if image.stem.endswith(("_gt", "_seg", "_mask")) or masks.get(name) == image:
            continue
        if name not in masks:
            unmatched.append(f"{image.name}: no coarse mask named {name}")
        elif name in seen:
            unmatched.append(f"{image.name}: another image is also named {name}")
        else:
            seen.add(name)
            picture = overlay / f"{name}.jpg" if overlay is not None else None
            jobs.append(Job(image, masks[name], out / f"{name}.png", picture))
    return jobs, unmatched


def _check_shared_folder(folder: Path) -> None:
    """Raise ValueError where a folder of both images and masks cannot tell them apart: two or
    more plain files of one name (name.jpg, name.png), with no name_im.* and name_seg.* pair."""
    names: dict[str, list[Path]] = {}
    for path in image_files(folder):
        if not path.stem.endswith(("_gt", "_mask")):  # ground truth: never an input
            names.setdefault(_stem(path), []).append(path)
    for name, paths in names.items():
        plain = [p.name for p in paths if p.stem == name]
        if len(plain) > 1 and not {f"{name}_im", f"{name}_seg"} <= {p.stem for p in paths}:
            raise ValueError(
                f"{folder} holds both images and masks, and cannot tell {' and '.join(plain)} "
                f"apart: name the image {name}_im.* and the mask {name}_seg.*"
            )


@dataclass
class Loaded:
    """One pair read from disk: the image, the coarse mask or labels (with the labels'
    palette), and the existing output when it is reused rather than refined again."""

    image: np.ndarray
    coarse: np.ndarray
    palette: list[int] | None = None
    refined: np.ndarray | None = None


def load_pair(settings: Settings, job: Job, *, reuse_output: bool = False) -> Loaded:
    """Read a pair (reuse_output: and its existing output, when only the overlay is missing)."""
    max_pixels = settings.refiner.max_pixels
    image = read_image(job.image, max_pixels=max_pixels)
    palette, refined = None, None
    if settings.labels:
        coarse, palette = read_labels(job.coarse, max_pixels=max_pixels)
    else:
        coarse = read_mask(job.coarse, max_pixels=max_pixels)
    if reuse_output:
        refined = (read_labels if settings.labels else read_mask)(job.out, max_pixels=max_pixels)
        refined = refined.labels if settings.labels else refined
    return Loaded(image, coarse, palette, refined)


def refine_loaded(settings: Settings, loaded: Loaded) -> np.ndarray:
    """The refined label map, or probabilities, of a pair (its existing output if reused)."""
    if loaded.refined is not None:
        return loaded.refined
    if settings.labels:
        extra = {} if settings.ignore_label is None else {"ignore_label": settings.ignore_label}
        return settings.refiner.refine_labels(loaded.image, loaded.coarse, **extra)
    return settings.refiner.refine(loaded.image, loaded.coarse, soft=True)


def save_pair(settings: Settings, job: Job, loaded: Loaded, refined: np.ndarray) -> None:
    """Write the output (unless it was reused) and the overlay, each atomically, and both or
    neither: the overlay is encoded into its temporary first, then the output is written, and
    only then is the overlay moved into place."""

    def write_output() -> None:
        if loaded.refined is not None:
            return
        if settings.labels:
            write_labels(job.out, refined, loaded.palette)
        elif settings.soft:
            write_mask(job.out, (np.clip(refined, 0, 1) * 255).round().astype(np.uint8))
        else:
            write_mask(job.out, np.multiply(refined > 0.5, 255, dtype=np.uint8))

    if job.overlay is None:
        write_output()
    else:
        picture = draw_overlay(loaded.image, refined, loaded.coarse)
        write_picture(job.overlay, picture, then=write_output)


def refine_pair(settings: Settings, job: Job, *, reuse_output: bool = False) -> None:
    """Read, refine and write one pair (see `load_pair`, `refine_loaded`, `save_pair`)."""
    loaded = load_pair(settings, job, reuse_output=reuse_output)
    save_pair(settings, job, loaded, refine_loaded(settings, loaded))


def _one_line(error: BaseException, *, typed: bool = False) -> str:
    """The error's message on one line; led by its type when `typed` (or it has no message)."""
    message = " ".join(str(error).split())
    if not message:
        return type(error).__name__
    return f"{type(error).__name__}: {message}" if typed else message


class ThreadWarnings:
    """Warnings, kept apart by the thread that raised them (threads read and write pairs beside
    the refinement in folder mode). `warnings.catch_warnings` is not thread-safe, so this
    context is entered once around all the threads instead of once per pair."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notes: dict[int, list[str]] = {}

    def __enter__(self) -> ThreadWarnings:
        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._record
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        with self._lock:
            self._notes.setdefault(threading.get_ident(), []).append(_one_line(message))

    def call(self, fn: Callable[..., T], *args, **kwargs) -> Outcome[T]:
        """fn(*args, **kwargs) in this thread: its value, warnings and error (one line each)."""
        with self._lock:
            self._notes.pop(threading.get_ident(), None)
        try:
            value, error = fn(*args, **kwargs), ""
        except PAIR_ERRORS as e:
            value, error = None, _one_line(e)
        except Exception as e:  # a bug here or in a library: it fails its pair, not the batch
            value, error = None, _one_line(e, typed=True)
        with self._lock:
            notes = self._notes.pop(threading.get_ident(), [])
        return Outcome(value, notes, error)


@dataclass
class Outcome(Generic[T]):
    value: T | None
    notes: list[str]
    error: str


# Pairs read ahead of the one being refined (and written behind it), and threads reading them:
# enough to keep a GPU busy with 2-megapixel pairs, while memory holds only a few pairs.
READ_AHEAD = 2
READ_THREADS = 2


def _check_flags(args: argparse.Namespace) -> str | None:
    """Why the flags cannot work together, or None."""
    image, coarse, out = Path(args.image), Path(args.coarse), Path(args.out)
    overlay = Path(args.overlay) if args.overlay is not None else None
    if args.soft and args.labels:
        return "--soft and --labels do not go together (a label map has no probabilities)"
    if args.ignore_label is not None and not args.labels:
        return "--ignore-label needs --labels"
    if args.every_pixel and args.band is not None:
        return "--band and --every-pixel do not go together (every pixel has no band)"
    if args.ignore_label is not None and not 0 <= args.ignore_label <= 65535:
        return "--ignore-label must be in 0..65535, as 8- and 16-bit label maps hold"
    if args.max_pixels is not None and args.max_pixels < 1:
        return f"--max-pixels must be at least 1 (got {args.max_pixels})"
    folders = image.is_dir()
    outputs = (("--out", out), ("--overlay", overlay))
    if folders:
        if not coarse.is_dir():
            return f"--image is a folder, so --coarse must be one too ({coarse} is not)"
        for flag, path in outputs:
            if path is not None and path.exists() and not path.is_dir():
                return f"--image is a folder, so {flag} must be one too ({path} is a file)"
    else:
        if coarse.is_dir():
            return f"--image is a file, so --coarse must be one too ({coarse} is a folder)"
        for flag, path in outputs:
            if path is not None and path.is_dir():
                return f"--image is a file, so {flag} must be one too ({path} is a folder)"
        if overlay is not None and picture_format(overlay) is None:
            return f"--overlay {overlay}: name a picture file that PIL can write (.jpg or .png)"
    taken = [("--image", image), ("--coarse", coarse)]
    if not folders:  # (in folder mode --out and --overlay may share a folder: .png beside .jpg)
        taken.append(("--out", out))
    kind = "folder" if folders else "file"
    for flag, path in outputs:
        for other, used in taken:
            if path is not None and flag != other and _same(path, used):
                return f"{flag} and {other} are the same {kind} ({path}): name another {flag}"
    if not folders and out.suffix.lower() != ".png":
        return f"--out {out}: masks are written as PNG; name a .png file"
    return None


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file or folder (through relative paths, symlinks, hard
    links)."""
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def _make_settings(args: argparse.Namespace) -> Settings:
    fields = {"scales": tuple(float(s) for s in args.scales.split(","))} if args.scales else {}
    if args.min_step is not None:
        fields["min_step"] = args.min_step
    if args.first_trust is not None:
        fields["first_trust"] = args.first_trust
    if args.band is not None:
        fields["band"] = args.band
    if args.every_pixel:
        fields.update(EVERY_PIXEL)
    base = get_refiner(args.checkpoint, args.device)
    refiner = base.with_options(
        InferenceOptions(**fields, precision=args.precision),
        max_pixels=args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS,
    )
    return Settings(refiner, soft=args.soft, labels=args.labels, ignore_label=args.ignore_label)


def run_folders(settings: Settings, args: argparse.Namespace) -> int:
    """Every pair of two folders, with a progress bar and a summary; resumes where it stopped.

    Threads read the next pairs and write the finished ones while the refiner works on the
    current pair, so a GPU does not wait for decoding and encoding of files.
    """
    overlay = Path(args.overlay) if args.overlay is not None else None
    try:
        jobs, unmatched = match_folders(
            Path(args.image), Path(args.coarse), Path(args.out), overlay
        )
    except ValueError as e:  # images and masks that cannot be told apart
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    for reason in unmatched:
        print(f"warning: {reason}; skipped", file=sys.stderr)
    todo = [job for job in jobs if args.overwrite or not job.done()]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} outputs exist already; skipped", file=sys.stderr)
    remove_stale_temporaries([p for job in jobs for p in (job.out, job.overlay) if p is not None])
    failed = 0
    bar = tqdm(total=len(todo), desc="refining", unit="image", disable=args.quiet)

    def finish(job: Job, outcome: Outcome) -> None:
        nonlocal failed
        for note in outcome.notes:
            tqdm.write(f"warning: {job.image.name}: {note}", file=sys.stderr)
        if outcome.error:
            failed += 1
            tqdm.write(f"error: {job.image.name}: {outcome.error}", file=sys.stderr)
        bar.update()

    with (
        ThreadWarnings() as log,
        ThreadPoolExecutor(READ_THREADS, thread_name_prefix="airm-read") as readers,
        ThreadPoolExecutor(1, thread_name_prefix="airm-write") as writer,
    ):
        queued = iter(todo)
        reads: deque[tuple[Job, Future]] = deque()
        writes: deque[tuple[Job, Future, list[str]]] = deque()

        def read_next() -> None:
            job = next(queued, None)
            if job is not None:
                reuse = not args.overwrite and job.out.exists()
                reads.append(
                    (job, readers.submit(log.call, load_pair, settings, job, reuse_output=reuse))
                )

        for _ in range(READ_AHEAD):
            read_next()
        while reads:
            job, reading = reads.popleft()
            read_next()
            loaded = reading.result()
            if loaded.error:
                finish(job, loaded)
                continue
            refined = log.call(refine_loaded, settings, loaded.value)
            if refined.error:
                finish(job, Outcome(None, loaded.notes + refined.notes, refined.error))
                continue
            while len(writes) >= READ_AHEAD or (writes and writes[0][1].done()):
                finish(*_written(writes.popleft()))
            saving = writer.submit(log.call, save_pair, settings, job, loaded.value, refined.value)
            writes.append((job, saving, loaded.notes + refined.notes))
        while writes:
            finish(*_written(writes.popleft()))
    bar.close()
    print(
        f"{len(todo) - failed} refined, {len(jobs) - len(todo)} skipped, {failed} failed, "
        f"{len(unmatched)} unmatched",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _written(entry: tuple[Job, Future, list[str]]) -> tuple[Job, Outcome]:
    job, saving, notes = entry
    outcome = saving.result()
    return job, Outcome(None, notes + outcome.notes, outcome.error)


def run(args: argparse.Namespace) -> int:
    """Refine what the parsed flags name; the exit status (0 done, 1 an input failed, 2 the
    command is wrong)."""
    problem = _check_flags(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        settings = _make_settings(args)
    except (ModelNotFoundError, CheckpointError, ValueError, RuntimeError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    if Path(args.image).is_dir():
        return run_folders(settings, args)
    overlay = Path(args.overlay) if args.overlay is not None else None
    job = Job(Path(args.image), Path(args.coarse), Path(args.out), overlay)
    start = time.perf_counter()
    with ThreadWarnings() as log:
        outcome = log.call(refine_pair, settings, job)
    seconds = time.perf_counter() - start  # reading, refining and writing; not model loading
    lines = [f"warning: {note}" for note in outcome.notes]
    for line in lines + [f"error: {outcome.error}"] * bool(outcome.error):
        print(line, file=sys.stderr)
    if outcome.error:
        return 1
    if not args.quiet:
        with Image.open(job.out) as written:  # reads the header only
            width, height = written.size
        print(f"{job.out}: {width}x{height} in {seconds:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))
