"""What a run shows while it runs: progress bars that say what they evaluate, each stage and its
figures logged (the run's ``train.log`` keeps them), and none of Lightning's promotional or
deprecation lines."""

from __future__ import annotations

import logging
import sys
import warnings

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, convert_inf

__all__ = ["STAGE_LABELS", "stage_label", "LabelledTQDMProgressBar", "LabelledRichProgressBar", "StageLog",
           "quiet_lightning"]

# One logger for the whole run: train.log's lines keep the name they always had.
log = logging.getLogger("src.train")

# What an evaluation measures, by the module's eval_prefix (src/pipeline.py sets it; the summary's
# test_<metric>_<stage> keys, src/summary.py)
STAGE_LABELS = {
    "val": "Validation",
    "test_dense": "Test: trained model",
    "test_projected_raw": "Test: projected (BatchNorm as trained)",
    "test_projected": "Test: projected",
    "test_decomposed": "Test: decomposed",
}
# metrics shown in percent (fractions as logged), the rest as they are
_PERCENT = ("acc", "acc_exact", "miou", "pixel_acc")


def stage_label(module: pl.LightningModule | None) -> str:
    prefix = getattr(module, "eval_prefix", None) or "test"
    return STAGE_LABELS.get(prefix, f"Test: {prefix.removeprefix('test_')}")


class LabelledTQDMProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars, the test bars named by what they evaluate (no "Testing DataLoader 0")."""

    @property
    def test_description(self) -> str:
        return stage_label(self.trainer.lightning_module)

    def init_test_tqdm(self) -> Tqdm:  # Lightning's, named from the start
        return Tqdm(desc=self.test_description, position=2 * self.process_position, disable=self.is_disabled,
                    leave=True, dynamic_ncols=True, file=sys.stdout, bar_format=self.BAR_FORMAT)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        bar = self.test_progress_bar
        bar.reset()
        bar.total, bar.initial = convert_inf(self.total_test_batches_current_dataloader), 0
        several = len(trainer.test_dataloaders or []) > 1 if isinstance(trainer.test_dataloaders, list) else False
        bar.set_description(self.test_description + (f" (data loader {dataloader_idx})" if several else ""))


class LabelledRichProgressBar(RichProgressBar):
    """Lightning's rich bars, the test bars named by what they evaluate."""

    @property
    def test_description(self) -> str:
        return stage_label(self.trainer.lightning_module)


def _figures(metrics: dict[str, float], prefix: str) -> str:
    parts = []
    for key in sorted(k for k in metrics if k.startswith(prefix + "/")):
        name, value = key.split("/", 1)[1], float(metrics[key])
        parts.append(f"{name} {100 * value:.2f} %" if name in _PERCENT else f"{name} {value:.4f}")
    return ", ".join(parts) or "no figures"


class StageLog(pl.Callback):
    """Logs (INFO, logger ``src.train``) the start and end of training and every test evaluation
    with its figures; the epochs are logged by the module as their history rows are recorded."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info("training: %s, epochs %d-%d of %d, %s batches per epoch, on %s", type(pl_module.model).__name__,
                 trainer.current_epoch + 1, trainer.max_epochs, trainer.max_epochs, trainer.num_training_batches,
                 trainer.strategy.root_device)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info("training done: %d epochs", trainer.current_epoch)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        prefix = getattr(pl_module, "eval_prefix", "test")
        log.info("%s: %s", stage_label(pl_module), _figures(trainer.callback_metrics, prefix))


class _NoTips(logging.Filter):
    """Drops Lightning's promotional lines ("💡 Tip: ... litlogger ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.lstrip().startswith(("💡", "Tip:")) or "litlogger" in msg.lower())


def quiet_lightning() -> None:
    """No promotional or deprecation noise in a run's output: Lightning's "Tip" lines and the
    ``LeafSpec`` deprecation warning its pytree helper triggers in torch (not ours to fix)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
