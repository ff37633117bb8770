"""Fused ConvNet operations with hand-derived first and second derivatives.

Trajectory matching differentiates the student's parameter gradient once more (a double
backward). PyTorch's own second-order formulas for ``group_norm`` and ``relu`` are long chains of
elementwise operations over full activation maps, and ``avg_pool2d`` is slow on one CPU thread. The
functions here compute the same values with fewer passes over memory:

- :func:`instance_norm_relu`: ``relu(group_norm(x, C, weight, bias, eps))`` (instance norm with an
  affine transform, then ReLU). Its backward is itself a differentiable
  :class:`torch.autograd.Function` whose backward (the double backward) is derived by hand:
  per-instance statistics plus three fused ``addcmul`` passes.
- :func:`avg_pool2x2`: ``avg_pool2d(x, 2)`` (floor mode) as two strided additions; its backward is
  the adjoint upsampling, and the pair is differentiable to any order.
- :func:`instance_norm_relu_pool`: the two above as one operation (the ConvNet block's tail), so
  each backward writes the upsampled, masked gradient into one buffer.
- :func:`conv3x3`: ``conv2d(x, w, b, padding=1)`` whose double backward takes the weight-gradient
  term with the backward-weights routine (PyTorch's own convolves the transposed batch, several
  times slower on the CPU) and computes only the gradients the running backward needs.

Both work in float32 and float64, on CPU and CUDA, in contiguous and channels-last layouts, and
match the stock operators to round-off (the tests check values, gradients and double gradients
in float64). Third derivatives of :func:`instance_norm_relu` are not supported (no engine needs
them).

Derivation of the double backward (per instance ``(n, c)``, ``M`` spatial positions, means over
them): with ``x^ = (x - mu) r``, ``r = (var + eps)^-1/2``, ``a = dy * 1[y > 0]``, the backward is
``dx = r gamma (a - mean(a) - x^ mean(a x^))``, ``dgamma = sum a x^``, ``dbeta = sum a``. For
cotangents ``u`` (of ``dx``), ``p`` (of ``dgamma``) and ``q`` (of ``dbeta``), with ``b = mean(a)``,
``e = mean(a x^)``, ``m_u = mean(u)``, ``f = mean(u x^)``, ``h = mean(u a)``::

    d/d dy    = 1[y > 0] * (r gamma u + (p - r gamma f) x^ + q - r gamma m_u)
    d/d gamma = sum_n r M (h - m_u b - f e)
    d/d x     = r G - r mean(G) - r x^ mean(G x^) - G_r r^2 x^ / M,
                G = -r gamma e u + (p - r gamma f) a,   G_r = gamma M (h - m_u b - f e)

where ``mean(G)`` and ``mean(G x^)`` are again per-instance statistics, so every full-size result
is one ``addcmul`` chain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

__all__ = ["avg_pool2x2", "conv3x3", "instance_norm_relu", "instance_norm_relu_pool"]

_SPATIAL = (2, 3)


def _is_channels_last(t: Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _mean(t: Tensor) -> Tensor:
    """Per-instance mean over the spatial dims, shape ``(N, C, 1, 1)``."""
    return t.mean(dim=_SPATIAL, keepdim=True)


class _InstanceNormReLU(Function):
    """``relu(group_norm(x, C, weight, bias, eps))``, optionally followed by the 2x2 average pool.

    Backward through :class:`_InstanceNormReLUBackward`. With ``pool``, the backward writes the
    upsampled gradient and applies the ReLU mask in the same buffer (one full-size tensor fewer).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float, pool: bool) -> Tensor:
        n, c, h, w = x.shape
        if not (x.is_contiguous() or _is_channels_last(x)):
            x = x.contiguous()
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, h * w, c, eps)
        y = torch.relu_(y)
        ctx.save_for_backward(x, weight, mean, rstd, y)
        ctx.pool = pool
        return _pool(y) if pool else y

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd, y = ctx.saved_tensors
        dx, dweight, dbias = _InstanceNormReLUBackward.apply(dout, x, weight, mean, rstd, y, ctx.pool)
        return dx, dweight, dbias, None, None


