import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from airm import InferenceOptions, Refiner, save_model
from airm.inference import refine_at_scale
from airm.modeling.implicit_function import LayerModulation, modulation_gate
from eval.modulation import (
    MODES,
    FixedModulation,
    RecordingHypernetwork,
    first_scale_modulation,
    head_usage,
    image_tensors,
    magnitude,
    main,
    mean_modulation,
    stack_gates,
    substituted,
    tile_modulations,
    variation,
)

from conftest import disc_pair, tiny_model


def modulated_model():
    """A tiny AIRMF whose hypernetwork's output depends on the image (its head is zero at
    initialisation, which would give every image the same modulation)."""
    model = tiny_model("airm_efficientnet_lite0")
    torch.manual_seed(1)
    with torch.no_grad():
        model.hypernetwork.head.weight.normal_(0.0, 0.5)
        model.hypernetwork.head.bias.normal_(0.0, 0.5)
    return model


def refine(refiner, image, coarse, hypernetwork="keep"):
    if hypernetwork == "keep":
        return refiner.refine(image, coarse, soft=True)
    with substituted(refiner.model, hypernetwork):
        return refiner.refine(image, coarse, soft=True)


def test_own_modulation_reproduces_the_baseline_and_another_changes_it():
    # One scale, one tile: the window refinement encodes is the first-scale window. The skip
    # at its own weight: the untrained model's f is small beside it.
    options = InferenceOptions(
        scales=(1.0,), tile_size=None, min_size=32, first_trust=1.0, precision="float32"
    )
    refiner = Refiner(modulated_model(), device="cpu", options=options)
    image, coarse = disc_pair(64, 64)
    other, other_coarse = disc_pair(64, 64, seed=1)
    other = 255 - other
    own = first_scale_modulation(refiner.model, *image_tensors(image, coarse > 127), options)
    donor = first_scale_modulation(
        refiner.model, *image_tensors(other, other_coarse > 127), options
    )
    baseline = refine(refiner, image, coarse)
    assert np.array_equal(refine(refiner, image, coarse, FixedModulation(own)), baseline)
    swapped = refine(refiner, image, coarse, FixedModulation(donor))
    assert not np.allclose(swapped, baseline, atol=1e-4)
    # The substitution is undone afterwards.
    assert np.array_equal(refine(refiner, image, coarse), baseline)


def test_gate_one_and_zero_shift_is_the_shared_function():
    options = InferenceOptions(min_size=32, tile_size=64, tile_context=16)
    model = modulated_model()
    refiner = Refiner(model, device="cpu", options=options)
    image, coarse = disc_pair(96, 128)
    identity = FixedModulation.identity(model.implicit_function.layer_shapes)
    shared = refine(refiner, image, coarse, None)
    assert np.allclose(refine(refiner, image, coarse, identity), shared, atol=1e-6)
    assert not np.allclose(refine(refiner, image, coarse), shared, atol=1e-4)


def test_from_gates_applies_the_given_gates():
    torch.manual_seed(0)
    gates = [torch.rand(5, 7) * 2, torch.tensor([[1e-9, 1.0, 2.0]])]
    shifts = [torch.randn(5), torch.randn(1)]
    fixed = FixedModulation.from_gates(gates, shifts)
    out = fixed(torch.zeros(3, 4, 2, 2))
    assert [m.a.shape[0] for m in out] == [3, 3]
    for m, g, s in zip(out, gates, shifts, strict=True):
        assert torch.allclose(modulation_gate(m.a, m.b), g.expand(3, -1, -1), atol=1e-5)
        assert torch.equal(m.bias, s.expand(3, -1))


def test_mean_modulation_is_the_mean_gate():
    torch.manual_seed(0)
    mods = [
        [LayerModulation(torch.randn(1, 4, 2), torch.randn(1, 2, 6), torch.randn(1, 4))]
        for _ in range(3)
    ]
    (mean,) = mean_modulation(mods)(torch.zeros(1, 1, 1, 1))
    expected = torch.stack([modulation_gate(m[0].a, m[0].b)[0] for m in mods]).mean(0)
    assert torch.allclose(modulation_gate(mean.a, mean.b)[0], expected, atol=1e-5)
    assert torch.allclose(mean.bias[0], torch.cat([m[0].bias for m in mods]).mean(0))


def test_tiles_are_the_windows_inference_encodes():
    model = modulated_model()
    options = InferenceOptions(tile_size=32, tile_context=8, band=4)
    image, coarse = disc_pair(96, 128)
    image_t, mask = image_tensors(image, coarse > 127)
    mine, encoded = tile_modulations(model, image_t, mask, options)
    recorder = RecordingHypernetwork(model.hypernetwork)
    with substituted(model, recorder):
        refine_at_scale(model, image_t, mask, band=4, tile_size=32, tile_context=8)
    assert len(mine) == len(encoded) == 12
    assert any(encoded) and not all(encoded)  # the disc's outline misses the corner tiles
    # Inference encodes the tiles holding queried pixels (in its own order), one by one.
    ours = [m for m, e in zip(mine, encoded, strict=True) if e]
    assert len(recorder.records) == len(ours)

    def same(x, y) -> bool:
        return all(
            torch.equal(a.a, b.a) and torch.equal(a.b, b.b) and torch.equal(a.bias, b.bias)
            for a, b in zip(x, y, strict=True)
        )

    for theirs in recorder.records:
        assert sum(same(m, theirs) for m in ours) == 1
    gates = stack_gates(mine)
    assert [g.shape for g in gates] == [(12, 16, 22), (12, 16, 16), (12, 1, 16)]
    for g, w in zip(gates, model.implicit_function.weights, strict=True):
        v = variation(g, torch.zeros(12, g.shape[1]), w.detach())
        assert v.n == 12 and v.gate_std > 0
        assert all(math.isfinite(x) for x in (v.gate_std, v.gate_std_ratio, v.weight_change))


