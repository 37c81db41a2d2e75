"""The benchmark scripts run (their numbers are reported, never asserted)."""

import pytest

from src import provenance
from src.bench import core, models


def test_core_benchmark_quick_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123abc")  # (other commits may land meanwhile)
    out = tmp_path / "bench.md"
    core.main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(out)])
    text = out.read_text()
    assert "| 16 | 32x32 |" in text and "structural_loss overhead" in text
    assert "code at git `0123abc`" in text
    assert "time ratio" in capsys.readouterr().out


class _TimingStarted(Exception):
    pass


def _no_timing(*args, **kwargs):
    raise _TimingStarted


@pytest.fixture
def dirty_tree(monkeypatch):
    """A tree with uncommitted changes (simulated), and any timing made to fail loudly."""
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123456789abcdef-dirty")
    monkeypatch.setattr(core, "layer_table", _no_timing)
    monkeypatch.setattr(core, "time_interleaved", _no_timing)
    monkeypatch.setattr(models, "model_rows", _no_timing)
    monkeypatch.setattr(models, "time_interleaved", _no_timing)


@pytest.mark.parametrize("bench", ["core", "models"])
def test_benchmarks_refuse_to_write_results_from_a_dirty_tree(dirty_tree, bench, capsys):
    main = {"core": core.main, "models": models.main}[bench]
    target = provenance.REPO_ROOT / "results" / "not_written_by_the_test.md"
    with pytest.raises(SystemExit) as e:  # before any timing
        main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(target)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "refusing to write into" in err and "uncommitted changes (0123456789abcdef-dirty)" in err
    assert "--allow-dirty" in err
    assert not target.exists()
    if bench == "models":  # its default --out is results/speed.md
        with pytest.raises(SystemExit):
            main(["--quick"])
        assert "refusing to write into" in capsys.readouterr().err
    with pytest.raises(_TimingStarted):  # --allow-dirty: past the check, into the timing
        main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(target), "--allow-dirty"])
    assert not target.exists()


def test_benchmarks_write_anywhere_else_from_a_dirty_tree(dirty_tree, tmp_path):
    with pytest.raises(_TimingStarted):
        core.main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(tmp_path / "b.md")])
    with pytest.raises(_TimingStarted):
        models.main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(tmp_path / "s.md")])
