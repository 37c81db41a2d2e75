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


def _model_rows(text, backend):
    return [line for line in text.splitlines() if line.startswith(f"| tiny_resnet | 32x32 | 2 | {backend} |")]


def test_quick_mode_runs_every_backends_plan_path(tmp_path, monkeypatch):
    """`--quick` end to end, model rows only: the tiny model on eager_cl, torch.compile and ONNX
    Runtime, each with a "+plan" row from the plan measured on that backend (its numbers are
    measurements, never asserted). The extra allocator row set (a child process) runs in the
    slow test below; here its command line is checked."""
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123abc")
    out = tmp_path / "speed.md"
    text = models.main(["--quick", "--threads", "1", "--sections", "models", "--extra-allocators", "none",
                        "--out", str(out)])
    assert out.read_text() == text
    assert re.search(r"Machine: .*, 1 threads, torch .*glibc malloc \(default settings\)", text)
    for backend in ("eager_cl", "compile", "onnxruntime"):
        rows = _model_rows(text, backend)
        assert [r.split(" | ")[4].split(" ")[0] for r in rows] == ["a", "a+plan"], backend
        for row in rows:
            cells = row.strip("|").split("|")
            assert len(cells) == len(report.ROW_HEADER[0].strip("|").split("|"))
            assert float(cells[-2].strip(" *")) > 0 and 0 < float(cells[-1]) <= 1
        assert f"| tiny_resnet | 2 | {backend} | a | 2 " in text  # its plan: both layers in one form
    assert "## Deploy plans" in text and "## Best and worst row per backend" in text and "Skipped" not in text
    assert "## Models with another allocator" not in text
    args = models._parser().parse_args(["--quick", "--threads", "1", "--no-plan"])
    args.quick, args.models, args.variants, args.batches, args.plan_forms = True, ["tiny_resnet"], ["a"], [2], None
    child = models._child_args(args, "tuned", ["eager_cl"], "rows.json", "speed.md")
    assert child[1:3] == ["-m", "src.bench"] and child[child.index("--malloc") + 1] == "tuned"
    assert child[child.index("--backends") + 1:child.index("--reps")] == ["eager_cl"]
    assert {"--no-plan", "--quick", "--allow-dirty", "--rows-json"} <= set(child)
    assert child[child.index("--extra-allocators") + 1] == "none"  # a child never spawns children


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
    headline, _, extra = text.partition("## Models with another allocator: glibc malloc tuned in process")
    for backend in ("eager_cl", "compile", "onnxruntime"):
        assert [r.split(" | ")[4].split(" ")[0] for r in _model_rows(headline, backend)] == ["a", "a+plan"]
    assert "How a user gets it: call `src.bench.timing.configure_allocator" in extra
    assert [r.split(" | ")[4].split(" ")[0] for r in _model_rows(extra, "eager_cl")] == ["a"]  # (no plan)
    assert "THP_MEM_ALLOC_ENABLE=1" in extra
    for section in ("## Models", "## Deploy plans", "## Layer level", "## Training speed", "## Profile"):
        assert section in text
    assert "| tiny_resnet | 8 |" in text  # the training row
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


