"""Cityscapes semantic segmentation (fine annotations, 19 train classes) in torchvision's layout."""

from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.datasets import Cityscapes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from src.data.errors import DataRootError, open_image, require_dir
from src.data.common import FileDataModule, first_n
from src.data.imagenet import IMAGENET_MEAN, IMAGENET_STD

GET_CITYSCAPES = (
    "Cityscapes needs a (free) account: register at https://www.cityscapes-dataset.com/register/, "
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ and unzip both into the data root."
)

# labelId (0..33, as stored in *_gtFine_labelIds.png) -> trainId (0..18, 255 = ignored), from
# torchvision's copy of the official label table.
LABEL_TO_TRAIN_ID = torch.full((256,), 255, dtype=torch.uint8)
for _c in Cityscapes.classes:
    if not _c.ignore_in_eval:
        LABEL_TO_TRAIN_ID[_c.id] = _c.train_id


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from `scale_range`, relative to the input's own size
    (images bilinear with antialiasing, masks nearest)."""

    def __init__(self, scale_range: tuple[float, float]):
        super().__init__()
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        s = torch.empty(()).uniform_(*self.scale_range).item()
        return {"size": [round(height * s), round(width * s)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.resize(inpt, params["size"])


class _CityscapesFine(Cityscapes):
    """torchvision's Cityscapes (fine, semantic) in sorted file order, giving (Image, trainId Mask)
    pairs to joint `transforms`; a file that cannot be decoded is named."""

    def __init__(self, root: Path, split: str, transforms: v2.Transform):
        super().__init__(str(root), split, mode="fine", target_type="semantic",
                         transforms=transforms)
        pairs = sorted(zip(self.images, self.targets))  # torchvision lists in os.listdir order
        self.images, self.targets = [p[0] for p in pairs], [p[1] for p in pairs]
        if not self.images:
            raise DataRootError(f"{self.images_dir} holds no <city>/*_leftImg8bit.png images. "
                                f"{GET_CITYSCAPES}")
        missing = [t for (t,) in self.targets if not Path(t).is_file()]
        if missing:
            raise DataRootError(
                f"{len(missing)} label files are missing, e.g. {missing[0]}; expected a "
                f"*_gtFine_labelIds.png in {self.targets_dir}/<city>/ for every image. "
                f"{GET_CITYSCAPES}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = tv_tensors.Image(F.pil_to_tensor(open_image(self.images[index])))
        label_ids = F.pil_to_tensor(open_image(self.targets[index][0], mode=None))[0]
        mask = tv_tensors.Mask(LABEL_TO_TRAIN_ID[label_ids.long()])
        return self.transforms(image, mask)


class CityscapesDataModule(FileDataModule):
    """Cityscapes in torchvision's layout: root/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and
    root/gtFine/{train,val}/<city>/*_gtFine_labelIds.png.

    Batches are (x float32 NCHW normalised with ImageNet mean/std, target int64 NHW of trainIds,
    255 = ignore). Train: random scale in `scale_range`, random `crop_size` crop (padded with
    0 / 255 where the scaled image is smaller), horizontal flip; val/test (both the val split):
    full images. `train_subset` / `test_subset` keep the first N images in sorted file order.
    """

    task = "segmentation"
    num_classes = 19
    ignore_index = 255

    def __init__(self, root: str, batch_size: int = 12, num_workers: int = 8,
                 crop_size: tuple[int, int] = (512, 1024),
                 scale_range: tuple[float, float] = (0.5, 2.0), train_subset: int | None = None,
                 test_subset: int | None = None, seed: int = 0, pin_memory: bool = True):
        super().__init__(root, batch_size, num_workers, train_subset, test_subset, seed, pin_memory)
        to_input = [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64},
                               scale=True),
                    v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), v2.ToPureTensor()]
        self.train_transform = v2.Compose([
            RandomScale(tuple(scale_range)),
            v2.RandomCrop(tuple(crop_size), pad_if_needed=True,
                          fill={tv_tensors.Image: 0, tv_tensors.Mask: self.ignore_index}),
            v2.RandomHorizontalFlip(),
            *to_input])
        self.val_transform = v2.Compose(to_input)

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        require_dir(self.root, "the Cityscapes folders leftImg8bit/ and gtFine/", GET_CITYSCAPES)
        for split in ("train", "val"):
            require_dir(self.root / "leftImg8bit" / split,
                        "<city>/*_leftImg8bit.png images (from leftImg8bit_trainvaltest.zip)",
                        GET_CITYSCAPES)
            require_dir(self.root / "gtFine" / split,
                        "<city>/*_gtFine_labelIds.png labels (from gtFine_trainvaltest.zip)",
                        GET_CITYSCAPES)
        self.train_set = first_n(_CityscapesFine(self.root, "train", self.train_transform),
                                 self.train_subset)
        self.val_set = first_n(_CityscapesFine(self.root, "val", self.val_transform),
                               self.test_subset)
