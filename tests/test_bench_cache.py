"""The benchmark resumes: measured units are stored per commit and loaded by a rerun
(src/bench/cache.py), never from a dirty tree, never a failure, never under other settings."""

from __future__ import annotations

import json
import subprocess

import pytest

from src import provenance
from src.bench import cache, core, measure, models
from src.bench.measure import PlanCounts, Row, Skipped, TrainingRow


def test_units_are_stored_once_and_loaded_by_a_rerun(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "git_sha", lambda: "abc123")
    calls = []

    def compute(value):
        calls.append(value)
        return value

    first = cache.UnitCache.for_commit(tmp_path)
    assert first.root == tmp_path / "abc123"
    assert first.get("models", {"name": "resnet20", "batch": 1}, lambda: compute("rows-1")) == "rows-1"
    assert first.get("models", {"name": "resnet20", "batch": 128}, lambda: compute(None)) is None  # a failure
    assert first.measured == 1 and first.summary() == ""
    stored = json.loads(next((tmp_path / "abc123").glob("models_*.json")).read_text())
    assert stored["key"] == {"name": "resnet20", "batch": 1} and stored["value"] == "rows-1" and "UTC" in stored["when"]

    again = cache.UnitCache.for_commit(tmp_path)
    assert again.get("models", {"batch": 1, "name": "resnet20"}, lambda: compute("other")) == "rows-1"  # loaded
    assert again.get("models", {"name": "resnet20", "batch": 128}, lambda: compute("rows-128")) == "rows-128"
    assert again.get("models", {"name": "resnet20", "batch": 1, "threads": 1}, lambda: compute("t1")) == "t1"
    assert calls == ["rows-1", None, "rows-128", "t1"]
    assert again.loaded == 1 and again.measured == 2
    assert again.summary().startswith("Resumed: 1 of 3 measurement units were loaded from ")

    (next(iter(sorted((tmp_path / "abc123").glob("models_*.json"))))).write_text("{cut off")  # a broken unit
    broken = cache.UnitCache.for_commit(tmp_path)
    values = [broken.get("models", k, lambda: compute("new")) for k in (
        {"name": "resnet20", "batch": 1}, {"name": "resnet20", "batch": 128}, {"name": "resnet20", "batch": 1, "threads": 1})]
    assert values.count("new") == 1 and broken.loaded == 2  # measured again, the rest loaded


def test_nothing_is_cached_from_a_dirty_tree_or_without_a_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "git_sha", lambda: "abc123-dirty")
    assert cache.UnitCache.for_commit(tmp_path).root is None
    monkeypatch.setattr(provenance, "git_sha", lambda: "abc123")
    off = cache.UnitCache.for_commit(None)
    assert off.root is None and off.get("layers", {}, lambda: "x") == "x" and off.get("layers", {}, lambda: "y") == "y"
    assert not list(tmp_path.iterdir())


