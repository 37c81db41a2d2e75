"""The model benchmark (`python -m src.bench`): its measurements return data and leave the
process's settings as they found them, its rendering keeps the report's layout, and `--quick`
runs end to end (slow: it times things; its numbers are measurements, never asserted). The exactness
of the deploy forms and sum-pool paths it times is tested in tests/test_exactness.py."""

import re

import pytest
import torch

from src import provenance
from src.bench import backends, core, measure, models, report, timing
from src.bench.measure import PlanCounts, Row, Skipped, TrainingRow


@pytest.mark.slow
def test_model_benchmark_quick_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123abc")  # (other commits may land meanwhile)
    out = tmp_path / "speed.md"
    text = models.main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(out)])
    assert out.read_text() == text
    assert "time ratio" in capsys.readouterr().out
    assert text.startswith("# Speed: dense baselines vs decomposed structured models")
    assert re.search(r"Machine: .*, 1 threads, torch .*glibc malloc", text)
    assert "code at git `0123abc`" in text
    rows = [line for line in text.splitlines() if line.startswith("| resnet20 | 32x32 | 2 | eager_cl |")]
    assert [r.split(" | ")[4].split(" ")[0] for r in rows] == ["a", "a+plan"]
    for row in rows:
        cells = row.strip("|").split("|")
        assert len(cells) == len(report.ROW_HEADER[0].strip("|").split("|"))
        ratio, mac_ratio = float(cells[-2].strip(" *")), float(cells[-1])
        assert ratio > 0 and 0 < mac_ratio <= 1
    for section in ("## Models", "## Layer level", "## Training speed", "## Profile"):
        assert section in text
    assert "| resnet20 | 8 |" in text  # the training row
    assert "| sum-pool |" in text and "| small conv (alpha) |" in text


# ------------------------------------------------------------------ rendering (no timing)
ROW = Row("resnet56", (32, 32), 128, "eager_cl", "a", 0.182, 0.127, 0.4512, (0.71, 0.69, 0.70))
PLANNED = Row("resnet56", (32, 32), 128, "eager_cl", "a", 0.182, 0.126, 0.4712, (0.70, 0.69, 0.71),
              PlanCounts(1, 17, 54))


def test_rows_render_as_the_report_table():
    assert report.row_line(ROW) == ("| resnet56 | 32x32 | 128 | eager_cl | a | 182 | 127 | 703 | 1008 | **0.70** "
                                    "| 0.45 |")
    assert report.row_line(PLANNED).startswith("| resnet56 | 32x32 | 128 | eager_cl | a+plan (1 dense, 17 spatial "
                                               "of 54) | 182 | 126 |")
    assert report.row_line(Row("r", (224, 224), 1, "eager", "b", 2.5e-4, 1234.4e-3, 1.0)).split(" | ")[5:9] == \
        ["0.25", "1234", "4000", "0.81"]  # three significant digits, never an exponent
    table = report.models_section([ROW, PLANNED], [Skipped("resnet56", 128, "compile", "compile failed here: X")])
    lines = table.splitlines()
    assert lines[0] == "## Models: dense vs decomposed (inference)"
    assert lines[4:6] == report.ROW_HEADER and lines[6:8] == [report.row_line(ROW), report.row_line(PLANNED)]
    assert lines[-2:] == ["Skipped:", "- resnet56, batch 128, compile: compile failed here: X"]
    header_cells = len(report.ROW_HEADER[0].strip("|").split("|"))
    assert all(len(r.strip("|").split("|")) == header_cells for r in lines[6:8])


def test_targets_pick_variant_a_with_and_without_its_plan():
    targets = [("resnet56", 128, 0.80), ("resnet56", 1, 0.5), ("resnet50", 16, 0.80)]
    slow = Row("resnet56", (32, 32), 1, "eager_cl", "a", 1e-3, 1.2e-3, 0.45, (1.2, 1.3, 1.2))
    other = Row("resnet56", (32, 32), 128, "eager", "a", 0.1, 0.01, 0.45)  # another backend: ignored
    text = report.targets_section([other, ROW, PLANNED, slow], targets)
    lines = text.splitlines()
    assert lines[0] == "## Targets (eager channels_last)"
    assert lines[-2:] == [
        "| struct_resnet56_a / resnet56 | 128 | <= 0.80 | 0.70 (0.71 / 0.69 / 0.70) | yes | 0.69 (0.70 / 0.69 / 0.71) "
        "| yes |",
        "| struct_resnet56_a / resnet56 | 1 | <= 0.50 | 1.20 (1.20 / 1.30 / 1.20) | **no** |  |  |",
    ]
    assert report.targets_section([other], targets) == ""  # no eager_cl row: no section


