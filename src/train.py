"""Train, project, decompose, evaluate: ``python -m src.train +exp=cifar10/struct_resnet56_a``.

One run does the whole method (docs/method.md, "Training, projection, decomposition"):
1. train the model with task loss + lambda * structural loss (or, ``structure.route=direct``, the
   decomposed architecture from scratch), checkpointing every epoch;
2. evaluate the trained model; project every structured layer; optionally recalibrate BatchNorm
   on training batches; evaluate; decompose; evaluate again; save the deploy checkpoint;
3. write ``summary.json`` (final-epoch figures only, never best-epoch) in the run directory.

Running the same command again resumes a killed run from ``<run dir>/checkpoints/last.ckpt``,
with its per-epoch history (``metrics.csv``, one row per epoch, kept in every checkpoint), or
reports the finished one. A command whose configuration differs from the one stored in the run
directory is refused before anything is written (src/runs.py); every value is validated first
(src/config_check.py). User errors (config, data, model name, rules, a non-finite loss) print one
message and exit with status 2; ``HYDRA_FULL_ERROR=1`` or ``debug=true`` shows the traceback, which
the run's ``train.log`` keeps in any case. Hydra configs live in ``conf/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from src import runs
from src.config_check import ConfigError, validate
from src.data.errors import CorruptFileError, DataRootError
from src.lit import ClassificationModule, SegmentationModule, recalibrate_bn
from src.models import create_model, get_entry
from src.provenance import git_sha
from src.structured import complexity, decompose, project, structural_residuals, structured_layers

log = logging.getLogger("src.train")

# wandb's offline logger re-uses the run directory on resume; its warning about it is expected.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")

SUMMARY = "summary.json"
CONFIG = "config.yaml"
HISTORY = "metrics.csv"
LOG = "train.log"
# Errors a person fixes (configuration, run directory, data, model name, rules, diverged training):
# one message, no traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, runs.RunDirError, DataRootError, CorruptFileError, FileNotFoundError,
               FloatingPointError, ValueError, KeyError)


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

    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    bar = tcfg.pop("progress_bar", "rich")
    # Saved at the end of every training epoch, after the module has recorded the epoch's row of
    # the history (checkpoint callbacks run last), so a checkpoint always holds its full history.
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                           save_last=True, save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True)
    callbacks = [ckpt, *callbacks]
    if bar == "rich":
        callbacks.append(RichProgressBar())
    elif bar == "simple":
        callbacks.append(TQDMProgressBar(refresh_rate=50))
    loggers = []  # the per-epoch CSV history is written by the module (metrics.csv)
    if cfg.logger.wandb:
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, save_dir=str(run_dir),
                                   name=cfg.run_name, offline=cfg.logger.offline,
                                   config=OmegaConf.to_container(cfg, resolve=True)))
    return pl.Trainer(**tcfg, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir),
                      enable_progress_bar=bar != "none", enable_model_summary=False)


def evaluate(trainer: pl.Trainer, module, datamodule, prefix: str) -> dict[str, float]:
    module.eval_prefix = prefix
    trainer.test(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix + "/")}


def _pct(metrics: dict[str, float], key: str) -> float | None:
    return round(100 * metrics[key], 4) if key in metrics else None


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Check everything that could refuse this command, writing nothing: values, run identity,
    finished / existing runs. Returns the finished run's summary when there is nothing to do."""
    validate(cfg)
    ident = runs.identity(cfg)
    runs.check_run_dir(run_dir, ident, CONFIG)
    summary_path, last_ckpt = run_dir / SUMMARY, run_dir / "checkpoints" / "last.ckpt"
    if summary_path.exists():
        if cfg.resume:
            return json.loads(summary_path.read_text())
        raise runs.RunDirError(f"{run_dir} already holds a finished run ({SUMMARY}); choose another "
                               f"hydra.run.dir (or seed/tag) instead of overwriting it")
    if last_ckpt.exists() and not cfg.resume:
        raise runs.RunDirError(f"{last_ckpt} exists: pass resume=true to continue that run, or choose another "
                               f"hydra.run.dir; nothing is overwritten")
    return None


def _overrides() -> list[str]:
    try:
        return list(hydra.core.hydra_config.HydraConfig.get().overrides.task)
    except Exception:  # composed outside a Hydra job
        return []


