"""Training data: image/mask pairs from folders, with coarse masks made on the fly.

Two layouts are read, several roots at once:
- BIG (CascadePSP): `<name>_im.jpg|png` with `<name>_gt.png` in one folder;
- `images/` + `masks/`: files with the same stem in both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from airm.io import InputError, read_image, read_mask, read_size
from airm.morphology import boundaries, nonzero_points
from airm.perturb import LOWRES_SIDES, cascade_mask, lowres_mask, perturb_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Pair:
    name: str
    image: Path
    mask: Path
    coarse: Path | None = None  # BIG validation folders carry `<name>_seg.png`
    source: str = ""  # from the folder's manifest.json when present, else the name's prefix
    # How the coarse mask was made (the manifest's "coarse" field, e.g. "lowres" or "perturb"
    # in shared/data/val), when the manifest says; evaluation reports each kind apart.
    coarse_kind: str = ""


def image_files(folder: Path) -> list[Path]:
    """A folder's image files, sorted; hidden ones (macOS's ._name resource forks, the
    temporaries of atomic writes) are not."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def check_pairs(pairs: list[Pair], what: str) -> None:
    """Raise ValueError, naming the files, if any pair's files cannot be read, are above the
    pixel limit that reading them applies, or differ in size; from their headers alone (a
    truncated file is found only when it is decoded)."""
    problems = []
    for pair in pairs:
        try:
            size = read_size(pair.image)
            for path in (pair.mask, pair.coarse):
                other = read_size(path) if path is not None else size
                if other != size:
                    problems.append(f"{path.name} is {other}, {pair.image.name} {size}")
        except InputError as e:
            problems.append(str(e))
    if problems:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise ValueError(f"{len(problems)} of the {len(pairs)} {what} pairs are unusable: {shown}")


def check_augmentations(
    *,
    far_fraction: float,
    paste_fraction: float,
    whole_fraction: float,
    cascade_fraction: float,
    rotate_degrees: float,
    lowres_sides: tuple[int, int],
) -> None:
    """Raise ValueError for options of `RefinementDataset` out of their range."""
    fractions = {
        "far_fraction": far_fraction,
        "paste_fraction": paste_fraction,
        "whole_fraction": whole_fraction,
        "cascade_fraction": cascade_fraction,
    }
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if not 0.0 <= rotate_degrees <= 180.0:
        raise ValueError(f"rotate_degrees must be in [0, 180], got {rotate_degrees}")
    if not 8 <= lowres_sides[0] <= lowres_sides[1]:
        raise ValueError(
            f"lowres_sides must be (low, high) with 8 <= low <= high, got {lowres_sides}"
        )


