"""`make gpu-smoke`, the first thing a lent GPU runs, exercised here on the CPU (`--device cpu --quick`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT


def test_gpu_smoke_runs_on_cpu_and_reports_every_check(cifar_npz, tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "-m", "experiments.gpu_smoke", "--device", "cpu", "--quick",
                           "--data", str(cifar_npz), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    res = json.loads((out / "gpu_smoke.json").read_text())
    assert res["passed"] and res["device"] == "cpu"
    assert res["exactness"] and all(r["rel_err_float64"] <= 1e-10 and r["rel_err_float32"] <= 1e-4
                                    for r in res["exactness"])
    assert res["epoch"]["exit"] == 0 and res["epoch"]["device"] == "cpu"
    assert {r["variant"] for r in res["speed"]} == {"a", "b"} and all(r["dense_ms"] > 0 for r in res["speed"])
    md = (out / "gpu_smoke.md").read_text()
    assert "Result: PASS" in md and "## Speed pairs" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_gpu_smoke_without_a_gpu_says_so(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.gpu_smoke", "--device", "cuda", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "torch sees no GPU here" in proc.stderr and "Traceback" not in proc.stderr
