"""ImageNet and Cityscapes data modules, end to end on tiny fixtures in the real on-disk layouts."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.cityscapes import LABEL_TO_TRAIN_ID, CityscapesDataModule
from src.data.errors import CorruptFileError, DataRootError
from src.data.fixtures import make_cityscapes_fixture, make_imagenet_fixture
from src.data.imagenet import ImageNetDataModule

FAST = {"num_workers": 0, "pin_memory": False}


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    return make_imagenet_fixture(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    return make_cityscapes_fixture(root, cities=("aachen", "bochum"))


def imagenet(root, **kw):
    kw = {"batch_size": 4, "image_size": 32, "val_resize": 36, **FAST, **kw}
    dm = ImageNetDataModule(str(root), **kw)
    dm.setup("fit")
    return dm


def cityscapes(root, **kw):
    dm = CityscapesDataModule(str(root), **{"batch_size": 2, "crop_size": (48, 96), **FAST, **kw})
    dm.setup("fit")
    return dm


def labels_on_disk(dm):
    """The raw labelIds maps of the val split, in loader order."""
    return [np.array(Image.open(t)) for (t,) in dm.val_set.targets]


# ImageNet


def test_imagenet_batches(imagenet_root):
    dm = imagenet(imagenet_root)
    assert dm.num_classes == 3 and len(dm.train_set) == 12 and len(dm.val_set) == 6
    assert dm.task == "classification"
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert type(x) is torch.Tensor and set(y.tolist()) <= {0, 1, 2}
    # normalised: [0, 1] maps into [-mean/std, (1-mean)/std] = about [-2.12, 2.64]
    assert -2.2 < x.min() < x.max() < 2.7
    assert len(dm.train_dataloader()) == 3  # 12 examples, batch 4
    assert [c.shape for c in dm.calibration_batches(2)] == [(4, 3, 32, 32)] * 2
    for load in (dm.val_dataloader, dm.test_dataloader):
        xs, ys = zip(*load())
        assert torch.cat(xs).shape == (6, 3, 32, 32)
        assert torch.cat(ys).tolist() == [0, 0, 1, 1, 2, 2]


def test_imagenet_class_colour_survives(imagenet_root):
    """The fixture is learnable: per-class mean colours of val batches differ clearly."""
    x, y = zip(*imagenet(imagenet_root).val_dataloader())
    x, y = torch.cat(x), torch.cat(y)
    means = torch.stack([x[y == k].mean((0, 2, 3)) for k in range(3)])
    assert torch.cdist(means, means).fill_diagonal_(10).min() > 0.5


def test_imagenet_subsets_are_class_interleaved(imagenet_root):
    dm = imagenet(imagenet_root, train_subset=5, test_subset=2)
    assert [dm.train_set.dataset.targets[i] for i in dm.train_set.indices] == [0, 1, 2, 0, 1]
    assert torch.cat([y for _, y in dm.val_dataloader()]).tolist() == [0, 1]
    assert imagenet(imagenet_root, train_subset=5, seed=1).train_set.indices == dm.train_set.indices
    with pytest.raises(ValueError, match="13 examples"):
        imagenet(imagenet_root, train_subset=13)


def test_imagenet_deterministic(imagenet_root):
    """The training order is a function of (seed, epoch); crops and flips draw on torch's
    generator (the main process's with num_workers=0); evaluation is fixed."""

    def order(seed, epoch):
        sampler = imagenet(imagenet_root, seed=seed).train_dataloader().sampler
        sampler.set_epoch(epoch)
        return tuple(sampler)

    assert order(0, 0) == order(0, 0)
    assert len({order(0, 0), order(1, 0), order(0, 1)}) == 3

    def first_batch():
        torch.manual_seed(0)
        return next(iter(imagenet(imagenet_root).train_dataloader()))

    (x, y), (x2, y2) = first_batch(), first_batch()
    assert torch.equal(x, x2) and torch.equal(y, y2)

    def val():
        return [torch.cat(t) for t in zip(*imagenet(imagenet_root).val_dataloader())]

    assert all(map(torch.equal, val(), val()))


def test_imagenet_missing_root(tmp_path):
    with pytest.raises(DataRootError, match="image-net.org") as e:
        imagenet(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)


@pytest.mark.parametrize("split", ["train", "val"])
def test_imagenet_missing_split(tmp_path, split):
    root = make_imagenet_fixture(tmp_path, num_classes=2, train_per_class=1, val_per_class=1)
    shutil.rmtree(root / split)
    with pytest.raises(DataRootError, match="valprep.sh") as e:
        imagenet(root)
    assert str(root / split) in str(e.value) and f"{split}/<wnid>/" in str(e.value)


def test_imagenet_unsorted_val(tmp_path):
    root = make_imagenet_fixture(tmp_path, num_classes=2, train_per_class=1, val_per_class=1)
    for f in list((root / "val").rglob("*.JPEG")):
        f.rename(root / "val" / f.name)
        f.parent.rmdir()
    with pytest.raises(DataRootError, match="valprep.sh") as e:
        imagenet(root)
    assert str(root / "val") in str(e.value)


def test_imagenet_empty_class_folder(tmp_path):
    root = make_imagenet_fixture(tmp_path, num_classes=2, train_per_class=1, val_per_class=1)
    (root / "train" / "n00000009").mkdir()
    with pytest.raises(DataRootError, match="n00000009") as e:
        imagenet(root)
    assert str(root / "train") in str(e.value)


def test_imagenet_class_sets_differ(tmp_path):
    root = make_imagenet_fixture(tmp_path, num_classes=3, train_per_class=1, val_per_class=1)
    shutil.rmtree(root / "val" / "n00000002")
    with pytest.raises(DataRootError, match=r"only in train/: \['n00000002'\]"):
        imagenet(root)


def test_imagenet_corrupt_jpeg_is_named(tmp_path):
    root = make_imagenet_fixture(tmp_path, num_classes=2, train_per_class=1, val_per_class=1)
    bad = root / "val" / "n00000001" / "ILSVRC2012_val_00000002.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    loader = imagenet(root).val_dataloader()
    with pytest.raises(CorruptFileError) as e:
        list(loader)
    assert str(bad) in str(e.value)


# Cityscapes


def test_cityscapes_label_table():
    train_ids = LABEL_TO_TRAIN_ID.tolist()
    assert sorted(set(train_ids) - {255}) == list(range(19))
    assert (train_ids[7], train_ids[26], train_ids[11], train_ids[33]) == (0, 13, 2, 18)
    assert all(train_ids[i] == 255 for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 29, 30))


