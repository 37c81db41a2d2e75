"""LightningModules: one training recipe (task loss + lambda * structural loss) for
classification and segmentation. The model itself is plain PyTorch (src/models)."""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from src.structured import structural_loss, structural_residuals, structured_layers

__all__ = ["StructuredModule", "ClassificationModule", "SegmentationModule", "lambda_at", "write_history",
           "read_history"]


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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = [dict(r) for r in self.history]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = [dict(r) for r in checkpoint.get("history", [])]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        cfg = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 and not cfg.get("decay_bn_and_bias", False) else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        lr = cfg["lr"]
        if cfg.get("name", "sgd") == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.get("momentum", 0.9), nesterov=cfg.get("nesterov", False))
        elif cfg["name"] == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr)
        elif cfg["name"] == "rmsprop":  # torch's RMSprop (eps outside the square root; not TF's RMSProp)
            opt = torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=cfg.get("eps", 1e-3), momentum=cfg.get("momentum", 0.9))
        else:
            raise ValueError(f"optim.name={cfg['name']!r}: expected sgd, adamw or rmsprop")
        total = self.trainer.estimated_stepping_batches
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs))
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
            if schedule == "poly":  # HRNet segmentation
                return (1 - min(step, total - 1) / total) ** power
            if schedule == "exp":  # per-epoch exponential decay (MobileNetV2 / EfficientNet)
                return gamma ** (step / steps_per_epoch / cfg.get("decay_every_epochs", 1))
            raise ValueError(f"optim.schedule={schedule!r}: expected cosine, steps, poly or exp")

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

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
        out = self.model(x)
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
        out = self.model(x)
        pred = out.argmax(1)
        self.miou(pred, y)
        self.pixel_acc(pred, y)
        self.log(f"{self.eval_prefix}/miou", self.miou, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{self.eval_prefix}/pixel_acc", self.pixel_acc, on_step=False, on_epoch=True)
