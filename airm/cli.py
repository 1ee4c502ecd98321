"""The command line of refine.py: one image/mask pair, or two folders of them."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from airm.api import ModelNotFoundError, get_refiner
from airm.checkpoint import CheckpointError
from airm.data import IMAGE_SUFFIXES
from airm.inference import InferenceOptions
from airm.io import DEFAULT_MAX_PIXELS, InputError, read_image, read_mask, write_mask
from airm.refiner import Refiner


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="refine.py",
        description="Refine coarse masks with AIRM. --image/--coarse/--out are three files, or "
        "three folders (pairs matched by file stem; a BIG-layout name_im.jpg matches "
        "name_seg.png; outputs that already exist are skipped).",
    )
    p.add_argument("--image", required=True, help="image file, or folder of images")
    p.add_argument("--coarse", required=True, help="coarse mask file, or folder of masks")
    p.add_argument("--out", required=True, help="output PNG, or output folder")
    p.add_argument("--soft", action="store_true", help="write probabilities (0..255), not 0/255")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: shipped model)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--scales", default=None, help="comma-separated scales, e.g. 0.125,0.25,0.5,1")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument("--overwrite", action="store_true", help="in folder mode, redo existing outputs")
    return p.parse_args(argv)


def _stem(path: Path) -> str:
    stem = path.stem
    for suffix in ("_im", "_seg"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def match_folders(
    images: Path, coarse: Path, out: Path
) -> tuple[list[tuple[Path, Path, Path]], list[str]]:
    """(image, coarse, output) triples for every image with a mask; and the unmatched names."""
    masks: dict[str, Path] = {}
    for m in _images(coarse):
        if m.stem.endswith("_seg") or _stem(m) not in masks:
            masks[_stem(m)] = m
    triples, unmatched = [], []
    for image in _images(images):
        name = _stem(image)
        if image.stem.endswith(("_gt", "_seg", "_mask")):
            continue
        if name in masks:
            triples.append((image, masks[name], out / f"{name}.png"))
        else:
            unmatched.append(image.name)
    return triples, unmatched


def refine_file(refiner: Refiner, image: Path, coarse: Path, out: Path, *, soft: bool) -> None:
    img = read_image(image, max_pixels=refiner.max_pixels)
    mask = read_mask(coarse, max_pixels=refiner.max_pixels)
    result = refiner.refine(img, mask, soft=soft)
    if soft:
        result = (np.clip(result, 0, 1) * 255).round().astype(np.uint8)
    write_mask(out, result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = InferenceOptions(
            **({"scales": tuple(float(s) for s in args.scales.split(","))} if args.scales else {})
        )
        base = get_refiner(args.checkpoint, args.device)
    except (ModelNotFoundError, CheckpointError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    refiner = Refiner(
        base.model,
        device=base.device,
        options=options,
        max_pixels=args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS,
    )
    image, coarse, out = Path(args.image), Path(args.coarse), Path(args.out)
    if image.is_dir() != coarse.is_dir() and image.exists() and coarse.exists():
        print("error: --image and --coarse must both be files or both be folders", file=sys.stderr)
        return 2
    if not image.is_dir():
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                refine_file(refiner, image, coarse, out, soft=args.soft)
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
        except (InputError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    triples, unmatched = match_folders(image, coarse, out)
    for name in unmatched:
        print(f"warning: no coarse mask for {name}; skipped", file=sys.stderr)
    todo = [t for t in triples if args.overwrite or not t[2].exists()]
    if len(todo) < len(triples):
        print(f"{len(triples) - len(todo)} outputs exist already; skipped", file=sys.stderr)
    failures = 0
    for img, mask, dst in tqdm(todo, desc="refining", unit="image"):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                refine_file(refiner, img, mask, dst, soft=args.soft)
            for w in caught:
                tqdm.write(f"warning: {img.name}: {w.message}", file=sys.stderr)
        except (InputError, OSError) as e:
            failures += 1
            tqdm.write(f"error: {img.name}: {e}", file=sys.stderr)
    if failures:
        print(f"{failures} of {len(todo)} images failed", file=sys.stderr)
        return 1
    return 0
