"""The benchmark scripts run (their numbers are reported, never asserted)."""

from src.bench import core


def test_core_benchmark_quick_run(tmp_path, capsys):
    out = tmp_path / "bench.md"
    core.main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(out)])
    text = out.read_text()
    assert "| 16 | 32x32 |" in text and "structural_loss overhead" in text
    assert "time ratio" in capsys.readouterr().out
