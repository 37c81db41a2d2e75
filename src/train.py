"""Train, project, decompose, evaluate: ``python -m src.train +exp=cifar10/struct_resnet56_a``.

One run does the whole method (METHOD.md section 4):
1. train the model with task loss + lambda * structural loss (or, ``structure.route=direct``, the
   decomposed architecture from scratch), checkpointing every epoch;
2. evaluate the trained model; project every structured layer; optionally recalibrate BatchNorm
   on training batches; evaluate; decompose; evaluate again; save the deploy checkpoint;
3. write ``summary.json`` (final-epoch figures only, never best-epoch) in the run directory.

Running the same command again resumes a killed run from ``<run dir>/checkpoints/last.ckpt``
(or reports the finished one). Hydra configs live in ``conf/``.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from src.lit import ClassificationModule, SegmentationModule, recalibrate_bn
from src.models import create_model, get_entry
from src.structured import complexity, decompose, project, structural_residuals, structured_layers

log = logging.getLogger("src.train")

# On resume the CSV logger appends to the existing metrics.csv (it rewrites the header, keeping
# the rows, when new keys appear); its "previous log files will be deleted" warning is wrong here.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")

SUMMARY = "summary.json"


def git_sha() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Timer(pl.Callback):
    """Training throughput (images/s over the training batches of this process, all ranks)."""

    def __init__(self):
        self.train_time, self.images, self._t0 = 0.0, 0, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self._t0 is not None:
            self.train_time += time.perf_counter() - self._t0
            self.images += batch[0].shape[0] * trainer.world_size


def build_datamodule(cfg: DictConfig):
    data_cfg = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "name"}
    return hydra.utils.instantiate(data_cfg, seed=cfg.seed)


def build_model(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    rules = OmegaConf.to_container(cfg.structure, resolve=True)
    extra = {"rules": rules.get("rules") or [], "exclude": rules.get("exclude") or []}
    model = create_model(cfg.model.name, num_classes=num_classes,
                         structure=extra if extra["rules"] else None, **(cfg.model.kwargs or {}))
    route = cfg.structure.route
    if route not in ("regularized", "direct"):
        raise ValueError(f"structure.route={route!r}: expected 'regularized' or 'direct'")
    if route == "direct":
        if not any(True for _ in structured_layers(model)):
            raise ValueError(f"structure.route=direct needs a structured model; '{cfg.model.name}' has no "
                             f"structured layer (use a struct_* model name or a structure= rule set)")
        model = decompose(model, reinit=True, tol=math.inf)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optim_cfg(cfg: DictConfig, global_batch: int) -> dict:
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    if "lr_per_256" in optim:
        optim["lr"] = optim.pop("lr_per_256") * global_batch / 256
    return optim


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list) -> pl.Trainer:
    from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger

    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    bar = tcfg.pop("progress_bar", "rich")
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                           save_last=True, save_top_k=1, every_n_epochs=1)
    callbacks = [ckpt, *callbacks]
    if bar == "rich":
        callbacks.append(RichProgressBar())
    elif bar == "simple":
        callbacks.append(TQDMProgressBar(refresh_rate=50))
    loggers = [CSVLogger(str(run_dir), name="", version="")]
    if cfg.logger.wandb:
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, save_dir=str(run_dir),
                                   name=cfg.run_name, offline=cfg.logger.offline,
                                   config=OmegaConf.to_container(cfg, resolve=True)))
    return pl.Trainer(**tcfg, callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir),
                      enable_progress_bar=bar != "none", enable_model_summary=False)


def evaluate(trainer: pl.Trainer, module, datamodule, prefix: str) -> dict[str, float]:
    module.eval_prefix = prefix
    trainer.test(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix + "/")}


def _pct(metrics: dict[str, float], key: str) -> float | None:
    return round(100 * metrics[key], 4) if key in metrics else None


def run(cfg: DictConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    summary_path, last_ckpt = run_dir / SUMMARY, run_dir / "checkpoints" / "last.ckpt"
    if summary_path.exists():
        if cfg.resume:
            log.info("run already complete: %s", summary_path)
            return json.loads(summary_path.read_text())
        raise FileExistsError(f"{run_dir} already holds a finished run ({SUMMARY}); choose another "
                              f"hydra.run.dir (or seed/tag) instead of overwriting it")
    if last_ckpt.exists() and not cfg.resume:
        raise FileExistsError(f"{last_ckpt} exists: pass resume=true to continue that run, or choose another "
                              f"hydra.run.dir; nothing is overwritten")
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    entry = get_entry(cfg.model.name)
    datamodule.setup("fit")  # validates the data root before any work; gives num_classes
    num_classes = datamodule.num_classes
    model = build_model(cfg, num_classes)
    if entry.task != datamodule.task:
        raise ValueError(f"model {cfg.model.name} is a {entry.task} model but data={cfg.data.name} is {datamodule.task}")
    module_cls = SegmentationModule if datamodule.task == "segmentation" else ClassificationModule
    regularized = cfg.structure.route == "regularized"
    timer = Timer()
    trainer = build_trainer(cfg, run_dir, [timer])
    global_batch = cfg.data.batch_size * trainer.world_size
    module = module_cls(model, build_optim_cfg(cfg, global_batch), lam=cfg.structure.lam if regularized else 0.0,
                        lam_ramp_epochs=cfg.structure.lam_ramp_epochs, num_classes=num_classes)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last_ckpt) if last_ckpt.exists() else None)

    metric = "miou" if datamodule.task == "segmentation" else "acc"
    residuals = structural_residuals(module.model)
    size = getattr(datamodule, "input_size", None) or entry.input_size
    cost = complexity(module.model, size)
    has_structure = any(True for _ in structured_layers(module.model))
    results = {"dense": evaluate(trainer, module, datamodule, "test_dense")}
    if has_structure:
        project(module.model)
        results["projected_raw"] = evaluate(trainer, module, datamodule, "test_projected_raw")
        if cfg.structure.bn_recalib:
            datamodule.setup("fit")
            recalibrate_bn(module.model, datamodule.calibration_batches(cfg.structure.bn_recalib_batches))
        results["projected"] = evaluate(trainer, module, datamodule, "test_projected")
        module.model = decompose(module.model, tol=cfg.structure.decompose_tol)
        results["decomposed"] = evaluate(trainer, module, datamodule, "test_decomposed")
    else:  # a dense baseline or the direct route: already the deploy form, one evaluation
        for stage in ("projected_raw", "projected", "decomposed"):
            results[stage] = {k.replace("test_dense/", f"test_{stage}/"): v for k, v in results["dense"].items()}
    deploy_params = sum(p.numel() for p in module.model.parameters())
    if deploy_params != cost.params_decomposed:
        raise RuntimeError(f"decomposed model has {deploy_params} params but complexity() reports "
                           f"{cost.params_decomposed}: counting and model disagree")

    summary: dict[str, Any] = {
        "model": cfg.model.name, "dataset": cfg.data.name, "route": cfg.structure.route, "tag": cfg.tag,
        "profile": cfg.profile,
        "seed": cfg.seed, "epochs": trainer.current_epoch, "max_epochs": cfg.trainer.max_epochs,
        "lambda": cfg.structure.lam if regularized else 0.0, "lambda_ramp_epochs": cfg.structure.lam_ramp_epochs,
        "bn_recalib": bool(cfg.structure.bn_recalib and has_structure),
        "train_subset": cfg.data.get("train_subset"), "test_subset": cfg.data.get("test_subset"),
    }
    for stage in ("dense", "projected_raw", "projected", "decomposed"):
        r = results[stage]
        summary[f"test_{metric}_{stage}"] = _pct(r, f"test_{stage}/{metric}")
        if metric == "acc" and f"test_{stage}/acc_exact" in r:
            summary[f"test_acc_{stage}_exact_subset"] = _pct(r, f"test_{stage}/acc_exact")
    summary.update({
        "params_dense": cost.params, "params_decomposed": cost.params_decomposed,
        "mults_dense": cost.mults, "mults_decomposed": cost.mults_decomposed,
        "adds_dense": cost.adds, "adds_decomposed": cost.adds_decomposed,
        "adds_decomposed_running": cost.adds_decomposed_running,
        "structural_residual_final": max(residuals.values()) if residuals else 0.0,
        "structural_residual_mean_final": sum(residuals.values()) / len(residuals) if residuals else 0.0,
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "train_images_per_s": round(timer.images / timer.train_time, 1) if timer.train_time else None,
        "device": str(trainer.strategy.root_device), "world_size": trainer.world_size,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "git_sha": git_sha(),
    })
    if metric == "acc":  # the key names of the contract (test_acc_decomposed_exact_subset etc.)
        summary["test_acc_decomposed_exact_subset"] = summary.get("test_acc_decomposed_exact_subset")
    if trainer.is_global_zero:
        torch.save({"model": cfg.model.name, "route": cfg.structure.route, "num_classes": num_classes,
                    "state_dict": module.model.state_dict()}, run_dir / "deploy.pt")
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        log.info("summary: %s", json.dumps(summary))
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
