"""ResNet18 of the dataset-condensation family (3x3 stem, no max-pool, adaptive average pool).

Instance norm (GroupNorm(C, C), affine) by default, as in DC/DSA/DM/MTT's cross-architecture
evaluations; ``resnet18_bn`` uses BatchNorm. The adaptive pool lets one model run at 8x8, 32x32
and 64x64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dcbench_tesla.models.convnet import make_activation, make_norm


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (1x1 conv + norm when the shape changes).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first conv (and of the shortcut).
        norm: See :func:`~dcbench_tesla.models.convnet.make_norm`.
        act: See :func:`~dcbench_tesla.models.convnet.make_activation`.

    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str, act: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=bias)
        self.norm2 = make_norm(norm, out_channels)
        self.act = make_activation(act)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias),
                make_norm(norm, out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with a 3x3 stride-1 stem, no max-pool, BasicBlocks and an adaptive average pool.

    Args:
        channels: Input channels.
        num_classes: Number of output logits.
        image_size: Input height and width; a stage keeps stride 1 where stride 2 would
            leave 1x1 maps (instance norm of a 1x1 map is a constant), so the model stays
            input-dependent at 8x8 (stages 8, 4, 2, 2). 32 and 64 use every stride.
        blocks: Blocks per stage.
        widths: Channels per stage.
        norm: See :func:`~dcbench_tesla.models.convnet.make_norm`.
        act: See :func:`~dcbench_tesla.models.convnet.make_activation`.

    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int = 32,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        norm: str = "instancenorm",
        act: str = "relu",
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise ValueError(f"blocks {blocks} and widths {widths} must be non-empty and of equal length")
        self.stem = nn.Sequential(
            nn.Conv2d(channels, widths[0], 3, stride=1, padding=1, bias=norm == "none"),
            make_norm(norm, widths[0]),
            make_activation(act),
        )
        stages: list[nn.Module] = []
        in_channels = widths[0]
        size = image_size
        for index, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            layers: list[nn.Module] = []
            downsample = index > 0 and size >= 4
            if downsample:
                size = (size + 1) // 2
            for block in range(count):
                stride = 2 if downsample and block == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride, norm, act))
                in_channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = in_channels
        self.classifier = nn.Linear(in_channels, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Pooled features before the classifier, shape (B, ``embed_dim``)."""
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, shape (B, num_classes)."""
        return self.classifier(self.embed(x))


def build_resnet18(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> ResNet:
    """ResNet18 (BasicBlock [2, 2, 2, 2], widths 64..512), instance norm unless ``norm`` is given.

    Args:
        channels: Input channels.
        num_classes: Number of output logits.
        image_size: Input height and width (sets the stride schedule; see :class:`ResNet`).
        **kwargs: ``norm``, ``act``, ``widths`` (see :class:`ResNet`).

    """
    return ResNet(channels, num_classes, image_size, blocks=(2, 2, 2, 2), **kwargs)


def build_resnet18_bn(channels: int, num_classes: int, image_size: int, **kwargs: Any) -> ResNet:
    """ResNet18 with BatchNorm; see :func:`build_resnet18`."""
    kwargs.setdefault("norm", "batchnorm")
    return build_resnet18(channels, num_classes, image_size, **kwargs)


__all__ = ["BasicBlock", "ResNet", "build_resnet18", "build_resnet18_bn"]
