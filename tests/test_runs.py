"""Around a run: fetching CIFAR-10, run identity (one directory, one run; names that follow the
settings), values refused before any work, and errors a person can read."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from src import runs
from src.config_check import ConfigError
from src.data import load_cifar10, make_cifar10_archive, make_cifar10_fixture

from .conftest import ROOT
from .test_train import CONF, TINY, _env, train


# ----------------------------------------------------------------------------- download
@pytest.fixture
def served_archive(tmp_path):
    """A generated cifar-10-python.tar.gz in torchvision's exact format, served over HTTP on
    localhost: (url, md5)."""
    archive = make_cifar10_archive(tmp_path / "www" / "cifar-10-python.tar.gz", n_train=500, n_test=100)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", hashlib.md5(archive.read_bytes()).hexdigest()
    server.shutdown()


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"  # nothing listens there now


def test_archive_fixture_is_torchvisions_format(tmp_path):
    """The generated archive reads with torchvision's own CIFAR10 class (its per-file checksums
    aside), so the download test exercises the real format."""
    import tarfile

    import numpy as np
    import torchvision

    archive = make_cifar10_archive(tmp_path / "cifar-10-python.tar.gz", n_train=50, n_test=20)
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    assert names[0] == "cifar-10-batches-py" and "cifar-10-batches-py/data_batch_5" in names
    assert "cifar-10-batches-py/batches.meta" in names and "cifar-10-batches-py/test_batch" in names
    tarfile.open(archive).extractall(tmp_path, filter="data")

    class Unchecked(torchvision.datasets.CIFAR10):  # the real files' MD5s cannot match generated ones
        train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
        test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}

    tv = Unchecked(str(tmp_path), train=True)
    ours = load_cifar10(tmp_path, download="false")
    assert np.array_equal(tv.data, ours.train_x) and list(tv.targets) == ours.train_y.tolist()
    assert tv.classes[0] == "airplane" and len(ours.test_x) == 20


def test_download_fetches_verifies_and_reads(tmp_path, served_archive, capsys):
    url, md5 = served_archive
    root = tmp_path / "data" / "cifar10"
    s = train(["+exp=cifar10/resnet20", f"data.root={root}", f"data.url={url}", f"data.md5={md5}",
               "data.train_subset=200", "data.test_subset=100", "data.batch_size=50", "trainer.max_epochs=1",
               "trainer.progress_bar=none", "structure.bn_recalib_batches=1"], tmp_path / "run")
    out = capsys.readouterr().out
    assert f"CIFAR-10 not found at {root.resolve()}: downloading {url} -> {root.resolve()}/cifar-10-python.tar.gz" in out
    assert (root / "cifar-10-batches-py" / "data_batch_5").exists()
    assert s["epochs"] == 1 and s["test_acc_decomposed"] is not None
    # the second time the copy is there: nothing is fetched
    a = load_cifar10(root, download="auto", url=_closed_port_url(), md5=md5)
    assert a.train_x.shape == (500, 32, 32, 3) and a.source.startswith("torchvision:")


def test_download_with_a_wrong_checksum_is_refused(tmp_path, served_archive):
    url, _ = served_archive
    with pytest.raises(FileNotFoundError, match=r"(?s)downloading it failed \(MD5 mismatch: expected 0+, got [0-9a-f]{32}\)"):
        load_cifar10(tmp_path / "c", url=url, md5="0" * 32)
    assert not (tmp_path / "c").exists()  # nothing half-done is left behind
    with pytest.raises(FileNotFoundError):
        load_cifar10(tmp_path / "d" / "e" / "f", url=_closed_port_url())
    assert not (tmp_path / "d").exists()  # nor the folders made for it


def test_offline_message_says_where_it_looked_and_what_to_do(tmp_path):
    url = _closed_port_url()
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10(tmp_path / "nowhere", url=url)
    msg = str(e.value)
    for part in (f"no CIFAR-10 at {tmp_path}/nowhere", f"downloading it failed", "cifar10_train.npz",
                 "cifar-10-batches-py", "CIFAR_ROOT=/path/to/cifar10", "data.root=", "extract it into"):
        assert part in msg, part


def test_main_job_offline_stops_at_the_data_step_with_one_message(tmp_path):
    """`make reproduce-cifar`'s driver on a machine without the data and without internet: one
    message naming the folder and how to get it, no traceback, exit status 2, no run started."""
    out = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--profile", "quick",
                          "--data", str(tmp_path / "nodata"), "--runs", str(tmp_path / "runs"),
                          f"data.url={_closed_port_url()}"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.startswith(f"error: no CIFAR-10 at {tmp_path}/nodata") and out.stderr.count("error:") == 1
    assert "CIFAR_ROOT=" in out.stderr and "cifar-10-python.tar.gz" in out.stderr and "extract it into" in out.stderr
    assert "[1/3]" not in out.stdout and not (tmp_path / "runs").exists() and not (tmp_path / "nodata").exists()


def test_one_name_for_the_data_root_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_ROOT", str(tmp_path / "from_env"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["+exp=cifar10/resnet20"])
    assert cfg.data.root == str(tmp_path / "from_env")
    assert "CIFAR10_ROOT" not in (CONF / "data" / "cifar10.yaml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "CIFAR_ROOT" in makefile and "shared" not in makefile


# ----------------------------------------------------------------------------- run identity
def _compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_default_run_name_changes_with_every_result_changing_setting():
    names = {}
    for extra in ([], ["structure.lam=0.1"], ["structure.lam=0.5"], ["trainer.max_epochs=15"],
                  ["data.train_subset=100"], ["optim.lr=0.05"]):
        cfg = _compose_with_hydra(["+exp=cifar10/struct_resnet20_a", *extra])
        names[tuple(extra)] = cfg.run_name
    assert names[()] == "cifar10/struct_resnet20_a/seed0"
    assert names[("structure.lam=0.1",)] == "cifar10/struct_resnet20_a+structure.lam=0.1/seed0"
    assert len(set(names.values())) == len(names), names
    # where the data lives, the progress bar and the seed do not make a new configuration
    cfg = _compose_with_hydra(["+exp=cifar10/struct_resnet20_a", "data.root=/x", "trainer.progress_bar=none", "seed=3"])
    assert cfg.run_name == "cifar10/struct_resnet20_a/seed3"
    long = _compose_with_hydra(["+exp=cifar10/struct_resnet20_a", "structure.lam=0.123456", "optim.lr=0.0123456",
                                "trainer.max_epochs=17", "data.train_subset=12345", "optim.weight_decay=0.00012345"])
    assert long.run_name.startswith("cifar10/struct_resnet20_a+h") and len(long.run_name) < 60
    GlobalHydra.instance().clear()


def test_config_hash_ignores_the_seed_and_the_data_location(tmp_path):
    def ident(*overrides):
        exp = [] if any(o.startswith("+exp=") for o in overrides) else ["+exp=cifar10/struct_resnet20_a"]
        cfg = _compose_with_hydra([*exp, *overrides])
        with open_dict(cfg):
            del cfg["hydra"]
        return runs.identity(cfg)

    base = ident()
    assert runs.config_hash(base) == runs.config_hash(ident("seed=2", "data.root=/elsewhere"))
    assert runs.config_hash(base, exclude_seed=False) != runs.config_hash(ident("seed=2"), exclude_seed=False)
    for other in (["structure.lam=0.5"], ["trainer.max_epochs=7"], ["+exp=cifar10/struct_resnet20_b"]):
        assert runs.config_hash(ident(*other)) != runs.config_hash(base), other
    assert runs.diff(base, ident("structure.lam=0.5")) == ["structure.lam: 2.0 -> 0.5"]
    GlobalHydra.instance().clear()


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_directory_is_one_run(tmp_path, cifar_npz):
    run_dir = tmp_path / "a_run"
    base = ["+exp=cifar10/struct_resnet20_a", f"data.root={cifar_npz}", *TINY, "trainer.max_epochs=1"]
    first = train(base, run_dir)
    before = _snapshot(run_dir)
    # into the finished run, with other settings: refused, listing the keys, nothing changed
    with pytest.raises(runs.RunDirError, match=r"(?s)holds a finished run with a different configuration.*"
                                                r"model.name: 'struct_resnet20_a' -> 'struct_resnet20_b'.*"
                                                r"structure.lam: 2.0 -> 0.5.*Nothing was changed on disk"):
        train(["+exp=cifar10/struct_resnet20_b", "structure.lam=0.5", f"data.root={cifar_npz}", *TINY,
               "trainer.max_epochs=1"], run_dir)
    assert _snapshot(run_dir) == before
    # the same settings (the data elsewhere, another progress bar) report the finished run
    assert train([*base, "trainer.progress_bar=simple"], run_dir) == first
    assert _snapshot(run_dir) == before
    # an unfinished run (checkpoint, no summary): refused as well, its history untouched
    (run_dir / "summary.json").unlink()
    before = _snapshot(run_dir)
    with pytest.raises(runs.RunDirError, match=r"(?s)holds an unfinished run.*refusing to resume.*"
                                                r"trainer.max_epochs: 1 -> 2"):
        train(["+exp=cifar10/struct_resnet20_a", f"data.root={cifar_npz}", *TINY], run_dir)
    assert _snapshot(run_dir) == before


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=0", "trainer.max_epochs=0: must be an integer >= 1"),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1: must be an integer >= 1"),
    ("structure.lam=-1", "structure.lam=-1: must be a number >= 0"),
    ("data.train_subset=0", "data.train_subset=0: must be an integer >= 1 or null"),
    ("data.train_subset=-100", "data.train_subset=-100: must be an integer >= 1 or null"),
    ("trainer.progress_bar=foo", "trainer.progress_bar='foo': must be one of rich, simple, none"),
    ("structure.route=sideways", "structure.route='sideways': must be one of regularized, direct"),
    ("data.batch_size=0", "data.batch_size=0: must be an integer >= 1"),
    ("optim.lr=0", "optim.lr=0: must be a number > 0"),
    ("optim.momentum=1.5", "optim.momentum=1.5: must be a number >= 0 and < 1"),
    ("structure.bn_recalib=maybe", "structure.bn_recalib='maybe': must be true or false"),
    ("data.download=sometimes", "data.download='sometimes': must be one of auto, true, false"),
    ("optim.schedule=linear", "optim.schedule='linear': must be one of cosine, steps, poly, exp"),
    ("seed=-3", "seed=-3: must be an integer >= 0"),
])
def test_nonsense_values_are_refused_before_any_work(tmp_path, override, message):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        train(["+exp=cifar10/struct_resnet20_a", f"data.root={tmp_path}/no_data_needed", override], run_dir)
    assert not run_dir.exists()


def test_all_problems_are_listed_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        train(["+exp=cifar10/resnet20", "trainer.max_epochs=0", "structure.lam=-1", "trainer.progress_bar=foo"],
              tmp_path / "run")
    assert str(e.value).count("\n  ") == 3


def test_subset_larger_than_the_split_is_refused(tmp_path, cifar_npz):
    with pytest.raises(ValueError, match=r"data.train_subset=5000: must be between 1 and 1000"):
        train(["+exp=cifar10/resnet20", f"data.root={cifar_npz}", *TINY, "data.train_subset=5000"], tmp_path / "r")


# ----------------------------------------------------------------------------- readable errors
def _run_cli(args: list[str], tmp_path: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env={**_env(), **(env_extra or {})}, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["config", "model", "rule", "data", "ema"])
def test_user_errors_print_one_message_without_a_traceback(tmp_path, cifar_npz, case):
    args = {
        "config": ["+exp=cifar10/resnet20", "trainer.max_epochs=0"],
        "model": ["+exp=cifar10/resnet20", "model.name=resnet21", f"data.root={cifar_npz}"],
        "rule": ["+exp=cifar10/resnet20", "structure=cifar_resnet_a", "structure.rules.0.n=7", f"data.root={cifar_npz}"],
        "data": ["+exp=cifar10/resnet20", f"data.root={tmp_path}/nothing", "data.download=false"],
        "ema": ["+exp=cifar10/resnet20", "+optim.ema_decay=2", f"data.root={cifar_npz}"],
    }[case]
    out = _run_cli([*args, "trainer.progress_bar=none"], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    expected = {"config": "trainer.max_epochs=0", "model": "unknown model 'resnet21'", "rule": "n=7",
                "data": f"no CIFAR-10 at {tmp_path}/nothing", "ema": "optim.ema_decay=2: must be a number"}[case]
    assert expected in out.stderr, out.stderr
    if case not in ("config", "ema"):  # the run started: its log keeps the traceback
        assert "Traceback" in (tmp_path / "run" / "train.log").read_text()
    # the debug switch shows the traceback
    debug = _run_cli([*args, "trainer.progress_bar=none"], tmp_path / "debug", {"HYDRA_FULL_ERROR": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_finished_run_says_where_everything_went(tmp_path, cifar_npz):
    out = _run_cli(["+exp=cifar10/struct_resnet20_b", f"data.root={cifar_npz}", *TINY, "trainer.max_epochs=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for part in ("finished struct_resnet20_b", "trained", "projected", "decomposed", "x dense", "deploy.pt",
                 "metrics.csv", str(tmp_path / "run")):
        assert part in out.stdout, part
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert f"{s['test_acc_decomposed']:.2f}" in out.stdout


def test_make_help_lists_the_targets():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for target in ("test", "test-all", "reproduce-cifar", "tables", "bench", "install", "help"):
        assert f"make {target}" in out.stdout, target


def test_tables_help_describes_every_option():
    out = subprocess.run([sys.executable, "-m", "src.tables", "--help"], cwd=ROOT, env=_env(), capture_output=True,
                         text=True)
    assert out.returncode == 0
    for option in ("--runs", "--out", "--allow-dirty", "--quiet"):
        assert option in out.stdout


def test_fixture_layouts_load_identically(tmp_path):
    npz = load_cifar10(make_cifar10_fixture(tmp_path / "a", "npz", 100, 30), download="false")
    tv = load_cifar10(make_cifar10_fixture(tmp_path / "b", "torchvision", 100, 30), download="false")
    assert (npz.train_x == tv.train_x).all() and (npz.test_y == tv.test_y).all()
    assert npz.test_exact is not None and tv.test_exact is None


def test_reproduce_trains_into_runs_then_collects_on_request_and_tables_regenerate(tmp_path, cifar_npz):
    """The smoke profile end to end: by default the runs train into --runs and their tables are
    written there (nothing else is written); run again with --collect, the finished runs are
    skipped by src.train and their logs copied (no checkpoints), and the tables regenerate byte for
    byte from the copies alone."""
    from src import tables

    cmd = [sys.executable, "-m", "experiments.reproduce", "--profile", "smoke", "--data", str(cifar_npz),
           "--runs", str(tmp_path / "runs"), "--jobs", "2", "--threads", "1"]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for model in ("resnet20", "struct_resnet20_a"):  # side by side, one thread each, output to a file per run
        text = (tmp_path / "runs" / "smoke" / model / "seed0.out").read_text()
        assert f"finished {model}" in text, text[-2000:]
        assert json.loads((tmp_path / "runs" / "smoke" / model / "seed0" / "summary.json").read_text())["threads"] == 1
    user_table = tmp_path / "runs" / "smoke" / "tables" / "cifar10.md"
    assert f"wrote {user_table}" in out.stdout and "| struct_resnet20_a |" in out.stdout
    assert not (ROOT / "results" / "smoke").exists() and "copied" not in out.stdout
    again = subprocess.run(cmd + ["--collect", "--results", str(tmp_path / "collected")], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("run already complete") == 2, again.stdout[-2000:]
    for model in ("resnet20", "struct_resnet20_a"):
        files = sorted(p.name for p in (tmp_path / "collected" / model / "seed0").iterdir())
        assert files == ["config.yaml", "deploy.pt", "metrics.csv", "overrides.yaml", "summary.json"], files
    a = tables.write_tables(tmp_path / "collected", tmp_path / "t1")
    b = tables.write_tables(tmp_path / "runs" / "smoke", tmp_path / "t2")
    for p, q in zip(a, b):
        assert p.read_bytes() == q.read_bytes(), p.name
    assert (tmp_path / "t1" / "cifar10.md").read_bytes() == user_table.read_bytes()


class Launched(Exception):
    """Raised by a stand-in for subprocess.Popen: the driver got as far as starting a run."""


def _launches(monkeypatch):
    from experiments import reproduce

    def popen(cmd, *a, **k):
        raise Launched(cmd)

    monkeypatch.setattr(reproduce.subprocess, "Popen", popen)


def test_committed_logs_never_make_a_users_run_a_no_op(tmp_path, monkeypatch, capsys):
    """A fresh clone holds the committed logs of the quick runs in results/quick/runs: the user's
    `make reproduce-cifar PROFILE=quick` still trains them (into runs/); only --collect (the
    maintainers' mode) skips runs whose logs are collected."""
    from experiments import reproduce

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "cifar10"
    data.mkdir()
    (data / "cifar10_train.npz").write_bytes(b"")  # present (read by the runs, which do not start here)
    done = tmp_path / "results" / "quick" / "runs" / "resnet20" / "seed0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    _launches(monkeypatch)
    with pytest.raises(Launched) as e:
        reproduce.main(["--profile", "quick", "--data", str(data), "--only", "resnet20"])
    assert "hydra.run.dir=runs/quick/resnet20/seed0" in e.value.args[0]
    assert "skipped" not in capsys.readouterr().err
    reproduce.main(["--profile", "quick", "--data", str(data), "--only", "resnet20", "--collect", "--allow-dirty"])
    out, err = capsys.readouterr()
    assert "1 run(s) of quick already have their logs in results/quick/runs (resnet20/seed0): skipped" in err
    assert "0 runs" in out and not Path("runs").exists()
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--profile", "quick", "--data", str(data), "--rerun-collected"])
    assert e.value.code == 2 and "--rerun-collected goes with --collect" in capsys.readouterr().err


def test_a_gpu_profile_without_a_gpu_is_refused_with_an_estimate(tmp_path, monkeypatch, capsys):
    """PROFILE=full (the default) on a machine without a GPU: one message that it is the paper's
    GPU recipe, its time here (from a measured throughput), PROFILE=quick, and how to force it;
    exit status 2 before any data step or run. --force-cpu runs it."""
    import torch

    from experiments import reproduce

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(reproduce, "_train_images_per_s", lambda: 100.0)
    monkeypatch.setattr(reproduce, "_data_problem", lambda *a: pytest.fail("the data step comes after"))
    _launches(monkeypatch)
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--data", str(tmp_path), "--runs", str(tmp_path / "runs")])  # the default profile
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: PROFILE=full is the paper's")
    for part in ("GPU recipe", "no GPU", "39 runs x 200 epochs x 50,000 images", "100 images/s", "days here",
                 "PROFILE=quick", "FORCE=1", "--force-cpu"):
        assert part in err, part
    hours, shape = reproduce.cpu_estimate(reproduce.commands("full", "d", Path("runs"), []), 100.0)
    assert f"about {hours / 24:.0f} days" in err and 50 < hours / 24 < 5000
    # the sum: every smoke run is a resnet20-sized model, 1 epoch on 512 images
    smoke = reproduce.commands("smoke", "d", Path("runs"), [])
    assert reproduce.cpu_estimate(smoke, 100.0) == (pytest.approx(2 * 512 / 100 / 3600), "2 runs x 1 epochs x 512 images")
    monkeypatch.setattr(reproduce, "_data_problem", lambda *a: None)
    with pytest.raises(Launched):
        reproduce.main(["--data", str(tmp_path), "--runs", str(tmp_path / "runs"), "--force-cpu"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(Launched):
        reproduce.main(["--data", str(tmp_path), "--runs", str(tmp_path / "runs")])


def test_make_reproduce_writes_results_only_when_asked():
    """`make reproduce-cifar` trains into runs/ and leaves results/ alone; COLLECT=1 collects and
    regenerates the committed tables (make tables); FORCE=1 runs a GPU profile on a CPU."""
    def recipe(*args):
        out = subprocess.run(["make", "-n", "-o", ".venv/.installed", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    plain = recipe("reproduce-cifar", "PROFILE=quick")
    assert "experiments.reproduce" in plain and "--collect" not in plain and "src.tables" not in plain
    assert "--force-cpu" not in plain and "--profile quick" in plain
    collect = recipe("reproduce-cifar", "PROFILE=quick", "COLLECT=1")
    assert "--collect" in collect and "src.tables --runs results/quick/runs --out results/quick" in collect
    assert "--force-cpu" in recipe("reproduce-cifar", "FORCE=1")


def test_medium_profile_waits_for_its_lambda_and_filters_runs(tmp_path, monkeypatch, capsys):
    """Until the sweep has chosen lambda, the medium profile runs only what does not depend on it,
    says so, and exits non-zero; --only picks runs by label and refuses unknown labels."""
    from experiments import reproduce

    monkeypatch.setitem(reproduce.CHOSEN, "medium_lambda", None)
    labels = [r[0] for r in reproduce.runs_of("medium")]
    assert labels.count("resnet20") == 3 and labels.count("struct_resnet20_a_direct") == 3
    assert labels.count("resnet56") == 1 and labels.count("struct_resnet56_a") == 1 and len(labels) == 14
    monkeypatch.setattr(reproduce.subprocess, "Popen", lambda *a, **k: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--profile", "medium", "--data", str(tmp_path), "--only", "struct_resnet20_a",
                        "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert e.value.code == 3 and "lambda is not chosen yet" in err and "struct_resnet20_a" in err
    assert "conf/profiles/_chosen.yaml" in err
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--profile", "medium", "--data", str(tmp_path), "--only", "resnet21"])
    assert e.value.code == 2 and "--only resnet21: not a run of profile medium" in capsys.readouterr().err
    monkeypatch.setitem(reproduce.CHOSEN, "medium_lambda", 0.5)
    monkeypatch.setitem(reproduce.CHOSEN, "medium_bn_recalib", False)
    cmds = reproduce.commands("medium", "/d", Path("runs"), [], only=["struct_resnet20_b"])
    assert len(cmds) == 3 and all("structure.lam=0.5" in c and "data.holdout=[45000,50000]" in c
                                  and "structure.bn_recalib=false" in c for c in cmds)
    assert not any("structure.bn_recalib" in a for c in reproduce.commands("medium", "/d", Path("runs"), [],
                                                                            only=["resnet20"]) for a in c)
    compare = reproduce.commands("medium_compare", "/d", Path("runs"), [])
    assert all(("structure.bn_recalib=false" in c) == ("+exp=cifar10/compress/structured_a" in c
                                                         or "+exp=cifar10/compress/structured_b" in c) for c in compare)
    # the structured fine-tunes take the comparison's own lambda (not the from-scratch one), the rest none
    assert all(("structure.lam=" in " ".join(c)) == ("structure.bn_recalib=false" in c) for c in compare)
    assert sum(f"structure.lam={reproduce.CHOSEN['compare_lambda']}" in c for c in compare) == 4
    sweep = reproduce.commands("medium_sweep", "/d", Path("runs"), [])
    assert all("data.holdout=[40000,45000]" in c and "data.train_subset=40000" in c and "eval.official_test=false" in c
               for c in sweep)  # lambda is chosen without the test set
    gap = reproduce.commands("medium_gap", "/d", Path("runs"), [])  # the why-experiment: validation split only
    assert len(gap) == 5 and all("data.holdout=[40000,45000]" in c and "eval.official_test=false" in c for c in gap)
    assert sum("structure.lam=0.5" in c for c in gap) == 3  # every structured run at the medium lambda
    # dense and structured share length and tag (what the table pairs them by)
    pairs = sorted(tuple(a for a in c if a.startswith(("tag=", "trainer.max_epochs="))) for c in gap)
    assert pairs.count(("trainer.max_epochs=8", "tag=_ep8")) == 2 and pairs.count(("trainer.max_epochs=15",)) == 3


def test_runs_finished_elsewhere_are_skipped_and_their_deploy_files_start_the_runs_built_on_them(
        tmp_path, monkeypatch, capsys):
    """The maintainers' mode on a new machine, whose clone holds the committed logs of finished
    runs but no run directories: with --collect those runs are skipped (not trained again over their
    logs) unless --rerun-collected, and the deploy.pt collected with a source run's logs is what the
    runs built on it start from (with or without --collect)."""
    from experiments import reproduce

    monkeypatch.chdir(tmp_path)
    assert ("medium", "resnet20") in reproduce.init_sources()
    done = tmp_path / "results" / "medium" / "runs" / "resnet20" / "seed0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    (done / "deploy.pt").write_bytes(b"weights")
    monkeypatch.setattr(reproduce.subprocess, "Popen", lambda *a, **k: pytest.fail("nothing may run"))
    reproduce.main(["--profile", "medium", "--data", "d", "--only", "resnet20", "--dry-run", "--collect"])
    out, err = capsys.readouterr()
    assert "1 run(s) of medium already have their logs in results/medium/runs (resnet20/seed0): skipped" in err
    assert out.count("+exp=cifar10/resnet20 ") == 2 and "seed=0" not in out, out
    for extra in (["--collect", "--rerun-collected"], []):
        reproduce.main(["--profile", "medium", "--data", "d", "--only", "resnet20", "--dry-run", *extra])
        out, err = capsys.readouterr()
        assert out.count("+exp=cifar10/resnet20 ") == 3 and "skipped" not in err
    inits = [a for c in reproduce.commands("medium_compare", "d", Path("runs"), [], only=["prune_l1_a"])
             for a in c if a.startswith("model.init_from=")]
    assert inits == ["model.init_from=results/medium/runs/resnet20/seed0/deploy.pt",
                     "model.init_from=runs/medium/resnet20/seed1/deploy.pt",
                     "model.init_from=runs/medium/resnet20/seed2/deploy.pt"], inits
    _launches(monkeypatch)
    monkeypatch.setattr(reproduce, "_data_problem", lambda *a: None)
    with pytest.raises(Launched) as e:  # seeds 1 and 2 have no deploy.pt anywhere: said, left out
        reproduce.main(["--profile", "medium_compare", "--data", "d", "--only", "prune_l1_a", "--jobs", "1"])
    out, err = capsys.readouterr()
    assert "model.init_from=results/medium/runs/resnet20/seed0/deploy.pt" in e.value.args[0] and "[1/1]" in out
    assert "2 run(s) of medium_compare start from trained runs that are not there yet" in err
    assert "--collect --only <label> --rerun-collected" in err
    # collecting a run keeps its deploy.pt with its logs (every run's), never its checkpoints
    run = tmp_path / "runs" / "medium" / "resnet20" / "seed1"
    run.mkdir(parents=True)
    for name in ("summary.json", "metrics.csv", "deploy.pt", "last.ckpt"):
        (run / name).write_text(name)
    kept = reproduce.collect(run, tmp_path / "c1")
    assert sorted(p.name for p in kept) == ["deploy.pt", "metrics.csv", "summary.json"]
    assert sorted(p.name for p in reproduce.collect(run, tmp_path / "c2", deploy=False)) == ["metrics.csv", "summary.json"]


def test_long_profile_pairs_dense_and_structured_by_length_and_seed():
    """The long profile: resnet20 / struct_resnet20_a at 30 epochs (seeds 0-2) and 60 (seeds 0-1),
    struct_resnet20_b at 30 and 60 (seed 0), the medium recipe otherwise, listed pair by pair."""
    from experiments import reproduce

    cmds = reproduce.commands("long", "d", Path("runs"), [])
    key = [(next(a for a in c if a.startswith("+exp=")).split("/")[-1], int(next(a for a in c if a.startswith("seed="))[5:]),
            next(a for a in c if a.startswith("trainer.max_epochs="))) for c in cmds]
    assert key[:2] == [("resnet20", 0, "trainer.max_epochs=30"), ("struct_resnet20_a", 0, "trainer.max_epochs=30")]
    assert len(set(key)) == len(key) == 12
    assert sorted(k for k in key if k[0] == "struct_resnet20_b") == [("struct_resnet20_b", 0, "trainer.max_epochs=30"),
                                                                      ("struct_resnet20_b", 0, "trainer.max_epochs=60")]
    assert sorted(k[1] for k in key if k[0] == "resnet20" and k[2].endswith("=60")) == [0, 1]
    medium = reproduce.commands("medium", "d", Path("runs"), [], only=["struct_resnet20_a"])[0]
    for c in cmds:
        assert "+data.val_subset=1000" in c and "data.holdout=[45000,50000]" in c and "eval.robustness=true" in c
        if "struct" in c[3]:  # the medium profile's lambda and BatchNorm choice
            assert {a for a in medium if a.startswith("structure.")} <= set(c)


def test_stash_and_restore_carry_an_unfinished_run_to_another_machine(tmp_path, monkeypatch, capsys):
    """--stash copies an unfinished run's resume state beside its logs' folder; on a machine
    without the run directory the next invocation puts it back (the run resumes); collecting
    the finished run removes the stash. A finished run is never stashed."""
    import torch

    from experiments import reproduce

    monkeypatch.chdir(tmp_path)
    run = Path("runs") / "long" / "resnet20_ep30" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 3, "w": torch.arange(4)}, run / "checkpoints" / "last.ckpt")
    for name in ("code.json", "config.yaml", "metrics.csv"):
        (run / name).write_text(name)
    reproduce.main(["--profile", "long", "--data", "d", "--stash"])
    out = capsys.readouterr().out
    stashed = Path("results/long/runs/resnet20_ep30/seed0/inflight")
    assert "1 unfinished run(s) stashed" in out and sorted(p.name for p in stashed.iterdir()) == [
        "code.json", "config.yaml", "last.ckpt", "metrics.csv"]
    import shutil

    shutil.rmtree("runs")  # a new machine: the clone has only the committed stash
    assert reproduce.restore(stashed.parent, run) and torch.load(run / "checkpoints" / "last.ckpt")["epoch"] == 3
    assert (run / "code.json").read_text() == "code.json"
    assert not reproduce.restore(stashed.parent, run)  # a checkpoint is there: never overwritten
    (run / "summary.json").write_text("{}")
    assert reproduce.stash(run, stashed.parent) is None  # finished: nothing to stash
    reproduce.collect(run, stashed.parent)
    assert not stashed.exists() and (stashed.parent / "summary.json").exists()


def test_reproduce_refuses_dirty_code_before_any_run_that_collects_into_results(tmp_path, monkeypatch, capsys):
    """Hours of runs whose summaries would name a -dirty commit are refused before the first one
    when their logs go into results/ (--collect); --allow-dirty, a --results folder elsewhere, or
    no --collect (the runs stay in runs/) lets them run."""
    from experiments import reproduce
    from src import provenance

    monkeypatch.setattr(provenance, "git_sha", lambda: "f" * 40 + "-dirty")
    monkeypatch.setattr(reproduce, "_data_problem", lambda *a: None)
    _launches(monkeypatch)
    args = ["--profile", "smoke", "--data", str(tmp_path), "--runs", str(tmp_path / "runs"), "--jobs", "1"]
    with pytest.raises(SystemExit) as e:
        reproduce.main(args + ["--collect"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "uncommitted changes" in err and "--allow-dirty" in err and "No run was started" in err
    for extra in ([], ["--collect", "--allow-dirty"], ["--collect", "--results", str(tmp_path / "elsewhere")]):
        with pytest.raises(Launched):
            reproduce.main(args + extra)


def test_dataset_and_schedule_shapes_are_validated():
    from src.config_check import validate

    with pytest.raises(ConfigError) as e:
        validate({"data": {"crop_size": [5, 10], "scale_range": [2, 1]}, "optim": {"milestones": [30, -1]},
                  "trainer": {"max_epochs": 3}, "structure": {"lam": float("nan")}})
    msg = str(e.value)
    for part in ("data.crop_size=[5, 10]", "data.scale_range=[2, 1]", "optim.milestones=[30, -1]", "structure.lam=nan"):
        assert part in msg, part
    validate({"data": {"crop_size": [64, 128], "scale_range": [0.5, 2.0]}, "optim": {"milestones": [30, 60]}})
