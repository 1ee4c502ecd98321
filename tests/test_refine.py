from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import airm
from airm import InferenceOptions, InputError, Refiner
from airm.inference import (
    autocast_dtype,
    boundary_band,
    native_bfloat16,
    queried_pixels,
    refine_at_scale,
    refine_probability,
    resize,
    scale_sizes,
)
from airm.io import write_mask
from airm.losses import boundary_band as loss_boundary_band
from airm.morphology import mixed_windows

from conftest import disc_pair, tiny_model


@pytest.fixture(scope="module")
def refiner():
    return Refiner(
        tiny_model("airm_efficientnet_lite0"), device="cpu", options=InferenceOptions(min_size=32)
    )


def test_odd_sizes_binary_output(refiner):
    image, coarse = disc_pair(75, 133)
    out = refiner.refine(image, coarse)
    assert out.shape == (75, 133) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 255}


def test_soft_output(refiner):
    image, coarse = disc_pair(70, 90)
    soft = refiner.refine(image, coarse > 0, soft=True)
    assert soft.shape == (70, 90) and soft.dtype == np.float32
    assert 0.0 <= soft.min() and soft.max() <= 1.0
    assert np.array_equal(refiner.refine(image, coarse), np.where(soft > 0.5, 255, 0))


def test_mask_encodings_give_the_same_result(refiner):
    image, coarse = disc_pair(64, 64)
    reference = refiner.refine(image, coarse)
    for mask in (coarse > 0, (coarse > 0).astype(np.uint8), (coarse > 0).astype(np.float32)):
        assert np.array_equal(refiner.refine(image, mask), reference)


def test_files_paths_give_what_their_arrays_give(refiner, tmp_path):
    image, coarse = disc_pair(64, 80)
    write_mask(tmp_path / "seg.png", coarse)
    write_mask(tmp_path / "im.png", image[..., 0])  # a grayscale image file
    gray = np.repeat(image[..., :1], 3, axis=2)
    expected = refiner.refine(gray, coarse)
    assert np.array_equal(refiner.refine(tmp_path / "im.png", str(tmp_path / "seg.png")), expected)
    with pytest.raises(InputError, match="no such file"):
        refiner.refine(tmp_path / "missing.png", coarse)
    small = Refiner(refiner.model, device="cpu", max_pixels=1000)
    with pytest.raises(InputError, match="above the limit"):
        small.refine(tmp_path / "im.png", tmp_path / "seg.png")


def test_tensor_twin(refiner):
    image, coarse = disc_pair(64, 80)
    prob = refiner.refine_torch(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(coarse))
    assert prob.shape == (1, 64, 80) and prob.dtype == torch.float32
    assert np.allclose(prob[0].numpy(), refiner.refine(image, coarse, soft=True))


def test_size_mismatch_empty_and_full(refiner):
    image, coarse = disc_pair(64, 64)
    with pytest.raises(InputError, match="same size"):
        refiner.refine(image, coarse[:60])
    for mask in (np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8)):
        with pytest.warns(UserWarning, match="empty or full"):
            assert np.array_equal(refiner.refine(image, mask), mask)


def test_pixel_limit(refiner):
    image, coarse = disc_pair(64, 64)
    small = Refiner(refiner.model, device="cpu", max_pixels=1000)
    with pytest.raises(InputError, match="above the limit"):
        small.refine(image, coarse)


def test_single_full_scale_equals_the_network():
    model = tiny_model("airm_mit_b0")
    image, mask = torch.rand(1, 3, 64, 96), torch.rand(1, 1, 64, 96)
    options = InferenceOptions(
        scales=(1.0,), band=None, first_band=None, first_trust=1.0, min_size=1, precision="float32"
    )
    with torch.no_grad():
        direct = torch.sigmoid(model(image, mask).logits)
    assert torch.allclose(refine_probability(model, image, mask, options), direct, atol=1e-6)


