"""The hand-written pages quote only generated figures: every decimal figure in the prose of the
README, the per-profile reports and docs/speed.md is a figure of the generated tables it speaks
of (so none is copied by hand and left stale), and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
# a decimal figure, not part of a version (2.14.1), a name (resnet20_ep8) or an exponent
FIGURE = re.compile(r"(?<![\w.])[-+]?(\d+\.\d+)(?![\d_.]|[A-Za-wyz])")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (commands, config values, paths)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _figures(text: str) -> set[str]:
    return set(FIGURE.findall(text))


def _generated(*globs: str) -> set[str]:
    figures: set[str] = set()
    for pattern in globs:
        for path in RESULTS.glob(pattern):
            if path.name != "README.md":
                figures |= _figures(path.read_text())
    return figures


REPORTS = [
    ("README.md", ("**/*.md",)),
    ("results/README.md", ("**/*.md",)),
    ("results/medium/README.md", ("medium/*.md", "medium/sweep/*.md", "medium/gap/*.md")),
    ("results/long/README.md", ("long/*.md",)),
    ("docs/speed.md", ("speed.md",)),
]


@pytest.mark.parametrize("page, sources", REPORTS, ids=[p for p, _ in REPORTS])
def test_every_figure_of_a_report_is_in_its_generated_tables(page, sources):
    path = ROOT / page
    if not path.exists():
        pytest.skip(f"{page} not written yet")
    known = _generated(*sources)
    assert known, f"no generated tables for {page} ({sources})"
    missing = sorted(_figures(_prose(path.read_text())) - known, key=float)
    assert not missing, (f"{page} quotes figures that no generated table of {', '.join(sources)} holds "
                         f"(typed by hand or stale): {', '.join(missing)}")


def test_the_figure_pattern_reads_figures_not_versions():
    assert _figures("torch 2.14.1, -1.72 +- 0.62, resnet20_ep8, 5e-4, 0.45x, 85.89 %, 1.5e-3, 3.1.2") == {"1.72", "0.62", "0.45", "85.89"}


def test_readme_fits_on_a_few_screens():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/ or results/"