def test_cityscapes_train_batch(cityscapes_root):
    dm = cityscapes(cityscapes_root)
    assert (dm.task, dm.num_classes, dm.ignore_index) == ("segmentation", 19, 255)
    assert len(dm.train_set) == 4 and len(dm.val_set) == 2
    x, t = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 48, 96) and x.dtype == torch.float32 and type(x) is torch.Tensor
    assert t.shape == (2, 48, 96) and t.dtype == torch.int64 and type(t) is torch.Tensor
    assert set(t.unique().tolist()) <= set(range(19)) | {255}
    assert -2.2 < x.min() < x.max() < 2.7
    assert [c.shape for c in dm.calibration_batches(5)] == [(2, 3, 48, 96)] * 2  # all there are


def test_cityscapes_crop_pads_with_ignore(cityscapes_root):
    # 64x128 images scaled by 0.5 to 32x64 and cropped to 48x96: the padding is image 0, label 255
    x, t = next(iter(cityscapes(cityscapes_root, scale_range=(0.5, 0.5)).train_dataloader()))
    black = torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    padding = (t == 255) & torch.isclose(x, black[:, None, None], atol=1e-5).all(1)
    assert (padding.sum((1, 2)) >= 48 * 96 - 32 * 64).all()
    for labelled in t != 255:
        rows, cols = labelled.any(1).nonzero(), labelled.any(0).nonzero()
        assert rows.max() - rows.min() < 32 and cols.max() - cols.min() < 64


