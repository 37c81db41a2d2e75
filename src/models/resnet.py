"""ImageNet ResNets: torchvision's builders (not re-implemented), registered with their families."""

from __future__ import annotations

import torchvision
from torch import nn

from .registry import register_model

__all__ = ["resnet18", "resnet34", "resnet50"]

_IMAGENET = dict(family="resnet", input_size=(3, 224, 224), num_classes=1000)


@register_model(**_IMAGENET)
def resnet18(**kw) -> nn.Module:
    return torchvision.models.resnet18(weights=None, **kw)


@register_model(**_IMAGENET)
def resnet34(**kw) -> nn.Module:
    return torchvision.models.resnet34(weights=None, **kw)


@register_model(**_IMAGENET)
def resnet50(**kw) -> nn.Module:
    return torchvision.models.resnet50(weights=None, **kw)
