"""Tiny ImageNet and Cityscapes trees in the real on-disk layouts (real JPEG / PNG files), for
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
