"""Every registered model runs forward and backward; the U-Net keeps its contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.registry import create, list_models
from models.unet import UNet, load_imagenet_encoder


@pytest.mark.parametrize("name", list_models("segmenter"))
def test_every_segmenter_runs_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create("segmenter", name, num_classes=5)
    x = torch.rand(2, 3, 64, 96)
    y = model(x)
    assert y.shape == (2, 5, 64, 96)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_inputs_must_be_multiples_of_32() -> None:
    model = create("segmenter", "unet-mobilenetv2-small", num_classes=3)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 50, 64))
    with pytest.raises(ValueError, match="RGB"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="no segmenter"):
        create("segmenter", "unet-resnet9000", num_classes=3)


def test_imagenet_encoder_weights_load_from_a_local_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2(weights=None)
    torch.nn.init.constant_(reference.features[0][0].weight, 0.5)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(tmp_path / "mnv2.safetensors"))
    torch.save(state, tmp_path / "mnv2.pth")
    for path in (tmp_path / "mnv2.safetensors", tmp_path / "mnv2.pth"):
        model = UNet(7, encoder_weights=str(path))
        assert torch.equal(model.encoder[0][0].weight, reference.features[0][0].weight)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="features"):
        load_imagenet_encoder(mobilenet_v2(weights=None), str(tmp_path / "other.pth"))
