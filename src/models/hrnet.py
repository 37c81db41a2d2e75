"""HRNet: timm's HRNet-W18-Small-v2 for classification, and HRNetV2 semantic segmentation.

The segmentation model is the HRNetV2 representation head (Sun et al., 2019) on timm's
backbone: the four raw branches (18/36/72/144 channels at 1/4..1/32 resolution, timm's
``features_only=True, feature_location=''``) are bilinearly upsampled to 1/4 resolution and
concatenated (270 channels), then 1x1 conv-BN-ReLU and a 1x1 classifier; the logits are
upsampled to the input size. 19 Cityscapes classes by default.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["HRNetV2Seg", "hrnet_w18_small_v2", "hrnetv2_w18_small_v2_seg"]


class HRNetV2Seg(nn.Module):
    def __init__(self, backbone: str = "hrnet_w18_small_v2", num_classes: int = 19, in_chans: int = 3):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True,
                                          feature_location="", out_indices=(1, 2, 3, 4), in_chans=in_chans)
        width = sum(self.backbone.feature_info.channels())
        self.head = nn.Sequential(
            nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        feats = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        logits = self.classifier(self.head(torch.cat(feats, 1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model(family="hrnet", input_size=(3, 224, 224), num_classes=1000)
def hrnet_w18_small_v2(**kw) -> nn.Module:
    return timm.create_model("hrnet_w18_small_v2", pretrained=False, **kw)


@register_model(family="hrnet", input_size=(3, 1024, 2048), num_classes=19, task="segmentation")
def hrnetv2_w18_small_v2_seg(**kw) -> nn.Module:
    return HRNetV2Seg("hrnet_w18_small_v2", **kw)
