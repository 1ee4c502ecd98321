"""Coarse-to-fine refinement (CRM's schedule, AIRM Sec. 5).

For each scale s (default 0.125, 0.25, 0.5, 1.0 of the image, never below the training crop on
the shorter side, and skipping a scale too close to the last one: `min_step`): resize the
image and the current mask, encode them, query the implicit decoder at that scale's pixel
centres, and feed the probabilities to the next scale. The last scale is the image's full
resolution. At the first scale, the only one whose input is the coarse mask itself, the mask's
skip counts `first_trust` times the model's own (trained models keep too little of it there).

Two shortcuts make large images cheap, and both can be switched off to measure them:
- only pixels near the current boundary (within `band` pixels of the 0.5 level set at that
  scale; `first_band` at the first scale) or near the coarse mask's own boundary (at every
  scale: a part thinner than a coarse scale's pixels, erased there, is looked at again where
  it can be resolved) or still uncertain are queried; the others keep the current
  probability (None queries every pixel). This also keeps refinement local: a coarse mask
  says where the object is, and far from its boundary there is nothing to refine;
- a scale larger than `tile_size` is encoded tile by tile, each tile in a window that holds
  its queried pixels and `tile_context` pixels of image around them (`TileGrid`), and only
  tiles that hold queried pixels are encoded at all (`tile_size=None`: the whole scale is one
  tile, in one window). The network is trained on 224 px crops, so a window is what it knows
  best; the context keeps seams away.
Memory is then bounded by the tile, and time grows with the boundary's length.

The CPU and the GPU run the same loop. Per scale, the host reads two small things back from
the device (the number of queried pixels, then their count and bounds per tile) and sends one
(where each batch of windows lies), all before the first window is encoded; the band, the
gathering of queried pixels and the scattering of results stay on the device; windows go
through the network `tile_batch` at a time (one on a CPU, 8 on a GPU by default), in bfloat16
by default where the hardware computes it natively (`precision`, `native_bfloat16`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from airm.modeling.airm import AIRM, SIZE_DIVISOR
from airm.morphology import mixed_windows

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Window sides are rounded up to a multiple of this (a multiple of the network's size
# divisor). Each distinct input shape costs the CPU's convolution library kernels prepared for
# it, in memory and in time, so fewer shapes beat the tightest windows: at 24 MP, rounding to
# 64 instead of 32 took the peak memory from 2.08 to 1.91 GB (128: 1.86 GB, but the windows'
# extra area made 8 MP 10% slower).
WINDOW_STEP = 2 * SIZE_DIVISOR
# The InferenceOptions fields that query every pixel at every scale (still encoded tile by
# tile), and those that switch both shortcuts off: every pixel queried, every scale encoded
# whole.
EVERY_PIXEL = {"band": None, "first_band": None}
# InferenceOptions' integer fields: (name, least value, whether None is allowed).
COUNTS = (
    ("min_size", 1, False),
    ("band", 1, True),
    ("first_band", 1, True),
    ("chunk_size", 1, True),
    ("tile_size", 32, True),
    ("tile_context", 0, False),
    ("tile_batch", 1, True),
)
NO_SHORTCUTS = {**EVERY_PIXEL, "tile_size": None}


@dataclass(frozen=True)
class InferenceOptions:
    """How an image is refined (the module docstring tells the loop); invalid values raise
    ValueError. The fields, with their defaults (why each, in the comments of the source):

    scales (0.125, 0.25, 0.5, 1.0), min_size 224, min_step 1.5: the scales refined, coarse to
        fine, none below min_size on its shorter side, a scale within min_step of the last
        one skipped.
    band 32, first_band 8: pixels queried within this distance of the boundary (None: every
        pixel; `every_pixel()`), at later scales and at the first; coarse_band True: near the
        coarse mask's own boundary too; uncertain (0.02, 0.98): probabilities always queried.
    first_trust 1.5: at the first scale the coarse mask's skip counts this many times the
        model's own weight.
    tile_size 512, tile_context 32, tile_batch None (1 on a CPU, 8 on a GPU): scales encoded in
        tiles, with this much image context, so many at once (tile_size None: whole;
        `exhaustive()` also queries every pixel).
    chunk_size None (16,384 on a CPU, 2**20 on a GPU): queries evaluated at once.
    precision "auto": bfloat16 where the hardware computes it natively, else float32.
    """

    # Fractions of the image size to refine at, coarse to fine.
    scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    # No scale's shorter side goes below this (the training crop size).
    min_size: int = 224
    # A scale between the first and the full resolution (both always refined) is skipped
    # when its shorter side is less than this many times the last refined scale's. Raising
    # small scales to min_size can put two of them nearly together (a 480 x 854 image: 224,
    # 240, 480), and on val refining twice at nearly one size lost IoU and mBA
    # (docs/model-history.md).
    min_step: float = 1.5
    # Query only pixels within this many pixels of the current boundary after the first scale;
    # None queries every pixel. The narrowest of 12, 24 and 32 at which the first averaged
    # weights' masks on val agreed with every pixel's within 0.3 points of pooled IoU and of mBA
    # (12 and 24: 0.41 and 0.34 mBA apart; 32: 0.28 IoU, 0.25 mBA; the shipped model's: 0.29,
    # 0.24). Wider was better at every width on training images, and costs time: 1.22 times
    # 12 px's at 8 MP (docs/model-history.md).
    band: int | None = 32
    # The same at the first scale. Kept narrow: the later scales widen the reach (8 px at 1/8
    # scale is 64 px of the image), and a wide first band lets a model trained only near the
    # boundary invent foreground far from the object (on val, 32 px: the model shipped then +0.22
    # mBA, the SIRMF and CRM-style baselines -1.2 pooled IoU; docs/model-history.md). With the
    # second average (docs/model-history.md; the weights shipped before the third), 16 px lost
    # 0.25 pooled IoU on val and 4 px 0.12 mBA.
    first_band: int | None = 8
    # Also query, at every scale, within the scale's band of the coarse mask's own boundary:
    # a part thinner than a coarse scale's pixels (a stroke, a strap) is erased there and,
    # far from the new boundary, would otherwise never be queried again.
    coarse_band: bool = True
    # The coarse mask's skip (`AIRM.query`) weighs this many times the model's own at the first
    # scale, the only one whose input is the coarse mask itself. Chosen on 384 training images
    # with val's kinds of coarse masks (1.0 to 2.0 in steps of 0.25; 1.5 and 1.75 best), it
    # helped the SIRMF and CRM-style models as well, and on val (docs/model-history.md).
    first_trust: float = 1.5
    # Probabilities strictly between these are "uncertain" and always queried.
    uncertain: tuple[float, float] = (0.02, 0.98)
    # Queries evaluated at once (bounds the decoder's memory); None: 16,384 on a CPU (whose
    # intermediates, under 8 MB, are then reused by the allocator instead of being mapped
    # afresh: 10% faster at 8 MP than 65,536), 2**20 on a GPU, where fewer, larger launches pay.
    chunk_size: int | None = None
    # Encode scales larger than this (either side) tile by tile; None encodes them whole. A
    # side no longer than tile_size + 2 tile_context (576 px) stays one tile (`TileGrid`).
    tile_size: int | None = 512
    # Pixels of image context around each tile's queried pixels. 32 rather than 64: on val the
    # same masks within the images' spread (+0.01 mean IoU, +0.08 mBA per image), and on a CPU
    # without native bfloat16 (float32) 12% faster at 8 MP and 16% at 24 MP, with 0.05-0.1 GB
    # less memory; on an AVX512-BF16 one it was no slower (README, Speed and memory).
    tile_context: int = 32
    # Tiles encoded at once, as one batch; None: 1 on a CPU (where a batch only makes larger
    # tensors), 8 on a GPU (where fewer, larger launches pay).
    tile_batch: int | None = None
    # Arithmetic of the network: "float32", "bfloat16", "float16", or "auto": bfloat16 where
    # the hardware computes it natively (CUDA GPUs, and CPUs with AVX512-BF16 or AMX, where it
    # is 25% faster), float32 elsewhere (emulated bfloat16 is slower than float32).
    # Probabilities are kept in float32 between scales either way.
    precision: str = "auto"

    @classmethod
    def every_pixel(cls, **fields) -> InferenceOptions:
        """Every pixel queried at every scale, not only the bands: the model's own answer
        everywhere (with the shipped model, on val, 0.2 points less pooled IoU and 0.2 more mBA
        than the bands), several times slower (7 times at 8 MP on two CPU cores). Scales are
        still encoded tile by tile, so the network's memory does not grow with the image; only
        the list of queried pixels does, 8 bytes a pixel (24 MP peaks at 1.6-1.7 GB, as with the
        bands)."""
        return cls(**{**EVERY_PIXEL, **fields})

    @classmethod
    def exhaustive(cls, **fields) -> InferenceOptions:
        """No shortcuts: every pixel queried, every scale encoded whole (for comparisons)."""
        return cls(**{**NO_SHORTCUTS, **fields})

    def __post_init__(self) -> None:
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be in (0, 1], got {self.scales}")
        if list(self.scales) != sorted(self.scales):
            raise ValueError(f"scales must go from coarse to fine, got {self.scales}")
        if not self.min_step >= 1:
            raise ValueError(f"min_step must be >= 1, got {self.min_step}")
        for name, least, optional in COUNTS:
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(
                    f"{name} must be an integer >= {least}{' or None' if optional else ''}, "
                    f"got {value!r}"
                )
        if not self.first_trust > 0:
            raise ValueError(f"first_trust must be > 0, got {self.first_trust}")
        if len(self.uncertain) != 2 or not 0 <= self.uncertain[0] <= self.uncertain[1] <= 1:
            raise ValueError(
                f"uncertain must be (low, high) with 0 <= low <= high <= 1, got {self.uncertain}"
            )
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be 'auto' or one of {sorted(PRECISIONS)}, got {self.precision!r}"
            )


def scale_sizes(height: int, width: int, options: InferenceOptions) -> list[tuple[int, int]]:
    """The (h, w) refined at, coarse to fine: each scale's size, raised to `min_size` on the
    shorter side, without repeats, and without sizes between the first and the last whose
    shorter side is less than `min_step` times the last one kept; the last is (height, width).
    """
    short = min(height, width)
    sizes: list[tuple[int, int]] = []
    for s in options.scales:
        s = min(1.0, max(s, options.min_size / short))
        size = (max(1, round(height * s)), max(1, round(width * s)))
        if not sizes or (size != sizes[-1] and min(size) >= options.min_step * min(sizes[-1])):
            sizes.append(size)
    if sizes[-1] != (height, width):  # scales is never empty (checked by InferenceOptions)
        sizes.append((height, width))
    return sizes


def as_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (0..255) or float RGB -> float RGB in [0, 1]."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, h, w) as each scale's inputs are resized: bilinear, antialiased.

    Antialiasing widens the filter only along an axis that shrinks, so an enlargement (the
    probabilities carried to the next scale) takes the plain kernel, which gives the same
    values (to float rounding) at a fraction of the time: 11 against 28 ms for 2 to 8 MP.
    """
    if tuple(x.shape[-2:]) == size:
        return x
    shrinks = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinks)


