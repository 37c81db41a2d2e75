"""ImageNet (ILSVRC-2012) from an ImageFolder tree."""

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from src.data.common import FileDataModule, first_n
from src.data.errors import DataRootError, open_image, require_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

GET_IMAGENET = (
    "Get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
    "https://image-net.org/download-images (free account); untar the per-class train tars into "
    "train/<wnid>/, and sort the 50,000 val images into val/<wnid>/ with valprep.sh "
    "(https://raw.githubusercontent.com/soumith/imagenetloader.torch/master/valprep.sh)."
)


def class_interleaved(targets: Sequence[int]) -> list[int]:
    """Indices ordered first example of every class, then second, ...; `targets` sorted by class
    (as ImageFolder lists them). Its first N examples are balanced and do not depend on a seed."""
    t = np.asarray(targets)
    rank_in_class = np.arange(len(t)) - np.searchsorted(t, t)
    return np.lexsort((t, rank_in_class)).tolist()


class ImageNetDataModule(FileDataModule):
    """ImageNet in ImageFolder layout: root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG.

    Batches are (x float32 NCHW normalised with ImageNet mean/std, y int64). Train:
    RandomResizedCrop + flip; val/test (both the val split): Resize(val_resize) +
    CenterCrop(image_size).
    `train_subset` / `test_subset` keep the first N examples in class-interleaved order.
    `num_classes` is set by setup() from the class folders of train/.
    """

    task = "classification"
    num_classes: int

    def __init__(self, root: str, batch_size: int = 256, num_workers: int = 8,
                 image_size: int = 224, val_resize: int = 256, train_subset: int | None = None,
                 test_subset: int | None = None, seed: int = 0, pin_memory: bool = True):
        super().__init__(root, batch_size, num_workers, train_subset, test_subset, seed, pin_memory)
        to_input = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), v2.ToPureTensor()]
        self.train_transform = v2.Compose(
            [v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip(), *to_input])
        self.val_transform = v2.Compose(
            [v2.Resize(val_resize), v2.CenterCrop(image_size), *to_input])

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        require_dir(self.root, "an ImageNet folder holding train/ and val/", GET_IMAGENET)
        train = self._image_folder("train", self.train_transform)
        val = self._image_folder("val", self.val_transform)
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            raise DataRootError(
                f"{self.root}: train/ and val/ hold different class folders (only in train/: "
                f"{only_train[:5]}{' ...' if len(only_train) > 5 else ''}; only in val/: "
                f"{only_val[:5]}{' ...' if len(only_val) > 5 else ''}); expected the same <wnid> "
                f"folders in both. {GET_IMAGENET}")
        self.num_classes = len(train.classes)
        self.train_set = first_n(train, self.train_subset, class_interleaved(train.targets))
        self.val_set = first_n(val, self.test_subset, class_interleaved(val.targets))

    def _image_folder(self, split: str, transform: v2.Transform) -> ImageFolder:
        path = self.root / split
        what = f"one folder of JPEG images per class ({split}/<wnid>/*.JPEG)"
        require_dir(path, what, GET_IMAGENET)
        try:
            return ImageFolder(str(path), transform, loader=open_image)
        except FileNotFoundError as e:  # no class folders, or a class folder without images
            raise DataRootError(f"{path}: {e} Expected {what}. {GET_IMAGENET}") from e
