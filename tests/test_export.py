"""ONNX export of the decomposed model (src/deploy/export.py, its command line src/export.py), and
the checkpoint forms it accepts (src/checkpoint.py reads them)."""

import json
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from src.deploy import default_preprocessing, save_deploy
from src.checkpoint import read_checkpoint
from src.deploy.export import deploy_model
from src.export import _parser, main
from src.models import create_model
from src.structured import decompose, project

from .conftest import rel_err
from .test_structurize import randomize_bn

NAME = "struct_resnet20_a"


def trained_like(name: str = NAME) -> torch.nn.Module:
    """A train-form structured model with non-trivial weights and BN statistics."""
    model = create_model(name)
    with torch.no_grad():
        randomize_bn(model)
    return model.eval()


def test_cli_export_runs_in_onnxruntime_with_the_small_kernels(tmp_path):
    """--plan none: the plain decomposed graph, every structured conv as its pool and small conv."""
    model = trained_like()
    ckpt = tmp_path / "model.pt"
    torch.save(model.state_dict(), ckpt)
    out = main(["--model", NAME, "--ckpt", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--plan", "none"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "model.pt"]  # no m.onnx.data

    graph = onnx.load(str(out))
    props = {p.key: p.value for p in graph.metadata_props}  # a bare state_dict: the model's defaults
    assert props["model"] == NAME and props["weights"] == "model.pt" and "defaults" in props["preprocessing"]
    assert json.loads(props["deploy_plan"]) == {} and props["deploy_plan_measured_on"].startswith("none")
    assert json.loads(props["deploy_plan_summary"]) == [["decomposed", 18]]
    assert json.loads(props["mean"]) == default_preprocessing(NAME)["mean"]
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    conv_weights = {n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
    shapes = [tuple(numpy_helper.to_array(i).shape) for i in graph.graph.initializer if i.name in conv_weights]
    # the 18 structured 3x3 convs appear as their 2x2 alpha; only the RGB stem keeps a 3x3 kernel
    assert sorted(s for s in shapes if s[2:] == (2, 2)) == sorted(
        [(16, 16, 2, 2)] * 6 + [(32, 16, 2, 2)] + [(32, 32, 2, 2)] * 5 + [(64, 32, 2, 2)] + [(64, 64, 2, 2)] * 5)
    assert [s for s in shapes if s[2:] == (3, 3)] == [(16, 3, 3, 3)]

    reference = decompose(project(model))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch axis is dynamic
        x = torch.randn(batch, 3, 32, 32)
        (y,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            expected = reference(x)
        assert rel_err(torch.from_numpy(np.asarray(y)), expected) <= 1e-4


def test_deploy_file_exports_one_movable_file_with_its_preprocessing(tmp_path, monkeypatch, capsys):
    """The default --out (exports/, git-ignored) gets one self-contained file that still runs in
    ONNX Runtime after being moved alone; it carries the deploy file's metadata."""
    reference = decompose(project(trained_like()))
    names = [f"class{i}" for i in range(10)]
    ckpt = save_deploy(tmp_path / "run" / "deploy.pt", reference, model_name=NAME, route="regularized",
                       num_classes=10, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], input_size=[3, 32, 32],
                       class_names=names)
    monkeypatch.chdir(tmp_path)
    out = main(["--ckpt", str(ckpt), "--plan", "none"])
    printed = capsys.readouterr().out
    assert out.resolve() == (tmp_path / "exports" / f"{NAME}.onnx").resolve()
    assert [p.name for p in (tmp_path / "exports").iterdir()] == [f"{NAME}.onnx"]
    assert str(out) in printed

    moved = tmp_path / "elsewhere" / "model.onnx"
    moved.parent.mkdir()
    shutil.move(str(out), moved)
    shutil.rmtree(tmp_path / "exports")
    props = {p.key: p.value for p in onnx.load(str(moved)).metadata_props}
    assert props["model"] == NAME and props["route"] == "regularized" and props["num_classes"] == "10"
    assert json.loads(props["input_size"]) == [3, 32, 32] and json.loads(props["class_names"]) == names
    assert json.loads(props["mean"]) == [0.5, 0.4, 0.3] and json.loads(props["std"]) == [0.2, 0.25, 0.3]
    assert props["preprocessing"] == "recorded in deploy.pt" and props["task"] == "classification"
    session = ort.InferenceSession(str(moved), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 32, 32)
    (y,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(np.asarray(y)), reference(x)) <= 1e-4
    with pytest.raises(SystemExit):
        main(["--ckpt", str(ckpt), "--num-classes", "100", "--out", str(tmp_path / "x.onnx")])
    assert "has num_classes=10, not 100" in capsys.readouterr().err


def test_help_describes_every_option(capsys):
    for action in _parser()._actions:
        assert action.help, action.option_strings
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--ckpt", "--format", "--out", "--opset", "--batch", "--num-classes", "metadata_props",
                   "--plan", "--threads", "--plan-forms", "--plan-reps", "--no-plan-refine", "deploy_plan"):
        assert option in text


def test_default_export_is_the_onnxruntime_plan_at_the_batch(tmp_path, monkeypatch, capsys):
    """Without --plan, each layer group is timed on ONNX Runtime at --batch in the candidate
    forms (all exported, run and checked equal here; the times scripted: dense fastest on the
    16-channel layers, the mean-pool form on the others, 3 % faster at 64 channels: inside the
    margin), the graph runs the plan, records it, and computes the decomposed model's function."""
    tuning = sys.modules["src.deploy.tuning"]
    calls = []

    def timer(fns, reps=20, warmup=3, min_time=0.0):
        outs = [np.asarray(fn()[0]) for fn in fns]  # ONNX Runtime outputs of the candidates
        assert all(rel_err(torch.from_numpy(o), torch.from_numpy(outs[0])) <= 1e-5 for o in outs[1:])
        calls.append((outs[0].shape, reps))
        channels = outs[0].shape[1]
        return {16: [1.0, 0.5, 0.8], 32: [1.0, 1.5, 0.5], 64: [1.0, 1.5, 0.97]}[channels]

    monkeypatch.setattr(tuning, "time_interleaved", timer)
    model = trained_like()
    ckpt = tmp_path / "model.pt"
    torch.save(model.state_dict(), ckpt)
    out = main(["--model", NAME, "--ckpt", str(ckpt), "--out", str(tmp_path / "p.onnx"), "--batch", "2",
                "--plan-forms", "decomposed", "dense", "decomposed[sp=mean]", "--plan-reps", "1", "--threads", "1",
                "--no-plan-refine"])  # (refine: tests/test_deploy_forms.py)
    assert "ONNX Runtime plan at batch 2: 6 decomposed, 6 decomposed[sp=mean], 6 dense" in capsys.readouterr().out
    assert len(calls) == 5 and {shape[0] for shape, _ in calls} == {2} and {r for _, r in calls} == {1}
    graph = onnx.load(str(out))
    props = {p.key: p.value for p in graph.metadata_props}
    plan = json.loads(props["deploy_plan"])
    assert {k: v for k, v in plan.items() if k.startswith("layer1")} == dict.fromkeys(
        [f"layer1.{b}.conv{i}" for b in range(3) for i in (1, 2)], "dense")
    assert set(plan.values()) == {"dense", "decomposed[sp=mean]"} and len(plan) == 12
    assert not any(k.startswith("layer3") and k != "layer3.0.conv1" for k in plan)  # inside the margin
    assert "onnxruntime" in props["deploy_plan_measured_on"] and "batch 2" in props["deploy_plan_measured_on"]
    conv_weights = {n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
    shapes = [tuple(numpy_helper.to_array(i).shape) for i in graph.graph.initializer if i.name in conv_weights]
    assert shapes.count((16, 16, 3, 3)) == 6  # the dense layers hold the 3x3 structured kernel
    reference = decompose(project(model))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)  # (the batch axis stays dynamic)
    (y,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(np.asarray(y)), reference(x)) <= 1e-4
    with pytest.raises(SystemExit):
        main(["--model", NAME, "--out", str(tmp_path / "q.onnx"), "--plan-forms", "dense"])
    assert "must include 'decomposed'" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["state_dict", "lightning", "deploy", "artifact"])
def test_checkpoint_forms_give_the_same_deployed_model(tmp_path, form):
    model = trained_like()
    reference = decompose(project(model))
    if form == "state_dict":
        payload = model.state_dict()
    elif form == "lightning":
        payload = {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    elif form == "deploy":  # what src.train wrote next to its checkpoints at first
        payload = {"model": NAME, "num_classes": 10, "state_dict": reference.state_dict()}
    path = tmp_path / "ckpt.pt"
    if form == "artifact":  # src.deploy.save_deploy
        save_deploy(path, reference, model_name=NAME, route="regularized", num_classes=10,
                    **{k: default_preprocessing(NAME)[k] for k in ("mean", "std", "input_size")})
    else:
        torch.save(payload, path)
    deployed = deploy_model(NAME if form not in ("deploy", "artifact") else None, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(deployed(x), reference(x)) <= 1e-6
    assert sum(p.numel() for p in deployed.parameters()) == sum(p.numel() for p in reference.parameters())


def test_bad_checkpoints_raise_value_errors_naming_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match="checkpoint .*nope.pt: no such file"):
        deploy_model(NAME, missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt.pt: cannot read it"):
        read_checkpoint(corrupt)
    other = tmp_path / "resnet56.pt"
    torch.save(create_model("struct_resnet56_a").state_dict(), other)
    with pytest.raises(ValueError, match=r"resnet56.pt does not fit model 'struct_resnet20_a'.*unexpected"):
        deploy_model(NAME, other)
    wrong_classes = tmp_path / "cifar100.pt"
    torch.save(create_model(NAME, num_classes=100).state_dict(), wrong_classes)
    with pytest.raises(ValueError, match="cifar100.pt.*shapes differ: fc.weight"):
        deploy_model(NAME, wrong_classes)
    assert deploy_model(NAME, wrong_classes, num_classes=100).fc.out_features == 100
    recorded = tmp_path / "deploy.pt"
    torch.save({"model": "struct_resnet56_a", "state_dict": {"w": torch.zeros(1)}}, recorded)
    with pytest.raises(ValueError, match="deploy.pt is for model 'struct_resnet56_a'"):
        deploy_model(NAME, recorded)
