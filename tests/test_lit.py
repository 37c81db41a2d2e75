"""The training recipe's parts (src/lit): LR schedules against the closed-form formulas they
replaced, weight-decay groups and optimizers, the lambda ramp, weight EMA, BatchNorm
recalibration against the hand-written version it replaced, and resuming (new and older
checkpoints)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from src.lit import ClassificationModule, build_optimizer, build_scheduler, lambda_at, recalibrate_bn
from src.lit.module import EMA_KEY
from src.lit.optim import fast_forward, migrate_legacy_optimizer_state


# ----------------------------------------------------------------------------- references
def old_factor(cfg: dict, total: int, max_epochs: int):
    """The LambdaLR factor src/lit/module.py used before torch's schedulers (verbatim)."""
    steps_per_epoch = max(1, total // max(1, max_epochs))
    warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
    schedule = cfg.get("schedule", "cosine")
    milestones = [int(m * steps_per_epoch) for m in cfg.get("milestones", [])]
    gamma = cfg.get("gamma", 0.1)
    power = cfg.get("power", 0.9)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            t = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if schedule == "steps":
            return gamma ** sum(step >= m for m in milestones)
        if schedule == "poly":
            return (1 - min(step, total - 1) / total) ** power
        if schedule == "exp":
            return gamma ** (step / steps_per_epoch / cfg.get("decay_every_epochs", 1))
        raise ValueError(schedule)

    return factor


def old_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """The SGD src/lit/module.py built before timm's factory (verbatim)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 and not cfg.get("decay_bn_and_bias", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9), nesterov=cfg.get("nesterov", False))


@torch.no_grad()
def old_recalibrate_bn(model: nn.Module, batches) -> int:
    """src/lit/bn.py before torch.optim.swa_utils.update_bn (verbatim, single process)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    for x in batches:
        model(x)
        used += 1
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)
    return used


def lr_trace(cfg: dict, total: int, max_epochs: int, steps: int | None = None) -> list[float]:
    """The learning rate of each optimizer step under build_scheduler."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg["lr"])
    sched = build_scheduler(opt, cfg, total, max_epochs)
    out = []
    for _ in range(total if steps is None else steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient: a no-op, in the order Lightning calls them
        sched.step()
    return out


def small_net(dropout: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Dropout(0.5) if dropout else nn.Identity(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


# ----------------------------------------------------------------------------- LR schedules
SCHEDULES = [
    # (config, total steps, epochs)
    ({"schedule": "cosine"}, 390 * 200, 200),  # the CIFAR-10 recipe: 200 epochs of 390 steps
    ({"schedule": "cosine", "warmup_epochs": 5}, 40 * 30, 30),
    ({"schedule": "cosine", "warmup_epochs": 0.5}, 7 * 10, 10),
    ({"schedule": "steps", "milestones": [30, 60, 80], "gamma": 0.1}, 10 * 90, 90),
    ({"schedule": "steps", "milestones": [3, 6, 6, 8], "gamma": 0.5, "warmup_epochs": 4}, 10 * 9, 9),
    ({"schedule": "poly", "power": 0.9}, 25 * 20, 20),
    ({"schedule": "poly", "power": 0.9, "warmup_epochs": 2}, 25 * 20, 20),
    ({"schedule": "exp", "gamma": 0.98, "decay_every_epochs": 1}, 30 * 40, 40),
    ({"schedule": "exp", "gamma": 0.97, "decay_every_epochs": 2.4, "warmup_epochs": 5}, 30 * 40, 40),
]


@pytest.mark.parametrize("cfg, total, epochs", SCHEDULES,
                         ids=[f"{c['schedule']}-warmup{c.get('warmup_epochs', 0)}" for c, _, _ in SCHEDULES])
def test_schedules_give_the_closed_form_learning_rates(cfg, total, epochs):
    """Every step's learning rate equals the closed-form schedule src/lit/module.py computed
    before (LambdaLR), to float rounding: CIFAR results do not change."""
    cfg = {"lr": 0.1, **cfg}
    got = lr_trace(cfg, total, epochs)
    factor = old_factor(cfg, total, epochs)
    want = [0.1 * factor(s) for s in range(total)]
    assert len(got) == total
    bad = [(s, g, w) for s, (g, w) in enumerate(zip(got, want)) if not math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12)]
    assert not bad, bad[:5]
    assert got[-1] < max(got)  # the schedule decays


def test_cosine_warmup_shape():
    cfg = {"lr": 1.0, "schedule": "cosine", "warmup_epochs": 2}
    got = lr_trace(cfg, 10 * 10, 10)
    assert got[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])  # linear warm-up to lr
    assert got[20] == pytest.approx(1.0) and got[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 79 / 80)))


@pytest.mark.parametrize("cfg", [{"schedule": "cosine", "warmup_epochs": 3}, {"schedule": "steps", "milestones": [2, 5]},
                                 {"schedule": "exp", "gamma": 0.9, "warmup_epochs": 1}, {"schedule": "poly"}])
def test_scheduler_state_resumes_exactly(cfg, tmp_path):
    """Optimizer + scheduler state saved mid-run (as Lightning's checkpoint does) and loaded into
    fresh ones continue the uninterrupted run's learning rates exactly."""
    cfg, total, epochs, cut = {"lr": 0.2, **cfg}, 12 * 8, 8, 41
    full = lr_trace(cfg, total, epochs)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg["lr"], momentum=0.9)
    sched = build_scheduler(opt, cfg, total, epochs)
    for _ in range(cut):
        opt.step()
        sched.step()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # what Lightning's restore reads
    opt2 = torch.optim.SGD([p], lr=cfg["lr"], momentum=0.9)
    sched2 = build_scheduler(opt2, cfg, total, epochs)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    resumed = []
    for _ in range(total - cut):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == full[cut:]