def test_the_first_scale_trusts_the_coarse_mask_more(monkeypatch):
    """first_trust multiplies the coarse mask's skip at the first scale, and only there."""
    model = tiny_model("airm_efficientnet_lite0")
    image, mask = torch.rand(1, 3, 64, 96), torch.rand(1, 1, 64, 96)
    one_scale = InferenceOptions(
        scales=(1.0,), band=None, first_band=None, first_trust=2.5, min_size=1, precision="float32"
    )
    with torch.no_grad():
        logits = model(image, mask).logits + 1.5 * model.mask_skip * (2 * mask - 1)
    assert torch.allclose(
        refine_probability(model, image, mask, one_scale), torch.sigmoid(logits), atol=1e-5
    )

    weights = []
    query = model.query
    monkeypatch.setattr(
        model,
        "query",
        lambda encoded, *a, **k: weights.append(encoded.skip_weight) or query(encoded, *a, **k),
    )
    refine_probability(model, image, mask, replace(one_scale, scales=(0.5, 1.0), min_step=1.0))
    assert len(weights) == 2 and torch.equal(weights[0], torch.tensor([2.5])) and weights[1] is None
    with pytest.raises(ValueError, match="first_trust"):
        InferenceOptions(first_trust=0)


def test_band_limited_step_agrees_with_the_full_step():
    """Inside the band the shortcut gives the full result; outside it keeps the input."""
    model = tiny_model("airm_efficientnet_lite0")
    image, coarse = disc_pair(96, 112)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    prob = torch.nn.functional.avg_pool2d(
        torch.from_numpy(coarse)[None, None].float() / 255, 5, 1, 2, count_include_pad=False
    )
    full = refine_at_scale(model, img, prob, band=None)
    shortcut = refine_at_scale(model, img, prob, band=4, chunk_size=1000)
    band = boundary_band(prob, 4, (0.02, 0.98))
    assert 0 < band.sum() < band.numel() / 2
    assert torch.allclose(shortcut[band], full[band], atol=1e-5)
    assert torch.equal(shortcut[~band], prob[~band])


def test_the_coarse_band_is_queried_where_the_current_mask_lost_a_part():
    """A stroke of the coarse mask that an earlier scale erased is queried again: the band
    around the coarse mask's boundary joins the current one's."""
    prob = torch.zeros(1, 1, 60, 80)
    prob[0, 0, 10:40, 10:30] = 1.0  # the body, kept
    coarse = prob.clone()
    coarse[0, 0, 20:22, 45:75] = 1.0  # a thin stroke, erased from prob
    near_coarse = boundary_band(coarse, 3, (0.02, 0.98))[0, 0]
    near_current = boundary_band(prob, 3, (0.02, 0.98))[0, 0]
    both = queried_pixels(prob, 3, (0.02, 0.98), coarse)
    assert torch.equal(both, near_coarse | near_current)
    assert both[21, 60] and not near_current[21, 60]
    assert torch.equal(queried_pixels(prob, 3, (0.02, 0.98)), near_current)


def scale_calls(monkeypatch, options: InferenceOptions) -> list[dict]:
    """The keyword arguments of each scale's `refine_at_scale` when a tiny model refines a
    96 x 128 disc with `options`."""
    import airm.inference

    calls = []
    step = airm.inference.refine_at_scale

    def recording(model, image, prob, **kwargs):
        calls.append(kwargs)
        return step(model, image, prob, **kwargs)

    monkeypatch.setattr(airm.inference, "refine_at_scale", recording)
    image, coarse = disc_pair(96, 128)
    img = torch.from_numpy(image).permute(2, 0, 1)[None]
    mask = torch.from_numpy(coarse)[None, None].float() / 255
    refine_probability(tiny_model("airm_efficientnet_lite0"), img, mask, options)
    return calls


def test_refinement_passes_the_resized_coarse_mask_to_every_scale(monkeypatch):
    """coarse_band gives each scale the coarse mask at that scale's size; off, none."""
    options = InferenceOptions(min_size=32, precision="float32")
    seen = [tuple(c["coarse"].shape[-2:]) for c in scale_calls(monkeypatch, options)]
    assert seen == scale_sizes(96, 128, options)
    off = scale_calls(monkeypatch, InferenceOptions(min_size=32, coarse_band=False))
    assert [c["coarse"] for c in off] == [None] * len(scale_sizes(96, 128, options))


@pytest.mark.parametrize(
    ("options", "bands", "tile_size"),
    [
        (
            InferenceOptions(min_size=32),
            [InferenceOptions.first_band, InferenceOptions.band, InferenceOptions.band],
            512,
        ),
        (InferenceOptions.every_pixel(min_size=32), [None, None, None], 512),
        (InferenceOptions.exhaustive(min_size=32), [None, None, None], None),
    ],
)
def test_every_pixel_queries_every_pixel_and_keeps_the_tiles(
    monkeypatch, options, bands, tile_size
):
    seen = [(c["band"], c["tile_size"]) for c in scale_calls(monkeypatch, options)]
    assert len(scale_sizes(96, 128, options)) == 3
    assert seen == [(band, tile_size) for band in bands]


