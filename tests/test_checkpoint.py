import pytest
import torch

from airm import CheckpointError, load_model, load_weights, save_model

from conftest import tiny_model


def test_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_model("airm_mit_b0")
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.config == model.config
    image, mask = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(image, mask).logits, loaded(image, mask).logits)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "sirmf.safetensors"
    save_model(tiny_model("airm_efficientnet_lite0", modulation=False), path)
    with pytest.raises(CheckpointError, match="different variant"):
        load_weights(tiny_model("airm_efficientnet_lite0"), path)


def test_tensors_that_do_not_fit_are_named(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model("airm_mit_b0")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors.pop("mask_skip")
    path = tmp_path / "broken.safetensors"
    save_file(
        tensors, str(path), metadata={"format": "airm-model-1", "config": model.config.to_json()}
    )
    with pytest.raises(CheckpointError, match="missing.*mask_skip"):
        load_model(path)


def test_missing_truncated_and_pickled_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    path = tmp_path / "m.safetensors"
    save_model(tiny_model("airm_mit_b0"), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(truncated)
    pickled = tmp_path / "model.pth"
    torch.save({"weights": torch.zeros(3)}, pickled)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(pickled)


def test_plain_safetensors_is_not_an_airm_checkpoint(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not an airm model"):
        load_model(path)


@pytest.mark.parametrize("field, value", [("feature_dim", "16"), ("encoder", "no-such-net")])
def test_a_config_that_builds_no_model_is_a_checkpoint_error(tmp_path, field, value):
    import json

    from safetensors.torch import save_file

    model = tiny_model("airm_efficientnet_lite0")
    config = {**json.loads(model.config.to_json()), field: value}
    path = tmp_path / "odd.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "airm-model-1", "config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="odd.safetensors carries a model config"):
        load_model(path)


def test_init_adds_a_skip_gate_that_starts_as_the_shared_skip(tmp_path):
    from airm.checkpoint import load_initial_weights

    plain = tiny_model("airm_efficientnet_lite0")
    path = tmp_path / "plain.safetensors"
    save_model(plain, path)
    gated = tiny_model("airm_efficientnet_lite0", skip_gate=True, skip_gate_pool="band").eval()
    with pytest.raises(CheckpointError, match="different variant"):
        load_weights(gated, path)  # strict loading still refuses it
    load_initial_weights(gated, path)
    image, mask = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        before = plain(image, mask).logits
        assert torch.allclose(gated(image, mask).logits, before, atol=1e-5)
        gated.skip_gate.g.bias.fill_(20.0)  # weight 2 sigmoid(20) = 2: the skip doubled
        doubled = gated(image, mask).logits
    expected = before + plain.mask_skip * (2 * mask - 1)
    assert torch.allclose(doubled, expected, atol=1e-4)
    # a checkpoint of another variant stays refused, gate or not
    sirmf = tmp_path / "sirmf.safetensors"
    save_model(tiny_model("airm_efficientnet_lite0", modulation=False), sirmf)
    with pytest.raises(CheckpointError, match="different variant"):
        load_initial_weights(gated, sirmf)


def test_a_band_pooled_gate_reads_the_cells_the_coarse_boundary_crosses():
    from airm.modeling.airm import SkipGate

    torch.manual_seed(0)
    window, band = SkipGate(8, 4, pool="window").eval(), SkipGate(8, 4, pool="band").eval()
    band.load_state_dict(window.state_dict())
    for gate in (window, band):
        gate.g.weight.data.fill_(2.0)  # so that the weight depends on what is pooled
    features = torch.zeros(1, 8, 16, 16)
    features[..., :8] = 5 * torch.rand(1, 8, 16, 8)  # something only in the left half
    full, left, right = (
        torch.ones(1, 1, 64, 64),
        torch.zeros(1, 1, 64, 64),
        torch.zeros(1, 1, 64, 64),
    )
    left[..., :16] = 1
    right[..., :48] = 1
    with torch.no_grad():
        # no boundary: the whole window, as the window pool reads it
        assert torch.allclose(band(features, full), window(features, full))
        # the window pool ignores the mask; the band pool follows its boundary
        assert torch.equal(window(features, left), window(features, right))
        assert not torch.allclose(band(features, left), band(features, right))
        assert not torch.allclose(band(features, left), window(features, left))
    with pytest.raises(ValueError, match="skip_gate_pool"):
        tiny_model("airm_efficientnet_lite0", skip_gate=True, skip_gate_pool="edges")