def test_unknown_schedule_is_refused():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="optim.schedule='linear'"):
        build_scheduler(opt, {"lr": 0.1, "schedule": "linear"}, 10, 1)


# ----------------------------------------------------------------------------- optimizers
def _decayed(opt: torch.optim.Optimizer) -> tuple[set[int], set[int]]:
    decayed, not_decayed = set(), set()
    for g in opt.param_groups:
        (decayed if g["weight_decay"] > 0 else not_decayed).update(id(p) for p in g["params"])
    return decayed, not_decayed


def test_weight_decay_groups():
    net = small_net()
    conv1, bn1, conv2, bn2, fc = net[0], net[1], net[4], net[5], net[9]
    cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    decayed, not_decayed = _decayed(build_optimizer(net, cfg))
    assert decayed == {id(conv1.weight), id(conv2.weight), id(fc.weight)}
    assert not_decayed == {id(conv1.bias), id(bn1.weight), id(bn1.bias), id(bn2.weight), id(bn2.bias), id(fc.bias)}
    assert all(g["weight_decay"] == 5e-4 for g in build_optimizer(net, cfg).param_groups if g["weight_decay"])
    # the same split as before
    assert (decayed, not_decayed) == _decayed(old_optimizer(net, cfg))
    # decay_bn_and_bias (HRNet's recipe): everything decays
    decayed, not_decayed = _decayed(build_optimizer(net, {**cfg, "decay_bn_and_bias": True}))
    assert decayed == {id(p) for p in net.parameters()} and not not_decayed
    # frozen parameters are left out
    net[0].weight.requires_grad_(False)
    assert id(net[0].weight) not in set().union(*_decayed(build_optimizer(net, cfg)))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_equal_the_former_sgd(nesterov):
    """timm's factory builds the same torch SGD as before (momentum, nesterov as configured,
    decay groups): identical parameters after a few steps."""
    torch.manual_seed(0)
    a = small_net(dropout=False)
    b = copy.deepcopy(a)
    cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": nesterov, "weight_decay": 5e-4}
    new, old = build_optimizer(a, cfg), old_optimizer(b, cfg)
    assert isinstance(new, torch.optim.SGD) and all(g["nesterov"] == nesterov for g in new.param_groups)
    for _ in range(4):
        x = torch.randn(6, 3, 8, 8)
        for net, opt in ((a, new), (b, old)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_rmsprop_is_tensorflows_and_adamw():
    from timm.optim import RMSpropTF

    net = small_net()
    opt = build_optimizer(net, {"name": "rmsprop", "lr": 0.01, "momentum": 0.9, "eps": 1e-3, "weight_decay": 1e-5})
    assert isinstance(opt, RMSpropTF)
    g = opt.param_groups[0]
    assert (g["alpha"], g["eps"], g["momentum"], g["lr"]) == (0.9, 1e-3, 0.9, 0.01)
    assert _decayed(opt) == _decayed(old_optimizer(net, {"lr": 0.1, "weight_decay": 1e-5}))
    opt = build_optimizer(net, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05})
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["lr"] == 1e-3
    with pytest.raises(ValueError, match="optim.name='lamb'"):
        build_optimizer(net, {"name": "lamb", "lr": 1e-3, "weight_decay": 0.0})


