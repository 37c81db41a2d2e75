"""LightningModules: one training recipe (task loss + lambda * structural loss) for
classification and segmentation. The model itself is plain PyTorch (src/models)."""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from timm.utils import ModelEmaV3
from torch import nn

from src.structured import structural_loss, structural_residuals, structured_layers

from .optim import (build_optimizer, build_scheduler, fast_forward, is_legacy_scheduler_state,
                    migrate_legacy_optimizer_state)

__all__ = ["StructuredModule", "ClassificationModule", "SegmentationModule", "lambda_at", "write_history",
           "read_history", "epoch_figures", "EMA_KEY"]

log = logging.getLogger("src.train")  # the run's train.log (src/train.py) keeps its lines

# the figures of an epoch's history row logged as the epoch ends: (key, name, format; "%": a fraction in percent)
EPOCH_FIGURES = (("train/loss_epoch", "train loss", "{:.4f}"), ("train/acc", "train acc", "%"), ("val/acc", "val acc", "%"),
                 ("val/miou", "val mIoU", "%"), ("residual/mean", "residual mean", "{:.2e}"), ("lr", "lr", "{:.4g}"),
                 ("epoch_time_s", "time", "{:.0f} s"))

EMA_KEY = "ema_state_dict"  # checkpoint key of the EMA weights (LightningModule names, "ema.module.*")
EMA_PREFIX = "ema."


def write_history(rows: list[dict], path: Path) -> None:
    """Write the per-epoch history as CSV (one row per epoch), atomically: a kill mid-write
    leaves the previous file."""
    path = Path(path)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in keys})
    os.replace(tmp, path)


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a history CSV (empty cells dropped), as floats; epoch and step as ints."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {k: float(v) for k, v in raw.items() if v not in (None, "")}
            for k in ("epoch", "step"):
                if k in row:
                    row[k] = int(row[k])
            rows.append(row)
    return rows


def epoch_figures(row: dict[str, float]) -> str:
    """The figures of one history row (:data:`EPOCH_FIGURES` that it has), for the log."""
    return ", ".join(f"{name} {100 * row[key]:.2f} %" if fmt == "%" else f"{name} {fmt.format(row[key])}"
                     for key, name, fmt in EPOCH_FIGURES if key in row)


def lambda_at(lam: float, ramp_epochs: float, epoch_progress: float) -> float:
    """Structural-loss weight: linear ramp from 0 over `ramp_epochs`, then constant `lam`."""
    if ramp_epochs <= 0:
        return lam
    return lam * min(1.0, epoch_progress / ramp_epochs)


