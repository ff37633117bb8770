from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.func import functional_call

from dcbench_tesla.models import MODELS, build_model
from dcbench_tesla.models.convnet import NORMS, ConvNet, build_convnet, build_convnet3

NAMES = MODELS.names()
CONFIGS = [(channels, size) for size in (8, 32) for channels in (1, 3)]
NUM_CLASSES = 10


@functools.cache
def _model(name: str, channels: int, size: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, channels=channels, num_classes=NUM_CLASSES, image_size=size).eval()


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_built_in_models():
    assert {"convnet", "convnet3", "convnet4", "resnet18", "resnet18_bn", "vit"} <= set(NAMES)


@pytest.mark.parametrize("channels,size", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_embed_and_functional_call(name, channels, size):
    model = _model(name, channels, size)
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        logits = model(x)
        features = model.embed(x)
        params = {k: v.detach() for k, v in model.named_parameters()}
        params.update(dict(model.named_buffers()))
        functional = functional_call(model, params, (x,))
    assert logits.shape == (2, NUM_CLASSES)
    assert bool(torch.isfinite(logits).all())
    assert not torch.allclose(logits[0], logits[1])  # the output depends on the input
    assert features.dim() == 2 and features.shape[0] == 2 and bool(torch.isfinite(features).all())
    torch.testing.assert_close(functional, logits)


@pytest.mark.parametrize("name", NAMES)
def test_double_backward_through_functional_call(name):
    model = _model(name, 1, 8)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    loss = nn.functional.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    vector = sum((g * torch.randn_like(g)).sum() for g in grads)
    vector.backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_parameter_counts():
    assert _count(build_model("convnet3", 3, 10, 32)) == 320_010
    assert _count(build_model("convnet3", 3, 100, 32)) == 504_420
    assert _count(build_model("convnet", 3, 10, 32)) == 320_010
    assert _count(build_model("convnet4", 3, 1000, 64)) == 2_496_360
    assert _count(build_model("convnet", 3, 1000, 64)) == 2_496_360


def test_convnet_embed_dim_and_depth_choice():
    model = build_convnet(3, 10, 32)
    assert model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 2048)
    assert sum(isinstance(m, nn.Conv2d) for m in build_convnet(3, 10, 64).modules()) == 4
    # at 8x8 the default depth is 2, so the last block normalises 4x4 maps, not 2x2
    assert sum(isinstance(m, nn.Conv2d) for m in build_convnet(1, 10, 8).modules()) == 2
    assert build_convnet(1, 10, 8).embed(torch.randn(1, 1, 8, 8)).shape == (1, 512)
    assert sum(isinstance(m, nn.Conv2d) for m in build_convnet(1, 10, 16).modules()) == 3
    # ConvNet-4 on 8x8 skips one pool so that no block sees 1x1 maps
    pools = [m for m in build_model("convnet4", 1, 10, 8).modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 3
    with pytest.raises(ValueError, match="depth"):
        build_convnet3(3, 10, 32, depth=4)
    with pytest.raises(ValueError, match="norm"):
        ConvNet(3, 10, 32, norm="weird")
    with pytest.raises(ValueError, match="activation"):
        ConvNet(3, 10, 32, act="weird")


def test_resnet_and_vit_at_64():
    for name in ("resnet18", "convnet4"):
        out = _model(name, 3, 64)(torch.randn(1, 3, 64, 64))
        assert out.shape == (1, NUM_CLASSES)
    with pytest.raises(ValueError, match="multiple"):
        build_model("vit", 3, 10, 30)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("act", ["relu", "softplus", "tanh"])
def test_convnet_double_backward_each_norm(norm, act):
    torch.manual_seed(0)
    model = ConvNet(1, 4, 8, width=6, depth=3, norm=norm, act=act).double().train()
    names = [k for k, _ in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])

    def unflatten(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            out[name] = theta[start : start + shape.numel()].view(shape)
            start += shape.numel()
        return out

    def grad_at(theta: torch.Tensor, create_graph: bool) -> torch.Tensor:
        logits = functional_call(model, {**unflatten(theta), **buffers}, (x,))
        loss = nn.functional.cross_entropy(logits, y)
        (g,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
        return g

    theta = flat.clone().requires_grad_(True)
    g = grad_at(theta, create_graph=True)
    v = torch.randn_like(g)
    hvp, gx = torch.autograd.grad((g * v).sum(), (theta, x))
    assert bool(torch.isfinite(hvp).all()) and bool(torch.isfinite(gx).all())
    assert float(gx.abs().sum()) > 0
    if act != "relu":  # smooth: the HVP matches finite differences
        h = 1e-6
        plus = grad_at((flat + h * v).requires_grad_(True), create_graph=False)
        minus = grad_at((flat - h * v).requires_grad_(True), create_graph=False)
        torch.testing.assert_close(hvp, (plus - minus) / (2 * h), rtol=1e-5, atol=1e-7)