def find_pairs(root: str | os.PathLike) -> list[Pair]:
    """Every image/mask pair under one root, in either layout, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    pairs = []
    if (root / "images").is_dir() and (root / "masks").is_dir():
        masks = {p.stem: p for p in image_files(root / "masks")}
        for image in image_files(root / "images"):
            if image.stem in masks:
                pairs.append(Pair(image.stem, image, masks[image.stem]))
    else:
        for image in image_files(root):
            stem = image.stem
            if not stem.endswith("_im"):
                continue
            name = stem[: -len("_im")]
            gt = root / f"{name}_gt.png"
            seg = root / f"{name}_seg.png"
            if gt.is_file():
                pairs.append(Pair(name, image, gt, seg if seg.is_file() else None))
    if not pairs:
        raise FileNotFoundError(f"no image/mask pairs in {root} (BIG or images/+masks/ layout)")
    manifest = _manifest(root)
    return [
        dataclasses.replace(
            p,
            source=str(manifest.get(p.name, {}).get("source", p.name.split("-")[0])),
            coarse_kind=str(manifest.get(p.name, {}).get("coarse", "")),
        )
        for p in pairs
    ]


def spread_pairs(pairs: list[Pair], limit: int | None) -> list[Pair]:
    """`limit` pairs evenly spread over the list (all of them without a limit)."""
    if limit is None or limit >= len(pairs):
        return pairs
    picks = np.linspace(0, len(pairs) - 1, limit).round().astype(int)
    return [pairs[i] for i in picks]


def _manifest(root: Path) -> dict[str, dict]:
    """name -> entry of a `manifest.json` list of {"name", "source", ...}, if there is one
    (an unreadable manifest is no manifest)."""
    path = root / "manifest.json"
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        return {e["name"]: e for e in entries if isinstance(e, dict) and "name" in e}
    except (ValueError, TypeError):
        return {}


def make_coarse(
    gt: np.ndarray, rng: np.random.Generator, *, lowres_sides: tuple[int, int] = LOWRES_SIDES
) -> np.ndarray:
    """A coarse mask for HxW bool `gt`: CascadePSP's perturbation or a low-res segmenter
    working at a long side drawn from `lowres_sides`."""
    if not gt.any() or gt.all():
        return gt.copy()
    if rng.random() < 0.5:
        return perturb_mask(gt, rng, iou_target=rng.uniform(0.8, 1.0))
    return lowres_mask(gt, rng, sides=lowres_sides)


def _boundary_point(edges: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    ys, xs = nonzero_points(edges)
    if len(ys) == 0:
        return None
    k = rng.integers(len(ys))
    return int(ys[k]), int(xs[k])


def _far_window(edges: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(top, left) of a random size x size window of `edges` that holds no boundary pixel, or
    of the window whose centre is farthest from one when none is free."""
    h, w = edges.shape
    # Chessboard distance: the square window centred at a pixel is free of boundary pixels
    # exactly when the distance exceeds half its side.
    distance = cv2.distanceTransform((edges == 0).astype(np.uint8), cv2.DIST_C, 3)
    half = size // 2
    centres = distance[half : h - size + half + 1, half : w - size + half + 1]
    ys, xs = nonzero_points(centres > half)
    if len(ys) == 0:
        y, x = np.unravel_index(int(np.argmax(centres)), centres.shape)
        return int(y), int(x)
    k = rng.integers(len(ys))
    return int(ys[k]), int(xs[k])


