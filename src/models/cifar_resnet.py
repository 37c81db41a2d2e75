"""CIFAR ResNets (He et al., 2016, section 4.2): 6n+2 layers, 16/32/64 channels, 32x32 input.

Shortcuts: "A" (default, the paper's CIFAR choice) subsamples and zero-pads channels: no
parameters; "B" uses a 1x1 conv + BN projection where the shape changes.
resnet20 / resnet56 with option A: 269,722 / 853,018 params, 40,551,040 / 125,485,696 MACs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["CifarResNet", "BasicBlock", "cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = 0
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.stride, self.pad = stride, planes - in_planes
            elif shortcut == "B":
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 projection), got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            x = self.downsample(x)
        elif self.pad:
            x = x[:, :, :: self.stride, :: self.stride]
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + x)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = "A", in_chans: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for i, planes in enumerate((16, 32, 64)):
            stage = []
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.num_features = 64
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(depth: int, num_classes: int = 10, shortcut: str = "A", **kw) -> CifarResNet:
    return CifarResNet(depth, num_classes, shortcut, **kw)


_CIFAR = dict(family="cifar_resnet", input_size=(3, 32, 32), num_classes=10)


@register_model(**_CIFAR)
def resnet20(**kw) -> CifarResNet:
    return cifar_resnet(20, **kw)


@register_model(**_CIFAR)
def resnet32(**kw) -> CifarResNet:
    return cifar_resnet(32, **kw)


@register_model(**_CIFAR)
def resnet44(**kw) -> CifarResNet:
    return cifar_resnet(44, **kw)


@register_model(**_CIFAR)
def resnet56(**kw) -> CifarResNet:
    return cifar_resnet(56, **kw)


@register_model(**_CIFAR)
def resnet110(**kw) -> CifarResNet:
    return cifar_resnet(110, **kw)