def test_targets_cover_every_backend_and_variant():
    assert [report.target_ratio(m, b) for m, b in [("resnet56", 1), ("mobilenet_v2", 1), ("resnet56", 128),
                                                    ("resnet50", 16), ("mobilenet_v2", 16), ("resnet20", 8)]] == \
        [1.0, 1.0, 0.85, 0.85, 0.95, None]
    slow = Row("resnet56", (32, 32), 1, "onnxruntime", "b", 1e-3, 1.2e-3, 0.35, (1.2, 1.3, 1.2))
    slow_plan = Row("resnet56", (32, 32), 1, "onnxruntime", "b", 1e-3, 0.9e-3, 0.6, (0.9, 0.9, 0.9),
                    PlanCounts(10, 0, 54))
    other = Row("resnet20", (32, 32), 8, "eager", "a", 0.1, 0.01, 0.45)  # batch 8: no target
    text = report.targets_section([other, ROW, PLANNED, slow, slow_plan])
    lines = text.splitlines()
    assert lines[0] == "## Targets"
    assert lines[6:8] == [
        "| resnet56 | 128 | eager_cl | a | <= 0.85 | 0.70 (0.71 / 0.69 / 0.70) | 0.69 (0.70 / 0.69 / 0.71) | 0.69 | yes |",
        "| resnet56 | 1 | onnxruntime | b | <= 1.00 | 1.20 (1.20 / 1.30 / 1.20) | 0.90 (0.90 / 0.90 / 0.90) | 0.90 | yes |"]
    assert lines[-1] == "Met: 2 of 2."
    assert "**no**" in report.targets_section([slow]) and report.targets_section([other]) == ""
    extremes = report.extremes_section([ROW, PLANNED, slow, slow_plan]).splitlines()
    assert extremes[0] == "## Best and worst row per backend"
    assert "| onnxruntime | 1 | struct_resnet56_b, batch 1: 1.20 [0.35] | struct_resnet56_b, batch 1: 1.20 [0.35] |" \
        in extremes
    assert any(line.startswith("| eager_cl, deploy plan | 1 |") for line in extremes)
    plans = report.plans_section([ROW, PLANNED, slow_plan]).splitlines()
    assert plans[0] == "## Deploy plans" and plans[-1].startswith("| resnet56 | 1 | onnxruntime | b | ")
    counted = PlanCounts.of({"x": "dense", "y": "spatial[sp=mean]", "z": "decomposed[ch=ones_conv]"}, 5)
    assert (counted.dense, counted.spatial, counted.other) == (1, 1, 1)
    assert report.plan_label(counted) == "1 dense, 1 spatial, 1 re-pooled of 5"
    assert dict(counted.forms) == {"decomposed": 2, "dense": 1, "spatial[sp=mean]": 1, "decomposed[ch=ones_conv]": 1}


