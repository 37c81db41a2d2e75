"""Starting a run from trained weights (src/init_from.py): the three file kinds load exactly, a
file that does not fit says why, pretrained weights fail clearly offline; and the pipeline builds
struct_* and compressed models from a dense run and records it in summary.json."""

from __future__ import annotations

import hashlib
import json
import urllib.error

import pytest
import torch
from torch import nn

from src.deploy import load_deploy
from src.checkpoint import read_checkpoint
from src.init_from import init_model, load_weights, origin
from src.models import create_model
from src.pipeline import build_model
from src.structured import StructuredConv2d, structured_layers

from .test_train import TINY, compose_cfg, train

SIZE = (3, 32, 32)
SMALL = [o for o in TINY if not o.startswith(("trainer.max_epochs", "data.train_subset", "data.test_subset"))] + [
    "trainer.max_epochs=1", "data.train_subset=128", "data.test_subset=128"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small batches: one thread (more only contend on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, cifar_npz):
    """A finished one-epoch resnet20 run: checkpoints/last.ckpt and deploy.pt."""
    run_dir = tmp_path_factory.mktemp("dense") / "run"
    train(["+exp=cifar10/resnet20", f"data.root={cifar_npz}", *SMALL], run_dir)
    return run_dir


@pytest.fixture(scope="module")
def source(dense_run):
    """The dense run's final model (its deploy file), eval mode."""
    return load_deploy(dense_run / "deploy.pt").model.eval()


def _same_outputs(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(4, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_each_file_kind_loads_exactly(dense_run, source, tmp_path):
    plain = tmp_path / "state_dict.pt"
    torch.save(source.state_dict(), plain)
    kinds = {}
    for path in (dense_run / "checkpoints" / "last.ckpt", dense_run / "deploy.pt", plain):
        for name in ("resnet20", "struct_resnet20_a"):  # a struct_* model takes the dense weights as they are
            model = create_model(name)
            kinds[path.name] = load_weights(model, path, name)
            assert _same_outputs(model, source), (path.name, name)
    assert kinds == {"last.ckpt": "Lightning checkpoint", "deploy.pt": "deploy file", "state_dict.pt": "state_dict"}
    # the checkpoint's network is under the LightningModule's "model." prefix
    ckpt = torch.load(dense_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])


def test_a_checkpoint_with_ema_weights_starts_from_them(dense_run, source, tmp_path):
    ckpt = torch.load(dense_run / "checkpoints" / "last.ckpt", weights_only=True)
    ema = {f"ema.module.{k}": v + 0.5 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    torch.save({**ckpt, "ema_state_dict": ema}, tmp_path / "ema.ckpt")
    ckpt = read_checkpoint(tmp_path / "ema.ckpt")
    state, kind = ckpt.state_dict, ckpt.kind
    assert kind == "Lightning checkpoint (EMA weights)"
    assert torch.equal(state["fc.bias"], source.fc.bias + 0.5)


def test_a_file_that_does_not_fit_names_missing_unexpected_and_shapes(source, tmp_path):
    state = dict(source.state_dict())
    del state["layer1.0.bn1.running_mean"]
    state["extra.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(100, 64)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as e:
        load_weights(create_model("resnet20"), path, "resnet20")
    msg = str(e.value)
    assert msg.startswith(f"model.init_from={path} (state_dict) does not fit model 'resnet20': ") and "\n" not in msg
    assert "1 missing keys: layer1.0.bn1.running_mean" in msg and "1 unexpected keys: extra.weight" in msg
    assert "1 shapes differ: fc.weight (100, 64) in the file vs (10, 64) in the model" in msg
    # another architecture: every kind of problem is counted
    torch.save(create_model("resnet32").state_dict(), tmp_path / "resnet32.pt")
    with pytest.raises(ValueError, match=r"resnet32\.pt \(state_dict\) does not fit model 'resnet20': \d+ unexpected "
                                         r"keys: layer1\.3\.conv1\.weight, .*\(\d+ more\)"):
        load_weights(create_model("resnet20"), tmp_path / "resnet32.pt", "resnet20")
    with pytest.raises(ValueError, match=rf"model.init_from={tmp_path}/missing.pt: no such file"):
        load_weights(create_model("resnet20"), tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"model.init_from=.*junk\.pt: cannot read it"):
        load_weights(create_model("resnet20"), tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match=r"checkpoint .*nothing\.pt: holds no state_dict"):
        read_checkpoint(tmp_path / "nothing.pt")


def test_pretrained_weights_fail_in_one_clear_line_offline(monkeypatch, tmp_path):
    import torchvision

    def offline(self, *a, **kw):
        raise urllib.error.URLError("[Errno -2] Name or service not known\n(no network)")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    cfg = compose_cfg(["model.name=resnet18", "+model.pretrained=true"], tmp_path)
    with pytest.raises(ValueError) as e:
        init_model(create_model("resnet18", num_classes=10), cfg, "resnet18")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model.pretrained=true: cannot fetch the weights of 'resnet18' from "
                                              "torchvision ResNet18_Weights.IMAGENET1K_V1")
    assert "URLError" in msg and "model.init_from=<path>" in msg
    with pytest.raises(ValueError, match=r"no published weights for 'resnet20' .*model.init_from=<path>"):
        init_model(create_model("struct_resnet20_a"), compose_cfg(["+model.pretrained=true"], tmp_path), "struct_resnet20_a")


def test_pretrained_weights_load_with_a_new_classifier(monkeypatch, tmp_path):
    """The loading path, with the published file replaced by a model's own weights."""
    import torchvision

    published = create_model("resnet18").state_dict()  # 1000 classes
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, *a, **kw: published)
    model = create_model("resnet18", num_classes=10)
    fc = model.fc.weight.clone()
    init_model(model, compose_cfg(["+model.pretrained=true"], tmp_path), "resnet18")
    assert torch.equal(model.layer4[1].conv2.weight, published["layer4.1.conv2.weight"])
    assert torch.equal(model.fc.weight, fc)  # the classifier keeps its initialisation


def test_build_model_starts_struct_and_compressed_models_from_the_dense_run(dense_run, source, tmp_path):
    ckpt = dense_run / "checkpoints" / "last.ckpt"
    struct = build_model(compose_cfg(["model.name=struct_resnet20_b", f"model.init_from={ckpt}"], tmp_path), 10)
    assert _same_outputs(struct, source) and len(list(structured_layers(struct))) == 18
    for method in ("structured", "prune_l1", "svd_weight", "svd_spatial"):
        model = build_model(compose_cfg([f"+exp=cifar10/compress/{method}_a", f"model.init_from={ckpt}"], tmp_path), 10)
        info = model.compress_info
        assert info["method"] == method and abs(info["achieved_mults_ratio"] / 0.450514 - 1) <= 0.02
        assert torch.equal(model.conv1.weight, source.conv1.weight)  # the weights are the dense run's
        if method == "structured":  # the solved struct model holds the dense kernels
            layers = [m for m in model.modules() if isinstance(m, StructuredConv2d)]
            assert len(layers) == 18 and torch.equal(model.layer2[1].conv2.weight, source.layer2[1].conv2.weight)
    bad = tmp_path / "bad.pt"
    torch.save(create_model("resnet32").state_dict(), bad)
    with pytest.raises(ValueError, match=rf"model.init_from={bad} \(state_dict\) does not fit model 'resnet20'"):
        build_model(compose_cfg(["+exp=cifar10/compress/prune_l1_b", f"model.init_from={bad}"], tmp_path), 10)


def test_a_compressed_fine_tuning_run_records_method_target_and_origin(dense_run, cifar_npz, tmp_path):
    ckpt = dense_run / "checkpoints" / "last.ckpt"
    run_dir = tmp_path / "run"
    s = train(["+exp=cifar10/compress/structured_a", f"data.root={cifar_npz}", f"model.init_from={ckpt}", *SMALL],
              run_dir)
    assert (s["method"], s["target_mults_ratio"], s["init_from"]) == ("structured", 0.450514, str(ckpt))
    assert s["epochs"] == 1 and s["model"] == "resnet20"
    # at budget A the solved (c, n) are struct_resnet20_a's: the same decomposed cost
    assert (s["mults_dense"], s["mults_decomposed"]) == (40_551_040, 18_268_800)
    assert s["achieved_mults_ratio"] == round(18_268_800 / 40_551_040, 6)
    assert abs(s["test_acc_decomposed"] - s["test_acc_projected"]) <= 100 / 128 + 1e-9
    assert json.loads((run_dir / "summary.json").read_text()) == s
    # the origin: the file's digest and the run it belongs to (the summary two levels up)
    dense = json.loads((dense_run / "summary.json").read_text())
    assert s["init_from_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert s["init_from_run"] == f"{dense['config_hash']} seed {dense['seed']} at {dense['git_sha']}"
    assert origin(dense_run / "deploy.pt")["init_from_run"] == s["init_from_run"]
    loose = tmp_path / "loose.pt"
    torch.save(create_model("resnet20").state_dict(), loose)
    assert set(origin(loose)) == {"init_from_sha256"}
    from src import summary

    summary.validate(s, "classification")
    keys = list(s)
    assert keys.index("train_images") < keys.index("init_from") < keys.index("method") < keys.index("test_acc_dense")
    # a plain run writes none of the new keys
    dense = json.loads((dense_run / "summary.json").read_text())
    assert not {"init_from", "init_from_sha256", "init_from_run", "method", "target_mults_ratio",
                "achieved_mults_ratio"} & set(dense)
    # what the run prints: the ratio to the uncompressed model (its own "dense" figures are the
    # compressed model's, so a ratio to them would read 1.00x), and a plain run's ratio to dense
    from src.pipeline import report

    printed = report(s, run_dir)
    assert "resnet20 compressed by structured, fine-tuned" in printed
    assert "(0.451x the uncompressed resnet20's; target 0.451)" in printed and "x dense" not in printed
    assert "(1.00x dense)" in report(dense, dense_run)