class StructuredModule(pl.LightningModule):
    """Shared training logic. Subclasses define the task loss and the evaluation metrics."""

    def __init__(self, model: nn.Module, optim: dict, lam: float = 0.0, lam_ramp_epochs: float = 0.0,
                 num_classes: int = 10):
        super().__init__()
        self.model = model
        self.optim_cfg = dict(optim)
        self.lam, self.lam_ramp_epochs = lam, lam_ramp_epochs
        self.num_classes = num_classes
        self.has_structure = any(True for _ in structured_layers(model))
        self.eval_prefix = "val"  # "test_dense", "test_projected", ... during the final evaluations
        # Per-epoch history: one row per finished epoch, saved in every checkpoint (so a resumed run
        # keeps it) and, when `history_path` is set, rewritten there as CSV after every epoch.
        self.history: list[dict[str, float]] = []
        self.history_path: Path | None = None
        self._epoch_t0: float | None = None
        # Weight EMA (optim.ema_decay; timm's ModelEmaV3): evaluated during training, adopted as the
        # trained model afterwards (adopt_ema), saved in every checkpoint.
        decay = self.optim_cfg.get("ema_decay")
        self.ema: ModelEmaV3 | None = None
        if decay is not None:
            if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
                raise ValueError(f"optim.ema_decay={decay!r}: must be a number >= 0 and < 1, or null")
            self.ema = ModelEmaV3(model, decay=float(decay))
            self.ema.requires_grad_(False)
            self.ema.train(model.training)  # (Lightning sets eval mode for every evaluation)
        self._legacy: dict | None = None

    # ------------------------------------------------------------------ training
    def forward(self, x):
        return self.model(x)

    def task_loss(self, out, target):
        raise NotImplementedError

    def current_lambda(self) -> float:
        steps = max(1, self.trainer.num_training_batches) if self._trainer is not None else 1
        progress = self.current_epoch + (self.global_step % steps) / steps if self._trainer is not None else 0.0
        return lambda_at(self.lam, self.lam_ramp_epochs, progress)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        out = self.model(x)
        task = self.task_loss(out, y)
        loss = task
        if self.has_structure and self.lam > 0:
            lam = self.current_lambda()
            reg = structural_loss(self.model)
            loss = task + lam * reg
            self.log("train/structural_loss", reg.detach(), on_step=True, on_epoch=True)
            self.log("train/lambda", lam, on_step=False, on_epoch=True)
        if not torch.isfinite(loss):
            ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
            raise FloatingPointError(
                f"non-finite loss at epoch {self.current_epoch}, step {self.global_step}: task loss "
                f"{float(task.detach()):.4g}, total {float(loss.detach()):.4g}. Training stopped; the last good checkpoint "
                f"is kept ({ckpt}). Lower the learning rate or lambda, or check the data."
            )
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/task_loss", task.detach(), on_step=False, on_epoch=True)
        self.log_train_metrics(out.detach(), y)
        return loss

    def log_train_metrics(self, out, y) -> None:
        pass

    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        if self.has_structure:
            res = torch.tensor(list(structural_residuals(self.model).values()))
            self.log_dict({"residual/mean": res.mean(), "residual/max": res.max(), "residual/min": res.min()})
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.record_epoch()

    # ------------------------------------------------------------------ history
    def record_epoch(self) -> None:
        """Append this epoch's row (epoch-level metrics: training aggregates, validation,
        residuals, lr) to the history. Runs before the epoch's checkpoint is written (Lightning
        calls checkpoint callbacks after this hook), so checkpoint and history always agree."""
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()
                   if not k.endswith("_step") and not k.startswith("test")}
        row: dict[str, float] = {"epoch": self.current_epoch, "step": self.global_step}
        for key in sorted(metrics):
            if f"{key}_epoch" not in metrics:  # "x" duplicates "x_epoch" when a value is logged per step too
                row[key] = metrics[key]
        if self._epoch_t0 is not None:
            row["epoch_time_s"] = round(time.perf_counter() - self._epoch_t0, 3)
        self.history = [r for r in self.history if r["epoch"] < self.current_epoch] + [row]
        if self.history_path is not None and self.trainer.is_global_zero:
            write_history(self.history, self.history_path)
        if self.trainer.is_global_zero:
            log.info("epoch %d/%d: %s", self.current_epoch + 1, self.trainer.max_epochs, epoch_figures(row))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = [dict(r) for r in self.history]
        # the EMA weights travel beside the model's state_dict, which keeps only "model." keys
        # (src.export reads checkpoints as the model's state_dict)
        state = checkpoint["state_dict"]
        ema = {k: state.pop(k) for k in [k for k in state if k.startswith(EMA_PREFIX)]}
        if ema:
            checkpoint[EMA_KEY] = ema

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = [dict(r) for r in checkpoint.get("history", [])]
        ema = checkpoint.pop(EMA_KEY, None)
        state = checkpoint.get("state_dict")
        if self.ema is not None and state is not None:  # (a checkpoint without EMA: it starts from the model)
            state.update(ema or {f"{EMA_PREFIX}module.{k[len('model.'):]}": v for k, v in state.items()
                                 if k.startswith("model.")})
        # An older checkpoint (LambdaLR schedule, optimizer groups [decayed, not decayed]): its
        # optimizer and scheduler states are restored by on_train_start instead.
        schedulers = checkpoint.get("lr_schedulers") or []
        if schedulers and is_legacy_scheduler_state(schedulers[0]):
            self._legacy = {"optimizer": checkpoint["optimizer_states"][0], "step": schedulers[0]["last_epoch"]}
            checkpoint["optimizer_states"], checkpoint["lr_schedulers"] = [], []

    def _resume_legacy_checkpoint(self) -> None:
        if self._legacy is None:
            return
        opt = self.trainer.optimizers[0]
        fast_forward(self.trainer.lr_scheduler_configs[0].scheduler, self._legacy["step"])
        opt.load_state_dict(migrate_legacy_optimizer_state(self._legacy["optimizer"], self.model, self.optim_cfg, opt))
        self._legacy = None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        """Optimizer and per-step LR schedule of the `optim` config (src/lit/optim.py)."""
        opt = build_optimizer(self.model, self.optim_cfg)
        sched = build_scheduler(opt, self.optim_cfg, self.trainer.estimated_stepping_batches, self.trainer.max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # after every optimizer step, as timm's train.py (step: steps taken)
            self.ema.update(self.model, step=self.global_step + 1)

    def on_train_start(self) -> None:
        self._resume_legacy_checkpoint()

    # ------------------------------------------------------------------ weight EMA
    @property
    def eval_model(self) -> nn.Module:
        """The network evaluated: the EMA weights while they are kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def adopt_ema(self) -> bool:
        """Copy the EMA weights (parameters and BatchNorm statistics) into the model and drop the
        EMA; the model is then what was evaluated during training. False without an EMA."""
        if self.ema is None:
            return False
        self.model.load_state_dict(self.ema.module.state_dict())
        self.ema = None
        return True

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch, batch_idx):
        self.eval_step(batch)

    def test_step(self, batch, batch_idx):
        self.eval_step(batch)

    def eval_step(self, batch):
        raise NotImplementedError


class ClassificationModule(StructuredModule):
    def __init__(self, *args, label_smoothing: float = 0.0, **kw):
        super().__init__(*args, **kw)
        self.label_smoothing = label_smoothing
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(self.num_classes, average="micro")
        self.acc = torchmetrics.classification.MulticlassAccuracy(self.num_classes, average="micro")
        self.acc_exact = torchmetrics.classification.MulticlassAccuracy(self.num_classes, average="micro")

    def task_loss(self, out, target):
        return F.cross_entropy(out, target, label_smoothing=self.label_smoothing)

    def log_train_metrics(self, out, y):
        self.train_acc(out, y)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)

    def eval_step(self, batch):
        x, y = batch[0], batch[1]
        out = self.eval_model(x)
        self.acc(out, y)
        self.log(f"{self.eval_prefix}/acc", self.acc, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{self.eval_prefix}/loss", F.cross_entropy(out, y), on_step=False, on_epoch=True, sync_dist=True)
        if len(batch) > 2:  # the bit-exact subset of the offline CIFAR-10 test set
            m = batch[2]
            if m.any():
                self.acc_exact(out[m], y[m])
            self.log(f"{self.eval_prefix}/acc_exact", self.acc_exact, on_step=False, on_epoch=True)


class SegmentationModule(StructuredModule):
    def __init__(self, *args, ignore_index: int = 255, **kw):
        super().__init__(*args, **kw)
        self.ignore_index = ignore_index
        self.miou = torchmetrics.classification.MulticlassJaccardIndex(
            self.num_classes, average="macro", ignore_index=ignore_index)
        self.pixel_acc = torchmetrics.classification.MulticlassAccuracy(
            self.num_classes, average="micro", ignore_index=ignore_index)

    def task_loss(self, out, target):
        return F.cross_entropy(out, target, ignore_index=self.ignore_index)

    def eval_step(self, batch):
        x, y = batch[0], batch[1]
        out = self.eval_model(x)
        pred = out.argmax(1)
        self.miou(pred, y)
        self.pixel_acc(pred, y)
        self.log(f"{self.eval_prefix}/miou", self.miou, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{self.eval_prefix}/pixel_acc", self.pixel_acc, on_step=False, on_epoch=True)
