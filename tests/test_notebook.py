"""notebooks/analysis.ipynb is committed executed, and executes in a fresh clone of the committed
repository: tables, plots and the kernels' frequency response from the committed logs and models."""

from __future__ import annotations

import subprocess

import nbformat
import pytest

from .conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(nb) -> str:
    return "".join(str(o.get("text", "")) for o in _outputs(nb))


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


def _check_rendered(nb) -> None:
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"], "a cell raised"
    text = _text(nb)
    assert "runs under results/medium/runs" in text and "largest response on the Nyquist row" in text, text[-2000:]
    assert _images(nb) >= 6, f"{_images(nb)} figures rendered"  # 4 table plots, training curves, kernel spectra
    assert any("text/markdown" in o.get("data", {}) and "## Claims" in o["data"]["text/markdown"] for o in _outputs(nb))


def test_committed_notebook_holds_its_outputs():
    """On the web the notebook shows what it computed: it is committed executed."""
    _check_rendered(nbformat.read(NOTEBOOK, as_version=4))


def test_notebook_executes_in_a_fresh_clone(tmp_path):
    """From the committed files only (logs and deploy.pt under results/): a clone of HEAD runs
    every cell and renders its figures. Uncommitted changes are not part of the clone."""
    from experiments.notebook import execute

    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    out = execute(clone / "notebooks" / "analysis.ipynb", tmp_path / "executed.ipynb", timeout=600)
    nb = nbformat.read(out, as_version=4)
    _check_rendered(nb)
    # the Nyquist row of the projected kernels' response is zero, the dense one's is not
    line = next(s for s in _text(nb).splitlines() if "Nyquist row" in s)
    dense, projected = (float(v.split()[-1].rstrip(",")) for v in line.split(":")[1].split(",")[:2])
    assert dense > 0.05 and projected < 1e-6, line
