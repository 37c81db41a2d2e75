"""experiments/compare_latency.py: the comparison's deployed architectures, timed (quick form)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from experiments import compare_latency

from .conftest import ROOT


def test_deployed_architectures_meet_their_targets():
    from src.structured import complexity

    models = compare_latency.deployed_models(methods=("svd_weight", "structured"), targets=("a",))
    assert list(models) == ["resnet20", "struct_resnet20_a", "svd_weight_a", "structured_a"]
    dense = complexity(models["resnet20"], (3, 32, 32)).mults
    for name in ("svd_weight_a", "structured_a"):
        ratio = complexity(models[name], (3, 32, 32)).mults / dense
        assert ratio == pytest.approx(compare_latency.target_ratio(name.rsplit("_", 1)[0], "a"), rel=0.02), name
    # the structured method at target A is the A rule set: the same deployed cost as struct_resnet20_a
    assert complexity(models["structured_a"], (3, 32, 32)).mults == complexity(models["struct_resnet20_a"], (3, 32, 32)).mults


def test_quick_run_writes_latency_the_tables_read(tmp_path):
    out = tmp_path / "latency.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.compare_latency", "--quick", "--processes", "2",
                           "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert "default allocator" in doc["setup"] and len(doc["git_sha"]) >= 40
    names = set(doc["models"])
    assert {"resnet20", "struct_resnet20_a", "struct_resnet20_b", "prune_l1_a", "svd_spatial_b"} <= names
    for name, row in doc["models"].items():
        assert row["batch1"]["ms"] > 0 and row["batch2"]["ratio"] > 0, name
    assert doc["models"]["resnet20"]["batch1"]["ratio"] == 1.0
    # each architecture's counts, as the trained runs' summaries hold them (results/quick/runs: the
    # dense and struct_resnet20_a runs' params_decomposed / mults_decomposed), for src.tables to check
    assert doc["architectures"]["resnet20"] == {"params": 269_722, "mults": 40_551_040}
    assert doc["architectures"]["struct_resnet20_a"] == {"params": 121_242, "mults": 18_268_800}
    assert doc["architectures"]["structured_a"] == doc["architectures"]["struct_resnet20_a"]
    assert set(doc["architectures"]) == {n for n in names if not n.endswith("+plan")}
    # the structured models also deployed with their eager plan, measured at each batch
    assert {"struct_resnet20_a+plan", "structured_b+plan"} <= names and "prune_l1_a+plan" not in names
    assert "median over 2 processes" in doc["setup"]
    row = doc["models"]["structured_a+plan"]["batch2"]
    assert len(row["plans"]) == 2 and row["ratio_range"][0] <= row["ratio"] <= row["ratio_range"][1]
    for plan in row["plans"]:  # e.g. "12 decomposed, 6 dense"
        assert re.fullmatch(r"\d+ \S+(, \d+ \S+)*", plan) and sum(int(p.split()[0]) for p in plan.split(", ")) == 18


def test_processes_merge_to_medians_with_the_ratio_range():
    runs = [{"resnet20": {"batch1": {"ms": 5.0, "ratio": 1.0}},
             "s+plan": {"batch1": {"ms": ms, "ratio": ratio, "plan": plan}}}
            for ms, ratio, plan in ((4.0, 0.8, "18 dense"), (6.0, 1.2, "18 spatial"), (5.0, 0.9, "18 dense"))]
    merged = compare_latency.merge_processes(runs)
    assert merged["resnet20"]["batch1"] == {"ms": 5.0, "ratio": 1.0, "ratio_range": [1.0, 1.0]}
    assert merged["s+plan"]["batch1"] == {"ms": 5.0, "ratio": 0.9, "ratio_range": [0.8, 1.2],
                                          "plans": ["18 dense", "18 spatial", "18 dense"]}