def test_scale_sizes_respect_the_training_crop():
    options = InferenceOptions()
    assert scale_sizes(480, 854, options)[0][0] == 224
    assert scale_sizes(4000, 6000, options) == [
        (500, 750),
        (1000, 1500),
        (2000, 3000),
        (4000, 6000),
    ]
    assert scale_sizes(300, 300, options) == [(224, 224), (300, 300)]
    assert scale_sizes(150, 200, options) == [(150, 200)]


def test_scale_sizes_skip_a_scale_too_close_to_the_last():
    # 0.5 of 480 is 240, barely above the first scale (raised to 224): skipped by default.
    assert scale_sizes(480, 854, InferenceOptions()) == [(224, 399), (480, 854)]
    assert scale_sizes(480, 854, InferenceOptions(min_step=1.0)) == [
        (224, 399),
        (240, 427),
        (480, 854),
    ]
    # 1164 x 1746: 224 (raised from 146), 291 (1.3 times 224: skipped), 582, 1164.
    assert scale_sizes(1164, 1746, InferenceOptions()) == [(224, 336), (582, 873), (1164, 1746)]
    # The first scale and the full resolution are kept however close they are.
    assert scale_sizes(300, 300, InferenceOptions(min_step=2.0)) == [(224, 224), (300, 300)]
    with pytest.raises(ValueError, match="min_step"):
        InferenceOptions(min_step=0.5)


@pytest.mark.parametrize("uncertain", [(0.98, 0.02), (-0.1, 0.5), (0.5, 1.5), (0.5,)])
def test_uncertain_range_is_checked(uncertain):
    """A reversed range would silently query no uncertain pixel at all."""
    with pytest.raises(ValueError, match="uncertain"):
        InferenceOptions(uncertain=uncertain)
    InferenceOptions(uncertain=(0.0, 1.0))


def test_missing_default_model_names_the_checkpoint_option(monkeypatch, tmp_path):
    monkeypatch.setattr(airm.api, "DEFAULT_CHECKPOINT", tmp_path / "absent.safetensors")
    image, coarse = disc_pair(32, 32)
    with pytest.raises(airm.ModelNotFoundError, match="checkpoint"):
        airm.refine(image, coarse)


def test_refine_function_with_a_checkpoint(tiny_checkpoint):
    image, coarse = disc_pair(50, 70)
    out = airm.refine(image, coarse, checkpoint=tiny_checkpoint, min_size=32)
    assert out.shape == (50, 70) and out.dtype == np.uint8


def test_tiles_cover_exactly_the_band():
    """Tiled encoding queries the same pixels; with context covering the whole image each
    tile sees the same input, so the result is the untiled one."""
    model = tiny_model("airm_efficientnet_lite0")
    image, coarse = disc_pair(100, 130)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    prob = torch.from_numpy(coarse)[None, None].float() / 255
    whole = refine_at_scale(model, img, prob, band=3)
    tiled = refine_at_scale(model, img, prob, band=3, tile_size=48, tile_context=130)
    assert torch.allclose(whole, tiled, atol=1e-5)
    everywhere = refine_at_scale(model, img, prob, band=None, tile_size=48, tile_context=130)
    assert torch.allclose(everywhere, refine_at_scale(model, img, prob, band=None), atol=1e-5)


def test_tiles_with_little_context_change_only_the_band():
    model = tiny_model("airm_efficientnet_lite0")
    image, coarse = disc_pair(128, 160)
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    prob = torch.from_numpy(coarse)[None, None].float() / 255
    tiled = refine_at_scale(model, img, prob, band=4, tile_size=64, tile_context=32)
    band = boundary_band(prob, 4, (0.02, 0.98))
    assert torch.equal(tiled[~band], prob[~band])
    assert torch.isfinite(tiled).all()


