"""Tables, plots and the analysis notebook, regenerated from real (tiny) runs on the generated
CIFAR-10 fixture; grouping of runs into rows."""

from __future__ import annotations

import json
import statistics
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from src import tables

from .conftest import ROOT
from .test_train import TINY, train


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    from src.data import make_cifar10_fixture

    data = make_cifar10_fixture(tmp_path_factory.mktemp("cifar"), "npz", n_train=600, n_test=300)
    root = tmp_path_factory.mktemp("runs")
    for model, seed in (("resnet20", 0), ("struct_resnet20_a", 0), ("struct_resnet20_a", 1)):
        train([f"+exp=cifar10/{model}", f"data.root={data}", f"seed={seed}", "profile=fixture", *TINY],
              root / model / f"seed{seed}")
    return root


def test_tables_are_regenerated_identically(runs_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    written = tables.write_tables(runs_dir, a)
    tables.write_tables(runs_dir, b)
    assert sorted(p.name for p in written) == ["cifar10.md", "cifar10_acc_vs_macs.png", "cifar10_training.png"]
    for p in written:
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    md = (a / "cifar10.md").read_text()
    assert "| struct_resnet20_a | regularized | 2 | 2 |" in md  # two seeds aggregated
    assert " +- " in md and "121,242 (0.45x)" in md and "Profile(s): fixture" in md
    assert "headline claims" in md


def test_tables_without_runs_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no summary.json under"):
        tables.write_tables(tmp_path, tmp_path / "out")


@pytest.mark.slow
def test_analysis_notebook_executes_on_fixture_runs(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNS_DIR", str(runs_dir))
    monkeypatch.setenv("PLOTS_DIR", str(tmp_path / "plots"))
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    text = "".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "3 runs under" in text and "relative residual" in text
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))
    assert (tmp_path / "plots" / "cifar10_acc_vs_macs.png").exists()


# ----------------------------------------------------------------------------- grouping
def _variant(runs_dir, tmp_path, name: str, **changes) -> None:
    """A copy of the seed-0 struct_resnet20_a run with some summary fields changed."""
    src = runs_dir / "struct_resnet20_a" / "seed0"
    dst = tmp_path / "runs" / name
    shutil.copytree(src, dst)
    s = json.loads((dst / "summary.json").read_text())
    s.update(changes)
    (dst / "summary.json").write_text(json.dumps(s))


def test_rows_group_runs_by_full_configuration(runs_dir, tmp_path):
    """Four seed-0 runs of one model with different settings are four rows, never one row of
    'four seeds'; runs of different commits are flagged; a repeated seed is an error."""
    base = json.loads((runs_dir / "struct_resnet20_a" / "seed0" / "summary.json").read_text())
    _variant(runs_dir, tmp_path, "a")
    _variant(runs_dir, tmp_path, "b", config_hash="epochs1hash", max_epochs=1, epochs=1)
    _variant(runs_dir, tmp_path, "c", config_hash="lam1hash", **{"lambda": 1.0})
    _variant(runs_dir, tmp_path, "d", config_hash="epochs4hash", max_epochs=4, epochs=4)
    md = tables.write_tables(tmp_path / "runs", tmp_path / "out")[0].read_text()
    main = md.split("\n## ")[0]  # the main table (the lambda and per-run sections list runs too)
    rows = [line for line in main.splitlines() if line.startswith("| struct_resnet20_a")]
    assert len(rows) == 4 and all("| regularized | 1 |" in r for r in rows), rows
    assert "[epochs" in md and "[lam1ha" in md  # rows of one model name their configuration
    assert "mixed commits" not in md
    # seeds of one configuration from two commits: one row, flagged
    _variant(runs_dir, tmp_path, "e", seed=7, git_sha="0" * 40)
    md = tables.write_tables(tmp_path / "runs", tmp_path / "out")[0].read_text()
    assert "**(mixed commits)**" in md and "rows from more than one code commit" in md
    assert base["config_hash"] in md
    # the same configuration and seed twice
    _variant(runs_dir, tmp_path, "f")
    with pytest.raises(ValueError, match="two runs of one configuration with seed 0"):
        tables.write_tables(tmp_path / "runs", tmp_path / "out")


def test_legacy_summaries_group_by_their_recorded_settings():
    runs = [dict(model="struct_resnet20_a", seed=0, epochs=e, max_epochs=e, **{"lambda": lam}, _dir=str(i))
            for i, (e, lam) in enumerate([(0, 2), (1, 2), (1, -1), (4, 2)])]
    assert len(tables.group_runs(runs)) == 4


