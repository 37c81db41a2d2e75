"""What a run shows and keeps: no promotional or deprecation noise, progress bars that say what
they evaluate, and a train.log that holds the run's stages with their figures, whether it
succeeds or fails."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from .conftest import ROOT
from .test_train import _env

STAGES = ("Test: trained model", "Test: projected (BatchNorm as trained)", "Test: projected", "Test: decomposed")


def _train(args: list[str], run_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.train", *args, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)


def test_a_run_says_what_it_evaluates_without_noise_and_logs_its_stages(tmp_path, cifar_npz):
    run_dir = tmp_path / "run"
    out = _train(["+exp=cifar10/struct_resnet20_a", f"data.root={cifar_npz}", "data.train_subset=128",
                  "data.test_subset=64", "data.batch_size=64", "data.eval_batch_size=64", "trainer.max_epochs=1",
                  "trainer.progress_bar=simple", "structure.bn_recalib_batches=1"], run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for noise in ("Tip", "litlogger", "LeafSpec", "deprecated", "Testing"):
        assert noise not in text, noise
    for label in STAGES:  # the bars (stdout) name the evaluation
        assert f"{label}: 100%" in text.replace("\r", "\n"), label
    log = (run_dir / "train.log").read_text()
    for part in (f"run {run_dir}: struct_resnet20_a on cifar10, seed 0, 1 epochs", "training: ", "epoch 1/1: train loss ",
                 "val acc ", "training done: 1 epochs", *(f"{label}: acc " for label in STAGES),
                 "finished struct_resnet20_a (regularized), seed 0, 1 epochs", "test acc %: trained "):
        assert part in log, part
    assert "ERROR" not in log and "Tip" not in log


def test_a_failed_run_keeps_its_stages_and_its_error(tmp_path):
    run_dir = tmp_path / "run"
    out = _train(["+exp=cifar10/resnet20", f"data.root={tmp_path / 'nodata'}", "data.download=false",
                  "trainer.progress_bar=none"], run_dir)
    assert out.returncode == 2 and "no CIFAR-10 at" in out.stderr, out.stderr[-2000:]
    log = (run_dir / "train.log").read_text()
    assert f"run {run_dir}: resnet20 on cifar10, seed 0, 200 epochs" in log
    assert "run failed: DataRootError: no CIFAR-10 at" in log and "Traceback" in log


def test_lightning_tips_and_the_leafspec_deprecation_are_filtered():
    from torch.utils._pytree import LeafSpec

    from src.lit.progress import quiet_lightning

    quiet_lightning()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    record = lambda msg: logger.makeRecord(logger.name, logging.INFO, __file__, 0, msg, (), None)  # noqa: E731
    assert not logger.filter(record("💡 Tip: For seamless cloud logging, try installing [litlogger](...)"))
    assert logger.filter(record("GPU available: False, used: False"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()  # (its filter goes in front of "always")
        LeafSpec()
    assert not [w for w in caught if "LeafSpec" in str(w.message)]


def test_an_epoch_row_is_logged_with_its_figures():
    from src.lit.module import epoch_figures

    row = {"epoch": 0, "train/loss_epoch": 1.23456, "train/acc": 0.5, "val/acc": 0.61234, "residual/mean": 0.0123,
           "lr": 0.1, "epoch_time_s": 61.4}
    assert epoch_figures(row) == ("train loss 1.2346, train acc 50.00 %, val acc 61.23 %, residual mean 1.23e-02, "
                                  "lr 0.1, time 61 s")