def boundary_band(
    prob: torch.Tensor,
    band: int,
    uncertain: tuple[float, float],
    coarse: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 1, h, w) probabilities -> bool (B, 1, h, w): near the 0.5 boundary of `prob` or,
    when given, of `coarse` (a mask of the same size), or uncertain in `prob`.

    "Near" is where a (2 band + 1)-square dilation and erosion of the binary mask differ. On
    the CPU OpenCV computes them (faster than torch there); elsewhere `mixed_windows` does;
    both give the same band.
    """
    near_boundary = _near_boundary_cv2 if prob.device.type == "cpu" else mixed_windows
    band = min(band, max(prob.shape[-2:]))  # wider reaches nothing more
    near = near_boundary(prob > 0.5, band)
    if coarse is not None:
        near |= near_boundary(coarse > 0.5, band)
    lo, hi = uncertain
    return near | ((prob > lo) & (prob < hi))


def queried_pixels(
    prob: torch.Tensor,
    band: int | None,
    uncertain: tuple[float, float],
    coarse: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1, 1, h, w) probabilities -> bool (h, w): the pixels a scale queries, those of
    `boundary_band`, or every one when band is None."""
    if band is None:
        return torch.ones(prob.shape[-2:], dtype=torch.bool, device=prob.device)
    return boundary_band(prob, band, uncertain, coarse)[0, 0]


