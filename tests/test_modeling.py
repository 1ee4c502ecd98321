import pytest
import torch

from airm import VARIANTS
from airm.modeling import implicit_decoder
from airm.modeling.fusion import inference_copy
from airm.modeling.implicit_function import ImplicitFunction
from airm.modeling.pixel_features import FoldedPixelFeatureFusion, PixelFeatureFusion

from conftest import TINY, tiny_model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_backward(variant):
    model = tiny_model(variant).train()
    image, mask = torch.rand(2, 3, 64, 96), (torch.rand(2, 1, 64, 96) > 0.5).float()
    out = model(image, mask)
    assert out.logits.shape == (2, 1, 64, 96)
    assert torch.isfinite(out.logits).all()
    loss = out.logits.mean() + (out.affinity.mean() if out.affinity is not None else 0)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("variant", ["airm_mit_b0", "airm_efficientnet_lite0"])
def test_affinity_shape_and_symmetry(variant):
    model = tiny_model(variant).train()
    out = model(torch.rand(2, 3, 64, 96), torch.rand(2, 1, 64, 96))
    h, w = 64 // 16, 96 // 16
    assert out.affinity_size == (h, w)
    assert out.affinity.shape == (2, h * w, h * w)
    assert torch.allclose(out.affinity, out.affinity.transpose(1, 2), atol=1e-6)
    assert ((out.affinity > 0) & (out.affinity <= 1)).all()


def test_no_affinity_at_inference():
    model = tiny_model("airm_mit_b0").eval()
    assert model(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)).affinity is None


def test_zero_modulation_equals_shared_function():
    airmf = tiny_model("airm_efficientnet_lite0")
    sirmf = tiny_model("airm_efficientnet_lite0", modulation=False)
    shared = {k: v for k, v in airmf.state_dict().items() if not k.startswith("hypernetwork.")}
    sirmf.load_state_dict(shared)
    image, mask = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        # At initialisation A B = 0 by design; give the factors values to modulate with.
        airmf.hypernetwork.head.bias.normal_(0.0, 0.5)
        modulated = airmf(image, mask).logits
        airmf.hypernetwork.head.weight.zero_()
        airmf.hypernetwork.head.bias.zero_()
        unmodulated = airmf(image, mask).logits
        assert torch.equal(unmodulated, sirmf(image, mask).logits)
    assert not torch.allclose(modulated, unmodulated)


def test_decoder_equals_concatenated_mlp():
    """The split first layer computes LIIF's MLP on [feature, rel, abs, cell] exactly."""
    torch.manual_seed(0)
    c = 5
    f = ImplicitFunction(in_dim=c + implicit_decoder.COORD_DIMS, hidden_dims=(7, 7))
    features = torch.randn(1, c, 3, 4)
    params = f.layer_params(None)
    state = implicit_decoder.prepare(features, params)
    coords = torch.rand(1, 10, 2) * 2 - 1
    cell = torch.tensor([[0.3, 0.2]])
    got = implicit_decoder.query(state, coords, cell)

    index, rel, weights = implicit_decoder.neighbours(coords, (3, 4))
    table = features[0].reshape(c, -1).t()  # (h * w, C)
    expected = torch.zeros(10)
    for k in range(4):
        x = torch.cat([table[index[0, :, k]], rel[0, :, k], coords[0], cell.expand(10, 2)], dim=1)
        for layer, (w, b) in enumerate(zip(f.weights, f.biases, strict=True)):
            x = torch.nn.functional.linear(x if layer == 0 else torch.relu(x), w, b)
        expected += x[:, 0] * weights[0, :, k]
    assert torch.allclose(got[0], expected, atol=1e-5)


def test_chunked_queries_equal_one_chunk():
    model = tiny_model("airm_mit_b0")
    image, mask = torch.rand(2, 3, 64, 80), torch.rand(2, 1, 64, 80)
    with torch.no_grad():
        whole = model(image, mask).logits
        chunked = model(image, mask, chunk_size=333).logits
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_ensemble_weights_sum_to_one_and_are_bilinear_inside():
    coords = torch.rand(1, 500, 2) * 2 - 1
    _, rel, weights = implicit_decoder.neighbours(coords, (7, 9))
    assert torch.allclose(weights.sum(-1), torch.ones(1, 500), atol=1e-6)
    assert (weights >= 0).all()
    # Away from the border the area weights are bilinear weights: 1 - |offset| per axis.
    inside = ((coords[..., 0].abs() < 0.8) & (coords[..., 1].abs() < 0.8))[0]
    bilinear = (1 - rel[..., 0].abs()) * (1 - rel[..., 1].abs())
    assert torch.allclose(weights[0, inside], bilinear[0, inside], atol=1e-5)