def test_an_older_checkpoint_resumes_identically():
    """An optimizer + LambdaLR state written before this change, migrated into the new optimizer
    and a fast-forwarded scheduler, continues exactly as the former code would have."""
    torch.manual_seed(0)
    cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1}
    total, epochs, cut = 6 * 4, 4, 9
    a = small_net(dropout=False)
    old = old_optimizer(a, cfg)
    old_sched = torch.optim.lr_scheduler.LambdaLR(old, old_factor(cfg, total, epochs))
    batches = [torch.randn(4, 3, 8, 8) for _ in range(total)]

    def step(net, opt, sched, x):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
        sched.step()

    for x in batches[:cut]:
        step(a, old, old_sched, x)
    b = copy.deepcopy(a)
    new = build_optimizer(b, cfg)
    sched = build_scheduler(new, cfg, total, epochs)
    fast_forward(sched, old_sched.state_dict()["last_epoch"])  # the order of StructuredModule.on_train_start
    saved = copy.deepcopy(old.state_dict())  # as a checkpoint holds it (no tensor shared with `old`)
    new.load_state_dict(migrate_legacy_optimizer_state(saved, b, cfg, new))
    assert len(new.state) == len(list(b.parameters()))  # every momentum buffer carried over
    assert new.param_groups[0]["lr"] == pytest.approx(old.param_groups[0]["lr"], rel=1e-12)
    for x in batches[cut:]:
        step(a, old, old_sched, x)
        step(b, new, sched, x)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------- lambda ramp
def test_lambda_ramp():
    assert lambda_at(2.0, 0, 0.0) == 2.0  # no ramp
    assert lambda_at(2.0, 1, 0.0) == 0.0
    assert lambda_at(2.0, 1, 0.25) == 0.5
    assert lambda_at(2.0, 2, 1.5) == 1.5
    assert lambda_at(2.0, 1, 3.0) == 2.0  # constant after the ramp


def test_current_lambda_follows_the_training_progress():
    module = ClassificationModule(small_net(), {"lr": 0.1, "weight_decay": 0.0}, lam=2.0, lam_ramp_epochs=2,
                                  num_classes=4)
    assert module.current_lambda() == 0.0  # not training yet
    module._trainer = SimpleNamespace(num_training_batches=10, current_epoch=1, global_step=15)
    assert module.current_lambda() == pytest.approx(2.0 * 1.5 / 2)  # epoch 1, batch 5 of 10
    module._trainer = SimpleNamespace(num_training_batches=10, current_epoch=0, global_step=3)
    assert module.current_lambda() == pytest.approx(2.0 * 0.3 / 2)
    module._trainer = SimpleNamespace(num_training_batches=10, current_epoch=4, global_step=47)
    assert module.current_lambda() == 2.0


# ----------------------------------------------------------------------------- weight EMA
def _module(ema_decay=None, **extra):
    """A module without dropout: Lightning does not restore the random state on resume."""
    optim = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", **extra}
    if ema_decay is not None:
        optim["ema_decay"] = ema_decay
    return ClassificationModule(small_net(dropout=False), optim, num_classes=4)


def test_ema_off_by_default_and_refused_out_of_range():
    m = _module()
    assert m.ema is None and m.eval_model is m.model and not m.adopt_ema()
    assert all(k.startswith("model.") for k in m.state_dict())
    with pytest.raises(ValueError, match=r"optim.ema_decay=1.5: must be a number >= 0 and < 1"):
        _module(1.5)


def test_ema_update_evaluation_adoption_and_checkpoint_keys():
    m = _module(0.75)
    assert m.ema is not None and m.eval_model is m.ema.module
    assert not any(p.requires_grad for p in m.ema.parameters())
    before = copy.deepcopy(m.ema.module.state_dict())
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
    m.ema.update(m.model, step=2)  # decay 0.75 from the second step on
    for k, v in m.ema.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * m.model.state_dict()[k], msg=k)
    # checkpoints: EMA beside the model's state_dict (which keeps only "model." keys), and back
    ckpt = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)
    assert ckpt[EMA_KEY] and all(k.startswith("model.") for k in ckpt["state_dict"])
    m2 = _module(0.75)
    m2.on_load_checkpoint(ckpt)
    m2.load_state_dict(ckpt["state_dict"])
    for k, v in m.ema.module.state_dict().items():
        assert torch.equal(v, m2.ema.module.state_dict()[k]), k
    # adopted: the model is the EMA
    ema_state = copy.deepcopy(m.ema.module.state_dict())
    assert m.adopt_ema() and m.ema is None and m.eval_model is m.model
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, ema_state[k]), k


class _Data(pl.LightningDataModule):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
        self.ds = TensorDataset(x, y)

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=16)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=32)


