import pytest
import timm
import torch
from safetensors.torch import save_file

from airm import load_encoder_rgb_weights

from conftest import tiny_model


def test_efficientnet_lite_weights_with_other_names(tmp_path):
    """Weights published under other names (efficientnet-lite-pytorch) map by order."""
    torch.manual_seed(0)
    rgb = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    renamed = {f"_t{i:04d}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(rgb.items())}
    path = tmp_path / "lite0.pth"
    torch.save(renamed, path)
    model = tiny_model("airm_efficientnet_lite0")
    load_encoder_rgb_weights(model, path)
    stem = model.encoder.body.conv_stem.weight
    assert torch.equal(stem[:, :3], rgb["conv_stem.weight"])
    assert torch.count_nonzero(stem[:, 3]) == 0  # the mask channel starts at zero
    assert torch.equal(
        model.encoder.body.blocks[1][0].conv_pw.weight, rgb["blocks.1.0.conv_pw.weight"]
    )


def test_mit_weights_in_timm_layout(tmp_path):
    model = tiny_model("airm_mit_b0")
    body = model.encoder.body
    rgb = {k: torch.randn_like(v) for k, v in body.state_dict().items()}
    rgb["patch_embed.proj.weight"] = torch.randn(32, 3, 7, 7)
    rgb["head.weight"] = torch.randn(1000, 256)  # a classifier is ignored
    path = tmp_path / "mit.safetensors"
    save_file(rgb, str(path))
    assert load_encoder_rgb_weights(model, path) == ["head.weight"]
    assert torch.equal(body.patch_embed.proj.weight[:, :3], rgb["patch_embed.proj.weight"])
    assert torch.equal(
        body.stages[3].blocks[1].attn.q.weight, rgb["stages.3.blocks.1.attn.q.weight"]
    )


def test_weights_of_another_network_are_refused(tmp_path):
    path = tmp_path / "small.pth"
    torch.save({"w": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="tensors"):
        load_encoder_rgb_weights(tiny_model("airm_efficientnet_lite0"), path)
    with pytest.raises(FileNotFoundError):
        load_encoder_rgb_weights(tiny_model("airm_mit_b0"), tmp_path / "absent.pth")
