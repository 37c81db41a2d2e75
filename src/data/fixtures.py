"""Tiny CIFAR-10 (npz, torchvision layout and archive), ImageNet and Cityscapes trees in the real on-disk layouts (real JPEG / PNG files), for
tests and end-to-end smoke runs. Pixels carry a class-dependent colour, so a short run can learn."""

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import Cityscapes


def _noisy(colour_map: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 image: an HxWx3 colour map plus mild noise."""
    noise = rng.normal(0.0, 12.0, colour_map.shape)
    return np.clip(colour_map.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def make_imagenet_fixture(root, num_classes: int = 3, train_per_class: int = 4,
                          val_per_class: int = 2, size: tuple[int, int] = (40, 48),
                          seed: int = 0) -> Path:
    """root/{train,val}/n0000000k/*.JPEG; `size` is (height, width); class k has hue
    k/num_classes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    val_index = 0
    for k in range(num_classes):
        wnid = f"n{k:08d}"
        rgb = np.array(colorsys.hsv_to_rgb(k / num_classes, 0.8, 0.9)) * 255
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                if split == "train":
                    name = f"{wnid}_{i}.JPEG"
                else:
                    val_index += 1
                    name = f"ILSVRC2012_val_{val_index:08d}.JPEG"
                pixels = _noisy(np.broadcast_to(rgb, (*size, 3)), rng)
                Image.fromarray(pixels).save(folder / name, quality=90)
    return root


# labelId -> the official Cityscapes colour (ids that are not painted stay black).
_PALETTE = np.zeros((256, 3), np.uint8)
for _c in Cityscapes.classes:
    if _c.id >= 0:
        _PALETTE[_c.id] = _c.color


def _street_scene(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An HxW labelIds map: sky over buildings and vegetation over road and sidewalk, a car and a
    person at random places, an ego-vehicle strip at the bottom and scattered ignored pixels.
    Ids: 7 road, 8 sidewalk, 11 building, 21 vegetation, 23 sky, 24 person, 26 car; and ones
    evaluation ignores: 0 unlabeled, 1 ego vehicle, 4 static."""
    h, w = size
    labels = np.full((h, w), 11, np.uint8)
    labels[: h // 4] = 23
    x = rng.integers(0, w // 2)
    labels[h // 4 : h // 2, x : x + w // 4] = 21
    labels[h // 2 :] = 7
    labels[h // 2 :, : w // 6] = 8
    ch, cw = h // 5, w // 5
    y, x = rng.integers(h // 2, h - ch - h // 10), rng.integers(0, w - cw)
    labels[y : y + ch, x : x + cw] = 26
    y, x = rng.integers(h // 4, h // 2), rng.integers(0, w - w // 16)
    labels[y : y + h // 4, x : x + w // 16] = 24
    labels[h - h // 10 :] = 1
    labels[rng.random((h, w)) < 0.02] = 0
    labels[: h // 8, : w // 8] = 4
    return labels


def make_cityscapes_fixture(root, cities: tuple[str, ...] = ("aachen",), train_per_city: int = 2,
                            val_per_city: int = 1, size: tuple[int, int] = (64, 128),
                            seed: int = 0) -> Path:
    """root/leftImg8bit/{train,val}/<city>/<city>_000000_0000NN_leftImg8bit.png and the matching
    root/gtFine/.../*_gtFine_labelIds.png; `size` is (height, width); pixels take their class's
    Cityscapes colour."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_city), ("val", val_per_city)):
        for city in cities:
            images = root / "leftImg8bit" / split / city
            labels = root / "gtFine" / split / city
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                stem = f"{city}_000000_{i:06d}"
                label_ids = _street_scene(size, rng)
                Image.fromarray(label_ids).save(labels / f"{stem}_gtFine_labelIds.png")
                pixels = _noisy(_PALETTE[label_ids], rng)
                Image.fromarray(pixels).save(images / f"{stem}_leftImg8bit.png")
    return root


# ----------------------------------------------------------------------------- CIFAR-10
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar10_fixture_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n CIFAR-shaped images (uint8 NHWC) and labels: class k is a hue-k/10 square on a noisy
    background, at a random place, so a few epochs of a small network learn it."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % 10
    rng.shuffle(y)
    x = rng.integers(0, 96, (n, 32, 32, 3)).astype(np.uint8)
    for i, k in enumerate(y):
        rgb = (np.array(colorsys.hsv_to_rgb(k / 10, 0.9, 1.0)) * 255).astype(np.uint8)
        r, c = rng.integers(0, 12, 2)
        x[i, r:r + 20, c:c + 20] = _noisy(np.broadcast_to(rgb, (20, 20, 3)), rng)
    return x, y


def make_cifar10_fixture(root, layout: str = "npz", n_train: int = 1000, n_test: int = 200,
                         seed: int = 0) -> Path:
    """A tiny CIFAR-10 in one of the two layouts `load_cifar10` reads: "npz" (cifar10_train.npz /
    cifar10_test.npz, the test file with a 'lossless' mask marking its first tenth as exact) or
    "torchvision" (cifar-10-batches-py/ with pickled data_batch_1..5 / test_batch / batches.meta).
    n_train must be a multiple of 5 for the torchvision layout (five training batches)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    train_x, train_y = cifar10_fixture_arrays(n_train, seed)
    test_x, test_y = cifar10_fixture_arrays(n_test, seed + 1)
    if layout == "npz":
        lossless = np.arange(n_test) < max(1, n_test // 10)
        np.savez(root / "cifar10_train.npz", x=train_x, y=train_y)
        np.savez(root / "cifar10_test.npz", x=test_x, y=test_y, lossless=lossless)
    elif layout == "torchvision":
        _write_cifar_batches(root / "cifar-10-batches-py", train_x, train_y, test_x, test_y)
    else:
        raise ValueError(f"layout={layout!r}: expected 'npz' or 'torchvision'")
    return root


def _write_cifar_batches(folder: Path, train_x, train_y, test_x, test_y) -> None:
    """torchvision's (and the original distribution's) format: each batch a pickled dict with
    'batch_label', 'labels', 'data' (N x 3072 uint8: the red, green, then blue 32x32 planes,
    row-major) and 'filenames'; batches.meta holds 'label_names'."""
    import pickle

    if len(train_x) % 5:
        raise ValueError(f"n_train={len(train_x)}: the torchvision layout needs a multiple of 5")
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name, x, y, label):
        entry = {"batch_label": label, "labels": [int(v) for v in y],
                 "data": np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1)),
                 "filenames": [f"fixture_{label.replace(' ', '_')}_{i}.png" for i in range(len(x))]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    per = len(train_x) // 5
    for b in range(5):
        dump(f"data_batch_{b + 1}", train_x[b * per:(b + 1) * per], train_y[b * per:(b + 1) * per],
             f"training batch {b + 1} of 5")
    dump("test_batch", test_x, test_y, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per, "num_vis": 3072}, f,
                    protocol=2)
    (folder / "readme.html").write_text("<p>Generated CIFAR-10 fixture (not real data).</p>\n")


def make_cifar10_archive(path, n_train: int = 500, n_test: int = 100, seed: int = 0) -> Path:
    """`path` (…/cifar-10-python.tar.gz): a gzipped tar of cifar-10-batches-py/, laid out as the
    real archive, holding a generated fixture. For testing the download path without internet."""
    import tarfile
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_cifar10_fixture(tmp, "torchvision", n_train, n_test, seed)
        with tarfile.open(path, "w:gz") as tar:
            tar.add(Path(tmp) / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return path
