"""Optimizer and learning-rate schedule of a training recipe (the `optim` config group), built
from libraries: timm's optimizer factory and torch.optim.lr_scheduler.

Optimizer (`optim.name`), through ``timm.optim.create_optimizer_v2``:

- ``sgd``: torch.optim.SGD with `momentum` and `nesterov` (timm's "momentum" / "sgd");
- ``adamw``: torch.optim.AdamW (default betas and eps);
- ``rmsprop``: timm's RMSpropTF, TensorFlow's RMSProp (decay 0.9, `eps` inside the square root,
  mean-square initialised to one, learning rate inside the momentum), as the MobileNetV2 and
  EfficientNet papers train.

Weight decay `weight_decay` is not applied to BatchNorm weights and biases (every parameter with
ndim <= 1: timm's ``filter_bias_and_bn``) unless `decay_bn_and_bias: true`.

Schedule (`optim.schedule`), stepped once per optimizer step; `warmup_epochs` of linear warm-up
(step s < w: lr * (s + 1) / w) replace its first steps:

- ``cosine``: CosineAnnealingLR from the end of the warm-up to the last step, to 0;
- ``steps``: MultiStepLR, x `gamma` at each of `milestones` (epochs, counted from step 0);
- ``poly``: PolynomialLR, (1 - step / total) ** `power` (HRNet);
- ``exp``: ExponentialLR, x `gamma` every `decay_every_epochs` epochs, per step (counted from
  step 0, as TensorFlow's exponential_decay with the warm-up replacing its start).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as S

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler", "steps_per_epoch", "warmup_steps",
           "is_legacy_scheduler_state", "migrate_legacy_optimizer_state", "legacy_param_order", "fast_forward"]

# optim.name -> timm optimizer name
OPTIMIZERS = {"sgd": None, "adamw": "adamw", "rmsprop": "rmsproptf"}
SCHEDULES = ("cosine", "steps", "poly", "exp")


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer of `cfg` (an `optim` config as a dict, with `lr` resolved) over `model`'s
    trainable parameters, with timm's weight-decay groups."""
    from timm.optim import create_optimizer_v2

    name = cfg.get("name", "sgd")
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r}: expected {', '.join(OPTIMIZERS)}")
    kwargs: dict[str, Any] = {}
    if name == "sgd":
        # timm's "sgd" is Nesterov SGD, its "momentum" classical momentum: both torch.optim.SGD.
        opt = "sgd" if cfg.get("nesterov", False) else "momentum"
    else:
        opt = OPTIMIZERS[name]
    if name == "rmsprop":
        kwargs["eps"] = cfg.get("eps", 1e-3)
    return create_optimizer_v2(model, opt=opt, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                               momentum=cfg.get("momentum", 0.9),
                               filter_bias_and_bn=not cfg.get("decay_bn_and_bias", False), **kwargs)


def steps_per_epoch(total_steps: int, max_epochs: int) -> int:
    return max(1, total_steps // max(1, max_epochs))


def warmup_steps(cfg: dict[str, Any], per_epoch: int) -> int:
    return int(cfg.get("warmup_epochs", 0) * per_epoch)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int,
                    max_epochs: int) -> S.LRScheduler:
    """The per-step schedule of `cfg` over `total_steps` optimizer steps (`max_epochs` epochs)."""
    schedule = cfg.get("schedule", "cosine")
    per_epoch = steps_per_epoch(total_steps, max_epochs)
    warmup = warmup_steps(cfg, per_epoch)
    gamma, power = cfg.get("gamma", 0.1), cfg.get("power", 0.9)
    # `start`: the schedule's factor at the first step after the warm-up, for schedules counted
    # from step 0 (the warm-up replaces their first steps; the scheduler after it starts at 0).
    start = 1.0
    if schedule == "cosine":  # from the end of the warm-up
        main: S.LRScheduler = S.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup))
    elif schedule == "steps":
        milestones = [int(m * per_epoch) - warmup for m in cfg.get("milestones", [])]
        main = S.MultiStepLR(optimizer, milestones=sorted(milestones), gamma=gamma)
    elif schedule == "poly":
        # (1 - (w + k) / total) ** p = ((total - w) / total) ** p * (1 - k / (total - w)) ** p
        main = S.PolynomialLR(optimizer, total_iters=max(1, total_steps - warmup), power=power)
        start = (1 - warmup / total_steps) ** power
    elif schedule == "exp":
        every = per_epoch * cfg.get("decay_every_epochs", 1)
        main = S.ExponentialLR(optimizer, gamma=gamma ** (1 / every))
        start = gamma ** (warmup / every)
    else:
        raise ValueError(f"optim.schedule={schedule!r}: expected {', '.join(SCHEDULES)}")
    if warmup <= 0:
        return main
    main.base_lrs = [lr * start for lr in main.base_lrs]
    warm = S.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1))
    return S.SequentialLR(optimizer, [warm, main], milestones=[warmup])


# --------------------------------------------------------------------------- older checkpoints
# Checkpoints written before this module existed hold a LambdaLR (the schedule as one closed-form
# function) and an optimizer whose groups were [decayed, not decayed]. They resume through
# a fast-forwarded scheduler, then `migrate_legacy_optimizer_state` (StructuredModule.on_train_start).

def is_legacy_scheduler_state(state: dict) -> bool:
    return isinstance(state, dict) and "lr_lambdas" in state


def legacy_param_order(model: nn.Module, cfg: dict[str, Any]) -> list[nn.Parameter]:
    """The parameters in the order of the older optimizer's state: decayed ones, then the others."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and not cfg.get("decay_bn_and_bias", False) else decay).append(p)
    return decay + no_decay


def migrate_legacy_optimizer_state(old: dict, model: nn.Module, cfg: dict[str, Any],
                                   optimizer: torch.optim.Optimizer) -> dict:
    """`old` (an older checkpoint's optimizer state) re-indexed for `optimizer`'s groups: its
    per-parameter state (momentum buffers, ...) with `optimizer`'s group settings."""
    order = legacy_param_order(model, cfg)
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    if len(order) != len(index) or any(id(p) not in index for p in order):
        raise ValueError("the checkpoint's optimizer state does not fit this model's parameters")
    # the groups' settings are this optimizer's (learning rates: set by its scheduler, fast-forwarded first)
    groups, start = [], 0
    for g in optimizer.param_groups:
        n = len(g["params"])
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(start, start + n))})
        start += n
    state = {index[id(order[i])]: s for i, s in old["state"].items()}
    return {"state": state, "param_groups": groups}


def fast_forward(scheduler: S.LRScheduler, steps: int) -> None:
    """Step a freshly built `scheduler` `steps` times (no optimizer steps in between)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "lr_scheduler.step() before optimizer.step()"
        for _ in range(steps):
            scheduler.step()
