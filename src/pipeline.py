"""The pipeline of one training run, stage by stage (docs/method.md, "Training, projection,
decomposition"). ``src/train.py`` is its entry point: it validates the configuration, owns the run
directory (refusals, ``train.log``, one-message errors) and calls :func:`execute`.

Stages, each a function here:

1. :func:`setup`: data (the data root is checked before any work), model, LightningModule
   (src/lit), Trainer;
2. :func:`fit`: train with task loss + lambda * structural loss (or, ``structure.route=direct``,
   the decomposed architecture from scratch), checkpointing every epoch and resuming
   ``<run dir>/checkpoints/last.ckpt``; a new run's ``config.yaml`` / ``overrides.yaml``;
3. :func:`project_and_decompose`: adopt the EMA weights (``optim.ema_decay``); evaluate the
   trained model; project every structured layer; evaluate; recalibrate BatchNorm on training
   batches (``structure.bn_recalib``); evaluate; decompose; evaluate;
   then :func:`evaluate_final`: the final model on the official test set (when the primary set is a
   held-out part of the training set) and on corrupted copies of the primary set (``eval.*``);
4. :func:`save_deploy_file`: ``deploy.pt``, the decomposed model with its preprocessing;
5. :func:`summarize`: ``summary.json`` (schema: src/summary.py, final-epoch figures only) and the
   printed :func:`report`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from src import runs
from src import summary as schema
from src.compress import compress as compress_model
from src.init_from import init_model
from src.init_from import origin as init_origin
from src.lit import ClassificationModule, SegmentationModule, recalibrate_bn
from src.lit.module import StructuredModule
from src.models import create_model, get_entry
from src.models.registry import ModelEntry
from src.provenance import code_fingerprint, git_sha
from src.structured import complexity, decompose, project, structural_residuals, structured_layers

__all__ = ["SUMMARY", "CONFIG", "HISTORY", "LOG", "DEPLOY", "Timer", "Job", "StageMetrics", "build_datamodule",
           "build_model", "build_optim_cfg", "build_trainer", "evaluate", "setup", "fit", "project_and_decompose", "accuracy",
           "evaluate_final", "save_deploy_file", "summarize", "report", "execute"]

# One logger for the whole run: train.log's lines keep the name they always had.
log = logging.getLogger("src.train")

# The files of a run directory.
SUMMARY = schema.FILENAME
CONFIG = "config.yaml"
HISTORY = "metrics.csv"
LOG = "train.log"
DEPLOY = "deploy.pt"
CODE = "code.json"  # the commit and training-code fingerprint a run started with (src/provenance.py)


# --------------------------------------------------------------------------- building blocks
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
    from hydra.errors import InstantiationException

    data_cfg = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "name"}
    try:
        return hydra.utils.instantiate(data_cfg, seed=cfg.seed, _convert_="all")
    except InstantiationException as e:  # the datamodule's own message (a bad data.* value), not Hydra's wrapper
        if isinstance(e.__cause__, (ValueError, TypeError, FileNotFoundError)):
            raise e.__cause__ from None
        raise


def _extra_rules(cfg: DictConfig) -> dict[str, list]:
    rules = OmegaConf.to_container(cfg.structure, resolve=True)
    return {"rules": rules.get("rules") or [], "exclude": rules.get("exclude") or []}


def build_model(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    extra = _extra_rules(cfg)
    model = create_model(cfg.model.name, num_classes=num_classes,
                         structure=extra if extra["rules"] else None, **(cfg.model.kwargs or {}))
    loaded = init_model(model, cfg, cfg.model.name)  # model.init_from / model.pretrained (src/init_from.py)
    if loaded:
        log.info("initial weights: %s", loaded)
    method = (cfg.model.get("compress") or {}).get("method")
    if method:  # model.compress.* (src/compress): the dense model, its weights loaded, compressed
        model = compress_model(model, method, cfg.model.compress.mults_ratio, get_entry(cfg.model.name).input_size)
        info = model.compress_info
        log.info("compressed by %s to %.4f x the mults (target %s; knob %s)", method, info["achieved_mults_ratio"],
                 info["target_mults_ratio"], info["knob"])
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
    from pytorch_lightning.callbacks import ModelCheckpoint

    from src.lit.progress import LabelledRichProgressBar, LabelledTQDMProgressBar, StageLog

    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    bar = tcfg.pop("progress_bar", "rich")
    # Saved at the end of every training epoch, after the module has recorded the epoch's row of
    # the history (checkpoint callbacks run last), so a checkpoint always holds its full history.
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                           save_last=True, save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True)
    callbacks = [ckpt, *callbacks, StageLog()]  # StageLog: each stage and its figures in train.log
    if bar == "rich":  # the test bars say what they evaluate (trained / projected / decomposed)
        callbacks.append(LabelledRichProgressBar())
    elif bar == "simple":
        callbacks.append(LabelledTQDMProgressBar(refresh_rate=50))
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


# --------------------------------------------------------------------------- stages
@dataclass
class Job:
    """What the stages share: the configuration, the run directory and what setup() built."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str]
    datamodule: Any
    entry: ModelEntry
    num_classes: int
    module: StructuredModule
    trainer: pl.Trainer
    timer: Timer
    resumed: bool = False

    @property
    def task(self) -> str:
        return self.datamodule.task

    @property
    def metric(self) -> str:
        return schema.metric_of(self.task)

    @property
    def regularized(self) -> bool:
        return self.cfg.structure.route == "regularized"

    @property
    def input_size(self):
        return getattr(self.datamodule, "input_size", None) or self.entry.input_size

    @property
    def last_ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"


