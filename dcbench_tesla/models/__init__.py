"""Model registry: ConvNet (depth/width/norm), ResNet18 variants, ViT.

Every builder has the signature
``build(channels: int, num_classes: int, image_size: int, **kwargs) -> nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dcbench_tesla.registry import Registry, load_target

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")

MODELS.register_lazy("convnet", "dcbench_tesla.models.convnet:build_convnet")
MODELS.register_lazy("convnet3", "dcbench_tesla.models.convnet:build_convnet3")
MODELS.register_lazy("convnet4", "dcbench_tesla.models.convnet:build_convnet4")
MODELS.register_lazy("resnet18", "dcbench_tesla.models.resnet:build_resnet18")
MODELS.register_lazy("resnet18_bn", "dcbench_tesla.models.resnet:build_resnet18_bn")
MODELS.register_lazy("vit", "dcbench_tesla.models.vit:build_vit")


def build_model(name: str, channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a registered model for images of ``channels`` x ``image_size`` x ``image_size``."""
    builder = MODELS.get(name)
    return builder(channels=channels, num_classes=num_classes, image_size=image_size, **kwargs)


__all__ = ["MODELS", "ModelBuilder", "build_model", "load_target"]
