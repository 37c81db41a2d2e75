"""src.deploy.artifact: the deploy file (decomposed weights + preprocessing) round-trips exactly,
the older src.train format still loads, bad files fail clearly, and images classify end to end."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from src.deploy import FORMAT, DeployedModel, default_preprocessing, load_deploy, save_deploy
from src.deploy import artifact
from src.models import create_model
from src.structured import DecomposedConv2d, decompose, project

from .test_structurize import randomize_bn

NAME = "struct_resnet20_a"
CIFAR = default_preprocessing(NAME)


def trained_like(name: str, **kwargs) -> nn.Module:
    model = create_model(name, **kwargs)
    with torch.no_grad():
        randomize_bn(model)
    return model.eval()


def save(path, model, name=NAME, **kw):
    args = dict(model_name=name, route="regularized", num_classes=10, mean=CIFAR["mean"], std=CIFAR["std"],
                input_size=CIFAR["input_size"], class_names=CIFAR["class_names"])
    args.update(kw)
    return save_deploy(path, model, **args)


@pytest.mark.parametrize("name,dtype", [(NAME, torch.float32), (NAME, torch.float64), ("resnet20", torch.float32)])
def test_round_trip_gives_identical_outputs(tmp_path, name, dtype):
    model = trained_like(name)
    deployed = (decompose(project(model)) if name.startswith("struct_") else model).to(dtype)
    path = save(tmp_path / "sub" / "deploy.pt", deployed, name, route="regularized" if name != "resnet20" else "dense",
                extra={"git_sha": "abc", "test_acc": 91.5})
    raw = torch.load(path, weights_only=True)  # plain containers only
    assert raw["format"] == FORMAT and raw["version"] == 1 and raw["model"] == name
    assert raw["input_size"] == [3, 32, 32] and raw["mean"] == list(artifact.CIFAR10_MEAN)
    assert raw["class_names"][3] == "cat" and raw["extra"]["test_acc"] == 91.5
    assert sorted(p.name for p in path.parent.iterdir()) == ["deploy.pt"]  # no temporary left

    net = load_deploy(path)
    assert isinstance(net, DeployedModel) and not net.model.training
    assert net.name == name and net.num_classes == 10 and net.input_size == (3, 32, 32)
    assert net.preprocessing_known and net.extra == {"git_sha": "abc", "test_acc": 91.5}
    assert net.dtype == dtype
    if name.startswith("struct_"):
        assert net.meta["form"] == "decomposed"
        assert sum(isinstance(m, DecomposedConv2d) for m in net.model.modules()) == 18
    x = torch.randn(3, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(net(x), deployed(x))


def test_builder_kwargs_and_structure_are_recorded(tmp_path):
    """A model built with builder arguments and an extra rule set (as src.train's model.kwargs and
    structure.rules) is rebuilt the same way."""
    structure = {"rules": [{"kernel_size": 3, "c": 0.5, "n": 2}], "exclude": ["conv1"]}
    model = create_model("resnet20", shortcut="B", structure=structure)
    with torch.no_grad():
        randomize_bn(model)
    deployed = decompose(project(model.eval()))
    path = save(tmp_path / "d.pt", deployed, "resnet20", model_kwargs={"shortcut": "B"}, structure=structure)
    net = load_deploy(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), deployed(x))
    with pytest.raises(ValueError, match="d_plain.pt: state_dict does not fit model 'resnet20'.*unexpected"):
        load_deploy(save(tmp_path / "d_plain.pt", deployed, "resnet20"))  # without them it cannot fit


def test_old_format_loads_with_a_warning(tmp_path):
    model = decompose(project(trained_like(NAME)))
    path = tmp_path / "deploy.pt"
    torch.save({"model": NAME, "route": "regularized", "num_classes": 10, "state_dict": model.state_dict()}, path)
    with pytest.warns(UserWarning, match=r"deploy.pt: deploy file in the old format, without preprocessing"):
        net = load_deploy(path)
    assert not net.preprocessing_known
    assert net.mean == artifact.CIFAR10_MEAN and net.class_names == list(artifact.CIFAR10_CLASSES)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))


def test_bad_files_raise_value_errors_naming_the_path(tmp_path):
    with pytest.raises(ValueError, match="deploy file .*nope.pt: no such file"):
        load_deploy(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="deploy file .*corrupt.pt: cannot read it"):
        load_deploy(corrupt)
    plain = tmp_path / "state_dict.pt"
    torch.save(create_model(NAME).state_dict(), plain)
    with pytest.raises(ValueError, match="state_dict.pt is not a deploy file"):
        load_deploy(plain)
    other = tmp_path / "resnet56.pt"
    torch.save({"model": NAME, "num_classes": 10,
                "state_dict": decompose(project(create_model("struct_resnet56_a"))).state_dict()}, other)
    with pytest.raises(ValueError, match=r"resnet56.pt: state_dict does not fit model 'struct_resnet20_a'.*"
                                         r"\d+ unexpected keys: layer1.3"):
        with pytest.warns(UserWarning):
            load_deploy(other)
    classes = tmp_path / "classes.pt"
    save(classes, decompose(project(create_model(NAME))), num_classes=100, class_names=None)
    with pytest.raises(ValueError, match=r"classes.pt: state_dict does not fit .*num_classes=100.*shapes differ"):
        load_deploy(classes)
    for label, change in [("unknown", {"model": "struct_resnet21_a"}), ("newer", {"version": 99}),
                          ("foreign", {"format": "something-else"})]:
        path = tmp_path / f"{label}.pt"
        good = torch.load(save(path, decompose(project(create_model(NAME)))), weights_only=True)
        torch.save({**good, **change}, path)
        with pytest.raises(ValueError, match=f"{label}.pt"):
            load_deploy(path)


def test_save_validates_its_arguments(tmp_path):
    model = create_model("resnet20").eval()
    with pytest.raises(ValueError, match="0-255 pixel scale"):
        save(tmp_path / "a.pt", model, "resnet20", mean=[125.3, 123.0, 113.9])
    with pytest.raises(ValueError, match="3 class names for num_classes=10"):
        save(tmp_path / "a.pt", model, "resnet20", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="2 values for 3 input channels"):
        save(tmp_path / "a.pt", model, "resnet20", std=[0.2, 0.2])
    with pytest.raises(TypeError, match=r"extra\['when'\] is a object"):
        save(tmp_path / "a.pt", model, "resnet20", extra={"when": object()})
    with pytest.raises(ValueError, match="unknown model"):
        save(tmp_path / "a.pt", model, "resnet21")
    assert not list(tmp_path.iterdir())


def test_constants_match_the_data_pipelines():
    from src.data.cifar import CIFAR10_MEAN, CIFAR10_STD
    from src.data.imagenet import IMAGENET_MEAN, IMAGENET_STD

    assert (artifact.CIFAR10_MEAN, artifact.CIFAR10_STD) == (CIFAR10_MEAN, CIFAR10_STD)
    assert (artifact.IMAGENET_MEAN, artifact.IMAGENET_STD) == (IMAGENET_MEAN, IMAGENET_STD)
    assert default_preprocessing("resnet50")["crop_pct"] == 224 / 256
    seg = default_preprocessing("hrnetv2_w18_small_v2_seg")
    assert seg["task"] == "segmentation" and seg["class_names"][0] == "road" and len(seg["class_names"]) == 19


def test_classify_a_uint8_image_end_to_end(tmp_path):
    model = decompose(project(trained_like(NAME)))
    net = load_deploy(save(tmp_path / "deploy.pt", model))
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor(CIFAR["mean"]).view(3, 1, 1), torch.tensor(CIFAR["std"]).view(3, 1, 1)
    expected_x = ((image.float() / 255 - mean) / std)[None]
    assert torch.equal(net.preprocess(image), expected_x)
    with torch.no_grad():
        expected = model(expected_x).argmax(1)
    assert torch.equal(net.predict(image), expected)
    assert net.classify(image) == [CIFAR["class_names"][int(expected)]]
    # the same picture as a PIL image, an (H, W, C) array, a file, and in a batch
    hwc = image.permute(1, 2, 0).numpy()
    Image.fromarray(hwc).save(tmp_path / "image.png")
    for same in (Image.fromarray(hwc), hwc, tmp_path / "image.png", str(tmp_path / "image.png")):
        assert torch.equal(net.preprocess(same), expected_x)
    batch = torch.stack([image, image.flip(-1)])
    assert net.predict(batch).shape == (2,) and net.predict(batch)[0] == expected
    top = net.topk([image, image], k=3)
    assert len(top) == 2 and top[0][0][0] == net.classify(image)[0] and 0 < top[0][0][1] <= 1
    # other sizes are resized to 32 x 32; grey and RGBA images become RGB
    assert net.preprocess(torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8)).shape == (1, 3, 32, 32)
    assert net.preprocess(Image.fromarray(hwc[:, :, 0])).shape == (1, 3, 32, 32)
    assert torch.equal(net.preprocess(torch.cat([image, torch.full((1, 32, 32), 255, dtype=torch.uint8)])),
                       expected_x)


def test_classify_topk_predict_take_numpy_batches(tmp_path):
    """One result per image from a numpy batch: (N, H, W, C) uint8, the layout of the CIFAR arrays,
    and (N, C, H, W) float on the 0-1 scale; any other array is refused naming its shape."""
    model = decompose(project(trained_like(NAME)))
    net = load_deploy(save(tmp_path / "deploy.pt", model))
    nhwc = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    one_by_one = [net.classify(image)[0] for image in nhwc]  # each (H, W, C) image alone
    assert net.classify(nhwc) == one_by_one
    assert net.predict(nhwc).shape == (5,)
    top = net.topk(nhwc, k=2)
    assert len(top) == 5 and [t[0][0] for t in top] == one_by_one
    x = net.preprocess(nhwc)
    assert x.shape == (5, 3, 32, 32) and torch.equal(x[1], net.preprocess(nhwc[1])[0])
    nchw = nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert torch.allclose(net.preprocess(nchw), x, atol=1e-6)
    assert net.classify(nchw) == one_by_one
    assert net.classify(nchw.astype(np.float64)) == one_by_one
    assert net.predict(nhwc[:, :, :, :1]).shape == (5,)  # grey images: expanded to RGB
    for bad in (nhwc.transpose(0, 3, 1, 2), nchw.transpose(0, 2, 3, 1), nhwc[None], nhwc.astype(np.int64)):
        with pytest.raises(ValueError, match=rf"numpy array of shape \({bad.shape[0]}, .*allowed: .*"
                                             r"\(N, H, W, C\) uint8 or \(N, C, H, W\) float"):
            net.classify(bad)


def test_imagenet_resize_and_centre_crop():
    meta = {"model": "resnet50", "num_classes": 4, "input_size": [3, 224, 224], "mean": [0.5] * 3,
            "std": [0.25] * 3, "crop_pct": 0.875, "class_names": None}
    net = DeployedModel(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)).eval(), meta)
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    x = net.preprocess(image)
    ref = TF.center_crop(TF.resize(image, [256], antialias=True), [224, 224]).float() / 255
    assert x.shape == (1, 3, 224, 224) and torch.equal(x, ((ref - 0.5) / 0.25)[None])
    assert net.classify(image)[0] in {"0", "1", "2", "3"}  # no names recorded: indices


def test_segmentation_predicts_per_pixel():
    meta = {"model": "hrnetv2_w18_small_v2_seg", "num_classes": 19, "task": "segmentation",
            "input_size": [3, 64, 128], "mean": list(artifact.IMAGENET_MEAN), "std": list(artifact.IMAGENET_STD),
            "crop_pct": 1.0, "class_names": list(artifact.CITYSCAPES_CLASSES)}
    net = DeployedModel(nn.Conv2d(3, 19, 1).eval(), meta)
    image = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    assert net.predict(image).shape == (1, 64, 128)
    with pytest.raises(ValueError, match="segmentation model; use predict"):
        net.classify(image)


@pytest.mark.parametrize("method", ["prune_l1", "svd_spatial", "svd_weight", "structured"])
def test_compressed_baselines_round_trip_through_deploy_files(tmp_path, method):
    """A src.compress baseline's deploy.pt rebuilds its architecture from (method, ratio) and loads
    its weights exactly (the comparison runs write such files)."""
    from src.compress import compress
    from src.deploy import load_deploy, save_deploy
    from src.models import create_model
    from src.structured import decompose, project

    torch.manual_seed(0)
    dense = create_model("resnet20").eval()
    small = compress(dense, method, 0.5, (3, 32, 32)).eval()
    if method == "structured":
        small = decompose(project(small))
    for p in small.parameters():  # weights the rebuilt model cannot have by chance
        p.data.add_(torch.randn_like(p) * 0.01)
    path = save_deploy(tmp_path / "deploy.pt", small, model_name="resnet20", route="regularized", num_classes=10,
                       mean=[0.5] * 3, std=[0.25] * 3, input_size=[3, 32, 32],
                       compress={"method": method, "mults_ratio": 0.5})
    loaded = load_deploy(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), small(x))
    assert loaded.meta["compress"] == {"method": method, "mults_ratio": 0.5}