def test_training_and_core_tables_render():
    row = TrainingRow("resnet56", 128, 0.623, 0.623, 0.645, 0.009)
    assert report.training_line(row) == ("| resnet56 | 128 | 623 | 205.5 | 623 | 205.5 | 645 | 198.4 | +3.5 % | "
                                         "0.966 | 9 |")
    assert report.training_section([row], 0.01).splitlines()[-1] == report.training_line(row)
    layer = core.LayerRow(16, 32, 32, 8, "channels_last", 1e-3, 0.5e-3, 0.25)
    table = report.core_layer_table([layer]).splitlines()
    assert table[0].startswith("### (b) one 3x3 conv")
    assert table[-1] == "| 16 | 32x32 | 32 | 8 | channels_last | 1.000 | 0.500 | 0.50 | 0.25 |"
    assert report.layers_section([layer]).splitlines()[1:] == table[1:]  # same table, its own heading


# ------------------------------------------------------------------ settings restored
def test_settings_are_restored_after_their_blocks():
    import torch._inductor.config as inductor_config

    threads, freezing = torch.get_num_threads(), inductor_config.freezing
    other = 1 if threads != 1 else 2
    with timing.torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == threads
    with timing.inductor_freezing(not freezing):
        assert inductor_config.freezing is (not freezing)
    assert inductor_config.freezing is freezing
    with backends.Compiled().session():  # the compile backends: freezing on while a group runs
        assert inductor_config.freezing is True
    assert inductor_config.freezing is freezing
    state = torch.get_rng_state()
    with timing.seeded(0):
        a = torch.rand(3)
    with timing.seeded(0):
        assert torch.equal(torch.rand(3), a)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(RuntimeError), timing.torch_threads(other):  # restored on errors too
        raise RuntimeError
    assert torch.get_num_threads() == threads


def test_backends_share_one_interface():
    names = backends.CPU_BACKENDS + backends.CUDA_BACKENDS
    made = [backends.make_backend(n, threads=1) for n in names]
    assert [b.name for b in made] == list(names)
    assert [b.name for b in made if b.deploy_plan] == ["eager_cl"]
    assert all(callable(b.session) and callable(b.prepare) for b in made)
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        backends.make_backend("tpu", threads=1)
    model, x = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(), torch.randn(2, 3, 8, 8)
    for name in ("eager", "eager_cl"):
        b = backends.make_backend(name, threads=1)
        with b.session():
            out = b.prepare(model, x)()
        assert torch.allclose(out, model(x), atol=1e-6)
        assert out.is_contiguous(memory_format=torch.channels_last) is (name == "eager_cl")

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no kernel\nsecond line")

    with pytest.raises(backends.Skip, match=r"^eager failed here: RuntimeError: no kernel$"):
        backends.make_backend("eager", threads=1).prepare(Broken(), x)


def _scripted_times(fns, reps=20, warmup=3, min_time=0.0):
    """A stand-in for time_interleaved: dense 1 ms, candidate i (1, 2, ...) i/4 ms; each fn runs once."""
    for fn in fns:
        fn()
    return [1e-3] + [i * 0.25e-3 for i in range(1, len(fns))]