def paste_object(
    image: np.ndarray, source: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paste `source`'s object (bool HxW `mask`) onto `image` (HxWx3 uint8).

    The object's bounding box is scaled so that its longer side spans 30-80% of the image's
    shorter side, placed at random (partly outside is allowed), and blended with its mask
    feathered by a Gaussian of 0.3-1 px. Returns the composite and the pasted object's mask
    (alpha > 0.5), or the inputs unchanged when `mask` is empty.
    """
    x0, y0, box_w, box_h = cv2.boundingRect(mask.view(np.uint8))
    if box_w == 0:
        return image, np.zeros(image.shape[:2], bool)
    y1, x1 = y0 + box_h, x0 + box_w
    h, w = image.shape[:2]
    scale = rng.uniform(0.3, 0.8) * min(h, w) / max(y1 - y0, x1 - x0)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    # Colour premultiplied by the mask, so that resizing and feathering do not mix in the
    # source's own background.
    box = (slice(y0, y1), slice(x0, x1))
    alpha = mask[box].astype(np.float32)
    patch = source[box].astype(np.float32) * alpha[..., None]
    sigma = rng.uniform(0.3, 1.0)
    patch, alpha = (
        cv2.GaussianBlur(cv2.resize(x, size, interpolation=cv2.INTER_AREA), (0, 0), sigma)
        for x in (patch, alpha)
    )
    # Top-left corner: up to a quarter of the patch may fall outside the image.
    top = int(rng.integers(-size[1] // 4, h - 3 * size[1] // 4 + 1))
    left = int(rng.integers(-size[0] // 4, w - 3 * size[0] // 4 + 1))
    inside = (
        slice(max(0, top), min(h, top + size[1])),
        slice(max(0, left), min(w, left + size[0])),
    )
    part = (
        slice(inside[0].start - top, inside[0].stop - top),
        slice(inside[1].start - left, inside[1].stop - left),
    )
    full = np.zeros((h, w), np.float32)
    full[inside] = alpha[part]
    # Blended where the patch lies only; the rest of the photograph is copied as it is.
    composite = image.copy()
    behind = image[inside].astype(np.float32)
    composite[inside] = (patch[part] + (1.0 - alpha[part][..., None]) * behind).round()
    return composite, full > 0.5


def _rescaled(image, gt, coarse, scale: float, *, soft: bool = False):
    """The image (area interpolation) and the bool masks (area, then thresholded halfway, or
    with `soft` kept as the fraction of each pixel they cover, float32) resized by `scale`;
    unchanged at (nearly) 1."""
    if scale >= 0.999:
        return image, gt, coarse
    size = (max(1, round(gt.shape[1] * scale)), max(1, round(gt.shape[0] * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    gt = cv2.resize(gt.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(coarse.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return (image, gt, coarse) if soft else (image, gt > 0.5, coarse > 0.5)


class RefinementDataset(Dataset):
    """Random crops of (image, coarse, truth) for training.

    Each item: image (3, S, S) float in [0, 1], coarse (1, S, S) float in [0, 1], truth (1, S,
    S) float {0, 1} (in [0, 1] with `soft_masks`). The coarse mask is made at the image level,
    as real segmenters' masks are; the image is then seen at a random scale (so both
    whole-object views, as the coarse scales of inference see, and full-resolution detail are
    trained): the crop's window is chosen at the image's own size and only it is resized,
    padded when smaller, flipped and colour-jittered.

    Where crops go: a `far_fraction` of them is centred far from every boundary (of the truth
    and of the coarse mask), so the network learns to keep what the coarse mask gets right away
    from the object's outline (inference that queries every pixel asks it there); of the rest,
    most are centred near a boundary point, where the refining is, and some fall anywhere.

    Whole views: a `whole_fraction` of items is rescaled so that the image's shorter side is
    the crop size, the view the first scale of inference refines (there, asked about every
    pixel, the model marked salient objects the coarse mask leaves out); the others take a
    random scale between that and full resolution, or full resolution.

    Cascade inputs: a `cascade_fraction` of items replace the coarse mask with the truth as a
    coarser scale of inference hands it on (`cascade_mask`: shrunk 1.5 to 4 times and enlarged
    back, soft and nearly right), the input every scale after the first is given. Given such a
    mask at the last scale, the shipped model re-draws the boundary from the image (on val,
    the truth at half resolution, mBA 98.4, came out at 81.6); 3,000 iterations with a
    quarter of such items kept more of it (83.9), but moved val by less than the images'
    spread: better on its nearly right coarse masks, worse on its wrong ones
    (docs/model-history.md).

    Low-resolution segmenters: half the coarse masks imitate one that works at a long side
    drawn from `lowres_sides` (48-128 px, as shared/data/val's; a higher top adds better
    segmenters, whose nearly right masks the model should leave nearly alone).

    Rotation: with `rotate_degrees`, every item is turned by an angle drawn from [-d, d] about
    its centre after rescaling, image and masks alike (borders reflected), as CascadePSP's and
    CRM's training augment with a random affine; SPEC section 3 asks only for flips.

    Soft masks: with `soft_masks`, a crop seen below full resolution keeps, in its truth and
    its coarse mask, the fraction of each pixel the object covers instead of thresholding it
    halfway. A thresholded truth moves the boundary by up to half a pixel of the view (2.5
    pixels of the image in a whole view of a 1,000 px picture), a label the image's blended
    pixels do not support; and inference resizes the coarse mask for its coarser scales with
    an antialiasing filter, so it is soft there. Rotated items, turned as bytes, stay
    thresholded. Items at full resolution are the same either way.

    Copy-paste: a `paste_fraction` of items paste the object of another pair (its true mask,
    edges feathered by a fraction of a pixel) onto this pair's photograph, at a random place
    and size, and that object becomes the one to refine; the photograph's own object stays as
    a distractor that the coarse mask does not point at.

    cache: decode every pair once, here, with `cache_threads` threads, and keep the pixels in
    memory (3 bytes a pixel for the image, 1 for the truth: 2.6 GiB for `shared/data/train`,
    1.8 GiB once packed to 640 px). DataLoader workers forked afterwards share them instead of
    decoding a JPEG and a PNG per item, the largest part of an item's time; the items are the
    same either way. `tools/bench_loader.py` measures the gain (1.19x packed, 1.33x at full
    size, with 2 workers on 2 cores; 1.5-1.7x packed once only the crop's window was resized).
    The arrays are read-only, so no augmentation can alter them.
    """

    def __init__(
        self,
        pairs: list[Pair],
        *,
        crop_size: int = 224,
        far_fraction: float = 0.0,
        paste_fraction: float = 0.0,
        whole_fraction: float = 0.0,
        cascade_fraction: float = 0.0,
        rotate_degrees: float = 0.0,
        lowres_sides: tuple[int, int] = LOWRES_SIDES,
        soft_masks: bool = False,
        seed: int = 0,
        cache: bool = False,
        cache_threads: int = 1,
    ) -> None:
        check_augmentations(
            far_fraction=far_fraction,
            paste_fraction=paste_fraction,
            whole_fraction=whole_fraction,
            cascade_fraction=cascade_fraction,
            rotate_degrees=rotate_degrees,
            lowres_sides=lowres_sides,
        )
        self.pairs = pairs
        self.crop_size = crop_size
        self.far_fraction = far_fraction
        self.paste_fraction = paste_fraction
        self.whole_fraction = whole_fraction
        self.cascade_fraction = cascade_fraction
        self.rotate_degrees = rotate_degrees
        self.lowres_sides = (int(lowres_sides[0]), int(lowres_sides[1]))
        self.soft_masks = soft_masks
        self.seed = seed
        self.epoch = 0
        self.cached: list[tuple[np.ndarray, np.ndarray]] | None = None
        if cache:
            with ThreadPoolExecutor(max(1, cache_threads)) as pool:  # OpenCV releases the GIL
                self.cached = list(pool.map(self._decode, range(len(pairs))))

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded pixels held in memory (0 without the cache)."""
        return sum(image.nbytes + gt.nbytes for image, gt in self.cached or [])

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, gt = self._read(index)
        if self.paste_fraction and len(self.pairs) > 1 and rng.random() < self.paste_fraction:
            other = (index + 1 + int(rng.integers(len(self.pairs) - 1))) % len(self.pairs)
            image, gt = paste_object(image, *self._read(other), rng)
        coarse = make_coarse(gt, rng, lowres_sides=self.lowres_sides)
        scale = self._scale(gt.shape, rng)
        # No draw without rotation, so that the other items stay what they were.
        if self.rotate_degrees:  # the whole image turns, so it is rescaled whole first
            image, gt, coarse = _rescaled(image, gt, coarse, scale)
            image, gt, coarse = self._rotate(image, gt, coarse, rng)
            scale = 1.0
        image, gt, coarse = self._crop(image, gt, coarse, scale, rng)
        if rng.random() < 0.5:
            image, gt, coarse = image[:, ::-1], gt[:, ::-1], coarse[:, ::-1]
        image = self._jitter(image.astype(np.float32) / 255.0, rng)
        # No draw without cascade inputs, so that the other items stay what they were.
        if self.cascade_fraction and rng.random() < self.cascade_fraction:
            coarse = cascade_mask(gt, rng)
        else:
            coarse = coarse.astype(np.float32)
            if rng.random() < 0.3:  # later scales of inference see soft masks
                coarse = cv2.GaussianBlur(coarse, (0, 0), rng.uniform(0.5, 3.0))
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(np.ascontiguousarray(coarse[None])),
            torch.from_numpy(np.ascontiguousarray(gt[None].astype(np.float32))),
        )

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The pair's image (HxWx3 uint8) and truth (HxW bool); never to be written to."""
        return self.cached[index] if self.cached is not None else self._decode(index)

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[index]
        image = read_image(pair.image)
        gt = read_mask(pair.mask) > 0.5
        if gt.shape != image.shape[:2]:
            raise ValueError(
                f"{pair.image} is {image.shape[:2]} but its mask {pair.mask} is {gt.shape}"
            )
        image.flags.writeable = gt.flags.writeable = False
        return image, gt

    def _scale(self, shape: tuple[int, int], rng: np.random.Generator) -> float:
        """The factor an item's image is seen at: the first scale's view (shorter side at the
        crop size), a random one between that and full resolution, or full resolution."""
        lo = min(1.0, self.crop_size / min(shape))
        # No draw without whole views, so that the other items stay what they were.
        if self.whole_fraction and rng.random() < self.whole_fraction:
            return lo
        if rng.random() < 0.6:
            return float(np.exp(rng.uniform(np.log(lo), 0.0)))
        return 1.0

    def _rotate(self, image, gt, coarse, rng):
        angle = rng.uniform(-self.rotate_degrees, self.rotate_degrees)
        h, w = gt.shape
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)

        def turn(a: np.ndarray) -> np.ndarray:
            return cv2.warpAffine(
                a, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
            )

        # Masks turn as 0/255 bytes and are thresholded halfway, as `_rescaled` does.
        return (
            turn(image),
            turn(gt.astype(np.uint8) * 255) > 127,
            turn(coarse.astype(np.uint8) * 255) > 127,
        )

    def _crop(self, image, gt, coarse, scale, rng):
        """A crop_size x crop_size view of the arrays rescaled by `scale`, placed as the class
        says. Only the window is rescaled: it is chosen on the arrays as they are (its side
        crop_size / scale there, and so its distances), then cut out and resized, so the
        resizing costs what the crop does, not what the image does."""
        s = self.crop_size
        side = s if scale >= 0.999 else max(s, round(s / scale))
        h, w = gt.shape
        pad_h, pad_w = max(0, side - h), max(0, side - w)
        if pad_h or pad_w:
            pad = ((0, pad_h), (0, pad_w))
            image = np.pad(image, (*pad, (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
            gt = np.pad(gt, pad, mode="reflect" if min(h, w) > 1 else "edge")
            coarse = np.pad(coarse, pad, mode="reflect" if min(h, w) > 1 else "edge")
            h, w = gt.shape
        edges = boundaries([gt, coarse])
        if rng.random() < self.far_fraction:
            y0, x0 = _far_window(edges, side, rng)
        else:
            near = _boundary_point(edges if rng.random() < 0.3 else boundaries([gt]), rng)
            if near is not None and rng.random() < 0.8:
                cy = near[0] + round(int(rng.integers(-s // 4, s // 4 + 1)) * side / s)
                cx = near[1] + round(int(rng.integers(-s // 4, s // 4 + 1)) * side / s)
            else:
                cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            y0 = int(np.clip(cy - side // 2, 0, h - side))
            x0 = int(np.clip(cx - side // 2, 0, w - side))
        window = (slice(y0, y0 + side), slice(x0, x0 + side))
        return _rescaled(image[window], gt[window], coarse[window], s / side, soft=self.soft_masks)

    @staticmethod
    def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast and saturation of HxWx3 float32 `image` in [0, 1], changed in
        place (and returned)."""
        brightness = rng.uniform(-0.1, 0.1)
        contrast = rng.uniform(0.85, 1.15)
        saturation = rng.uniform(0.85, 1.15)
        # The arithmetic of `gray + (image - gray) * saturation`, then of `(image - 0.5) *
        # contrast + 0.5 + brightness`, in place and with the mean over 3 channels summed
        # explicitly (numpy's reduction over a last axis of 3 is slow): the same values, 2 to 3
        # times faster (0.8-1.2 against 2.3-2.8 ms at 224 px on one thread here).
        gray = image[..., 0] + image[..., 1]
        gray += image[..., 2]
        gray /= 3
        gray = gray[..., None]
        image -= gray
        image *= saturation
        image += gray
        image -= 0.5
        image *= contrast
        image += 0.5
        image += brightness
        return np.clip(image, 0.0, 1.0, out=image)