def test_statistics_on_known_gates():
    weight = torch.randn(3, 4)
    gates = torch.stack([torch.full((3, 4), 0.5), torch.full((3, 4), 1.5)])  # 2 images
    shifts = torch.tensor([[1.0, -1.0, 0.0], [3.0, 1.0, 0.0]])
    s = magnitude(gates, shifts, torch.tensor([2.0, -2.0, 2.0]), layer=0)
    assert s.shape == (3, 4) and s.layer == 0
    assert s.gate_deviation == pytest.approx(0.5) and s.gate_deviation_std == pytest.approx(0.0)
    assert s.saturated == 0.0 and s.bias_shift == pytest.approx(1.0) and s.shared_bias == 2.0
    v = variation(gates, shifts, weight)
    assert v.n == 2 and v.gate_std == pytest.approx(0.5) and v.gate_std_ratio == pytest.approx(1)
    assert v.weight_change == pytest.approx(0.5)  # ||W 0.5|| / ||W 1||
    assert v.bias_std == pytest.approx(2.0 / 3.0)  # stds 1, 1, 0
    same = variation(torch.stack([gates[0], gates[0]]), shifts, weight)
    assert same.gate_std == 0.0 and same.weight_change == 0.0
    saturated = torch.tensor([[[0.01, 1.99, 1.0, 0.06]]])
    assert magnitude(saturated, torch.zeros(1, 1), torch.zeros(1), 0).saturated == 0.5
    assert math.isnan(variation(gates[:1], shifts[:1], weight).gate_std)  # one sample


def big_folder(root, n=3):
    root.mkdir()
    for i in range(n):
        image, coarse = disc_pair(60, 80, seed=i)
        Image.fromarray(image).save(root / f"d-{i}_im.jpg")
        Image.fromarray((image[..., 0] > 120).astype(np.uint8) * 255).save(root / f"d-{i}_gt.png")
        Image.fromarray(coarse).save(root / f"d-{i}_seg.png")
    return root


def test_cli_end_to_end(tmp_path, tiny_checkpoint, capsys):
    data, out = big_folder(tmp_path / "val"), tmp_path / "mod.json"
    argv = ["--checkpoint", str(tiny_checkpoint), "--data", str(data), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| own |" in printed and "| none |" in printed
    result = json.loads(out.read_text())
    assert result["images"] == ["d-0", "d-1", "d-2"] and result["donor_shift"] == 1
    assert len(result["layers"]) == len(result["over_images"]) == 3  # f: 2 hidden layers + out
    assert list(result["scores"]) == list(MODES)
    for s in result["scores"].values():
        assert all(math.isfinite(s[k]) for k in ("iou", "mean_iou", "mba", "flipped"))
        assert len(s["image_ious"]) == 3
    # An untrained hypernetwork's head is zero: its output ignores the image, so every image
    # has the same modulation and swapping them changes nothing.
    assert all(v["gate_std"] == 0.0 for v in result["over_images"])
    for mode in ("own", "own_fixed", "swap"):
        assert result["scores"][mode]["flipped"] == 0.0
    assert result["head_input_spread"] > 0  # the images differ; the zero head ignores them
    assert all(u["varying"] == 0.0 and u["ratio"] == 0.0 for u in result["head_usage"])


def test_head_usage_on_known_values():
    head = torch.nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        head.bias.copy_(torch.tensor([0.0, 4.0, 2.0]))
    inputs = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0), deviations (-1, 0), (1, 0)
    spread, (first, rest) = head_usage(inputs, head, [1, 2])
    assert spread == pytest.approx(0.5)
    assert (first.varying, first.shared, first.bias) == pytest.approx((1.0, 2.0, 0.0))
    assert first.ratio == pytest.approx(0.5)
    # The second layer's outputs ignore h's varying part: (0 h_2 + 4, 0 + 2).
    assert (rest.varying, rest.shared, rest.bias) == pytest.approx((0.0, 20**0.5, 20**0.5))


def test_the_recorded_head_input_is_what_the_head_sees():
    model = modulated_model().eval()
    image, mask = image_tensors(*disc_pair(64, 64))
    inputs = []
    options = InferenceOptions(min_size=32)
    modulation = first_scale_modulation(model, image, mask / 255, options, head_inputs=inputs)
    (h,) = inputs
    flat = model.hypernetwork.head(h)
    size = modulation[0].a.numel()
    assert torch.allclose(flat[0, :size], modulation[0].a.flatten())


def test_cli_refuses_a_model_without_hypernetwork(tmp_path, capsys):
    path = tmp_path / "sirmf.safetensors"
    save_model(tiny_model("sirmf_efficientnet_lite0"), path)
    data = big_folder(tmp_path / "val")
    assert main(["--checkpoint", str(path), "--data", str(data)]) == 2
    assert "no hypernetwork" in capsys.readouterr().err
    assert main(["--data", str(data), "--modes", "own,bogus"]) == 2
