"""EfficientNet-B0/B1: timm's builders (plain nn.Conv2d with static padding, so structurable)."""

from __future__ import annotations

import timm
from torch import nn

from .registry import register_model

__all__ = ["efficientnet_b0", "efficientnet_b1"]


@register_model(family="efficientnet", input_size=(3, 224, 224), num_classes=1000)
def efficientnet_b0(**kw) -> nn.Module:
    return timm.models.efficientnet.efficientnet_b0(pretrained=False, **kw)


@register_model(family="efficientnet", input_size=(3, 240, 240), num_classes=1000)
def efficientnet_b1(**kw) -> nn.Module:
    return timm.models.efficientnet.efficientnet_b1(pretrained=False, **kw)
