"""Model registry: ConvNet (depth/width/norm), ResNet18 variants, ViT, and plugins.

Every builder has the signature
``build(channels: int, num_classes: int, image_size: int, **kwargs) -> nn.Module``.
Third-party architectures register through the entry-point group ``dcbench_tesla.models``
(``name = package.module:build_fn``), read lazily like methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dcbench_tesla.errors import UserError
from dcbench_tesla.registry import ENTRY_POINT_GROUPS, Registry, load_target

if TYPE_CHECKING:
    from torch import nn

ModelBuilder = Callable[..., "nn.Module"]
MODELS: Registry[ModelBuilder] = Registry("model", entry_point_group=ENTRY_POINT_GROUPS["model"])

MODELS.register_lazy("convnet", "dcbench_tesla.models.convnet:build_convnet")
MODELS.register_lazy("convnet3", "dcbench_tesla.models.convnet:build_convnet3")
MODELS.register_lazy("convnet4", "dcbench_tesla.models.convnet:build_convnet4")
MODELS.register_lazy("resnet18", "dcbench_tesla.models.resnet:build_resnet18")
MODELS.register_lazy("resnet18_bn", "dcbench_tesla.models.resnet:build_resnet18_bn")
MODELS.register_lazy("vit", "dcbench_tesla.models.vit:build_vit")


def build_model(name: str, channels: int, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a registered model for images of ``channels`` x ``image_size`` x ``image_size``.

    Raises:
        UserError: unknown name, or a plugin builder that does not return a torch module.
    """
    from torch import nn

    builder = MODELS.get(name)
    if not callable(builder):
        raise UserError(f"model plugin {name!r} is not a builder function (got {type(builder).__name__})")
    model = builder(channels=channels, num_classes=num_classes, image_size=image_size, **kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["MODELS", "ModelBuilder", "build_model", "load_target"]