def test_shortcuts_agree_with_the_exhaustive_path_with_the_shipped_model():
    """Band-limited, tiled refinement (two 512 px tiles here) against every pixel queried and
    every scale encoded whole: the same mask up to a few boundary pixels."""
    image, coarse = disc_pair(400, 700, seed=1)
    refiner = airm.get_refiner()
    fast = refiner.refine(image, coarse) > 127
    slow = refiner.with_options(InferenceOptions.exhaustive()).refine(image, coarse) > 127
    assert (fast & slow).sum() / (fast | slow).sum() > 0.995
    truth = image[..., 0] > 120
    coarse_iou = ((coarse > 127) & truth).sum() / ((coarse > 127) | truth).sum()
    assert (fast & truth).sum() / (fast | truth).sum() > coarse_iou + 0.1


@pytest.mark.parametrize("size", [(120, 170), (61, 200)])
def test_enlarging_with_the_plain_kernel_equals_the_antialiased_one(size):
    prob = torch.rand(1, 1, 30, 50)
    antialiased = torch.nn.functional.interpolate(
        prob, size=size, mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(resize(prob, size), antialiased, rtol=0, atol=1e-6)


@pytest.mark.parametrize("band", [1, 4, 12, 50])
def test_band_is_where_a_dilation_and_an_erosion_differ(band):
    """Both ways of computing the band (OpenCV on a CPU, a summed-area table elsewhere and
    in the training loss) against the definition: max pooling, whose window stops at the
    image's border (so the border is not a boundary)."""
    from airm.inference import _near_boundary_cv2

    generator = torch.Generator().manual_seed(band)
    prob = (torch.rand(3, 1, 60, 80, generator=generator) > 0.97).float()  # specks
    prob[0, 0, 10:40, 20:70] = 1.0
    prob[1, 0, :, :30] = 0.7  # touches the image border
    prob[2] = 1.0  # no boundary at all
    binary = prob > 0.5
    k = 2 * band + 1
    x = binary.float()
    expected = F.max_pool2d(x, k, 1, band) != -F.max_pool2d(-x, k, 1, band)
    assert torch.equal(mixed_windows(binary, band), expected)
    assert torch.equal(_near_boundary_cv2(binary, band), expected)
    assert not expected[2].any()
    assert torch.equal(loss_boundary_band(x, band), expected.float())


@pytest.mark.parametrize(
    ("height", "width", "tile", "context"),
    [(100, 130, 48, 16), (80, 81, 48, 16), (700, 1200, 48, 16), (700, 1200, 300, 40)],
)
def test_tiles_cover_the_image_and_windows_hold_their_pixels_with_context(
    height, width, tile, context
):
    from airm.inference import WINDOW_STEP, TileGrid

    grid = TileGrid.plan(height, width, tile_size=tile, context=context)
    rows, cols = grid.shape
    covered = np.zeros((height, width), int)
    rng = np.random.default_rng(0)
    boxes = []
    for index in range(rows * cols):
        top, bottom, left, right = grid.tile_box(index)
        assert bottom - top <= max(tile, min(height, tile + 2 * context)) and right - left <= max(
            tile, min(width, tile + 2 * context)
        )
        covered[top:bottom, left:right] += 1
        # queried pixels somewhere inside the tile
        y0, x0 = rng.integers(top, bottom), rng.integers(left, right)
        boxes.append((y0, rng.integers(y0, bottom) + 1, x0, rng.integers(x0, right) + 1))
    assert (covered == 1).all()
    for group in (boxes[:1], boxes[:3], boxes):
        origins, (wh, ww) = grid.windows(group)
        # a multiple of the window step, unless capped by the image or by the tile's window
        assert wh % WINDOW_STEP == 0 or wh == min(height, grid.tile[0] + 2 * context)
        assert ww % WINDOW_STEP == 0 or ww == min(width, grid.tile[1] + 2 * context)
        assert wh <= min(height, grid.tile[0] + 2 * context) and ww <= min(
            width, grid.tile[1] + 2 * context
        )
        for (top, bottom, left, right), (y, x) in zip(group, origins, strict=True):
            assert 0 <= y and y + wh <= height and 0 <= x and x + ww <= width
            assert y <= max(0, top - context) and min(height, bottom + context) <= y + wh
            assert x <= max(0, left - context) and min(width, right + context) <= x + ww


@pytest.mark.parametrize("band", [3, None])
def test_batched_tiles_agree_with_tiles_one_by_one(band):
    """A batch's windows share its largest size, so some see more context than alone: the
    result moves a little, and only inside the band."""
    model = tiny_model("airm_efficientnet_lite0")
    image, coarse = disc_pair(100, 130)
    img = torch.from_numpy(image).permute(2, 0, 1)[None]
    prob = torch.from_numpy(coarse)[None, None].float() / 255
    tiles = {"tile_size": 48, "tile_context": 16, "chunk_size": 500}
    single = refine_at_scale(model, img, prob, band=band, tile_batch=1, **tiles)
    batched = refine_at_scale(model, img, prob, band=band, tile_batch=3, **tiles)
    assert (single - batched).abs().mean() < 0.02
    assert ((single > 0.5) == (batched > 0.5)).float().mean() > 0.99
    if band is not None:
        outside = ~boundary_band(prob, band, (0.02, 0.98))
        assert torch.equal(batched[outside], prob[outside])
        assert torch.equal(single[outside], prob[outside])
    # Windows see less context than the whole image, so the result moves, a little.
    whole = refine_at_scale(model, img, prob, band=band)
    assert not torch.equal(whole, single) and (whole - single).abs().mean() < 0.05


def test_tiles_whose_windows_are_the_whole_image_give_the_untiled_result():
    model = tiny_model("airm_efficientnet_lite0")
    image, coarse = disc_pair(60, 90)
    img = torch.from_numpy(image).permute(2, 0, 1)[None]
    prob = torch.from_numpy(coarse)[None, None].float() / 255
    whole = refine_at_scale(model, img, prob, band=None)
    for tile_batch in (1, 4):
        tiled = refine_at_scale(
            model, img, prob, band=None, tile_size=32, tile_context=90, tile_batch=tile_batch
        )
        assert torch.allclose(whole, tiled, atol=1e-5)


def test_half_precision_agrees_with_float32_with_the_shipped_model():
    """bfloat16 is what GPUs (and CPUs that compute it natively) run by default."""
    image, coarse = disc_pair(300, 420, seed=2)
    refiner = airm.get_refiner(device="cpu")
    full = refiner.with_options(InferenceOptions(precision="float32")).refine(image, coarse) > 127
    half = refiner.with_options(InferenceOptions(precision="bfloat16")).refine(image, coarse) > 127
    assert (full == half).mean() >= 0.999
    with pytest.raises(ValueError, match="precision"):
        InferenceOptions(precision="float8")


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_bfloat16_only_where_the_hardware_computes_it(monkeypatch, native):
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda: native, raising=False)
    cpu = torch.device("cpu")
    assert native_bfloat16(cpu) is native
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if native else None)
    for capability, dtype in (((8, 0), torch.bfloat16), ((7, 5), None)):  # Ampere; Turing
        monkeypatch.setattr(
            torch.cuda, "get_device_capability", lambda device=None, c=capability: c
        )
        assert autocast_dtype(torch.device("cuda"), "auto") == dtype
    assert autocast_dtype(cpu, "float32") is None
    assert autocast_dtype(cpu, "bfloat16") == torch.bfloat16


