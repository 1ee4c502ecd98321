"""Pack a training or validation folder into parts small enough to carry to another machine.

    python tools/pack_data.py ../shared/data/train runs/pack/train --max-side 640 --part-mb 24

A machine that runs one command at a time on a copy of the repository, with a size limit per
copy (a lent GPU), can take a dataset over in parts: each part is a tar of BIG-layout files
(`<name>_im.jpg`, `<name>_gt.png`, `<name>_seg.png` where the folder has coarse masks, and
`manifest.json` in the first part), unpacked there with `tar -xf part-000.tar -C /root/data/train`.

Images are shrunk so that their long side is at most --max-side (area interpolation) and
re-encoded as JPEG at --quality; masks are shrunk the same way and thresholded at half, so
they stay 0/255. Pairs already small enough keep their size. Every pair goes whole into one
part; a part closes before it would exceed --part-mb. The sizes written are printed.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from itertools import chain
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airm.data import find_pairs  # noqa: E402
from airm.io import read_image, read_mask  # noqa: E402


def shrunk(array: np.ndarray, max_side: int) -> np.ndarray:
    """`array` (HxW or HxWxC) resized so that its long side is at most max_side."""
    height, width = array.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)


def encoded_pair(pair, max_side: int, quality: int) -> dict[str, bytes]:
    """The pair's files, shrunk and encoded: {file name: bytes}."""
    files = {}
    image = shrunk(read_image(pair.image, max_pixels=None), max_side)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    files[f"{pair.name}_im.jpg"] = buffer.getvalue()
    for suffix, path in (("gt", pair.mask), ("seg", pair.coarse)):
        if path is None:
            continue
        mask = shrunk(read_mask(path, max_pixels=None).astype(np.float32), max_side)
        buffer = io.BytesIO()
        Image.fromarray(np.multiply(mask > 0.5, 255, dtype=np.uint8)).save(buffer, format="PNG")
        files[f"{pair.name}_{suffix}.png"] = buffer.getvalue()
    return files


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack(
    root: Path, out: Path, *, max_side: int = 640, quality: int = 80, part_mb: float = 24
) -> list[Path]:
    """Write out/part-000.tar, part-001.tar, ... holding every pair of `root`; their paths."""
    pairs = find_pairs(root)
    out.mkdir(parents=True, exist_ok=True)
    limit = int(part_mb * 2**20)
    overhead = 3 * tarfile.BLOCKSIZE  # a member's header and padding, at most
    parts: list[Path] = []
    tar, size = None, 0
    manifest = root / "manifest.json"
    first = [{"manifest.json": manifest.read_bytes()}] if manifest.is_file() else []
    for files in chain(first, (encoded_pair(pair, max_side, quality) for pair in pairs)):
        need = sum(len(data) + overhead for data in files.values())
        if need > limit:
            raise ValueError(f"{next(iter(files))} alone needs more than {part_mb} MiB")
        if tar is None or size + need > limit - 2 * tarfile.RECORDSIZE:
            if tar is not None:
                tar.close()
            parts.append(out / f"part-{len(parts):03d}.tar")
            tar, size = tarfile.open(parts[-1], "w", format=tarfile.USTAR_FORMAT), 0
        for name, data in files.items():
            _add(tar, name, data)
        size += need
    if tar is not None:
        tar.close()
    return parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python tools/pack_data.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("root", help="a BIG-layout (or images/+masks/) folder")
    p.add_argument("out", help="folder for part-000.tar, part-001.tar, ...")
    p.add_argument("--max-side", type=int, default=640, help="long side at most (default 640)")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality (default 80)")
    p.add_argument("--part-mb", type=float, default=24, help="MiB per part at most (default 24)")
    args = p.parse_args(argv)
    try:
        parts = pack(
            Path(args.root),
            Path(args.out),
            max_side=args.max_side,
            quality=args.quality,
            part_mb=args.part_mb,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for part in parts:
        print(f"{part}: {part.stat().st_size / 2**20:.1f} MiB")
    print(json.dumps({"parts": len(parts), "pairs": len(find_pairs(args.root))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
