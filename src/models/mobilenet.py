"""MobileNetV2: torchvision's ImageNet model, and its CIFAR version (32x32 input).

The CIFAR version uses the usual CIFAR strides (as in the widely used kuangliu/pytorch-cifar
model): stride-1 stem and stride 1 in the second stage, so the 32x32 input is downsampled 8x
instead of 32x. Same module names as the ImageNet model, so the same rule files apply.
"""

from __future__ import annotations

import torchvision
from torch import nn

from .registry import register_model

__all__ = ["mobilenet_v2", "cifar_mobilenet_v2"]

# t (expansion), c (channels), n (blocks), s (stride of the first block)
CIFAR_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                 [6, 160, 3, 2], [6, 320, 1, 1]]


@register_model(family="mobilenet_v2", input_size=(3, 224, 224), num_classes=1000)
def mobilenet_v2(**kw) -> nn.Module:
    return torchvision.models.mobilenet_v2(weights=None, **kw)


@register_model(family="mobilenet_v2", input_size=(3, 32, 32), num_classes=10)
def cifar_mobilenet_v2(**kw) -> nn.Module:
    model = torchvision.models.mobilenet_v2(weights=None, inverted_residual_setting=CIFAR_SETTING, **kw)
    model.features[0][0].stride = (1, 1)  # stem: no downsampling at 32x32
    return model
