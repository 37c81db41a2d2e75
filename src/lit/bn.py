"""BatchNorm recalibration after projection.

Projecting W onto the structured subspace changes every layer's output statistics a little, so
the running BN statistics collected during training no longer match. Re-estimating them on a
few training batches (train-mode forward, no gradient, cumulative average) restores them.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Reset and re-estimate every BatchNorm's running statistics from `batches` (inputs only).
    Returns the number of batches used. Under torch.distributed the statistics are averaged
    over ranks, so every rank ends with the same model."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
        m.train()
    used = 0
    for x in batches:
        model(x)
        used += 1
    if dist.is_available() and dist.is_initialized():
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf /= dist.get_world_size()
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)
    return used