def test_results_are_not_written_from_a_dirty_tree(runs_dir, monkeypatch):
    from src import provenance

    monkeypatch.setattr(provenance, "git_sha", lambda: "abc-dirty")
    with pytest.raises(provenance.DirtyTreeError, match="uncommitted changes"):
        tables.write_tables(runs_dir, ROOT / "results" / "never_written", allow_dirty=False)
    assert not (ROOT / "results" / "never_written").exists()
    with pytest.raises(SystemExit, match="refusing to write into"):
        tables.main(["--runs", str(runs_dir), "--out", str(ROOT / "results" / "never_written")])


# ----------------------------------------------------------------------------- the summary schema
def test_summaries_follow_the_schema(runs_dir, tmp_path):
    """src/summary.py describes every summary the pipeline writes; the tables refuse, naming the
    file, a summary that breaks it, and accept one of an older version (without the newer keys)."""
    from src import summary

    paths = sorted(runs_dir.rglob("summary.json"))
    assert len(paths) == 3
    for p in paths:
        s = summary.load(p)
        summary.validate(s, "classification", strict=True)
        assert [k for k in summary.keys("classification") if k in s] == list(s)  # npz runs: schema order
    assert all(f.meaning and f.types for f in summary.FIELDS)
    seg = summary.keys("segmentation")
    assert "test_miou_decomposed" in seg and not any("acc" in k for k in seg)
    # an older version's summary (no config_hash, overrides, ...) loads
    old = json.loads(paths[0].read_text())
    for key in ("profile", "config_hash", "run_hash", "overrides", "train_time_s", "resumed"):
        del old[key]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert summary.load(tmp_path / "old.json")["model"] == old["model"]
    with pytest.raises(summary.SummaryError, match="config_hash: missing"):
        summary.validate(old, strict=True)
    del old["params_dense"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(summary.SummaryError, match=r"(?s)old.json: .*params_dense: missing"):
        summary.load(tmp_path / "old.json")
    # a broken one stops the tables, named
    _variant(runs_dir, tmp_path, "bad", epochs="two", surprise=1)
    with pytest.raises(ValueError, match=r"(?s)bad/summary.json.*epochs='two': must be int.*unknown key\(s\) surprise"):
        tables.write_tables(tmp_path / "runs", tmp_path / "out")
    with pytest.raises(SystemExit, match="bad/summary.json"):
        tables.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    with pytest.raises(summary.SummaryError, match="unknown summary key"):
        summary.assemble("classification", {**json.loads(paths[0].read_text()), "surprise": 1})


def test_held_out_runs_get_official_robustness_per_run_and_lambda_sections(runs_dir, tmp_path):
    """Runs evaluated on a held-out primary set: the official-test columns, the robustness table
    (drops per run, mean +- std), the per-run table, the gap to dense paired by seed, and the
    lambda section choosing the best mean over the models swept."""
    extra = {"eval_set": "train[800:1000]", "official_test_acc": 50.0, "official_test_acc_exact": 60.0,
             "official_test_acc_jpeg": 48.0, "robust_acc_jpeg75": 40.0, "robust_acc_jpeg50": 30.0,
             "robust_acc_noise": 20.0, "robust_acc_blur": 10.0}
    dense = json.loads((runs_dir / "resnet20" / "seed0" / "summary.json").read_text())
    for seed, acc in ((0, 60.0), (1, 62.0)):  # dense baseline, two seeds
        dst = tmp_path / "runs" / f"dense{seed}"
        shutil.copytree(runs_dir / "resnet20" / "seed0", dst)
        (dst / "summary.json").write_text(json.dumps({**dense, **extra, "seed": seed, "test_acc_decomposed": acc}))
    for seed, acc in ((0, 59.0), (1, 62.5)):  # structured, lambda 2: gaps -1.0 and +0.5
        _variant(runs_dir, tmp_path, f"a{seed}", seed=seed, test_acc_decomposed=acc, test_acc_projected=acc,
                 test_acc_projected_raw=acc, bn_recalib=True, **extra)  # recalibration: no change
    for lam, acc, raw in ((0.5, 61.0, 61.5), (8.0, 58.0, 57.0)):  # recalibration: -0.5 and +1.0
        _variant(runs_dir, tmp_path, f"lam{lam}", config_hash=f"lam{lam}", test_acc_decomposed=acc,
                 test_acc_projected=acc, test_acc_projected_raw=raw, bn_recalib=True, tag=f"_lam{lam:g}",
                 **{"lambda": lam, **extra})
    md = tables.write_tables(tmp_path / "runs", tmp_path / "out")[0].read_text()
    assert "`train[800:1000]` (training images held out" in md
    assert "official exact (dec) | official JPEG (dec)" in md and "| 60.00 | 48.00 |" in md
    assert "| -0.25 +- 1.06 |" in md  # paired gap: mean of (-1.0, +0.5), its std
    assert "## Robustness" in md and "| blur | d(blur) |" in md
    assert "## Per run" in md and md.count("| struct_resnet20_a") >= 4
    assert "## Lambda" in md and "Chosen: lambda = 0.5" in md
    assert "### BatchNorm recalibration after projection" in md
    assert "| struct_resnet20_a_lam0.5 | 0 | 0.5 | 61.50 | 61.00 | -0.50 |" in md
    assert "| struct_resnet20_a_lam8 | 0 | 8 | 57.00 | 58.00 | +1.00 |" in md
    changes = (-0.5, 1.0, 0.0, 0.0)
    assert (f"Mean change from recalibration: +{statistics.mean(changes):.2f} +- {statistics.stdev(changes):.2f} "
            "over 4 runs (1 better, 1 worse, 2 equal).") in md


def test_claims_are_measured_from_the_rows_and_marked(runs_dir, tmp_path):
    """The claims section: (a)/(b) gaps to dense paired by seed against their allowed drops, (c)
    the largest change at projection + decomposition over every regularized run, (d) regularized
    vs direct route paired by seed; each marked holds / fails from the figures, never by hand."""
    dense = json.loads((runs_dir / "resnet20" / "seed0" / "summary.json").read_text())
    for seed, acc in ((0, 60.0), (1, 62.0)):
        dst = tmp_path / "runs" / f"dense{seed}"
        shutil.copytree(runs_dir / "resnet20" / "seed0", dst)
        (dst / "summary.json").write_text(json.dumps({**dense, "seed": seed, "test_acc_decomposed": acc}))
    for seed, trained, acc in ((0, 59.55, 59.5), (1, 61.4, 61.5)):  # gaps -0.5, -0.5; changes -0.05, +0.1
        _variant(runs_dir, tmp_path, f"a{seed}", seed=seed, test_acc_dense=trained, test_acc_projected=acc,
                 test_acc_decomposed=acc)
    a = json.loads((runs_dir / "struct_resnet20_a" / "seed0" / "summary.json").read_text())
    own = {f"{w}_dense": a[f"{w}_decomposed"] for w in ("params", "mults", "adds")}  # the direct route has no dense form
    for seed, acc in ((0, 59.0), (1, 62.0)):  # direct route: regularized minus direct = +0.5, -0.5
        _variant(runs_dir, tmp_path, f"direct{seed}", seed=seed, route="direct", config_hash="directhash",
                 test_acc_dense=acc, test_acc_projected=acc, test_acc_decomposed=acc, **own)
    _variant(runs_dir, tmp_path, "b0", model="struct_resnet20_b", config_hash="bhash", test_acc_dense=58.2,
             test_acc_projected=58.0, test_acc_decomposed=58.0)  # gap -2.0 (fails 1.5), change -0.2
    md = tables.write_tables(tmp_path / "runs", tmp_path / "out")[0].read_text()
    direct = next(line for line in md.splitlines() if line.startswith("| struct_resnet20_a | direct |"))
    ratio = a["params_decomposed"] / dense["params_dense"]
    assert f"| {a['params_decomposed']:,} ({ratio:.2f}x) |" in direct and ratio < 0.5  # vs the dense baseline
    claims = md.split("## Claims")[1].split("\n\n")[2].splitlines()[2:]
    assert [c.split(" |")[0] for c in claims] == ["| (a)", "| (b)", "| (c)", "| (d)"], claims
    assert claims[0].endswith("| -0.50 +- 0.00 (2 seeds) | holds |")
    assert claims[1].endswith("| -2.00 (1 seed) | fails |")
    assert "largest change -0.20 (struct_resnet20_b seed 0); 1 of 3 runs outside" in claims[2]
    assert claims[2].endswith("| fails: 1 run loses more than 0.1 |")
    assert claims[3].endswith("| +0.00 +- 0.71 (2 seeds) (within the seeds' spread) | fails (a tie) |")
    # a second configuration of struct_resnet20_b in the same recipe: left out of the claims, named
    _variant(runs_dir, tmp_path, "b0_other", model="struct_resnet20_b", config_hash="bhash2", **{"lambda": 0.5})
    md = tables.write_tables(tmp_path / "runs", tmp_path / "out")[0].read_text()
    claims = md.split("## Claims")[1]
    assert "| (b)" not in claims and "Left out of the claims: struct_resnet20_b (regularized)" in claims
    assert "| (a)" in claims
    # without a dense baseline (a lambda sweep) there is nothing to claim
    sweep = tmp_path / "sweep"
    _variant(runs_dir, sweep, "lam1", tag="_lam1")
    assert "## Claims" not in tables.write_tables(sweep / "runs", tmp_path / "out_sweep")[0].read_text()


def test_compression_runs_get_their_own_comparison_table(runs_dir, tmp_path):
    """Runs with a compression `method` go to compare.md (not the main table): per method and
    target, accuracy, the paired gap to dense, mults / params ratios, latency from latency.json
    when it is there, and both plots."""
    extra = {"eval_set": "train[800:1000]"}
    dense = json.loads((runs_dir / "resnet20" / "seed0" / "summary.json").read_text())
    for seed, acc in ((0, 60.0), (1, 62.0)):
        dst = tmp_path / "runs" / f"dense{seed}"
        shutil.copytree(runs_dir / "resnet20" / "seed0", dst)
        (dst / "summary.json").write_text(json.dumps({**dense, **extra, "seed": seed, "test_acc_decomposed": acc}))
    for seed, acc in ((0, 58.0), (1, 61.0)):
        dst = tmp_path / "runs" / f"prune{seed}"
        shutil.copytree(runs_dir / "resnet20" / "seed0", dst)
        (dst / "summary.json").write_text(json.dumps({
            **dense, **extra, "seed": seed, "test_acc_decomposed": acc, "tag": "_prune_l1_a", "method": "prune_l1",
            "target_mults_ratio": 0.45, "achieved_mults_ratio": 0.451, "init_from": f"runs/dense/seed{seed}/deploy.pt",
            "init_from_run": f"{dense['config_hash']} seed 0 at {'0' * 40}",  # seed 1 from the wrong run
            "mults_decomposed": 18_300_000, "params_decomposed": 150_000, "config_hash": "prunehash"}))
    _variant(runs_dir, tmp_path, "struct_a", test_acc_decomposed=60.5, **extra)  # the from-scratch structured row
    (tmp_path / "latency.json").write_text(json.dumps({"setup": "eager channels_last, 2 threads", "models": {
        "resnet20": {"batch64": {"ms": 10.0, "ratio": 1.0}, "batch1": {"ms": 1.0, "ratio": 1.0}},
        "prune_l1_a": {"batch64": {"ms": 6.0, "ratio": 0.6, "ratio_range": [0.55, 0.65]},
                       "batch1": {"ms": 0.9, "ratio": 0.9}},
        "struct_resnet20_a": {"batch64": {"ms": 9.0, "ratio": 0.9}, "batch1": {"ms": 1.2, "ratio": 1.2}},
        "struct_resnet20_a+plan": {"batch64": {"ms": 7.0, "ratio": 0.7, "plan": "18 decomposed"},
                                   "batch1": {"ms": 0.95, "ratio": 0.95, "plan": "18 dense"}}}}))
    written = tables.write_tables(tmp_path / "runs", tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["cifar10.md", "cifar10_acc_vs_macs.png", "cifar10_training.png", "compare.md",
                     "compare_acc_vs_latency.png", "compare_acc_vs_macs.png"]
    main = (tmp_path / "out" / "cifar10.md").read_text()
    assert "prune" not in main  # the baselines are not rows of the reproduction table
    md = (tmp_path / "out" / "compare.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| prune_l1 | A |"))
    assert "| 2 | 59.50 +- 2.12 | -1.50 +- 0.71 |" in row and "(0.45x)" in row
    assert "6.00 (0.60x [0.55-0.65])" in row and "0.90 (0.90x)" in row  # (ratio range over processes)
    scratch = next(line for line in md.splitlines() if line.startswith("| structured, from scratch | A |"))
    assert "| 9.00 (0.90x); plan: 7.00 (0.70x) | 1.20 (1.20x); plan: 0.95 (0.95x) |" in scratch
    assert md.startswith("# CIFAR-10: structured convolutions vs pruning and SVD")
    assert ("Starting points: 1 of 2 runs started from the dense run of their seed in this table (`init_from_run`). "
            "**Warning**: prune_l1_a seed 1 started from a run that is not this table's dense run of its seed.") in md
    # the verdicts: at equal mults paired by seed (seed 0 only: the structured row has one seed), at
    # equal latency against prune_l1 interpolated between its points (dense 10 ms / 61.0, A 6 ms / 59.5)
    mine = 60.5
    verdict = md.split("## Verdict at equal multiplications")[1]
    assert f"| A | structured, from scratch | prune_l1 | {mine - 58.0:+.2f} (1 seed) |" in verdict
    at64, at1 = 59.5 + 1.5 * (7.0 - 6.0) / 4.0, 59.5 + 1.5 * (0.95 - 0.9) / 0.1
    # prune_l1 A is faster but less accurate: no measured point dominates; interpolated, structured wins
    assert (f"| A | structured, from scratch | 64 | 7.00 (plan) | {mine:.2f} | prune_l1 | {at64:.2f} "
            f"({mine - at64:+.2f}) | - | structured |") in verdict
    assert f"| A | structured, from scratch | 1 | 0.95 (plan) | {mine:.2f} | prune_l1 | {at1:.2f} " in verdict
    again = tables.write_tables(tmp_path / "runs", tmp_path / "out2")
    for p, q in zip(written, again):
        assert p.read_bytes() == q.read_bytes(), p.name
    # latency.json's counts per architecture are checked against the runs: equal ones pass, another
    # architecture (e.g. re-measured after a change of the compression rules) is refused by name
    lat = json.loads((tmp_path / "latency.json").read_text())
    lat["architectures"] = {"prune_l1_a": {"params": 150_000, "mults": 18_300_000}}
    (tmp_path / "latency.json").write_text(json.dumps(lat))
    tables.write_tables(tmp_path / "runs", tmp_path / "out3")
    lat["architectures"]["prune_l1_a"]["mults"] = 18_000_000
    (tmp_path / "latency.json").write_text(json.dumps(lat))
    with pytest.raises(ValueError, match="measured prune_l1_a with 150,000 params and 18,000,000 mults"):
        tables.write_tables(tmp_path / "runs", tmp_path / "out4")


def test_accuracy_at_a_latency_is_read_off_the_measured_frontier():
    """Equal-latency comparison: linear between measured points on the accuracy-latency frontier
    (a point slower and less accurate than another is dropped), the best point beyond the slowest,
    nothing below the fastest."""
    points = [(10.0, 61.0), (6.0, 59.5), (11.0, 60.0)]
    assert tables._at_latency(points, 7.0) == pytest.approx(59.875)
    assert tables._at_latency(points, 10.5) == 61.0  # (11, 60) is off the frontier
    assert tables._at_latency(points, 20.0) == 61.0
    assert tables._at_latency(points, 5.0) is None


def _s(seed: int, acc: float, method: str | None = None, model: str = "resnet20") -> dict:
    return {"seed": seed, "test_acc_decomposed": acc, "model": model, **({"method": method} if method else {})}


def test_verdicts_name_the_dense_model_ties_and_points_they_cannot_compare():
    """Equal-latency verdicts: a structured model slower than dense loses to the dense model (named
    as such, not credited to the baseline); one faster than every baseline point is no comparison
    (not a win); a gap that shows as 0.00 is a tie whatever the float noise; equal-mults verdicts
    need no dense run."""
    dense = [_s(0, 90.0), _s(1, 92.0)]
    rows = {"prune_l1_a": [_s(0, 89.1, "prune_l1"), _s(1, 90.9, "prune_l1")],
            "structured_a": [_s(0, 89.1 + 1e-13, "structured"), _s(1, 90.9, "structured")]}
    lat = {"models": {"resnet20": {"batch64": {"ms": 10.0}, "batch1": {"ms": 1.0}},
                      "prune_l1_a": {"batch64": {"ms": 6.0}, "batch1": {"ms": 0.9}},
                      "structured_a": {"batch64": {"ms": 5.0}, "batch1": {"ms": 1.2}}}}
    text = "\n".join(tables._verdict(rows, {}, dense, lat))
    assert "| A | structured, fine-tuned | prune_l1 | +0.00 +- 0.00 (2 seeds) (within the seeds' spread) | tie |" in text
    assert ("| A | structured, fine-tuned | 64 | 5.00 (plain) | 90.00 | prune_l1 | - | dominates prune_l1 A "
            "| no comparison: faster than every prune_l1 point (fastest 6.00 ms) |") in text
    assert ("| A | structured, fine-tuned | 1 | 1.20 (plain) | 90.00 | prune_l1 | 91.00 (-1.00) | prune_l1 A dominates "
            "| the dense model (as fast or faster, more accurate) |") in text
    no_dense = "\n".join(tables._verdict(rows, {}, [], {}))
    assert "## Verdict at equal multiplications" in no_dense and "latency" not in no_dense