@pytest.mark.parametrize(
    ("height", "width", "tile"), [(100, 130, 48), (80, 81, 48), (97, 50, None), (30, 200, 16)]
)
def test_tile_grid_groups_pixels_by_tile_with_their_bounds(height, width, tile):
    from airm.inference import TileGrid

    grid = TileGrid.plan(height, width, tile_size=tile, context=8)
    rng = np.random.default_rng(1)
    mask = torch.from_numpy(rng.random((height, width)) < 0.02)
    mask[:, 5] = False  # rows and columns with nothing, so that bounds are not the tiles'
    mask[7] = False
    positions, starts, counts, boxes = grid.group(mask)
    rows, cols = grid.pixels(positions)
    # every True pixel once, grouped by tile in order, nothing from the padding
    assert rows.numel() == mask.sum() == sum(counts)
    assert mask[rows, cols].all() and (rows * width + cols).unique().numel() == rows.numel()
    for index, (start, count, box) in enumerate(zip(starts, counts, boxes, strict=True)):
        top, bottom, left, right = grid.tile_box(index)
        ys, xs = mask[top:bottom, left:right].nonzero(as_tuple=True)
        assert count == ys.numel()
        tile_rows, tile_cols = rows[start : start + count], cols[start : start + count]
        assert ((top <= tile_rows) & (tile_rows < bottom)).all()
        assert ((left <= tile_cols) & (tile_cols < right)).all()
        if count:
            assert box == (
                top + ys.min().item(),
                top + ys.max().item() + 1,
                left + xs.min().item(),
                left + xs.max().item() + 1,
            )


