"""BatchNorm recalibration after projection.

Projecting W onto the structured subspace changes every layer's output statistics a little, so
the running BN statistics collected during training no longer match. Re-estimating them on a
few training batches (train-mode BatchNorm, no gradient, cumulative average:
``torch.optim.swa_utils.update_bn``) restores them. Every other layer stays in eval mode while
the statistics are collected (dropout off, as at test time).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import update_bn

__all__ = ["recalibrate_bn"]


class _OnlyBatchNormTrains(nn.Module):
    """`model` for update_bn: its train() puts only the BatchNorm layers in training mode."""

    def __init__(self, model: nn.Module, bns: list[nn.Module]):
        super().__init__()
        self.model = model
        self._bns = bns  # a plain list: not registered twice

    def train(self, mode: bool = True):
        self.training = mode
        self.model.eval()
        for m in self._bns:
            m.train(mode)
        return self

    def forward(self, x):
        return self.model(x)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str | None = None) -> int:
    """Reset and re-estimate every BatchNorm's running statistics from `batches` (inputs only,
    moved to `device` when given; the model is moved there too). Returns the number of batches
    used. Under torch.distributed the statistics are averaged over ranks, so every rank ends with
    the same model. The model's train/eval mode is as before."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    if device is not None:
        model.to(device)
    was_training = model.training
    used = 0

    def counted() -> Iterator[torch.Tensor]:
        nonlocal used
        for x in batches:
            used += 1
            yield x

    update_bn(counted(), _OnlyBatchNormTrains(model, bns), device=device)
    if dist.is_available() and dist.is_initialized():
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf /= dist.get_world_size()
    model.train(was_training)
    return used