def run(cfg: DictConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    try:
        finished = prepare_run_dir(cfg, run_dir)
    except Exception:
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # Hydra creates the directory before any check: leave no trace of a refusal
        raise
    if finished is not None:
        log.info("run already complete: %s (same configuration; nothing to do)", run_dir / SUMMARY)
        return finished
    summary_path, last_ckpt = run_dir / SUMMARY, run_dir / "checkpoints" / "last.ckpt"
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _attach_log_file(run_dir / LOG)
    try:
        return _train_and_deploy(cfg, run_dir, summary_path, last_ckpt, t_start)
    except BaseException as e:  # the error and its traceback go into train.log, whatever main prints
        handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "run failed: %s: %s",
                                      (type(e).__name__, e), sys.exc_info()))
        e.log_file = run_dir / LOG
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _train_and_deploy(cfg: DictConfig, run_dir: Path, summary_path: Path, last_ckpt: Path,
                      t_start: float) -> dict[str, Any]:
    ident = runs.identity(cfg)
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
    module.history_path = run_dir / HISTORY
    if trainer.is_global_zero and not last_ckpt.exists():  # a new run (or one with no checkpoint yet)
        (run_dir / CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(_overrides())))
    resumed = last_ckpt.exists()
    if resumed:
        log.info("resuming %s", last_ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last_ckpt) if resumed else None)
    if len(module.history) != trainer.current_epoch:
        raise RuntimeError(f"history holds {len(module.history)} epochs after {trainer.current_epoch}: "
                           f"{[r['epoch'] for r in module.history]}")

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
        "profile": cfg.profile, "config_hash": runs.config_hash(ident), "run_hash": runs.config_hash(ident, False),
        "overrides": _overrides(),
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
        "train_time_s": round(sum(r.get("epoch_time_s", 0.0) for r in module.history), 1),
        "resumed": resumed,
        "train_images_per_s": round(timer.images / timer.train_time, 1) if timer.train_time else None,
        "device": str(trainer.strategy.root_device), "world_size": trainer.world_size,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "git_sha": git_sha(),
    })
    if metric == "acc":  # the key names of the contract (test_acc_decomposed_exact_subset etc.)
        summary["test_acc_decomposed_exact_subset"] = summary.get("test_acc_decomposed_exact_subset")
    if trainer.is_global_zero:
        save_deploy_file(cfg, run_dir / "deploy.pt", module.model, datamodule, num_classes, size, summary["git_sha"])
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        log.debug("summary: %s", json.dumps(summary))
        print(report(summary, run_dir), flush=True)
    return summary


def save_deploy_file(cfg: DictConfig, path: Path, model: torch.nn.Module, datamodule, num_classes: int,
                     size, sha: str) -> None:
    """deploy.pt: the decomposed model with its preprocessing (src.deploy.load_deploy reads it)."""
    from src.deploy import default_preprocessing, save_deploy

    pre = default_preprocessing(cfg.model.name, num_classes)
    rules = OmegaConf.to_container(cfg.structure, resolve=True)
    extra_rules = {"rules": rules.get("rules") or [], "exclude": rules.get("exclude") or []}
    save_deploy(path, model, model_name=cfg.model.name, route=cfg.structure.route, num_classes=num_classes,
                mean=pre["mean"], std=pre["std"], input_size=list(size),
                class_names=getattr(datamodule, "class_names", None) or pre["class_names"],
                crop_pct=(cfg.data.image_size / cfg.data.val_resize if "val_resize" in cfg.data else pre["crop_pct"]),
                model_kwargs=OmegaConf.to_container(cfg.model.kwargs, resolve=True) if cfg.model.kwargs else {},
                structure=extra_rules if extra_rules["rules"] else None,
                extra={"dataset": cfg.data.name, "git_sha": sha})


def report(s: dict[str, Any], run_dir: Path) -> str:
    """What a finished run prints: its files and key figures."""
    metric = "acc" if "test_acc_decomposed" in s else "miou"
    fig = lambda stage: "-" if s.get(f"test_{metric}_{stage}") is None else f"{s[f'test_{metric}_{stage}']:.2f}"
    return "\n".join([
        f"finished {s['model']} ({s['route']}, seed {s['seed']}, {s['epochs']} epochs) in {s['wall_time_s'] / 60:.1f} min",
        f"  test {metric} %: trained {fig('dense')}, projected {fig('projected')}, decomposed {fig('decomposed')}",
        f"  params {s['params_decomposed']:,} ({s['params_decomposed'] / s['params_dense']:.2f}x dense), "
        f"mults {s['mults_decomposed']:,} ({s['mults_decomposed'] / s['mults_dense']:.2f}x dense)",
        f"  run directory: {run_dir}",
        f"    {SUMMARY} (all figures), {HISTORY} (per epoch), {CONFIG}, {LOG}, checkpoints/last.ckpt",
        f"    deploy.pt (the decomposed model; load it with src.deploy.load_deploy)",
    ])


def _debug(cfg: DictConfig) -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(cfg.get("debug", False))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except USER_ERRORS as e:
        if _debug(cfg):
            raise
        log_file = getattr(e, "log_file", None)
        where = f" (traceback in {log_file})" if log_file else ""
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}{where}\nSet HYDRA_FULL_ERROR=1 (or debug=true) to see the traceback.", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