def setup(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> Job:
    """Stage 1: seed, data (its root validated here, before any work), model, module, trainer."""
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
    return Job(cfg, run_dir, overrides, datamodule, entry, num_classes, module, trainer, timer)


def fit(job: Job) -> None:
    """Stage 2: train (resuming the run's last checkpoint when there is one)."""
    cfg, trainer, module = job.cfg, job.trainer, job.module
    if trainer.is_global_zero and not job.last_ckpt.exists():  # a new run (or one with no checkpoint yet)
        (job.run_dir / CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (job.run_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(job.overrides)))
        start = {"git_sha": git_sha(), "files": code_fingerprint()}
        if cfg.model.get("init_from"):  # the bytes it starts from, and their run (read back into summary.json)
            start["init_from"] = init_origin(cfg.model.init_from)
        (job.run_dir / CODE).write_text(json.dumps(start, indent=1))
    job.resumed = job.last_ckpt.exists()
    if job.resumed:
        log.info("resuming %s", job.last_ckpt)
    trainer.fit(module, datamodule=job.datamodule, ckpt_path=str(job.last_ckpt) if job.resumed else None)
    if len(module.history) != trainer.current_epoch:
        raise RuntimeError(f"history holds {len(module.history)} epochs after {trainer.current_epoch}: "
                           f"{[r['epoch'] for r in module.history]}")


@dataclass
class StageMetrics:
    """What project_and_decompose() measured: per-stage test metrics, the trained model's
    structural residuals and cost, whether it has structured layers."""

    results: dict[str, dict[str, float]] = field(default_factory=dict)
    residuals: dict[str, float] = field(default_factory=dict)
    cost: Any = None
    has_structure: bool = False


def project_and_decompose(job: Job) -> StageMetrics:
    """Stage 3: evaluate the trained model, project, recalibrate BatchNorm, decompose, evaluating
    after each step; `job.module.model` is the decomposed model afterwards."""
    cfg, trainer, module, datamodule = job.cfg, job.trainer, job.module, job.datamodule
    if module.adopt_ema():
        log.info("using the EMA weights (optim.ema_decay=%s) as the trained model", cfg.optim.get("ema_decay"))
    out = StageMetrics(residuals=structural_residuals(module.model), cost=complexity(module.model, job.input_size),
                       has_structure=any(True for _ in structured_layers(module.model)))
    out.results["dense"] = evaluate(trainer, module, datamodule, "test_dense")
    if out.has_structure:
        project(module.model)
        out.results["projected_raw"] = evaluate(trainer, module, datamodule, "test_projected_raw")
        if cfg.structure.bn_recalib:
            datamodule.setup("fit")
            recalibrate_bn(module.model, datamodule.calibration_batches(cfg.structure.bn_recalib_batches),
                           device=trainer.strategy.root_device)
        out.results["projected"] = evaluate(trainer, module, datamodule, "test_projected")
        module.model = decompose(module.model, tol=cfg.structure.decompose_tol)
        out.results["decomposed"] = evaluate(trainer, module, datamodule, "test_decomposed")
    else:  # a dense baseline or the direct route: already the deploy form, one evaluation
        for stage in schema.STAGES[1:]:
            out.results[stage] = {k.replace("test_dense/", f"test_{stage}/"): v for k, v in out.results["dense"].items()}
    deploy_params = sum(p.numel() for p in module.model.parameters())
    if deploy_params != out.cost.params_decomposed:
        raise RuntimeError(f"decomposed model has {deploy_params} params but complexity() reports "
                           f"{out.cost.params_decomposed}: counting and model disagree")
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> dict[str, float | None]:
    """Top-1 accuracy in % of `model` over `loader`'s (x, y[, exact]) batches: 'all', and with a
    bit-exact mask 'exact' and 'jpeg' (the rest); 4 decimals, None where a part is empty."""
    was_training = model.training
    model.eval()
    correct = {"all": 0, "exact": 0, "jpeg": 0}
    count = dict.fromkeys(correct, 0)
    for batch in loader:
        x, y = batch[0], batch[1]
        hit = model(x).argmax(1) == y
        correct["all"] += int(hit.sum())
        count["all"] += len(y)
        if len(batch) > 2:
            m = batch[2]
            correct["exact"] += int(hit[m].sum())
            count["exact"] += int(m.sum())
            correct["jpeg"] += int(hit[~m].sum())
            count["jpeg"] += int((~m).sum())
    model.train(was_training)
    return {k: (round(100 * correct[k] / count[k], 4) if count[k] else None) for k in correct}


def evaluate_final(job: Job) -> dict[str, Any]:
    """The final model (decomposed, or the dense baseline) beyond the primary set: summary keys
    ``official_test_acc*`` (data.eval_set=holdout and eval.official_test) and ``robust_acc_*``
    (eval.robustness). Single-process, on rank 0; CIFAR-10 only (a datamodule with eval_arrays)."""
    cfg, dm = job.cfg, job.datamodule
    ev = cfg.get("eval") or {}
    out: dict[str, Any] = {}
    if not job.trainer.is_global_zero or not hasattr(dm, "eval_arrays"):
        return out
    from src.data.corruptions import CORRUPTIONS, corrupt

    model, device = job.module.model, job.trainer.strategy.root_device
    if dm.eval_set != "test" and ev.get("official_test", True):
        acc = accuracy(model, dm.eval_loader(*dm.eval_arrays("official"), device=device))
        out.update({"official_test_acc": acc["all"], "official_test_acc_exact": acc["exact"],
                    "official_test_acc_jpeg": acc["jpeg"]})
        if acc["exact"] is None:  # an exact copy of the test set (torchvision's): all of it is exact
            out["official_test_acc_exact"] = acc["all"]
    if ev.get("robustness", False):
        x, y, _ = dm.eval_arrays("primary")
        for name in CORRUPTIONS:
            t0 = time.perf_counter()
            out[f"robust_acc_{name}"] = accuracy(model, dm.eval_loader(corrupt(x, name, seed=0), y, device=device))["all"]
            log.info("robustness %s: %.2f %% (%.1f s)", name, out[f"robust_acc_{name}"], time.perf_counter() - t0)
    return out


def _compress_spec(cfg: DictConfig) -> dict | None:
    spec = cfg.model.get("compress") or {}
    if not spec.get("method"):
        return None
    return {"method": str(spec["method"]), "mults_ratio": float(spec["mults_ratio"])}


def save_deploy_file(cfg: DictConfig, path: Path, model: torch.nn.Module, datamodule, num_classes: int,
                     size, sha: str) -> None:
    """Stage 4: deploy.pt, the decomposed model with its preprocessing (src.deploy.load_deploy reads it)."""
    from src.deploy import default_preprocessing, save_deploy

    pre = default_preprocessing(cfg.model.name, num_classes)
    extra_rules = _extra_rules(cfg)
    save_deploy(path, model, model_name=cfg.model.name, route=cfg.structure.route, num_classes=num_classes,
                mean=pre["mean"], std=pre["std"], input_size=list(size),
                class_names=getattr(datamodule, "class_names", None) or pre["class_names"],
                crop_pct=(cfg.data.image_size / cfg.data.val_resize if "val_resize" in cfg.data else pre["crop_pct"]),
                model_kwargs=OmegaConf.to_container(cfg.model.kwargs, resolve=True) if cfg.model.kwargs else {},
                structure=extra_rules if extra_rules["rules"] else None,
                compress=_compress_spec(cfg), extra={"dataset": cfg.data.name, "git_sha": sha})


def _pct(metrics: dict[str, float], key: str) -> float | None:
    return round(100 * metrics[key], 4) if key in metrics else None


def summarize(job: Job, c: StageMetrics, t_start: float, final: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 5: the run's summary (src/summary.py gives every key's meaning and the order)."""
    cfg, trainer, metric = job.cfg, job.trainer, job.metric
    ident = runs.identity(cfg)
    values: dict[str, Any] = {
        "model": cfg.model.name, "dataset": cfg.data.name, "route": cfg.structure.route,
        "tag": str(cfg.tag), "profile": str(cfg.profile),  # labels (`tag=2` on the command line is an int)
        "config_hash": runs.config_hash(ident), "run_hash": runs.config_hash(ident, False),
        "overrides": job.overrides,
        "seed": cfg.seed, "epochs": trainer.current_epoch, "max_epochs": cfg.trainer.max_epochs,
        "lambda": cfg.structure.lam if job.regularized and c.has_structure else 0.0, "lambda_ramp_epochs": cfg.structure.lam_ramp_epochs,
        "bn_recalib": bool(cfg.structure.bn_recalib and c.has_structure),
        "train_subset": cfg.data.get("train_subset"), "test_subset": cfg.data.get("test_subset"),
    }
    init_from, method = cfg.model.get("init_from"), (cfg.model.get("compress") or {}).get("method")
    if init_from or cfg.model.get("pretrained"):
        values["init_from"] = str(init_from) if init_from else "pretrained"
    if method:
        uncompressed = create_model(cfg.model.name, num_classes=job.num_classes, **(cfg.model.kwargs or {}))
        values.update(method=method, target_mults_ratio=cfg.model.compress.mults_ratio, achieved_mults_ratio=round(
            c.cost.mults_decomposed / complexity(uncompressed, job.input_size).mults, 6))
    if hasattr(job.datamodule, "eval_set_name"):
        values["eval_set"] = job.datamodule.eval_set_name
        values["train_images"] = len(job.datamodule.arrays.train_x)
        if getattr(job.datamodule, "val_subset", None) is not None:
            values["val_subset"] = job.datamodule.val_subset
    values["precision"] = str(cfg.trainer.precision)
    values.update(final or {})
    for stage in schema.STAGES:
        r = c.results[stage]
        values[f"test_{metric}_{stage}"] = _pct(r, f"test_{stage}/{metric}")
        if metric == "acc" and f"test_{stage}/acc_exact" in r:
            values[f"test_acc_{stage}_exact_subset"] = _pct(r, f"test_{stage}/acc_exact")
    cost, residuals, timer, history = c.cost, c.residuals, job.timer, job.module.history
    values.update({
        "params_dense": cost.params, "params_decomposed": cost.params_decomposed,
        "mults_dense": cost.mults, "mults_decomposed": cost.mults_decomposed,
        "adds_dense": cost.adds, "adds_decomposed": cost.adds_decomposed,
        "adds_decomposed_running": cost.adds_decomposed_running,
        "structural_residual_final": max(residuals.values()) if residuals else 0.0,
        "structural_residual_mean_final": sum(residuals.values()) / len(residuals) if residuals else 0.0,
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "train_time_s": round(sum(r.get("epoch_time_s", 0.0) for r in history), 1),
        "resumed": job.resumed,
        "train_images_per_s": round(timer.images / timer.train_time, 1) if timer.train_time else None,
        "device": str(trainer.strategy.root_device), "world_size": trainer.world_size,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "git_sha": git_sha(),
    })
    if (job.run_dir / CODE).exists():
        start = json.loads((job.run_dir / CODE).read_text())
        values["git_sha_start"] = start["git_sha"]
        values.update(start.get("init_from") or {})  # init_from_sha256 / _run, taken when the run started
    return schema.assemble(job.task, values)


def report(s: dict[str, Any], run_dir: Path) -> str:
    """What a finished run prints: its files and key figures."""
    metric = "acc" if "test_acc_decomposed" in s else "miou"
    fig = lambda stage: "-" if s.get(f"test_{metric}_{stage}") is None else f"{s[f'test_{metric}_{stage}']:.2f}"
    if s.get("method"):  # a compression run: its "dense" figures are the compressed model's own
        what = f"{s['model']} compressed by {s['method']}, fine-tuned"
        cost = (f"  params {s['params_decomposed']:,}, mults {s['mults_decomposed']:,} "
                f"({s['achieved_mults_ratio']:.3f}x the uncompressed {s['model']}'s; target {s['target_mults_ratio']:.3f})")
    else:
        what = f"{s['model']} ({s['route']})"
        cost = (f"  params {s['params_decomposed']:,} ({s['params_decomposed'] / s['params_dense']:.2f}x dense), "
                f"mults {s['mults_decomposed']:,} ({s['mults_decomposed'] / s['mults_dense']:.2f}x dense)")
    return "\n".join([
        f"finished {what}, seed {s['seed']}, {s['epochs']} epochs, in {s['wall_time_s'] / 60:.1f} min",
        f"  test {metric} %: trained {fig('dense')}, projected {fig('projected')}, decomposed {fig('decomposed')}",
        cost,
        f"  run directory: {run_dir}",
        f"    {SUMMARY} (all figures), {HISTORY} (per epoch), {CONFIG}, {LOG}, checkpoints/last.ckpt",
        f"    {DEPLOY} (the decomposed model; load it with src.deploy.load_deploy)",
    ])


def _close_loggers(trainer: pl.Trainer) -> None:
    """Finish this run's wandb run (its offline files are complete, and a later run in the same
    process starts its own instead of appending to this one)."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
            logger.experiment.finish()


def execute(cfg: DictConfig, run_dir: Path, overrides: list[str], t_start: float) -> dict[str, Any]:
    """Every stage of a run whose configuration and directory src.train has accepted; returns
    the summary (written, with deploy.pt, by rank 0)."""
    job = setup(cfg, run_dir, overrides)
    try:
        fit(job)
        measured = project_and_decompose(job)
        summary = summarize(job, measured, t_start, evaluate_final(job))
    finally:
        _close_loggers(job.trainer)
    if job.trainer.is_global_zero:
        save_deploy_file(cfg, run_dir / DEPLOY, job.module.model, job.datamodule, job.num_classes, job.input_size,
                         summary["git_sha"])
        schema.write(run_dir / SUMMARY, summary)
        log.debug("summary: %s", json.dumps(summary))
        print(report(summary, run_dir), flush=True)
    return summary