def test_cityscapes_scaled_masks_stay_labels(cityscapes_root):
    """Masks are resized by nearest neighbour: only trainIds the full-size maps contain appear."""
    dm = cityscapes(cityscapes_root, scale_range=(1.3, 1.7), crop_size=(64, 128), batch_size=4)
    present = set(LABEL_TO_TRAIN_ID[torch.as_tensor(np.stack(
        [np.array(Image.open(t)) for (t,) in dm.train_set.targets])).long()].unique().tolist())
    _, t = next(iter(dm.train_dataloader()))
    assert set(t.unique().tolist()) <= present


def test_cityscapes_val_maps_label_ids(cityscapes_root):
    dm = cityscapes(cityscapes_root)
    x, t = zip(*dm.test_dataloader())
    x, t = torch.cat(x), torch.cat(t)
    assert x.shape == (2, 3, 64, 128) and t.shape == (2, 64, 128)
    raw = torch.as_tensor(np.stack(labels_on_disk(dm))).long()
    assert {0, 1, 4, 7, 26} <= set(raw.unique().tolist())
    assert (t[raw == 7] == 0).all() and (t[raw == 26] == 13).all() and (t[raw == 23] == 10).all()
    assert (t[(raw == 0) | (raw == 1) | (raw == 4)] == 255).all()
    assert torch.equal(t, LABEL_TO_TRAIN_ID[raw].long())


def test_cityscapes_subsets_and_order(cityscapes_root):
    dm = cityscapes(cityscapes_root, train_subset=3, test_subset=1)
    assert len(dm.train_set) == 3 and len(dm.val_set) == 1
    names = [p.split("/")[-1] for p in dm.train_set.dataset.images]
    assert names == sorted(names) and names[0].startswith("aachen_000000_000000")
    assert dm.train_set.indices == [0, 1, 2]


def test_cityscapes_deterministic(cityscapes_root):
    def first_batch():
        torch.manual_seed(0)
        return next(iter(cityscapes(cityscapes_root, seed=3).train_dataloader()))

    (x, t), (x2, t2) = first_batch(), first_batch()
    assert torch.equal(x, x2) and torch.equal(t, t2)


def test_cityscapes_missing_root(tmp_path):
    with pytest.raises(DataRootError, match="cityscapes-dataset.com") as e:
        cityscapes(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)


@pytest.mark.parametrize("folder", ["gtFine", "gtFine/val", "leftImg8bit/train"])
def test_cityscapes_missing_folder(tmp_path, folder):
    root = make_cityscapes_fixture(tmp_path, train_per_city=1, size=(16, 32))
    shutil.rmtree(root / folder)
    with pytest.raises(DataRootError, match="cityscapes-dataset.com/register") as e:
        cityscapes(root)
    message = str(e.value)
    assert str(root / folder.split("/")[0]) in message and "zip" in message


def test_cityscapes_missing_label_file(tmp_path):
    root = make_cityscapes_fixture(tmp_path, train_per_city=2, size=(16, 32))
    gone = root / "gtFine/train/aachen/aachen_000000_000001_gtFine_labelIds.png"
    gone.unlink()
    with pytest.raises(DataRootError, match="1 label files are missing") as e:
        cityscapes(root)
    assert str(gone) in str(e.value)


def test_cityscapes_corrupt_png_is_named(tmp_path):
    root = make_cityscapes_fixture(tmp_path, train_per_city=1, size=(16, 32))
    bad = root / "gtFine/val/aachen/aachen_000000_000000_gtFine_labelIds.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    with pytest.raises(CorruptFileError) as e:
        list(cityscapes(root).val_dataloader())
    assert str(bad) in str(e.value)