def test_measure_model_returns_rows_and_leaves_settings_alone(monkeypatch):
    monkeypatch.setattr(measure, "time_interleaved", _scripted_times)
    first = {}

    def plan(model, x, reps):  # a fixed deploy plan: the first structured layer re-composed
        name = next(n for n, _ in measure.structured_layers(model))
        first["name"] = name
        return {name: "dense"}

    monkeypatch.setattr(measure, "plan_recompose", plan)

    class Unavailable:
        name, deploy_plan = "nowhere", False

        def session(self):
            return timing.torch_threads(1)

        def prepare(self, model, x):
            raise backends.Skip("not on this machine")

    seen = []
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    rows, skipped = measure.measure_model("resnet20", 2, ["a", "b"], [backends.Eager("eager_cl", True, True),
                                                                       Unavailable()],
                                          reps=1, min_time=0.0, plan=True, progress=seen.append)
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)
    assert [(r.backend, r.variant, r.plan) for r in rows] == [
        ("eager_cl", "a", None), ("eager_cl", "a", PlanCounts(1, 0, 18)),
        ("eager_cl", "b", None), ("eager_cl", "b", PlanCounts(1, 0, 18))]
    assert [r.dec_s for r in rows] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3])
    assert all(r.dense_s == 1e-3 for r in rows)
    assert rows[0].round_ratios == pytest.approx((0.25,) * measure.ROUNDS) and rows[0].ratio == pytest.approx(0.25)
    assert rows[0].mac_ratio < rows[1].mac_ratio < 1  # the re-composed layer costs its dense MACs
    assert skipped == [Skipped("resnet20", 2, "nowhere", "not on this machine")]
    assert seen == [*rows, *skipped]
    assert first["name"] == "layer1.0.conv1"


def test_report_layout_from_recorded_measurements(tmp_path, monkeypatch):
    """models.main end to end with every measurement replaced by recorded data: the file it
    writes has the report's layout (what test_model_benchmark_quick_run checks, without timing)."""
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123abc")
    monkeypatch.setattr(measure, "measure_model", lambda name, batch, *a, **k: (
        [Row(name, (32, 32), batch, "eager_cl", "a", 2e-3, 1.5e-3, 0.45, (0.75,) * 3),
         Row(name, (32, 32), batch, "eager_cl", "a", 2e-3, 1.4e-3, 0.47, (0.7,) * 3, PlanCounts(1, 0, 18))], []))
    monkeypatch.setattr(core, "measure_layers", lambda reps, layers: [
        core.LayerRow(C, hw, b, c, f, 1e-3, 0.5e-3, 0.25) for C, hw, b in layers for c in (C, C // 2)
        for f in ("NCHW", "channels_last")])
    monkeypatch.setattr(measure, "measure_training", lambda name, batch, reps, lam: TrainingRow(
        name, batch, 0.1, 0.1, 0.11, 0.005))
    breakdown = measure.Breakdown({"sum-pool": 1.0, "small conv (alpha)": 2.0, "total": 4.0}, [("add", 0.5)])
    monkeypatch.setattr(measure, "measure_profile", lambda name, batch, iters: measure.Profile(
        name, batch, PlanCounts(1, 0, 18), breakdown, breakdown, breakdown))
    out = tmp_path / "speed.md"
    text = models.main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(out)])
    assert out.read_text() == text and text.endswith("\n")
    assert text.startswith("# Speed: dense baselines vs decomposed structured models\n\nGenerated by "
                           "`python -m src.bench --quick --threads 1 --malloc default --out ")
    assert re.search(r"Machine: .*, 1 threads, torch .*glibc malloc", text)
    assert "code at git `0123abc`" in text and "fastest of 3 rounds" in text
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == ["## Models: dense vs decomposed (inference)",  # (no target pair in --quick: no Targets)
                        "## Layer level: one 3x3 conv (C -> C, stride 1, pad 1) vs SumPool + small conv (n = 2)",
                        "## Training speed (SGD step: forward, backward, update; channels_last)",
                        "## Profile: where the time goes (eager channels_last, torch.profiler, ms per forward)"]
    assert "| resnet20 | 32x32 | 2 | eager_cl | a | 2 | 1.5 | 1000 | 1333 | **0.75** | 0.45 |" in text
    assert "| resnet20 | 32x32 | 2 | eager_cl | a+plan (1 dense, 0 spatial of 18) | 2 | 1.4 |" in text
    assert "| 16 | 32x32 | 32 | 8 | channels_last | 1.000 | 0.500 | 0.50 | 0.25 |" in text
    assert "| resnet20 | 8 | 100 | 80.0 | 100 | 80.0 | 110 | 72.7 | +10.0 % | 0.909 | 5 |" in text
    assert "### resnet20 / struct_resnet20_a, batch 2" in text
    assert "| sum-pool | 1.0 | 1.0 | 1.0 |" in text and "| other (BN, ReLU, adds, pooling, fc) | 0.0 |" in text
    assert "- a+plan (1 dense, 0 spatial of 18): add 0.5" in text