def _near_boundary_cv2(binary: torch.Tensor, band: int) -> torch.Tensor:
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    out = torch.empty_like(binary)
    for i, mask in enumerate(binary[:, 0].numpy().view(np.uint8)):
        out[i, 0] = torch.from_numpy(cv2.dilate(mask, kernel) != cv2.erode(mask, kernel))
    return out


@dataclass(frozen=True)
class TileGrid:
    """Tiles covering an h x w scale, and the windows of image they are encoded in.

    A tile's window holds the tile's queried pixels and `context` pixels of image around them,
    grown to a multiple of `WINDOW_STEP` (so that few distinct shapes reach the network) and
    slid inwards at the image's border; it is never larger than the tile plus its context, so
    memory is bounded by the tile size, and it is often much smaller (a boundary crossing a
    tile's corner needs little of it). Windows encoded together as one batch take the batch's
    largest size. Along an axis no longer than tile + 2 context there is one tile.
    """

    height: int
    width: int
    tile: tuple[int, int]  # (th, tw)
    context: int

    @classmethod
    def plan(cls, height: int, width: int, tile_size: int | None, context: int) -> TileGrid:
        def axis(n: int) -> int:
            return n if tile_size is None or n <= tile_size + 2 * context else tile_size

        return cls(height, width, (axis(height), axis(width)), context)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of tiles."""
        return -(-self.height // self.tile[0]), -(-self.width // self.tile[1])

    def tile_box(self, index: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of tile `index` (tiles numbered row-major)."""
        row, col = divmod(index, self.shape[1])
        top, left = row * self.tile[0], col * self.tile[1]
        return top, min(top + self.tile[0], self.height), left, min(left + self.tile[1], self.width)

    def group(
        self, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[int], list[int], list[tuple[int, int, int, int]]]:
        """(h, w) bool -> its True pixels tile by tile: their positions (tile * th * tw + the
        offset in the tile, row-major; see `pixels`) in order, one int64 each, the least memory
        that lists them (every pixel of 24 megapixels: 192 MB); and per tile, the index of its
        first in them, their number, and their bounds in the image (top, bottom, left, right;
        end exclusive; meaningless for an empty tile). The host waits for the device twice:
        for the number of True pixels, then for the tiles' figures, read back at once."""
        (rows, cols), (th, tw) = self.shape, self.tile
        if (rows, cols) == (1, 1):
            cells = mask.reshape(1, th, tw)
        else:  # padded with False past the image's edge
            cells = mask.new_zeros(rows * cols, th, tw)
            for index, cell in enumerate(cells):
                top, bottom, left, right = self.tile_box(index)
                cell[: bottom - top, : right - left] = mask[top:bottom, left:right]
        positions = cells.view(-1).nonzero()[:, 0]
        firsts = torch.arange(rows * cols + 1, device=mask.device) * (th * tw)
        edges = torch.searchsorted(positions, firsts)  # positions are sorted
        tile_top, tile_left = self.pixels(firsts[:-1])

        def span(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            occupied = occupied.to(torch.uint8)  # argmax: the first of equal maxima
            return occupied.argmax(1), occupied.shape[1] - occupied.flip(1).argmax(1)

        (y0, y1), (x0, x1) = span(cells.any(2)), span(cells.any(1))
        bounds = [tile_top + y0, tile_top + y1, tile_left + x0, tile_left + x1]
        starts, counts, *bounds = torch.stack([edges[:-1], edges.diff(), *bounds]).tolist()
        return positions, starts, counts, list(zip(*bounds, strict=True))

    def pixels(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions as `group` gives them (tile * th * tw + the offset in the tile) -> the
        (rows, cols) of those pixels in the image."""
        (th, tw), cols = self.tile, self.shape[1]
        tile, offset = positions // (th * tw), positions % (th * tw)
        return (tile // cols) * th + offset // tw, (tile % cols) * tw + offset % tw

    def windows(
        self, boxes: list[tuple[int, int, int, int]]
    ) -> tuple[list[tuple[int, int]], tuple[int, int]]:
        """Origins (top, left) and common size (h, w) of windows that hold each box (top,
        bottom, left, right; bottom and right exclusive) with its context."""

        def span(lo: int, hi: int, n: int, tile: int) -> int:
            size = -(-(hi - lo + 2 * self.context) // WINDOW_STEP) * WINDOW_STEP
            return min(n, tile + 2 * self.context, size)

        size = (
            max(span(top, bottom, self.height, self.tile[0]) for top, bottom, _, _ in boxes),
            max(span(left, right, self.width, self.tile[1]) for _, _, left, right in boxes),
        )
        origins = [
            (
                min(max(0, top - self.context), self.height - size[0]),
                min(max(0, left - self.context), self.width - size[1]),
            )
            for top, _, left, _ in boxes
        ]
        return origins, size


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device`; None: float32. "auto" is bfloat16 where
    the device computes it natively (`native_bfloat16`), else float32."""
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else None
    return PRECISIONS[precision]


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 products in hardware: CUDA GPUs from Ampere on
    (compute capability 8.0), and CPUs with AVX512-BF16 or AMX (older ones emulate it, slower
    than float32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but stable
    return any(getattr(cpu, name, lambda: False)() for name in checks)


@torch.no_grad()
def refine_at_scale(
    model: AIRM,
    image: torch.Tensor,
    prob: torch.Tensor,
    *,
    band: int | None,
    uncertain: tuple[float, float] = (0.02, 0.98),
    coarse: torch.Tensor | None = None,
    trust: float = 1.0,
    chunk_size: int | None = None,
    tile_size: int | None = None,
    tile_context: int = 128,
    tile_batch: int = 1,
    precision: str = "float32",
) -> torch.Tensor:
    """One step of the loop at the inputs' own size.

    image: (1, 3, h, w) uint8 RGB or float RGB in [0, 1]; prob: (1, 1, h, w) current mask.
    band: query only the boundary band of `prob` (see `boundary_band`), or every pixel (None).
    coarse: a (1, 1, h, w) mask whose boundary band is queried too (the coarse input, resized).
    trust: the weight of `prob`'s skip, as a multiple of the model's (`Encoded.trusting`).
    tile_size, tile_context: encode in tiles (see `TileGrid`) when the input is larger than
    tile_size; an input that fits (or tile_size=None) is one tile covering everything, whose
    window holds every queried pixel with its context (the whole input when band is None).
    tile_batch: windows encoded and queried at once. Tiles go together in order of their
    query counts, so padding each window's queries to its batch's largest count wastes little.
    chunk_size: queries evaluated at once, over the whole batch of windows.
    precision: "float32", "bfloat16", "float16", or "auto" (`autocast_dtype`).
    Returns the new (1, 1, h, w) probabilities; unqueried pixels keep `prob`.

    The host waits for the device three times a call, all before the first window is encoded
    (for the number of queried pixels, for their count and bounds per tile, and to send every
    batch's figures); gathering the queried pixels, batching the windows and scattering the
    results all stay on the device, so the host queues each batch while the device runs the
    one before.
    """
    h, w = image.shape[-2:]
    grid = TileGrid.plan(h, w, tile_size, tile_context)
    queried, starts, counts, boxes = grid.group(queried_pixels(prob, band, uncertain, coarse))
    out = prob.clone()
    busy = sorted((i for i, n in enumerate(counts) if n), key=lambda i: -counts[i])
    if not busy:  # nothing near a boundary nor uncertain at this scale (a speck lost in it)
        return out
    batches = [busy[i : i + tile_batch] for i in range(0, len(busy), tile_batch)]
    windows = [grid.windows([boxes[i] for i in tiles]) for tiles in batches]
    # Each busy tile's first index into `queried`, count and window origin, in batch order,
    # copied to the device at once: a copy from the host waits until the device has done all
    # it was given, so a copy a batch would keep the host from queuing a batch while the
    # device runs the one before.
    rows_of_figures = [
        [starts[i], counts[i], *origin]
        for tiles, (origins, _) in zip(batches, windows, strict=True)
        for i, origin in zip(tiles, origins, strict=True)
    ]
    figures = torch.tensor(rows_of_figures, dtype=torch.int64).reshape(-1, 4).to(queried.device)
    autocast = autocast_dtype(image.device, precision)
    flat = out.view(-1)
    for tiles, (origins, size), batch in zip(
        batches, windows, figures.split(tile_batch), strict=True
    ):
        start, n, top, left = batch.unbind(1)
        # (B, Q) indices into `queried`: row b holds tile b's, then repeats its last one up to
        # the batch's largest count, so duplicate writes carry equal values.
        steps = torch.arange(counts[tiles[0]], device=queried.device)
        index = start[:, None] + torch.minimum(steps[None], n[:, None] - 1)
        rows, cols = grid.pixels(queried[index])
        flat[rows * w + cols] = _window_probabilities(
            model,
            image,
            prob,
            origins,
            size,
            rows - top[:, None],
            cols - left[:, None],
            trust=trust,
            chunk_size=None if chunk_size is None else max(1, chunk_size // len(tiles)),
            autocast=autocast,
        )
    return out


def _window_probabilities(
    model: AIRM,
    image: torch.Tensor,
    prob: torch.Tensor,
    origins: list[tuple[int, int]],
    window: tuple[int, int],
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    trust: float,
    chunk_size: int | None,
    autocast: torch.dtype | None,
) -> torch.Tensor:
    """Encode the windows at `origins` as one batch; probabilities (B, Q) at pixels (rows,
    cols) (B, Q) of each window (counted from its origin)."""
    wh, ww = window
    crops = [(slice(y, y + wh), slice(x, x + ww)) for y, x in origins]
    images = torch.stack([image[0, :, ys, xs] for ys, xs in crops])
    masks = torch.stack([prob[0, :, ys, xs] for ys, xs in crops])
    # Pixel centres over the window, as `pixel_centres` places them.
    ys = (rows + 0.5) * (2.0 / wh) - 1.0
    xs = (cols + 0.5) * (2.0 / ww) - 1.0
    device = image.device.type
    with torch.autocast(device, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        encoded = model.encode(as_float(images), masks)
        if trust != 1.0:
            encoded = encoded.trusting(trust)
        logits = model.query(
            encoded, torch.stack([ys, xs], dim=-1), out_size=window, chunk_size=chunk_size
        )
    return torch.sigmoid(logits.float())


@torch.no_grad()
def refine_probability(
    model: AIRM, image: torch.Tensor, mask: torch.Tensor, options: InferenceOptions
) -> torch.Tensor:
    """Coarse-to-fine refinement of one image.

    image: (1, 3, H, W) uint8 RGB, or float RGB in [0, 1]; mask: (1, 1, H, W) float in [0, 1].
    A uint8 image stays uint8 on the CPU (resized as uint8, turned to float one window at a
    time), so a full-resolution float copy never exists.
    Returns (1, 1, H, W) float32 probabilities on the input's device.
    """
    if image.dtype == torch.uint8 and image.device.type != "cpu":
        image = as_float(image)  # uint8 resizing is a CPU kernel
    height, width = image.shape[-2:]
    # Contiguous: a transposed mask kept its layout through a full-resolution first scale,
    # whose flat views of it then failed.
    image, mask = image.contiguous(), mask.contiguous()
    prob = mask
    for i, size in enumerate(scale_sizes(height, width, options)):
        prob = refine_at_scale(
            model,
            resize(image, size),
            resize(prob, size).clamp(0, 1),
            band=options.first_band if i == 0 else options.band,
            uncertain=options.uncertain,
            coarse=resize(mask, size) if options.coarse_band else None,
            trust=options.first_trust if i == 0 else 1.0,
            chunk_size=options.chunk_size or (2**20 if image.is_cuda else 16384),
            tile_size=options.tile_size,
            tile_context=options.tile_context,
            tile_batch=options.tile_batch or (8 if image.is_cuda else 1),
            precision=options.precision,
        )
    return prob