class _InstanceNormReLUBackward(Function):
    """The backward of :class:`_InstanceNormReLU` as a function of ``(dout, x, weight)``, with its own backward."""

    @staticmethod
    def forward(
        ctx: Any, dout: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, y: Tensor, pool: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        n, c, h, w = x.shape
        # native_group_norm_backward expects the gradient in the memory format of x (and y)
        if pool:  # a = mask * unpool(dout), in one new buffer
            a = _unpool(dout, like=y)
            torch.ops.aten.threshold_backward.grad_input(a, y, 0, grad_input=a)
        else:
            a = torch.ops.aten.threshold_backward(dout, y, 0)
            a = a.contiguous(memory_format=torch.channels_last if _is_channels_last(x) else torch.contiguous_format)
        dx, dweight, dbias = torch.ops.aten.native_group_norm_backward(
            a, x, mean, rstd, weight, n, c, h * w, c, [True, True, True]
        )
        ctx.save_for_backward(a, x, weight, mean, rstd, y)
        ctx.pool = pool
        ctx.set_materialize_grads(False)
        return dx, dweight, dbias

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, u: Tensor | None, p: Tensor | None, q: Tensor | None) -> tuple[Tensor | None, ...]:
        # Written to allocate two full-size tensors (x^, reused for d/d dy, and one scratch buffer
        # that ends as d/d x): fresh CPU memory costs page faults that dominate elementwise work.
        a, x, weight, mean, rstd, y = ctx.saved_tensors
        n, c, h, w = x.shape
        size = h * w
        r = rstd.reshape(n, c, 1, 1)
        gamma = weight.reshape(1, c, 1, 1)
        rg = r * gamma
        xhat = x.sub(mean.reshape(n, c, 1, 1)).mul_(r)
        scratch = torch.empty_like(xhat)
        b = _mean(a)
        e = _mean(torch.mul(a, xhat, out=scratch))
        if u is None:
            mu = f = hh = torch.zeros_like(b)
        else:
            mu = _mean(u)
            f = _mean(torch.mul(u, xhat, out=scratch))
            hh = _mean(torch.mul(u, a, out=scratch))
        c2 = -rg * f if p is None else p.reshape(1, c, 1, 1) - rg * f  # of x^ in d/d dy, of a in G
        c3 = -rg * mu if q is None else q.reshape(1, c, 1, 1) - rg * mu
        k = hh - mu * b - f * e  # shared by d/d gamma and G_r
        g_weight = (r * k).sum(dim=(0, 2, 3)).mul_(size) if ctx.needs_input_grad[2] else None
        # d/d x = r G - r mean(G) - r x^ mean(G x^) - G_r r^2 x^ / M,  G = d1 u + c2 a
        d1 = -rg * e
        mean_g = d1 * mu + c2 * b
        mean_gx = d1 * f + c2 * e
        g_r = gamma * size * k
        k3 = -r * mean_gx - g_r * r * r / size
        g_x = torch.mul(xhat, k3, out=scratch).sub_(r * mean_g).addcmul_(a, r * c2)
        if u is not None:
            g_x.addcmul_(u, r * d1)
        # d/d dy = 1[y > 0] (rg u + c2 x^ + c3), in x^'s buffer
        g_dy = xhat.mul_(c2).add_(c3)
        if u is not None:
            g_dy.addcmul_(u, rg)
        torch.ops.aten.threshold_backward.grad_input(g_dy, y, 0, grad_input=g_dy)
        return _pool(g_dy) if ctx.pool else g_dy, g_x, g_weight, None, None, None, None


