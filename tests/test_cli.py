"""The training command's first answers: --help and a mistyped experiment, option or key come
before any model, data or Lightning code is imported, a typo as one `error:` line with the nearest
valid names (exit status 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from src.config_check import check_command_line

from .conftest import ROOT

CONF = ROOT / "conf"
HEAVY = ("torch", "timm", "torchvision", "pytorch_lightning")

# src.train as `python -m src.train <args>` runs it, then which heavy packages were imported
_PROBE = ("import runpy, sys\nsys.argv = ['src.train', *sys.argv[1:]]\ntry:\n"
          "    runpy.run_module('src.train', run_name='__main__')\nexcept SystemExit as e:\n"
          "    code = e.code\nelse:\n    code = 0\n"
          f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\nsys.exit(code)")


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, line", [
    (["+exp=cifar10/struct_resnt20_a"],
     "error: +exp=cifar10/struct_resnt20_a: no experiment 'cifar10/struct_resnt20_a' "
     "(conf/exp/cifar10/struct_resnt20_a.yaml); nearest: cifar10/struct_resnet20_a, "),
    (["+exp=cifar10/struct_resnet20_a", "trainer.max_epoch=1"],
     "error: trainer.max_epoch=1: no key trainer.max_epoch in the configuration; nearest: trainer.max_epochs"),
])
def test_a_typo_is_one_error_line_with_the_nearest_names_before_any_heavy_import(args, line):
    out = _train(*args, "hydra.run.dir=/nonexistent/never")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(line) and out.stderr.count("\n") == 1, out.stderr
    assert "+trainer" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr
    assert "HEAVY []" in out.stdout


def test_help_answers_without_importing_the_model_zoo():
    out = _train("--help")
    assert out.returncode == 0, out.stderr
    assert "python -m src.train +exp=<dataset>/<experiment>" in out.stdout and "struct_resnet20_a" in out.stdout
    assert "HEAVY []" in out.stdout


def test_a_value_error_is_reported_before_any_heavy_import(tmp_path):
    """Out-of-range values are refused by src/config_check.py before the run imports its code."""
    out = _train("+exp=cifar10/resnet20", "trainer.max_epochs=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2 and "trainer.max_epochs=0: must be an integer >= 1" in out.stderr, out.stderr
    assert "HEAVY []" in out.stdout and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, expected", [
    (["optim=cifar_sdg"], "optim=cifar_sdg: no optim option 'cifar_sdg' (conf/optim/cifar_sdg.yaml); nearest: cifar_sgd"),
    (["exp=cifar10/resnet20"], "exp=cifar10/resnet20: exp is not chosen by default, so it is added: +exp=cifar10/resnet20"),
    (["+exp=cifar10/resnet20", "+trainer.max_epochs=3"],
     "+trainer.max_epochs=3: trainer.max_epochs is already in the configuration: set it without the +, "
     "trainer.max_epochs=3"),
    (["+exp=cifar10/resnet20", "strucure.lam=1"], "strucure.lam=1: no key strucure.lam in the configuration; "
                                                   "nearest: structure.lam"),
    (["+exp=cifar10/resnet20", "hydra.run.dirr=x"], "hydra.run.dirr=x: no key hydra.run.dirr in the configuration; "
                                                     "nearest: hydra.run.dir"),
    (["+exp=cifar10/resnet20", "trainer.max_epochs=[1"], "trainer.max_epochs=[1: not an override key=value"),
    (["+exp=cifar10/resnet20", "data.nonsense.x=1"], "data.nonsense.x=1: no key data.nonsense.x in the configuration "
                                                      "(data has: _target_, batch_size,"),
])
def test_command_line_problems_name_the_argument_and_what_fits(args, expected):
    assert check_command_line(args, CONF).startswith(expected)


@pytest.mark.parametrize("args", [
    [], ["+exp=cifar10/resnet20"], ["--help"], ["-m", "+exp=cifar10/resnet20", "seed=0,1"],
    ["+exp=cifar10/compress/prune_l1_a", "model.init_from=x.pt", "trainer.max_epochs=5", "optim.lr=0.01"],
    ["+exp=cifar10/struct_resnet20_a", "seed=1", "profile=long", "data.root=d", "hydra.run.dir=runs/x",
     "data.holdout=[45000,50000]", "+data.val_subset=1000", "tag=_ep30", "structure.lam=0.1"],
])
def test_valid_command_lines_pass(args):
    assert check_command_line(args, CONF) is None


def test_the_run_directory_file_names_agree_with_the_pipeline():
    """src.train names a run directory's files without importing src.pipeline (which imports the
    model zoo): the same names."""
    from src import pipeline, train

    assert (train.CONFIG, train.HISTORY, train.LOG, train.CODE, train.SUMMARY) == (
        pipeline.CONFIG, pipeline.HISTORY, pipeline.LOG, pipeline.CODE, pipeline.SUMMARY)
