"""Fused ConvNet operations and FlatParams' forward paths: same values and derivatives as stock torch."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from dcbench_tesla.models import fused
from dcbench_tesla.models.convnet import ACTIVATIONS, ConvNet
from dcbench_tesla.models.flat import FORWARD_MODES, FlatParams
from dcbench_tesla.models.fused import avg_pool2x2, conv3x3, instance_norm_relu, instance_norm_relu_pool

F64 = torch.float64
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _stock_norm_relu(x, w, b):
    return F.relu(F.group_norm(x, x.shape[1], w, b))


def _first_and_second(fn, inputs, seed=1):
    """``fn``'s output, its vector-Jacobian product, and the gradient of ``<vjp, v>`` w.r.t. inputs and cotangent."""
    gen = torch.Generator().manual_seed(seed)
    out = fn(*inputs)
    cot = torch.randn(out.shape, generator=gen, dtype=out.dtype).requires_grad_(True)
    firsts = torch.autograd.grad(out, inputs, cot, create_graph=True)
    probes = [torch.randn(g.shape, generator=gen, dtype=g.dtype) for g in firsts]
    scalar = sum((g * v).sum() for g, v in zip(firsts, probes, strict=True))
    seconds = torch.autograd.grad(scalar, [*inputs, cot], allow_unused=True, materialize_grads=True)
    return out, firsts, seconds


@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_instance_norm_relu_matches_stock_to_second_order(layout):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=gen, dtype=F64).to(memory_format=layout).requires_grad_(True)
    w = torch.randn(4, generator=gen, dtype=F64).requires_grad_(True)
    b = torch.randn(4, generator=gen, dtype=F64).requires_grad_(True)
    ref = _first_and_second(_stock_norm_relu, [x, w, b])
    got = _first_and_second(instance_norm_relu, [x, w, b])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-13, atol=1e-13)
    for a, r in itertools.chain(zip(got[1], ref[1], strict=True), zip(got[2], ref[2], strict=True)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(4, 6), (5, 4)])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_instance_norm_relu_pool_matches_stock_to_second_order(layout, size):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, *size, generator=gen, dtype=F64).to(memory_format=layout).requires_grad_(True)
    w = torch.randn(4, generator=gen, dtype=F64).requires_grad_(True)
    b = torch.randn(4, generator=gen, dtype=F64).requires_grad_(True)
    ref = _first_and_second(lambda *t: F.avg_pool2d(_stock_norm_relu(*t), 2), [x, w, b])
    got = _first_and_second(instance_norm_relu_pool, [x, w, b])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-13, atol=1e-13)
    for a, r in itertools.chain(zip(got[1], ref[1], strict=True), zip(got[2], ref[2], strict=True)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    assert gradgradcheck(instance_norm_relu_pool, (x, w, b))


def test_instance_norm_relu_gradcheck():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 3, 4, generator=gen, dtype=F64).requires_grad_(True)
    w = torch.randn(3, generator=gen, dtype=F64).requires_grad_(True)
    b = torch.randn(3, generator=gen, dtype=F64).requires_grad_(True)
    assert gradcheck(instance_norm_relu, (x, w, b))
    assert gradgradcheck(instance_norm_relu, (x, w, b))


