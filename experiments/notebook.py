"""Execute ``notebooks/analysis.ipynb`` and save it with its outputs: ``make notebook``.

By default the notebook reads the committed run logs and models under ``results/`` (so the saved
outputs are what a fresh clone shows); ``ANALYSIS_RUNS=runs/quick make notebook`` points it at your
own runs instead (then do not commit the result). The kernel runs in the repository root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


def execute(path: Path = NOTEBOOK, out: Path | None = None, timeout: int = 900) -> Path:
    """Run every cell of `path` (cwd: the repository that holds it) and write it, outputs
    included, to `out` (default: in place). A failing cell raises with its traceback."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.resolve().parents[1])}}).execute()
    for cell in nb.cells:  # no run-dependent noise in the committed file
        cell.get("metadata", {}).pop("execution", None)
    out = out or path
    nbformat.write(nb, out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.notebook", description=__doc__.split("\n\n")[0])
    ap.add_argument("--notebook", type=Path, default=NOTEBOOK)
    ap.add_argument("--out", type=Path, default=None, help="where to write the executed notebook (default: in place)")
    args = ap.parse_args(argv)
    if not args.notebook.exists():
        sys.exit(f"error: {args.notebook} does not exist")
    print(f"executed {execute(args.notebook, args.out)}")


if __name__ == "__main__":
    main()