def _fit(module, root, epochs, ckpt_path=None):
    from pytorch_lightning.callbacks import ModelCheckpoint

    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(root),
                         callbacks=[ModelCheckpoint(dirpath=root, filename="e{epoch}", auto_insert_metric_name=False,
                                                    save_last=True, save_top_k=-1, every_n_epochs=1)])
    trainer.fit(module, datamodule=_Data(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("ema", [None, 0.9])
def test_training_with_and_without_ema_resumes(tmp_path, ema):
    """Fit 2 epochs; resume from its epoch-0 checkpoint for the second: the same model, EMA and
    learning rate (the scheduler's and the EMA's state travel in the checkpoint)."""
    torch.manual_seed(0)
    full = _module(ema)
    start = copy.deepcopy(full.state_dict())
    t_full = _fit(full, tmp_path / "full", 2)
    ckpt = torch.load(tmp_path / "full" / "e0.ckpt", weights_only=True)
    assert (EMA_KEY in ckpt) == (ema is not None)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    assert "_schedulers" not in ckpt["lr_schedulers"][0] and ckpt["lr_schedulers"][0]["last_epoch"] == 4
    resumed = _module(ema)
    t_res = _fit(resumed, tmp_path / "resumed", 2, ckpt_path=str(tmp_path / "full" / "e0.ckpt"))
    assert t_res.global_step == t_full.global_step == 8
    assert t_res.optimizers[0].param_groups[0]["lr"] == t_full.optimizers[0].param_groups[0]["lr"]
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, msg=k)
    if ema is not None:  # the EMA lags the trained weights
        w, e = full.model[0].weight, full.ema.module[0].weight
        assert not torch.allclose(w, e) and not torch.allclose(e, start["model.0.weight"])


# ----------------------------------------------------------------------------- BatchNorm recalibration
def test_recalibration_equals_the_former_implementation():
    """update_bn with only BatchNorm in training mode gives the running statistics the
    hand-written recalibration gave (dropout stays off), and restores modes and momenta."""
    torch.manual_seed(0)
    a = small_net()
    with torch.no_grad():  # statistics far from what the batches give, so a no-op would show
        for m in a.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(5.0)
                m.running_var.fill_(9.0)
    b = copy.deepcopy(a)
    a.eval()
    b.eval()
    batches = [torch.randn(8, 3, 8, 8) * 3 + 1 for _ in range(5)]
    assert recalibrate_bn(a, iter(batches)) == old_recalibrate_bn(b, iter(batches)) == 5
    bns = [(m, n) for m, n in zip(a.modules(), b.modules()) if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2
    for m, n in bns:
        assert torch.allclose(m.running_mean, n.running_mean, rtol=1e-6, atol=1e-7)
        assert torch.allclose(m.running_var, n.running_var, rtol=1e-6, atol=1e-7)
        assert int(m.num_batches_tracked) == int(n.num_batches_tracked) == 5
        assert m.momentum == n.momentum == 0.1 and not m.training
        assert not torch.allclose(m.running_mean, torch.full_like(m.running_mean, 5.0))
    assert not a.training and not any(m.training for m in a.modules())
    # a model in training mode stays in training mode; a model without BatchNorm is untouched
    a.train()
    recalibrate_bn(a, iter(batches[:1]))
    assert all(m.training for m in a.modules())
    assert recalibrate_bn(nn.Linear(2, 2), iter([torch.zeros(1, 2)])) == 0


class _LegacyModule(ClassificationModule):
    """The optimizer and LambdaLR schedule of the code before this change (as in old checkpoints)."""

    def configure_optimizers(self):
        opt = old_optimizer(self.model, self.optim_cfg)
        factor = old_factor(self.optim_cfg, self.trainer.estimated_stepping_batches, self.trainer.max_epochs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_a_run_killed_under_the_former_code_resumes(tmp_path):
    """A checkpoint written by the former optimizer + LambdaLR resumes under the new ones and ends
    where the former code would have ended."""
    optim = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
             "warmup_epochs": 1}
    torch.manual_seed(0)
    old = _LegacyModule(small_net(dropout=False), optim, num_classes=4)
    start = copy.deepcopy(old.state_dict())
    _fit(old, tmp_path / "old", 2)
    ckpt = torch.load(tmp_path / "old" / "e0.ckpt", weights_only=True)
    assert "lr_lambdas" in ckpt["lr_schedulers"][0]  # the former format
    new = ClassificationModule(small_net(dropout=False), optim, num_classes=4)
    new.load_state_dict(start)
    trainer = _fit(new, tmp_path / "new", 2, ckpt_path=str(tmp_path / "old" / "e0.ckpt"))
    assert trainer.global_step == 8 and len(trainer.optimizers[0].state) == len(list(new.model.parameters()))
    for k, v in old.state_dict().items():
        torch.testing.assert_close(new.state_dict()[k], v, rtol=1e-5, atol=1e-7, msg=k)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * old_factor(optim, 8, 2)(8), abs=1e-12)