def test_window_matches_full_query():
    """A window's logits are the whole grid's there, its top and left given as integers or
    as tensors (as training gives them, so that a compiled step has one graph)."""
    model = tiny_model("airm_efficientnet_lite0")
    image, mask = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        full = model(image, mask).logits
        part = model(image, mask, window=(8, 16, 24, 20)).logits
        held = model(image, mask, window=(torch.tensor(8), torch.tensor(16), 24, 20)).logits
    assert torch.allclose(full[..., 8:32, 16:36], part, atol=1e-5)
    assert torch.equal(held, part)


def test_mit_last_stage_at_stride16():
    model = tiny_model("airm_mit_b0")
    out = model.encoder(torch.rand(1, 4, 64, 64))
    assert [s.shape[-1] for s in out.stages] == [16, 8, 4, 4]
    assert TINY["feature_dim"] == model.pixel_features.fuse[0].out_channels


def test_stride2_features_reach_the_decoder_at_half_the_input():
    model = tiny_model("airm_efficientnet_lite0", feature_stride=2)
    assert model.encoder.strides == (2, 4, 8, 16, 32)
    image, mask = torch.rand(1, 3, 64, 96), (torch.rand(1, 1, 64, 96) > 0.5).float()
    stages = model.encoder(torch.cat([image, mask], dim=1)).stages
    assert model.pixel_features(stages).shape[-2:] == (32, 48)
    fast = inference_copy(model, torch.device("cpu"))
    with torch.no_grad():
        expected, got = model(image, mask).logits, fast(image, mask).logits
    assert expected.shape == (1, 1, 64, 96)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="CNN encoder"):
        tiny_model("airm_mit_b0", feature_stride=2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_inference_copy_keeps_the_function(variant):
    model = tiny_model(variant)
    for module in model.modules():  # non-trivial statistics, so that folding has work to do
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    fast = inference_copy(model, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert isinstance(fast.pixel_features, FoldedPixelFeatureFusion)
    image, mask = torch.rand(1, 3, 64, 96), (torch.rand(1, 1, 64, 96) > 0.5).float()
    with torch.no_grad():
        expected, got = model(image, mask).logits, fast(image, mask).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_hyper_input_norm_standardises_what_the_head_sees():
    model = tiny_model("airm_efficientnet_lite0", hyper_input_norm=True).train()
    seen = []
    model.hypernetwork.head.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    image, mask = torch.rand(4, 3, 64, 64), (torch.rand(4, 1, 64, 64) > 0.5).float()
    out = model(image, mask)
    out.logits.mean().backward()
    (h,) = seen
    assert torch.allclose(h.mean(0), torch.zeros_like(h[0]), atol=1e-5)
    var = h.var(0, correction=0)  # 1 up to batchnorm's epsilon; 0 where the unit is constant
    assert (var > 0.9).any() and ((var > 0.9) & (var <= 1.0) | (var == 0)).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # At inference the running statistics standardise; the batchnorm-folded copy agrees.
    model.eval()
    with torch.no_grad():
        model.hypernetwork.head.weight.normal_(0.0, 0.5)  # an image-dependent modulation
        expected = model(image[:1], mask[:1]).logits
        got = inference_copy(model, torch.device("cpu"))(image[:1], mask[:1]).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_input_norm_restandardised_or_folded_keeps_the_function():
    model = tiny_model("airm_efficientnet_lite0", hyper_input_norm=True)
    hyper = model.hypernetwork
    image, mask = torch.rand(3, 3, 64, 64), (torch.rand(3, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        hyper.head.weight.normal_(0.0, 0.5)  # an image-dependent modulation
        hyper.body[-2].weight.mul_(300.0)  # pooled features that differ between these images
        hyper.norm.running_mean.normal_(0.0, 1.0)
        hyper.norm.running_var.uniform_(0.5, 2.0)
        expected = model(image, mask).logits
        seen = []
        hook = hyper.norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        model(image, mask)
        hook.remove()
        (h,) = seen
        hyper.standardise_input(h.mean(0), h.var(0, correction=0))
        torch.testing.assert_close(model(image, mask).logits, expected, atol=1e-5, rtol=1e-5)
        # These windows' own statistics: mean 0, variance 1 up to batchnorm's epsilon.
        var = h.var(0, correction=0)
        standardised = hyper.norm(h)
        torch.testing.assert_close(standardised.mean(0), torch.zeros_like(h[0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(standardised.var(0, correction=0), var / (var + hyper.norm.eps))
        assert (var > 1e-2).sum() >= 3  # some units do vary
        hyper.fold_input_norm()
        assert isinstance(hyper.norm, torch.nn.Identity)
        torch.testing.assert_close(model(image, mask).logits, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no input norm"):
        hyper.fold_input_norm()


def test_folded_pixel_features_keep_the_function():
    fusion = PixelFeatureFusion(in_dims=(5, 7, 11), out_dim=6)
    for bn in (fusion.fuse[1], fusion.fuse[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    fusion.eval()
    stages = [torch.randn(2, 5, 12, 16), torch.randn(2, 7, 6, 8), torch.randn(2, 11, 3, 4)]
    with torch.no_grad():
        expected, got = fusion(stages), fusion.folded()(stages)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fusion.train().folded()
