"""Every committed result table regenerates byte for byte from the committed run logs."""

from __future__ import annotations

import json
import re

import pytest

from src import tables

from .conftest import ROOT

# every results/<profile>[/<part>]/runs folder (e.g. results/medium/runs, results/medium/sweep/runs)
PROFILES = sorted(p.parent.relative_to(ROOT / "results").as_posix() for p in (ROOT / "results").rglob("runs")
                  if p.is_dir() and any(p.rglob("summary.json")))


def test_there_are_committed_runs():
    assert PROFILES, "results/<profile>/runs holds the logs the committed tables are made from"


@pytest.mark.parametrize("profile", PROFILES)
def test_committed_tables_regenerate_identically(profile, tmp_path):
    written = tables.write_tables(ROOT / "results" / profile / "runs", tmp_path)
    assert written
    for path in written:
        committed = ROOT / "results" / profile / path.name
        assert committed.exists(), f"{committed} is not committed"
        assert path.read_bytes() == committed.read_bytes(), f"{committed} differs from what its logs give"


def test_the_long_profile_is_checked_with_its_gap_against_length():
    """results/long (once its runs are committed) is one of the profiles regenerated above, and its
    table holds the claims per length and the gap against training length (src/tables/length.py)."""
    if not any((ROOT / "results" / "long" / "runs").rglob("summary.json")):
        pytest.skip("no finished run of results/long/runs committed yet (unfinished ones: inflight/ stashes)")
    assert "long" in PROFILES
    md = (ROOT / "results" / "long" / "cifar10.md").read_text()
    assert "## Gap against training length" in md and (ROOT / "results" / "long" / "cifar10_gap_vs_epochs.png").exists()


def test_readme_results_summary_is_what_the_generator_writes():
    """The README's results summary is generated from the committed tables (src/tables/readme.py)."""
    from src.tables import readme

    block = readme.block_in(ROOT / "README.md")
    if block is None:
        pytest.skip("README.md has no results-summary markers")
    assert block == readme.summary_block(), ("README.md's results summary is not current: run "
                                            "python -m src.tables --summary README.md")


@pytest.mark.parametrize("profile", PROFILES)
def test_committed_runs_come_from_clean_commits_and_hold_every_epoch(profile):
    for summary in sorted((ROOT / "results" / profile / "runs").rglob("summary.json")):
        s = json.loads(summary.read_text())
        assert len(s["git_sha"]) == 40 and not s["git_sha"].endswith("-dirty"), summary
        epochs = [int(line.split(",", 1)[0]) for line in (summary.parent / "metrics.csv").read_text().splitlines()[1:]]
        assert epochs == list(range(s["epochs"])), summary  # every epoch exactly once


def test_committed_measurements_come_from_clean_commits():
    """The speed report and the comparison's latency file name the clean commit they measured."""
    for report in sorted((ROOT / "results").glob("speed*.md")):
        m = re.search(r"code at git `([0-9a-f]{40}[^`]*)`", report.read_text())
        assert m and not m.group(1).endswith("-dirty"), report
    for path in sorted((ROOT / "results").rglob("latency.json")):
        doc = json.loads(path.read_text())
        assert len(doc["git_sha"]) == 40 and not doc["git_sha"].endswith("-dirty"), path
        assert set(doc["architectures"]) == {n for n in doc["models"] if not n.endswith("+plan")}, path
