"""ConvNet of the dataset-distillation literature: depth x [conv3x3 -> norm -> act -> pool] -> linear.

ConvNet-3 at 32x32 with width 128 and instance norm has 320,010 parameters for 10 classes;
ConvNet-4 at 64x64 for ImageNet-1K has 2,496,360. The norm and activation helpers here are
shared by the other models of this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcbench_tesla.models.fused import avg_pool2x2, conv3x3, instance_norm_relu, instance_norm_relu_pool

NORMS = ("instancenorm", "batchnorm", "layernorm", "none")
ACTIVATIONS = ("relu", "leakyrelu", "sigmoid", "tanh", "softplus", "gelu")
POOLS = ("avgpool", "maxpool", "none")


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation layer for ``channels`` feature maps.

    Args:
        norm: ``"instancenorm"`` (GroupNorm(C, C), affine), ``"batchnorm"``,
            ``"layernorm"`` (GroupNorm(1, C), affine) or ``"none"``.
        channels: Number of channels.

    Raises:
        ValueError: On an unknown name.

    """
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels, affine=True)
    if norm == "layernorm":
        return nn.GroupNorm(1, channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose from {', '.join(NORMS)}")


def group_norm(x: Tensor, groups: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``F.group_norm`` through ``torch.native_group_norm``, which also runs under ``torch.func.vmap``.

    ``F.group_norm`` asks its input for a memory format, which ``vmap`` does not support; the
    native operator computes the same values and derivatives of any order.
    """
    n, c, h, w = x.shape
    return torch.native_group_norm(x, weight, bias, n, c, h * w, groups, eps)[0]


def make_activation(act: str) -> nn.Module:
    """Activation module; ``"softplus"``, ``"tanh"``, ``"gelu"`` and ``"sigmoid"`` are smooth.

    Raises:
        ValueError: On an unknown name.

    """
    factories: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "leakyrelu": nn.LeakyReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "softplus": nn.Softplus,
        "gelu": nn.GELU,
    }
    if act not in factories:
        raise ValueError(f"unknown activation {act!r}; choose from {', '.join(ACTIVATIONS)}")
    return factories[act]()


def _activation(act: str, x: Tensor) -> Tensor:
    """The functional form of :func:`make_activation` (same defaults)."""
    if act == "relu":
        return F.relu(x)
    if act == "leakyrelu":
        return F.leaky_relu(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    if act == "tanh":
        return torch.tanh(x)
    if act == "softplus":
        return F.softplus(x)
    if act == "gelu":
        return F.gelu(x)
    raise ValueError(f"unknown activation {act!r}; choose from {', '.join(ACTIVATIONS)}")


def _make_pool(pool: str) -> nn.Module:
    if pool == "avgpool":
        return nn.AvgPool2d(kernel_size=2, stride=2)
    if pool == "maxpool":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if pool == "none":
        return nn.Identity()
    raise ValueError(f"unknown pool {pool!r}; choose from {', '.join(POOLS)}")


class ConvNet(nn.Module):
    """``depth`` x [conv3x3 pad 1 -> norm -> act -> pool 2x2] -> flatten -> linear.

    Args:
        channels: Input channels.
        num_classes: Number of output logits.
        image_size: Input height and width (square images).
        width: Channels of every conv layer.
        depth: Number of conv blocks.
        norm: See :func:`make_norm`.
        act: See :func:`make_activation`.
        pool: ``"avgpool"``, ``"maxpool"`` or ``"none"``.

    Raises:
        ValueError: On unknown options.

    On images too small for ``depth`` pools, a pool that would leave a later block 1x1 maps
    is skipped (ConvNet-4 on 8x8 pools 8 -> 4 -> 2 -> 2 -> 1); sizes that allow every pool
    (ConvNet-3 at 8 or 32, ConvNet-4 at 64) are unchanged.

    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpool",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"ConvNet depth must be >= 1, got {depth}")
        layers: list[nn.Module] = []
        self.norm, self.act, self.pool = norm, act, pool
        # (conv index, norm index or None, pooled) per block, for functional_forward
        self._blocks: list[tuple[int, int | None, bool]] = []
        size = image_size
        in_channels = channels
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose from {', '.join(POOLS)}")
        for block in range(depth):
            conv_index = len(layers)
            layers += [
                nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
                make_norm(norm, width),
                make_activation(act),
            ]
            # A pool that would hand 1x1 maps to a later block is skipped: instance norm of a
            # 1x1 map is a constant, which would cut the output off from the input.
            last = block == depth - 1
            pooled = pool != "none" and size >= 2 and (last or size // 2 >= 2)
            if pooled:
                layers.append(_make_pool(pool))
                size //= 2
            self._blocks.append((conv_index, None if norm == "none" else conv_index + 1, pooled))
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.embed_dim = width * size * size
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Flattened features before the classifier, shape (B, ``embed_dim``)."""
        return torch.flatten(self.features(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape (B, num_classes)."""
        return self.classifier(self.embed(x))

    def functional_unsupported(self) -> str | None:
        """Why :meth:`functional_forward` cannot run this configuration (None: it can)."""
        if self.norm == "batchnorm":
            return "batchnorm keeps running statistics (buffers updated in training mode)"
        return None

    def functional_forward(self, params: Mapping[str, Tensor], x: Tensor, *, fused: bool = True) -> Tensor:
        """Logits for parameters ``params`` (``{name: tensor}`` as in ``named_parameters()``).

        The same function as :meth:`forward` with the module's parameters replaced, written with
        ``torch.nn.functional`` so no module state is swapped (faster than ``functional_call``).

        Args:
            params: Every parameter of the model, by name (views of a flat vector, typically).
            x: Images ``(B, C, H, W)``.
            fused: Use :func:`~dcbench_tesla.models.fused.instance_norm_relu` and
                :func:`~dcbench_tesla.models.fused.avg_pool2x2` where the configuration has them.

        Raises:
            ValueError: For a configuration :meth:`functional_unsupported` rejects.
        """
        reason = self.functional_unsupported()
        if reason:
            raise ValueError(f"functional_forward: {reason}")
        h = x
        fuse_norm = fused and self.norm == "instancenorm" and self.act == "relu"
        for conv_index, norm_index, pooled in self._blocks:
            conv = conv3x3 if fused else partial(F.conv2d, padding=1)
            h = conv(h, params[f"features.{conv_index}.weight"], params[f"features.{conv_index}.bias"])
            if norm_index is not None:
                module = self.features[norm_index]
                weight, bias = params[f"features.{norm_index}.weight"], params[f"features.{norm_index}.bias"]
                if fuse_norm and pooled and self.pool == "avgpool":
                    h = instance_norm_relu_pool(h, weight, bias, module.eps)
                    continue
                if fuse_norm:
                    h = instance_norm_relu(h, weight, bias, module.eps)
                else:
                    h = _activation(self.act, group_norm(h, module.num_groups, weight, bias, module.eps))
            else:
                h = _activation(self.act, h)
            if pooled:
                if self.pool == "avgpool":
                    h = avg_pool2x2(h) if fused else F.avg_pool2d(h, 2, 2)
                else:
                    h = F.max_pool2d(h, 2, 2)
        return F.linear(torch.flatten(h, 1), params["classifier.weight"], params["classifier.bias"])


def default_depth(image_size: int) -> int:
    """3 up to 32x32 (4 above), reduced so the last block sees maps of at least 4x4."""
    if image_size > 32:
        return 4
    depth = 3
    while depth > 1 and image_size // 2 ** (depth - 1) < 4:
        depth -= 1
    return depth


def build_convnet(channels: int, num_classes: int, image_size: int, depth: int | None = None, **kwargs: Any) -> ConvNet:
    """ConvNet, depth from the image size: 2 at 8x8, 3 at 32x32, 4 at 64x64 (the papers' choice above 8x8).

    Below 32x32 the default depth is the largest (at most 3) whose last block still sees maps of
    at least 4x4: 2 for the 8x8 digits. Instance norm over a 2x2 map (depth 3 at 8x8) divides by
    the spread of 4 values; measured on digits, the trajectory-matching loss then changes by
    ~1% for image perturbations of 1e-4 and first-order optimisation of the images fails.

    Args:
        channels: Input channels.
        num_classes: Number of output logits.
        image_size: Input height and width.
        depth: Number of conv blocks; ``None`` picks it from ``image_size``.
        **kwargs: ``width``, ``norm``, ``act``, ``pool`` (see :class:`ConvNet`).

    """
    if depth is None:
        depth = default_depth(image_size)
    return ConvNet(channels, num_classes, image_size, depth=depth, **kwargs)


def _fixed_depth(name: str, depth: int, kwargs: dict[str, Any]) -> None:
    if "depth" in kwargs and kwargs.pop("depth") not in (None, depth):
        raise ValueError(f"{name} has depth {depth}; use 'convnet' with depth=... for another depth")


def build_convnet3(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> ConvNet:
    """ConvNet-3 (CIFAR-sized images); see :class:`ConvNet` for ``kwargs``."""
    _fixed_depth("convnet3", 3, kwargs)
    return ConvNet(channels, num_classes, image_size, depth=3, **kwargs)


def build_convnet4(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> ConvNet:
    """ConvNet-4 (64x64 images: Tiny ImageNet, ImageNet-1K); see :class:`ConvNet` for ``kwargs``."""
    _fixed_depth("convnet4", 4, kwargs)
    return ConvNet(channels, num_classes, image_size, depth=4, **kwargs)


__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "POOLS",
    "ConvNet",
    "build_convnet",
    "build_convnet3",
    "build_convnet4",
    "make_activation",
    "make_norm",
]
