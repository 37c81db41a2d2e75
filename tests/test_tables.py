"""Tables, plots and the analysis notebook, regenerated from a fixture of real (tiny) runs."""

from __future__ import annotations


import nbformat
import pytest
from nbclient import NotebookClient

from src import tables

from .test_train import CIFAR, TINY, ROOT, needs_cifar, train


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for model, seed in (("resnet20", 0), ("struct_resnet20_a", 0), ("struct_resnet20_a", 1)):
        train([f"+exp=cifar10/{model}", f"data.root={CIFAR}", f"seed={seed}", "profile=fixture", *TINY],
              root / model / f"seed{seed}")
    return root


@needs_cifar
def test_tables_are_regenerated_identically(runs_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    written = tables.write_tables(runs_dir, a)
    tables.write_tables(runs_dir, b)
    assert sorted(p.name for p in written) == ["cifar10.md", "cifar10_acc_vs_macs.png", "cifar10_training.png"]
    for p in written:
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    md = (a / "cifar10.md").read_text()
    assert "| struct_resnet20_a | regularized | 2 | 2 |" in md  # two seeds aggregated
    assert " +- " in md and "121,242 (0.45x)" in md and "Profile(s): fixture" in md
    assert "headline claims" in md


def test_tables_without_runs_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no summary.json under"):
        tables.write_tables(tmp_path, tmp_path / "out")


@needs_cifar
def test_analysis_notebook_executes_on_fixture_runs(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNS_DIR", str(runs_dir))
    monkeypatch.setenv("PLOTS_DIR", str(tmp_path / "plots"))
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    text = "".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "3 runs under" in text and "relative residual" in text
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))
    assert (tmp_path / "plots" / "cifar10_acc_vs_macs.png").exists()