def _recorded(monkeypatch, calls):
    """Every measurement of models.main replaced by recorded data, counting calls."""
    def model(name, batch, *a, **k):
        calls.append(("model", name, batch))
        return ([Row(name, (32, 32), batch, "eager_cl", "a", 2e-3, 1.5e-3, 0.45, (0.75,) * 3),
                 Row(name, (32, 32), batch, "eager_cl", "a", 2e-3, 1.4e-3, 0.47, (0.7,) * 3, PlanCounts(1, 0, 18))], [])

    def layers(reps, shapes):
        calls.append(("layers",))
        return [core.LayerRow(C, hw, b, c, f, 1e-3, 0.5e-3, 0.25) for C, hw, b in shapes for c in (C, C // 2)
                for f in ("NCHW", "channels_last")]

    def training(name, batch, reps, lam):
        calls.append(("training",))
        return TrainingRow(name, batch, 0.1, 0.1, 0.11, 0.005)

    monkeypatch.setattr(measure, "measure_model", model)
    monkeypatch.setattr(core, "measure_layers", layers)
    monkeypatch.setattr(measure, "measure_training", training)


def test_a_cut_off_benchmark_continues_where_it_stopped(tmp_path, monkeypatch):
    """models.main with --cache-dir: a rerun measures nothing again and writes the same report
    (plus the line saying it resumed); another thread count measures again."""
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123abc")
    calls = []
    _recorded(monkeypatch, calls)
    argv = ["--quick", "--threads", "1", "--extra-allocators", "none", "--sections", "models", "layers", "training",
            "--batches", "2", "4", "--cache-dir", str(tmp_path / "cache")]
    first = models.main([*argv, "--out", str(tmp_path / "a.md")])
    assert [c[0] for c in calls] == ["model", "model", "layers", "training"]
    assert len(list((tmp_path / "cache" / "0123abc").glob("*.json"))) == 4 and "Resumed:" not in first
    calls.clear()
    second = models.main([*argv, "--out", str(tmp_path / "b.md")])
    assert calls == []
    assert "Resumed: 4 of 4 measurement units were loaded from " in second

    def body(text):  # the report without its header (command, time, load averages)
        return text[text.index("## Models"):]

    assert body(second) == body(first)
    models.main([*argv[:-2], "--no-cache", "--out", str(tmp_path / "c.md")])
    assert [c[0] for c in calls] == ["model", "model", "layers", "training"]  # --no-cache: measured again
    calls.clear()
    models.main([*argv[:2], "2", *argv[3:], "--out", str(tmp_path / "d.md")])  # 2 threads: other units
    assert [c[0] for c in calls] == ["model", "model", "layers", "training"]


def test_the_cache_is_on_by_default_only_for_reports_into_results(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123abc")
    seen = []
    monkeypatch.setattr(cache.UnitCache, "for_commit", classmethod(lambda cls, d, reuse=None: seen.append(d) or cls(None)))
    calls = []
    _recorded(monkeypatch, calls)
    argv = ["--quick", "--threads", "1", "--extra-allocators", "none", "--sections", "layers"]
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)  # a checkout whose results/ is tmp_path/results
    models.main([*argv, "--out", str(tmp_path / "a.md")])
    models.main([*argv, "--out", str(tmp_path / "results" / "speed.md")])
    models.main([*argv, "--out", str(tmp_path / "b.md"), "--cache-dir", str(tmp_path)])
    assert seen == [None, cache.DEFAULT_DIR, str(tmp_path)]


def test_extra_allocator_children_run_without_plans_and_share_the_cache_setting():
    args = models._parser().parse_args(["--cache-dir", "runs/bench"])
    args.quick = False
    argv = models._child_args(args, "tuned", ["eager_cl"], "/tmp/rows.json", "/tmp/out.md")
    assert "--no-plan" in argv and argv[argv.index("--cache-dir") + 1] == "runs/bench"
    args = models._parser().parse_args([])
    assert "--no-cache" in models._child_args(args, "tuned", ["eager_cl"], "/tmp/rows.json", "/tmp/out.md")


def _git_repo(path, monkeypatch):
    """A throwaway checkout with three commits (each changing src/a.py): their shas, oldest first."""
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=path, check=True,
                              capture_output=True, text=True).stdout.strip()

    (path / "src").mkdir(parents=True)
    git("init", "-q")
    shas = []
    for i in range(3):
        (path / "src" / "a.py").write_text(f"x = {i}\n")
        git("add", "-A")
        git("commit", "-q", "-m", f"c{i}")
        shas.append(git("rev-parse", "HEAD"))
    monkeypatch.setattr(provenance, "REPO_ROOT", path)
    return shas


def test_units_of_an_earlier_commit_are_reused_only_without_a_failure(tmp_path, monkeypatch):
    """--reuse-commit: the earlier commit's model units load where nothing failed in them; a failed
    unit is measured at HEAD, other kinds are never taken over, and the summary names the commit,
    the units and the source files changed since."""
    sha0, sha1, sha2 = _git_repo(tmp_path / "repo", monkeypatch)
    store = tmp_path / "repo" / "runs" / "bench"
    row = Row("resnet18", (224, 224), 1, "onnxruntime", "b", 2e-3, 1e-3, 0.28, (0.5,) * 3)
    ok = measure.rows_to_json([row], [])
    failed = measure.rows_to_json([row], [Skipped("resnet18", 16, "onnxruntime +plan (b)", "InvalidArgument")])
    old = cache.UnitCache(store / sha1)
    old.get("models", {"name": "resnet18", "batch": 1}, lambda: ok)
    old.get("models", {"name": "resnet18", "batch": 16}, lambda: failed)
    old.get("layers", {}, lambda: "old layers")

    new = cache.UnitCache.for_commit(store, sha1[:7])
    assert new.root == store / sha2 and new.reuse == store / sha1
    keep = dict(reusable=models._without_failure)
    assert new.get("models", {"name": "resnet18", "batch": 1}, lambda: "measured", label="resnet18 at batch 1",
                   **keep) == ok
    assert new.get("models", {"name": "resnet18", "batch": 16}, lambda: "measured at HEAD", **keep) == "measured at HEAD"
    assert new.get("layers", {}, lambda: "new layers") == "new layers"
    assert new.get("models", {"name": "resnet18", "batch": 1, "threads": 1}, lambda: "other key", **keep) == "other key"
    assert new.loaded == 1 and new.measured == 3 and new.reused == ["resnet18 at batch 1"]
    assert not (store / sha2 / new.path("models", {"name": "resnet18", "batch": 1}).name).exists()  # not copied
    text = new.summary()
    assert f"1 (resnet18 at batch 1) were measured at the earlier commit {sha1[:7]}" in text and "`src/a.py`" in text

    for bad, why in (("deadbeef", "not a commit"), (sha2, "HEAD itself"), (sha0, "no stored units")):
        with pytest.raises(cache.ReuseError, match=why):
            cache.UnitCache.for_commit(store, bad)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "checkout", "-q", sha0], cwd=tmp_path / "repo",
                   check=True)
    with pytest.raises(cache.ReuseError, match="not an ancestor"):
        cache.UnitCache.for_commit(store, sha1)
    with pytest.raises(cache.ReuseError, match="needs the unit cache"):
        cache.UnitCache.for_commit(None, sha1)