@pytest.mark.parametrize("size", [(6, 8), (7, 5), (2, 2)])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["nchw", "channels_last"])
def test_avg_pool2x2_matches_avg_pool2d(layout, size):
    x = torch.randn(2, 3, *size, dtype=F64).to(memory_format=layout).requires_grad_(True)
    ref = _first_and_second(lambda t: F.avg_pool2d(t, 2), [x])
    got = _first_and_second(avg_pool2x2, [x])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(got[1][0], ref[1][0], rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(got[2][1], ref[2][1], rtol=1e-14, atol=1e-15)  # w.r.t. the cotangent
    assert gradgradcheck(avg_pool2x2, (x,))


def _conv_second_order(conv, wrt_weight: bool):
    """The engines' pattern: g = d l / d(weight, bias) with a graph, then d <g, p> / d(x[, weight])."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=F64).requires_grad_(True)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=F64).requires_grad_(True)
    b = torch.randn(4, generator=gen, dtype=F64).requires_grad_(True)
    y = conv(x, w, b)
    r = torch.randn(y.shape, generator=gen, dtype=F64)
    gw, gb = torch.autograd.grad((torch.tanh(y) * r).sum(), [w, b], create_graph=True)
    p = torch.randn(gw.shape, generator=gen, dtype=F64)
    return y, torch.autograd.grad((gw * p).sum() + gb.square().sum(), [x, w] if wrt_weight else [x])


@pytest.mark.parametrize("wrt_weight", [True, False], ids=["x-and-weight", "x-only"])
def test_conv3x3_matches_conv2d_to_second_order(wrt_weight):
    ref_y, ref = _conv_second_order(lambda x, w, b: F.conv2d(x, w, b, padding=1), wrt_weight)
    y, got = _conv_second_order(conv3x3, wrt_weight)
    torch.testing.assert_close(y, ref_y, rtol=1e-13, atol=1e-13)
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 2, 4, 3, dtype=F64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=F64, requires_grad=True)
    assert gradcheck(conv3x3, (x, w, None)) and gradgradcheck(conv3x3, (x, w, None))


def test_conv3x3_skips_gradients_the_backward_does_not_need(monkeypatch):
    """An image-only double backward (TESLA's) computes no weight gradient of the double backward."""
    masks = []
    original = fused._conv_backward

    def recording(gy, x, weight, mask):
        masks.append(list(mask))
        return original(gy, x, weight, mask)

    monkeypatch.setattr(fused, "_conv_backward", recording)
    _conv_second_order(conv3x3, wrt_weight=False)
    assert masks[0] == [False, True, True]  # the first backward: x needs no gradient there
    assert masks[1:] and not any(mask[1] for mask in masks[1:])  # no weight gradient in the second
    masks.clear()
    _conv_second_order(conv3x3, wrt_weight=True)
    assert any(mask[1] for mask in masks[1:])


def _convnet(norm="instancenorm", act="relu", pool="avgpool", size=8):
    torch.manual_seed(0)
    return ConvNet(1, 3, size, width=4, depth=2, norm=norm, act=act, pool=pool).to(F64)


CONFIGS = [
    ("instancenorm", "relu", "avgpool"),
    ("instancenorm", "relu", "maxpool"),
    ("instancenorm", "softplus", "avgpool"),
    ("layernorm", "gelu", "avgpool"),
    ("none", "tanh", "none"),
    *[("instancenorm", act, "avgpool") for act in ACTIVATIONS if act not in ("relu", "softplus")],
]


@pytest.mark.parametrize("mode", ["fused", "functional"])
@pytest.mark.parametrize("config", CONFIGS, ids=["-".join(c) for c in CONFIGS])
def test_functional_forward_matches_functional_call(config, mode):
    """Values, parameter and input gradients, and the double backward of a parameter-gradient probe."""
    net = _convnet(*config, size=6)
    flat = FlatParams(net, mode=mode)
    assert flat.forward_mode == mode and flat.forward_note == ""
    reference = FlatParams(net, mode="module")
    gen = torch.Generator().manual_seed(3)
    theta = flat.flatten()
    x = torch.randn(5, 1, 6, 6, generator=gen, dtype=F64)
    y = torch.arange(5) % 3
    probe = torch.randn(theta.shape, generator=gen, dtype=F64)

    def second_order(fp: FlatParams):
        t = theta.clone().requires_grad_(True)
        xx = x.clone().requires_grad_(True)
        out = fp.forward(t, xx)
        (g,) = torch.autograd.grad(F.cross_entropy(out, y), t, create_graph=True)
        return [out.detach(), g.detach(), *torch.autograd.grad(torch.dot(g, probe), [t, xx])]

    for got, ref in zip(second_order(flat), second_order(reference), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-13)


def test_flat_params_falls_back_with_a_reason():
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    flat = FlatParams(seq)
    assert flat.requested_mode == "fused" and flat.forward_mode == "module"
    assert "no functional_forward" in flat.forward_note
    bn = FlatParams(_convnet(norm="batchnorm"))
    assert bn.forward_mode == "module" and "batchnorm" in bn.forward_note
    x = torch.randn(2, 1, 8, 8, dtype=F64)
    torch.testing.assert_close(
        bn.forward(bn.flatten(), x), functional_call(bn.module, bn.unflatten(bn.flatten()), (x,))
    )
    with pytest.raises(ValueError, match="forward mode"):
        FlatParams(seq, mode="fast")
    assert FORWARD_MODES == ("fused", "functional", "module")


def test_functional_forward_rejects_batchnorm():
    net = _convnet(norm="batchnorm")
    with pytest.raises(ValueError, match="batchnorm"):
        net.functional_forward(dict(net.named_parameters()), torch.randn(1, 1, 8, 8, dtype=F64))


@pytest.mark.parametrize("image_size", [8, 28, 32])
def test_fused_forward_matches_module_at_dataset_shapes(image_size):
    """The block plans of real shapes (skipped pools, odd maps) agree with the module, in float32 too."""
    torch.manual_seed(0)
    net = ConvNet(3, 10, image_size, width=8, depth=3)
    flat = FlatParams(net)
    x = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        torch.testing.assert_close(flat.forward(flat.flatten(), x), net(x), rtol=1e-5, atol=1e-5)