def test_rows_travel_as_json_and_allocator_sections_render():
    rows = [ROW, Row("resnet56", (32, 32), 1, "compile", "b", 1e-3, 0.9e-3, 0.6, (0.9,) * 3,
                     PlanCounts.of({"a": "dense"}, 3))]
    skipped = [Skipped("resnet56", 1, "onnxruntime +plan (b)", "RuntimeError: x")]
    back = measure.rows_from_json(measure.rows_to_json(rows, skipped, allocator="tuned"))
    assert back == (rows, skipped)
    section = report.allocator_section("jemalloc, preloaded", "LD_PRELOAD=...", [], [], missing="not found")
    assert section.splitlines()[0] == "## Models with another allocator: jemalloc, preloaded"
    assert section.endswith("Not measured: not found.")
    section = report.allocator_section("tuned", "call it", rows, skipped).splitlines()
    assert section[2].startswith("How a user gets it: call it.") and report.row_line(ROW) in section
    setups = timing.ALLOCATORS
    assert setups["default"].environment() == {} and setups["tuned"].malloc == "tuned"
    assert "GLIBC_TUNABLES" in setups["glibc_tunables"].environment()
    missing = timing.AllocatorSetup("x", "x", "x", preload=("libnot_a_real_allocator.so.9",))
    assert missing.environment() is None


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
    assert [(b.name, b.plan_backend) for b in made if b.deploy_plan] == [
        ("eager", "eager"), ("eager_cl", "eager"), ("compile", "compile"), ("onnxruntime", "onnxruntime")]
    assert [b.channels_last for b in made[:4]] == [False, True, True, False]
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

    def plan(model, x, reps, backend, forms, threads, refine):  # a fixed plan: the first layer re-composed
        name = next(n for n, _ in measure.structured_layers(model))
        first.update(name=name, backend=backend, channels_last=x.is_contiguous(memory_format=torch.channels_last),
                     refine=refine)
        return {name: "dense"}

    monkeypatch.setattr(measure, "plan_recompose", plan)

    class Unavailable:
        name, deploy_plan, plan_backend, channels_last = "nowhere", False, None, False

        def session(self):
            return timing.torch_threads(1)

        def prepare(self, model, x):
            raise backends.Skip("not on this machine")

    seen = []
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    rows, skipped = measure.measure_model("resnet20", 2, ["a", "b"], [backends.Eager("eager_cl", True),
                                                                       Unavailable()],
                                          reps=1, min_time=0.0, plan=True, progress=seen.append)
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)
    planned = PlanCounts(1, 0, 18, 0, (("decomposed", 17), ("dense", 1)))
    assert [(r.backend, r.variant, r.plan) for r in rows] == [
        ("eager_cl", "a", None), ("eager_cl", "a", planned), ("eager_cl", "b", None), ("eager_cl", "b", planned)]
    assert [r.dec_s for r in rows] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3])
    assert all(r.dense_s == 1e-3 for r in rows)
    assert rows[0].round_ratios == pytest.approx((0.25,) * measure.ROUNDS) and rows[0].ratio == pytest.approx(0.25)
    assert rows[0].mac_ratio < rows[1].mac_ratio < 1  # the re-composed layer costs its dense MACs
    assert skipped == [Skipped("resnet20", 2, "nowhere", "not on this machine")]
    assert seen == [*rows, *skipped]
    assert first == {"name": "layer1.0.conv1", "backend": "eager", "channels_last": True, "refine": True}


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
    monkeypatch.setattr(measure, "measure_profile", lambda name, batch, iters, forms=None: measure.Profile(
        name, batch, PlanCounts(1, 0, 18), breakdown, breakdown, breakdown))
    monkeypatch.setattr(measure, "measure_ort_profile", lambda name, batch, iters, **k: measure.OrtProfile(
        name, batch, "a", PlanCounts(2, 0, 2), {"dense": {"Conv": 1.0, "total": 1.0},
                                                "decomposed a": {"Conv": 0.5, "Slice": 0.75, "total": 1.25},
                                                "a+plan (2 dense, 0 spatial of 2)": {"Conv": 1.0, "total": 1.0}}))
    out = tmp_path / "speed.md"
    text = models.main(["--quick", "--threads", "1", "--extra-allocators", "none", "--out", str(out)])
    assert out.read_text() == text and text.endswith("\n")
    assert text.startswith("# Speed: dense baselines vs decomposed structured models\n\nGenerated by "
                           "`python -m src.bench --quick --threads 1 --extra-allocators none --out ")
    assert re.search(r"Machine: .*, 1 threads, torch .*glibc malloc \(default settings\)", text)
    assert "code at git `0123abc`" in text and "fastest of 3 rounds" in text
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == ["## Models: dense vs decomposed (inference)",  # (no target at batch 2: no Targets)
                        "## Deploy plans", "## Best and worst row per backend",
                        "## Layer level: one 3x3 conv (C -> C, stride 1, pad 1) vs SumPool + small conv (n = 2)",
                        "## Training speed (SGD step: forward, backward, update; channels_last)",
                        "## Profile: where the time goes (eager channels_last, torch.profiler, ms per forward)",
                        "## Profile: where ONNX Runtime spends the time (its profiler, ms per forward, per op type)"]
    assert "| tiny_resnet | 32x32 | 2 | eager_cl | a | 2 | 1.5 | 1000 | 1333 | **0.75** | 0.45 |" in text
    assert "| tiny_resnet | 32x32 | 2 | eager_cl | a+plan (1 dense, 0 spatial of 18) | 2 | 1.4 |" in text
    assert "| 16 | 32x32 | 32 | 8 | channels_last | 1.000 | 0.500 | 0.50 | 0.25 |" in text
    assert "| tiny_resnet | 8 | 100 | 80.0 | 100 | 80.0 | 110 | 72.7 | +10.0 % | 0.909 | 5 |" in text
    assert "### tiny_resnet / struct_tiny_resnet_a, batch 2" in text
    assert "| sum-pool | 1.0 | 1.0 | 1.0 |" in text and "| other (BN, ReLU, adds, pooling, fc) | 0.0 |" in text
    assert "- a+plan (1 dense, 0 spatial of 18): add 0.5" in text
    assert "| op type | dense | decomposed a | a+plan (2 dense, 0 spatial of 2) |" in text
    assert "| Slice | 0.00 | 0.75 | 0.00 |" in text and text.endswith("| total | 1.00 | 1.25 | 1.00 |\n")
