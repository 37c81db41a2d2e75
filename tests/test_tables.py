"""Tables, plots and the analysis notebook, regenerated from real (tiny) runs on the generated
CIFAR-10 fixture; grouping of runs into rows."""

from __future__ import annotations

import json
import statistics
import shutil

import pytest

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


# ----------------------------------------------------------------------------- claims as data
def test_claims_are_data_and_no_model_is_named_in_the_report_code():
    """The claims, their models and the compared models live in src/tables/claims.yaml; no
    registered model name appears in the package's code."""
    from src.models import list_models

    assert [c.label for c in tables.GAP_CLAIMS] == ["a", "b", "e"]
    assert tables.CLAIMS["decomposition"]["tolerance"] == 0.1 and tables.CLAIMS["direct_route"]["label"] == "d"
    names = set(list_models())
    for path in sorted((ROOT / "src" / "tables").glob("*.py")):
        text = path.read_text()
        named = sorted(n for n in names if f'"{n}"' in text or f"'{n}'" in text)
        assert not named, f"{path.name} names models in code: {named} (put them in claims.yaml)"


# ----------------------------------------------------------------------------- gap against training length
TEMPLATES = ROOT / "results" / "medium" / "runs"  # committed summaries: the schema's keys with real values


def _fake_run(root, model: str, seed: int, epochs: int, acc: float, train_acc: float, *, profile: str = "long",
              eval_set: str = "train[45000:50000]", train_subset: int = 45000, tag: str | None = None):
    """A finished run's folder (summary.json after src/summary.py's schema, metrics.csv with one row per
    epoch) with the given final primary-set accuracy and final-epoch train/acc (in %)."""
    from src import summary

    s = summary.load(TEMPLATES / model / "seed0" / "summary.json")
    tag = f"_ep{epochs}" if tag is None else tag
    cfg = f"{model}|{profile}|{epochs}|{eval_set}"
    s.update(seed=seed, epochs=epochs, max_epochs=epochs, tag=tag, profile=profile, config_hash=cfg,
             run_hash=f"{cfg}|{seed}", eval_set=eval_set, train_subset=train_subset, git_sha="f" * 40,
             **{f"test_acc_{st}": acc for st in summary.STAGES})
    run = root / f"{model}{tag}" / f"seed{seed}"
    run.mkdir(parents=True)
    summary.write(run / "summary.json", s)
    rows = ["epoch,train/acc,val/acc"] + [f"{e},{(train_acc if e == epochs - 1 else 10.0) / 100},{acc / 100}"
                                          for e in range(epochs)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")


def _gaps(root, lengths: dict[int, dict[int, tuple[float, float]]], structured: str = "struct_resnet20_a", **kw):
    """Pairs per length: {epochs: {seed: (gap, train-acc gap)}} (dense at 90 + seed)."""
    for epochs, seeds in lengths.items():
        for seed, (gap, tgap) in seeds.items():
            if not (root / f"resnet20{kw.get('tag', f'_ep{epochs}')}" / f"seed{seed}").exists():  # shared by A and B
                _fake_run(root, "resnet20", seed, epochs, 90.0 + seed, 95.0, **kw)
            _fake_run(root, structured, seed, epochs, 90.0 + seed + gap, 95.0 + tgap, **kw)


def test_fit_recovers_a_known_gap_curve():
    from src.tables import length

    g_inf, b = -0.5, -20.0
    points = [(e, g_inf + b / e) for e in (15, 30, 60) for _ in range(3)]
    assert length.fit(points) == pytest.approx((g_inf, b), abs=1e-9)
    with pytest.raises(ValueError, match="two lengths"):
        length.fit([(15, -1.0), (15, -2.0)])
    boot = length.bootstrap({15: [-1.0, -2.0, -3.0], 60: [-0.5, -0.7]}, 200, 0)
    assert boot == length.bootstrap({15: [-1.0, -2.0, -3.0], 60: [-0.5, -0.7]}, 200, 0)  # fixed RNG seed
    assert len({round(g, 9) for g, _ in boot}) > 10


def test_gap_against_training_length_from_synthetic_runs(tmp_path):
    """Noiseless gaps g_inf + b / E at 15 / 30 / 60 epochs (on the primary split; medium's 15 in a
    sibling folder) and an 8-epoch pair on another split: the section lists each length's per-seed
    gaps and the train-accuracy gap, fits g_inf and b exactly (bootstrap spread 0), extrapolates to
    200 epochs as such, keeps the other split out of the fit, and the long table's claims are
    measured per length. The folders come from claims.yaml's convention (results/long reads
    results/medium/runs and results/medium/gap/runs); output is byte-identical when made twice."""
    g_inf, b = -0.5, -20.0

    def gap(e):
        return g_inf + b / e

    results = tmp_path / "results"
    _gaps(results / "long" / "runs", {30: {s: (gap(30), -1.0) for s in (0, 1, 2)},
                                      60: {s: (gap(60), -0.5) for s in (0, 1)}})
    _gaps(results / "long" / "runs", {30: {0: (-3.0, -3.5)}, 60: {0: (-2.0, -3.0)}}, structured="struct_resnet20_b")
    _gaps(results / "medium" / "runs", {15: {s: (gap(15), -2.0) for s in (0, 1, 2)}}, profile="medium", tag="")
    _gaps(results / "medium" / "gap" / "runs", {8: {0: (-5.0, -2.5)}}, profile="medium_gap",
          eval_set="train[40000:45000]", train_subset=40000)
    written = tables.write_tables(results / "long" / "runs", tmp_path / "a")
    assert sorted(p.name for p in written) == ["cifar10.md", "cifar10_acc_vs_macs.png", "cifar10_gap_vs_epochs.png",
                                               "cifar10_training.png"]
    md = (tmp_path / "a" / "cifar10.md").read_text()
    claims = md.split("## Claims")[1].split("\n## ")[0]
    for e in (30, 60):
        for c in ("a", "b", "c"):
            assert f"| ({c}) (long, {e} epochs, train 45000, eval train[45000:50000]) |" in claims, (c, e)
    section = md.split("## Gap against training length")[1].split("\n## ")[0]
    assert "Runs from: `" in section and "medium/gap/runs`" in section
    assert (f"| (a) struct_resnet20_a - resnet20 | 30 | primary | long | 3 | s0 {gap(30):+.2f}, s1 {gap(30):+.2f}, "
            f"s2 {gap(30):+.2f} | {gap(30):+.2f} +- 0.00 | s0 -1.00, s1 -1.00, s2 -1.00 | -1.00 +- 0.00 |") in section
    assert "| (a) struct_resnet20_a - resnet20 | 15 | primary | medium | 3 |" in section
    assert ("| (a) struct_resnet20_a - resnet20 | 8 | `train[40000:45000]` (other split, not in the fit) "
            "| medium_gap | 1 | s0 -5.00 | -5.00 | s0 -2.50 | -2.50 |") in section
    assert "trained on 40,000 images" in section
    # the fit over 15 / 30 / 60 only (the 8-epoch pair would pull it): exact, no bootstrap spread
    assert (f"| (a) | 15, 30, 60 | 8 | {g_inf:+.2f} +- 0.00 [{g_inf:+.2f}, {g_inf:+.2f}] | {b:+.1f} +- 0.0 "
            f"| {gap(200):+.2f} +- 0.00 [{gap(200):+.2f}, {gap(200):+.2f}] |") in section
    assert "| (b) | 30, 60 | 2 |" in section  # one seed per length: fitted, the bootstrap flat
    assert "understates the uncertainty: (b) at 30 epochs, (b) at 60 epochs" in section
    assert "**extrapolation**" in section and "gap at 200 epochs (extrapolation)" in section
    assert "Plots: `cifar10_acc_vs_macs.png`, `cifar10_training.png`, `cifar10_gap_vs_epochs.png`." in md
    from src.tables import length

    st = length.study("cifar10", tables.load_runs(results / "long" / "runs"),
                      length.default_folders(results / "long" / "runs"), results / "long" / "runs")
    assert (st.fits["a"].g_inf, st.fits["a"].b) == pytest.approx((g_inf, b), abs=1e-9)
    # made twice: the same bytes, the plot included
    again = tables.write_tables(results / "long" / "runs", tmp_path / "b")
    for p, q in zip(written, again):
        assert p.read_bytes() == q.read_bytes(), p.name
    # with one length on the primary split (no long runs finished yet): said, not fitted
    only = tables.write_tables(results / "medium" / "runs", tmp_path / "c",
                               length_runs=[results / "medium" / "gap" / "runs", tmp_path / "missing"])
    md = only[0].read_text()
    assert "| (a) | 15 | 3 | not enough lengths to fit (primary split: 15 epochs only) | - | - |" in md
    assert "| (b) | - | 0 | not enough lengths to fit (no pair on the primary split) | - | - |" in md
    assert "missing` not found" in md
    # other folders: no section unless asked for
    assert "## Gap against training length" not in tables.write_tables(results / "medium" / "runs",
                                                                       tmp_path / "d")[0].read_text()
    # the README summary reads the long table: per claim, one line per length, then the fit
    from src.tables import readme

    (tmp_path / "res" / "long").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "cifar10.md", tmp_path / "res" / "long" / "cifar10.md")
    block = readme.summary_block(tmp_path / "res").splitlines()
    a_rows = [line for line in block if line.startswith("| (a)")]
    assert [r.split(" | ")[2] for r in a_rows[:2]] == ["[long](results/long/cifar10.md), 30 epochs",
                                                       "[long](results/long/cifar10.md), 60 epochs"]
    assert a_rows[0].endswith(f"| {gap(30):+.2f} +- 0.00 (3 seeds) | [long](results/long/cifar10.md), 30 epochs "
                              "| not shown at 30 epochs (more than 1 point behind) |")
    assert a_rows[1].endswith("| holds at 60 epochs |")
    assert "gap against training length, fit g_inf + b / E" in a_rows[2] and f"g_inf {g_inf:+.2f} +- 0.00" in a_rows[2]
    assert "extrapolation beyond the longest run, not a measurement" in a_rows[2]


def test_readme_summary_is_written_between_its_markers(tmp_path, capsys):
    """`python -m src.tables --summary FILE` replaces what lies between the markers (and nothing
    else) with the summary of the committed tables; a file without the markers is an error."""
    from src.tables import readme

    page = tmp_path / "README.md"
    page.write_text(f"# title\n\nbefore\n{readme.START}\nstale line\n{readme.END}\nafter\n")
    tables.main(["--summary", str(page)])
    text = page.read_text()
    block = readme.summary_block()
    assert text == f"# title\n\nbefore\n{readme.START}\n{block}{readme.END}\nafter\n"
    assert readme.block_in(page) == block
    tables.main(["--summary", str(page)])
    assert page.read_text() == text  # idempotent
    lines = block.splitlines()
    assert lines[0] == "| claim | evidence | profile | outcome |"
    first = next(line for line in lines if line.startswith("| (a)"))
    assert "[medium](results/medium/cifar10.md), 15 epochs" in first
    assert any("equal multiplications" in line for line in lines)
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no '<!-- results-summary:start -->'"):
        tables.main(["--summary", str(tmp_path / "plain.md")])
