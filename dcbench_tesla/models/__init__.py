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

for _name, _target, _description in (
    ("convnet", "convnet:build_convnet", "ConvNet, depth from the image size: 2 at 8x8, 3 at 32x32, 4 at 64x64"),
    ("convnet3", "convnet:build_convnet3", "ConvNet-3 (CIFAR-sized images)"),
    ("convnet4", "convnet:build_convnet4", "ConvNet-4 (64x64 images: Tiny ImageNet, ImageNet-1K)"),
    ("resnet18", "resnet:build_resnet18", "ResNet18 (BasicBlock [2, 2, 2, 2], widths 64..512), instance norm"),
    ("resnet18_bn", "resnet:build_resnet18_bn", "ResNet18 with BatchNorm"),
    ("vit", "vit:build_vit", "ViT (patch 4, dim 512, depth 6, 8 heads x 64, MLP 512, dropout 0.1, CLS pooling)"),
):
    MODELS.register_lazy(_name, f"dcbench_tesla.models.{_target}", _description)


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