def instance_norm_relu(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """``relu(group_norm(x, C, weight, bias, eps))`` with a fused, hand-derived double backward.

    Args:
        x: Activations ``(N, C, H, W)``.
        weight: Per-channel scale ``(C,)``.
        bias: Per-channel shift ``(C,)``.
        eps: Added to the variance.

    Returns:
        The normalised, rectified activations, shape of ``x``.
    """
    return _InstanceNormReLU.apply(x, weight, bias, eps, False)


def instance_norm_relu_pool(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """``avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2)`` as one fused operation.

    Same derivatives as :func:`instance_norm_relu` followed by :func:`avg_pool2x2`, with one
    full-size tensor fewer in each backward. Odd heights or widths use the two separately.

    Args:
        x: Activations ``(N, C, H, W)``, ``H, W >= 2``.
        weight: Per-channel scale ``(C,)``.
        bias: Per-channel shift ``(C,)``.
        eps: Added to the variance.

    Returns:
        ``(N, C, H // 2, W // 2)``.
    """
    if x.shape[2] % 2 or x.shape[3] % 2:
        return avg_pool2x2(instance_norm_relu(x, weight, bias, eps))
    return _InstanceNormReLU.apply(x, weight, bias, eps, True)


def _pool(x: Tensor) -> Tensor:
    """``avg_pool2d(x, 2)`` for even ``H`` and ``W`` in two strided additions (any layout)."""
    n, c, h, w = x.shape
    if x.is_contiguous():
        rows = x.view(n, c, h // 2, 2, w)
        s = rows[:, :, :, 0] + rows[:, :, :, 1]
        s = s.view(n, c, h // 2, w // 2, 2)
        return (s[..., 0] + s[..., 1]).mul_(0.25)
    if x.is_contiguous(memory_format=torch.channels_last):
        nhwc = x.permute(0, 2, 3, 1).view(n, h // 2, 2, w // 2, 2 * c)
        s = nhwc[:, :, 0] + nhwc[:, :, 1]
        out = (s[..., :c] + s[..., c:]).mul_(0.25)
        return out.permute(0, 3, 1, 2)
    return torch.nn.functional.avg_pool2d(x, 2)


def _unpool(g: Tensor, like: Tensor | None = None) -> Tensor:
    """The adjoint of :func:`_pool`: each value, times 1/4, copied to its 2x2 window.

    Four strided copies into one new tensor (copying from a stride-0 ``expand`` is several times
    slower on the CPU). The result has the memory format of ``like`` (default: of ``g``).
    """
    n, c, h, w = g.shape
    quarter = g * 0.25
    ref = g if like is None else like
    if ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous():
        out = g.new_empty(n, h, 2, w, 2, c)
        src = quarter.permute(0, 2, 3, 1)
        for i in (0, 1):
            for j in (0, 1):
                out[:, :, i, :, j].copy_(src)
        return out.view(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    out = g.new_empty(n, c, h, 2, w, 2)
    for i in (0, 1):
        for j in (0, 1):
            out[:, :, :, i, :, j].copy_(quarter)
    return out.view(n, c, 2 * h, 2 * w)


class _Pool2x2(Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return _pool(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return _Unpool2x2.apply(g)


class _Unpool2x2(Function):
    @staticmethod
    def forward(ctx: Any, g: Tensor) -> Tensor:
        return _unpool(g)

    @staticmethod
    def backward(ctx: Any, gg: Tensor) -> Tensor:
        return _Pool2x2.apply(gg)


def avg_pool2x2(x: Tensor) -> Tensor:
    """``avg_pool2d(x, kernel_size=2, stride=2)`` (floor mode), differentiable to any order.

    Odd heights or widths drop their last row or column, as ``avg_pool2d`` does.

    Args:
        x: Activations ``(N, C, H, W)`` with ``H, W >= 2``.

    Returns:
        ``(N, C, H // 2, W // 2)``.
    """
    h, w = x.shape[2], x.shape[3]
    if h % 2 or w % 2:
        x = x[:, :, : h - h % 2, : w - w % 2].contiguous()
    return _Pool2x2.apply(x)


def _needed(ctx: Any, index: int) -> bool:
    """Whether the current backward pass needs the gradient of input ``index`` of this node.

    ``ctx.needs_input_grad`` only says whether the input requires grad; autograd's own nodes also
    skip outputs the running backward does not need (tesla's image-only double backward needs no
    weight gradient). The engine's answer for the input's node is used where torch provides it.
    """
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[index][0]
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):  # no such API, or not inside a backward pass
        return True


_CONV = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}


def _conv_backward(gy: Tensor, x: Tensor, weight: Tensor, mask: list[bool]) -> tuple[Tensor | None, ...]:
    if not any(mask):
        return None, None, None
    return torch.ops.aten.convolution_backward(
        gy, x, weight, None, _CONV["stride"], _CONV["padding"], _CONV["dilation"], False, [0, 0], 1, mask
    )


class _Conv3x3(Function):
    """``conv2d(x, weight, bias, padding=1)``; backward through :class:`_Conv3x3Backward`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.nn.functional.conv2d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        mask = [_needed(ctx, 0), _needed(ctx, 1), ctx.has_bias and _needed(ctx, 2)]
        return _Conv3x3Backward.apply(gy, x, weight, *mask)


class _Conv3x3Backward(Function):
    """The backward of :class:`_Conv3x3` as a function of ``(gy, x, weight)``, with its own backward.

    PyTorch's double backward of a convolution takes the weight-gradient term as a convolution of
    the transposed batch (a 16x16 "kernel" over 100 "channels" at the CIFAR shape), several times
    slower on the CPU than the backward-weights routine used here; it also skips nothing the
    running backward does not need (see :func:`_needed`).
    """

    @staticmethod
    def forward(
        ctx: Any, gy: Tensor, x: Tensor, weight: Tensor, need_x: bool, need_w: bool, need_b: bool
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        gx, gw, gb = _conv_backward(gy, x, weight, [need_x, need_w, need_b])
        ctx.save_for_backward(gy, x, weight)
        ctx.set_materialize_grads(False)
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, ggx: Tensor | None, ggw: Tensor | None, ggb: Tensor | None) -> tuple[Tensor | None, ...]:
        gy, x, weight = ctx.saved_tensors
        g_gy = None
        if _needed(ctx, 0):
            if ggx is not None:
                g_gy = torch.nn.functional.conv2d(ggx, weight, None, padding=1)
            if ggw is not None:
                term = torch.nn.functional.conv2d(x, ggw, None, padding=1)
                g_gy = term if g_gy is None else g_gy.add_(term)
            if ggb is not None:
                term = ggb.reshape(1, -1, 1, 1)
                g_gy = term.expand_as(gy).clone() if g_gy is None else g_gy.add_(term)
        g_x = _conv_backward(gy, x, ggw, [True, False, False])[0] if ggw is not None and _needed(ctx, 1) else None
        g_w = _conv_backward(gy, ggx, weight, [False, True, False])[1] if ggx is not None and _needed(ctx, 2) else None
        return g_gy, g_x, g_w, None, None, None


def conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``conv2d(x, weight, bias, padding=1)`` (stride 1) with a faster double backward on the CPU.

    Args:
        x: Input ``(N, C_in, H, W)``.
        weight: ``(C_out, C_in, 3, 3)``.
        bias: ``(C_out,)`` or None.

    Returns:
        ``(N, C_out, H, W)``.
    """
    return _Conv3x3.apply(x, weight, bias)
