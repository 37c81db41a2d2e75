"""The benchmark scripts run (their numbers are reported, never asserted; the runs that time
things are `slow`), and refuse to write into results/ from a dirty tree before timing anything."""

import pytest

from src import provenance
from src.bench import core, measure, models


def _core_quick_report(tmp_path, capsys, monkeypatch) -> str:
    """``python -m src.bench.core --quick`` into a file, at a fixed commit; its text, checked for
    what every core report holds."""
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123abc")  # (other commits may land meanwhile)
    out = tmp_path / "bench.md"
    core.main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(out)])
    text = out.read_text()
    assert "| 16 | 32x32 |" in text and "structural_loss overhead" in text
    assert "code at git `0123abc`" in text
    assert "time ratio" in capsys.readouterr().out
    return text


@pytest.mark.slow
def test_core_benchmark_quick_run(tmp_path, capsys, monkeypatch):
    _core_quick_report(tmp_path, capsys, monkeypatch)


class _TimingStarted(Exception):
    pass


def _no_timing(*args, **kwargs):
    raise _TimingStarted


@pytest.fixture
def dirty_tree(monkeypatch):
    """A tree with uncommitted changes (simulated), and any timing made to fail loudly."""
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123456789abcdef-dirty")
    monkeypatch.setattr(core, "measure_layers", _no_timing)
    monkeypatch.setattr(core, "time_interleaved", _no_timing)
    monkeypatch.setattr(measure, "measure_model", _no_timing)
    monkeypatch.setattr(measure, "time_interleaved", _no_timing)


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


def test_core_report_layout_from_recorded_measurements(tmp_path, capsys, monkeypatch):
    """core.main end to end with its measurements replaced by recorded data (the layout
    test_core_benchmark_quick_run checks, without timing)."""
    monkeypatch.setattr(core, "measure_layers", lambda reps, layers: [
        core.LayerRow(C, hw, b, c, f, 1e-3, 0.6e-3, 0.3) for C, hw, b in layers for c in (C, C // 2)
        for f in ("NCHW", "channels_last")])
    monkeypatch.setattr(core, "measure_loss_overhead",
                        lambda batch, reps: core.LossOverhead(batch, 27, 0.1, 0.104, 0.002))
    text = _core_quick_report(tmp_path, capsys, monkeypatch)
    assert text.startswith("## Core benchmark\n\nMachine: ")
    assert "Command: `python -m src.bench.core --quick --threads 1 --malloc default --out " in text
    assert "| 16 | 32x32 | 32 | 8 | NCHW | 1.000 | 0.600 | 0.60 | 0.30 |" in text
    assert "27 structured 3x3 convs (c = C/2, n = 2), batch 16, SGD step" in text
    assert "| task loss + lambda * structural_loss | 104.0 | +4.0 % |" in text
    assert "| structural_loss forward + backward alone | 2.00 | 2.0 % of the step |" in text
    assert text.endswith(" % of the step |\n")
