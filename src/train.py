"""Train, project, decompose, evaluate: ``python -m src.train +exp=cifar10/struct_resnet56_a``.

This module is the entry point: Hydra composes the configuration (``conf/``), every value is
checked, the run directory is claimed, and :func:`src.pipeline.execute` runs the method stage by
stage (docs/method.md, "Training, projection, decomposition"):
1. train the model with task loss + lambda * structural loss (or, ``structure.route=direct``, the
   decomposed architecture from scratch), checkpointing every epoch;
2. evaluate the trained model; project every structured layer; optionally recalibrate BatchNorm
   on training batches; evaluate; decompose; evaluate again; save the deploy checkpoint;
3. write ``summary.json`` (final-epoch figures only, never best-epoch; its keys: src/summary.py)
   in the run directory.

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
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from src import provenance, runs
from src.config_check import ConfigError, check_command_line, validate
from src.summary import FILENAME as SUMMARY

# What this module needs before a run starts (the --help, the command-line and configuration checks,
# the run directory's refusals) imports no model, data or Lightning code: src.pipeline and the rest
# are imported when the run starts.

log = logging.getLogger("src.train")

# The files of a run directory (src/pipeline.py writes them under the same names).
CONFIG, HISTORY, LOG, CODE = "config.yaml", "metrics.csv", "train.log", "code.json"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# wandb's offline logger re-uses the run directory on resume; its warning about it is expected.
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


def is_user_error(e: BaseException) -> bool:
    """Errors a person fixes (configuration, run directory, data, model name, rules, diverged
    training): one message, no traceback. Anything else is a bug and keeps its traceback."""
    if isinstance(e, (ConfigError, runs.RunDirError, FileNotFoundError, FloatingPointError, ValueError, KeyError)):
        return True  # (src.data's DataRootError is a FileNotFoundError)
    data_errors = sys.modules.get("src.data.errors")  # not imported: the error cannot be one of its
    return data_errors is not None and isinstance(e, data_errors.CorruptFileError)


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _file_only(handler: logging.Handler, msg: str, *args) -> None:
    """A line for train.log alone (what the console has seen already)."""
    handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, msg, args, None))


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
    if last_ckpt.exists():
        check_code_unchanged(run_dir)
    return None


def check_code_unchanged(run_dir: Path) -> None:
    """Refuse (RunDirError) to resume a run whose training code (src/provenance.py: src/ and conf/,
    reports aside) differs from the code it started with, recorded in its code.json: one run
    never mixes two versions of the code. A run without code.json (older code) is not checked."""
    path = run_dir / CODE
    if not path.exists():
        return
    try:
        start = json.loads(path.read_text())
        sha, files = start["git_sha"], start["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise runs.RunDirError(f"{path} cannot be read ({type(e).__name__}: {e}): cannot tell which code this "
                               f"run started with; choose another hydra.run.dir") from None
    changes = provenance.code_changes(files, provenance.code_fingerprint())
    if changes:
        shown = runs.listing(changes, 15)
        raise runs.RunDirError(
            f"{run_dir} is an unfinished run that started on other training code (commit {sha[:12]}); "
            f"refusing to resume it on this code, which differs in {len(changes)} file(s):\n  {shown}\n"
            f"Nothing was changed on disk. Resume it from a checkout of the code it started with (e.g. "
            f"`git worktree add ../at-{sha[:7]} {sha.removesuffix('-dirty')}` and run the same command there), "
            f"or start it anew in another hydra.run.dir.")


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
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _attach_log_file(run_dir / LOG)
    if log.getEffectiveLevel() > logging.INFO:  # (composed without Hydra's logging setup, e.g. in a test)
        log.setLevel(logging.INFO)
    try:
        log.info("run %s: %s on %s, seed %s, %s epochs; overrides: %s", run_dir, cfg.model.name, cfg.data.name,
                 cfg.seed, cfg.trainer.max_epochs, " ".join(_overrides()) or "none")
        from tqdm.contrib.logging import logging_redirect_tqdm

        from src import pipeline
        from src.lit.progress import quiet_lightning

        quiet_lightning()
        with logging_redirect_tqdm([logging.getLogger()]):  # log lines on the console above the progress bars
            summary = pipeline.execute(cfg, run_dir, _overrides(), t_start)
        _file_only(handler, "%s", pipeline.report(summary, run_dir))  # (printed by execute)
        extra = {k: v for k, v in summary.items() if k.startswith(("official_test_acc", "robust_acc_")) and v is not None}
        if extra:
            _file_only(handler, "final model, further evaluations: %s", ", ".join(f"{k} {v}" for k, v in extra.items()))
        return summary
    except BaseException as e:  # the error and its traceback go into train.log, whatever main prints
        handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "run failed: %s: %s",
                                      (type(e).__name__, e), sys.exc_info()))
        e.log_file = run_dir / LOG
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _debug(cfg: DictConfig) -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(cfg.get("debug", False))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except Exception as e:
        if not is_user_error(e) or _debug(cfg):
            raise
        log_file = getattr(e, "log_file", None)
        where = f" (traceback in {log_file})" if log_file else ""
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}{where}\nSet HYDRA_FULL_ERROR=1 (or debug=true) to see the traceback.", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """The command: a mistyped experiment, config option or key is one ``error:`` line with the
    nearest valid names (exit status 2) before Hydra composes anything; then the run."""
    problem = check_command_line(sys.argv[1:], CONF_DIR)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    _main()


if __name__ == "__main__":
    main()