def test_a_speck_that_no_scale_queries_is_returned_not_a_crash(refiner):
    """A one-pixel object vanishes at the first scale (1/64 of a pixel: neither boundary nor
    uncertain), which then has nothing to query; that used to fail inside the tile loop."""
    image, _ = disc_pair(400, 400)
    coarse = np.zeros((400, 400), np.uint8)
    coarse[200, 200] = 255
    assert refiner.refine(image, coarse).shape == (400, 400)
    labels = np.zeros((400, 400), np.uint8)
    labels[200:] = 1
    labels[100, 100] = 2
    assert refiner.refine_labels(image, labels).shape == (400, 400)


def test_a_transposed_mask_refines_as_its_copy(refiner):
    """At a full-resolution first scale a transposed (Fortran-ordered) mask kept its layout
    into flat views of it, which failed."""
    one_scale = refiner.with_options(scales=(1.0,))
    image, coarse = disc_pair(70, 90)
    image, coarse = image.transpose(1, 0, 2), coarse.T
    expected = one_scale.refine(np.ascontiguousarray(image), np.ascontiguousarray(coarse))
    assert np.array_equal(one_scale.refine(image, coarse), expected)
    image_t = torch.from_numpy(image).permute(2, 0, 1)
    assert torch.equal(
        one_scale.refine_torch(image_t, torch.from_numpy(coarse)),
        one_scale.refine_torch(image_t.contiguous(), torch.from_numpy(coarse).contiguous()),
    )


def test_tensor_masks_read_as_arrays_are_and_other_encodings_are_refused(refiner):
    image, coarse = disc_pair(40, 50)
    image_t, mask_t = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(coarse)
    with pytest.raises(InputError, match="image tensor must be uint8 or float"):
        refiner.refine_torch(image_t.long(), mask_t)
    with pytest.raises(InputError, match="mask values -1..255"):
        refiner.refine_torch(image_t, mask_t.long() - (mask_t == 0).long())
    with pytest.raises(InputError, match=r"probabilities in \[0, 1\], got 0..255"):
        refiner.refine_torch(image_t, mask_t.float())
    with pytest.raises(InputError, match="NaN"):
        refiner.refine_torch(image_t, torch.full((40, 50), float("nan")))
    expected = refiner.refine_torch(image_t, mask_t > 127)
    for mask in (mask_t, mask_t.long(), (mask_t > 127).int(), mask_t.int() * 257):
        assert torch.equal(refiner.refine_torch(image_t, mask), expected), mask.dtype


def test_a_full_mask_comes_back_as_new_probabilities(refiner):
    image, _ = disc_pair(20, 30)
    full = torch.full((20, 30), 1.2)  # a resampled mask's overshoot
    with pytest.warns(UserWarning, match="empty or full"):
        out = refiner.refine_torch(torch.from_numpy(image).permute(2, 0, 1), full)
    assert out.max() == 1.0
    out.zero_()
    assert (full == 1.2).all()


def test_with_options_keeps_what_it_is_not_given(refiner):
    narrow = refiner.with_options(InferenceOptions(band=12), max_pixels=None)
    assert narrow.with_options(first_band=4).options == InferenceOptions(band=12, first_band=4)
    assert narrow.with_options(first_band=4).max_pixels is None
    assert narrow.with_options(max_pixels=100).options.band == 12
    assert refiner.with_options().options == refiner.options


@pytest.mark.parametrize(
    "field, value",
    [
        ("band", 2.5),
        ("first_band", 0),
        ("tile_context", -40),
        ("chunk_size", 0),
        ("chunk_size", -5),
        ("tile_size", 16),
        ("tile_batch", 0),
        ("min_size", 0),
        ("band", True),
    ],
)
def test_counts_that_are_not_whole_or_too_small_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field} must be an integer"):
        InferenceOptions(**{field: value})


def test_a_band_wider_than_the_image_queries_as_the_image_wide_one(refiner):
    image, coarse = disc_pair(60, 80)
    wide = refiner.with_options(band=10**6, first_band=10**6).refine(image, coarse)
    assert np.array_equal(wide, refiner.with_options(band=80, first_band=80).refine(image, coarse))
