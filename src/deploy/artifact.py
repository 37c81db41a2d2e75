"""The deploy artifact: a decomposed model in one file, with the preprocessing it expects.

    from src.deploy import load_deploy
    net = load_deploy("runs/cifar10/struct_resnet56_a/seed0/deploy.pt")
    net.classify("cat.png")                # ['cat']; also predict() -> indices, topk(), net(x) -> logits

File format (``torch.save`` of plain containers and tensors, so ``torch.load(weights_only=True)``
reads it)::

    {"format": "structured-conv-deploy", "version": 1,
     "model": "struct_resnet56_a",        # registered name (src.models.list_models())
     "route": "regularized",              # or "direct" / "dense"; informational
     "num_classes": 10, "task": "classification",   # or "segmentation"
     "input_size": [3, 32, 32],           # C, H, W the network is evaluated at
     "mean": [...], "std": [...],         # per channel, on the 0-1 pixel scale
     "crop_pct": 1.0,                     # resize rule, see below
     "class_names": [...] or None,
     "model_kwargs": {...},               # builder keyword arguments (e.g. {"shortcut": "B"})
     "structure": None or {...},          # an extra rule set on top of the name (create_model)
     "compress": None or {"method": ..., "mults_ratio": ...},   # a src.compress baseline of the model
     "recompose": {...},                  # deploy forms other than "decomposed", by layer
     "extra": {...},                      # free-form (plain containers)
     "state_dict": {...}}                 # the decomposed model's state_dict

Preprocessing (``DeployedModel.preprocess``) turns a PIL image, an image file, a uint8 tensor
(C, H, W) / (N, C, H, W), a uint8 array (H, W, C) / (N, H, W, C) (the CIFAR arrays' layout) or a
float array (N, C, H, W) into the network input: with ``crop_pct < 1``
the shorter side is resized to ``H / crop_pct`` and the centre (H, W) cropped (ImageNet's
Resize(256) + CenterCrop(224)); with ``crop_pct == 1`` the image is resized to (H, W) unless it
already has that size (CIFAR at 32 x 32, Cityscapes at full resolution); then pixels are scaled
to 0-1 and normalised with mean/std. Float tensors and arrays are taken as already on the 0-1 scale.

The older format that ``src.train`` wrote first, ``{"model", "route", "num_classes",
"state_dict"}``, still loads; it records no preprocessing, so a warning says that the registry's
defaults for the model's input size are assumed (CIFAR-10 statistics at 32 x 32, ImageNet
statistics otherwise: what every configuration of this project trains with).

This module imports only torch and src.checkpoint (the project's one checkpoint reader) at import
time (src.models, torchvision and PIL when used).
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from src.checkpoint import Checkpoint, read_checkpoint, state_dict_mismatch

__all__ = ["FORMAT", "VERSION", "DeployedModel", "save_deploy", "load_deploy", "from_checkpoint",
           "default_preprocessing", "CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN", "IMAGENET_STD",
           "CIFAR10_CLASSES", "CITYSCAPES_CLASSES"]

FORMAT = "structured-conv-deploy"
VERSION = 1

# the training pipelines' constants (src/data/cifar.py, src/data/imagenet.py, which Cityscapes
# also uses); repeated here so that loading a model does not import the data stack. A test
# checks that they agree.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CROP_PCT = 224 / 256  # Resize(256) + CenterCrop(224)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")  # trainIds 0..18

_OLD_KEYS = {"model", "num_classes", "state_dict"}


def default_preprocessing(name: str, num_classes: int | None = None) -> dict[str, Any]:
    """What this project's training pipelines feed model `name`: input_size, mean, std, crop_pct,
    class_names (CIFAR-10 / Cityscapes names when the class count matches, else None), task."""
    from src.models import get_entry

    entry = get_entry(name)
    n = entry.num_classes if num_classes is None else num_classes
    c, h, w = entry.input_size
    if (h, w) == (32, 32):  # CIFAR-10 models
        return {"input_size": [c, h, w], "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD), "crop_pct": 1.0,
                "class_names": list(CIFAR10_CLASSES) if n == 10 else None, "task": entry.task}
    if entry.task == "segmentation":  # Cityscapes: full images, ImageNet statistics
        return {"input_size": [c, h, w], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "crop_pct": 1.0,
                "class_names": list(CITYSCAPES_CLASSES) if n == 19 else None, "task": entry.task}
    return {"input_size": [c, h, w], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "crop_pct": IMAGENET_CROP_PCT, "class_names": None, "task": entry.task}


# ---------------------------------------------------------------------------------- saving
def _check_plain(obj: Any, where: str) -> None:
    """TypeError unless `obj` is made of what torch.load(weights_only=True) reads back."""
    if obj is None or isinstance(obj, (str, int, float, bool, torch.Tensor)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; use str keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}: the deploy file holds only str, int, float, bool, "
                    f"None, tensors, lists and dicts (torch.load(weights_only=True) reads nothing else)")


def _plain(obj: Any) -> Any:
    """Mappings to dicts, tuples to lists (e.g. an OmegaConf container already converted)."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _channels(values: Sequence[float], label: str, c: int) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != c:
        raise ValueError(f"save_deploy: {label} has {len(values)} values for {c} input channels")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"save_deploy: {label} {values} is not finite")
    if max(abs(v) for v in values) > 1.5:
        raise ValueError(f"save_deploy: {label} {values} looks like the 0-255 pixel scale; give it on the 0-1 scale")
    return values


def save_deploy(path: str | Path, model: nn.Module, *, model_name: str, route: str | None, num_classes: int,
                mean: Sequence[float], std: Sequence[float], input_size: Sequence[int],
                class_names: Sequence[str] | None = None, extra: Mapping[str, Any] | None = None,
                crop_pct: float | None = None, model_kwargs: Mapping[str, Any] | None = None,
                structure: Mapping[str, Any] | None = None,
                recompose: Mapping[str, str] | None = None,
                compress: Mapping[str, Any] | None = None) -> Path:
    """Write the deploy artifact of `model` (its deploy form, e.g. ``decompose(project(m))``) to
    `path` (atomically; parent folders are created) and return the path.

    `mean` / `std`: per-channel normalisation on the 0-1 pixel scale; `input_size`: (C, H, W).
    `crop_pct`: the resize rule (module docstring); default 0.875 for ImageNet-size
    classification inputs (H, W > 64), else 1. `model_kwargs` / `structure`: what
    ``create_model(model_name, ...)`` was given besides num_classes, so that
    :func:`load_deploy` builds the same architecture. `recompose`: deploy forms other than
    "decomposed", by layer: the deploy plan the model was built with
    (``src.deploy.decompose_planned(model, plan)``). `compress`: ``{"method", "mults_ratio"}``
    of a model compressed by :func:`src.compress.compress` (its architecture is rebuilt by the
    same call: the shapes depend on the method and ratio, not on the weights). `extra`: anything
    else (plain containers).
    """
    from src.models import get_entry

    entry = get_entry(model_name)  # unknown names raise here, not when loading
    size = [int(v) for v in input_size]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"save_deploy: input_size {list(input_size)} is not (C, H, W)")
    mean, std = _channels(mean, "mean", size[0]), _channels(std, "std", size[0])
    if min(std) <= 0:
        raise ValueError(f"save_deploy: std {std} must be positive")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"save_deploy: {len(class_names)} class names for num_classes={num_classes}")
    if crop_pct is None:
        crop_pct = IMAGENET_CROP_PCT if entry.task == "classification" and min(size[1:]) > 64 else 1.0
    if not 0 < crop_pct <= 1:
        raise ValueError(f"save_deploy: crop_pct {crop_pct} is not in (0, 1]")
    payload = {
        "format": FORMAT, "version": VERSION, "model": model_name, "route": route, "num_classes": int(num_classes),
        "task": entry.task, "input_size": size, "mean": mean, "std": std, "crop_pct": float(crop_pct),
        "class_names": class_names, "model_kwargs": _plain(dict(model_kwargs or {})),
        "structure": _plain(structure) if structure else None, "recompose": dict(recompose or {}),
        "compress": _plain(dict(compress)) if compress else None,
        "extra": _plain(dict(extra or {})),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    for key in ("model_kwargs", "structure", "recompose", "compress", "extra"):
        _check_plain(payload[key], key)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------- loading
def get_entry_size(name: str) -> tuple[int, int, int]:
    from src.models import get_entry

    return get_entry(name).input_size


def _architectures(name: str, num_classes: int, kwargs: Mapping[str, Any], structure: Any,
                   recompose: Mapping[str, str], compress: Mapping[str, Any] | None = None,
                   input_size: Sequence[int] | None = None) -> Iterable[tuple[str, nn.Module]]:
    """(label, randomly initialised model) in the forms a deploy file may hold: decomposed first."""
    from src.models import create_model
    from src.structured import structured_layers

    from .forms import decompose_planned

    model = create_model(name, num_classes=num_classes, structure=structure or None, **kwargs).eval()
    if compress:  # a src.compress baseline: the same call rebuilds its architecture
        from src.compress import compress as compress_model

        model = compress_model(model, compress["method"], compress["mults_ratio"],
                               tuple(input_size or get_entry_size(name))).eval()
    if any(True for _ in structured_layers(model)):
        yield "decomposed", decompose_planned(model, dict(recompose), tol=math.inf)
        yield "train form", model  # e.g. a deploy file of layers all kept in the dense form
    else:
        yield "dense", model


def from_checkpoint(ckpt: Checkpoint, source: str | Path | None = None, map_location: Any = "cpu") -> "DeployedModel":
    """The DeployedModel of a deploy file already read by ``src.checkpoint.read_checkpoint`` (new
    or old format); `source` names it in errors (default: the checkpoint's label).
    :func:`load_deploy` reads the file and calls this."""
    from src.models import get_entry

    source = source if source is not None else ckpt.where
    if not ckpt.is_deploy_file:
        raise ValueError(f"{source} is not a deploy file (expected a dict with 'model' and 'state_dict', as "
                         f"save_deploy or src.train write it; found a {ckpt.kind})")
    obj = {**ckpt.meta, "state_dict": ckpt.state_dict}
    fmt = obj.get("format")
    if fmt is not None and fmt != FORMAT:
        raise ValueError(f"{source} has format {fmt!r}, not {FORMAT!r}")
    if fmt == FORMAT and not isinstance(obj.get("version"), int):
        raise ValueError(f"{source}: deploy file without an integer 'version'")
    if fmt == FORMAT and obj["version"] > VERSION:
        raise ValueError(f"{source} is deploy format version {obj['version']}; this code reads up to {VERSION}")
    state = obj["state_dict"]
    name = obj["model"]
    try:
        entry = get_entry(name)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    num_classes = obj.get("num_classes", entry.num_classes)
    if not isinstance(num_classes, int):
        raise ValueError(f"{source}: num_classes {num_classes!r} is not an int")
    meta: dict[str, Any] = {"model": name, "route": obj.get("route"), "num_classes": num_classes}
    if fmt is None:  # the first format src.train wrote
        if set(obj) - _OLD_KEYS - {"route"}:
            raise ValueError(f"{source} is not a deploy file (unknown keys {sorted(set(obj) - _OLD_KEYS - {'route'})} "
                             f"and no 'format' entry)")
        defaults = default_preprocessing(name, num_classes)
        warnings.warn(
            f"{source}: deploy file in the old format, without preprocessing (input size, mean/std unknown); "
            f"assuming {name}'s defaults: input {defaults['input_size']}, mean {defaults['mean']}, "
            f"std {defaults['std']}. Re-save it with src.deploy.save_deploy to record them.", UserWarning,
            stacklevel=3)
        meta.update(defaults, version=0, preprocessing_known=False, model_kwargs={}, structure=None,
                    recompose={}, extra={})
    else:
        missing = [k for k in ("input_size", "mean", "std") if k not in obj]
        if missing:
            raise ValueError(f"{source}: deploy file without {missing}")
        meta.update({k: obj.get(k) for k in ("input_size", "mean", "std", "class_names")},
                    version=obj["version"], preprocessing_known=True, task=obj.get("task", entry.task),
                    crop_pct=float(obj.get("crop_pct", 1.0)), model_kwargs=dict(obj.get("model_kwargs") or {}),
                    structure=obj.get("structure"), recompose=dict(obj.get("recompose") or {}),
                    compress=obj.get("compress"), extra=dict(obj.get("extra") or {}))
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    first_error = None
    for label, model in _architectures(name, num_classes, meta["model_kwargs"], meta["structure"],
                                       meta["recompose"], meta.get("compress"), meta.get("input_size")):
        error = state_dict_mismatch(model, state)
        if error:
            first_error = first_error or f"{label} form: {error}"
            continue
        if len(floats) == 1 and floats != {torch.float32}:  # a float64 / half model loads as such
            model = model.to(next(iter(floats)))
        model.load_state_dict(state, strict=True)
        if map_location is not None and isinstance(map_location, (str, torch.device)):
            model = model.to(map_location)
        meta["form"] = label
        return DeployedModel(model.eval(), meta, source)
    raise ValueError(f"{source}: state_dict does not fit model '{name}' (num_classes={num_classes}): {first_error}")


def load_deploy(path: str | Path, map_location: Any = "cpu") -> "DeployedModel":
    """Load a deploy file written by :func:`save_deploy` (or src.train's older format): the
    model rebuilt in its deploy form (registry name -> create_model -> decompose), weights loaded
    strictly, eval mode, with its preprocessing. ValueError naming `path` if it cannot be used."""
    ckpt = read_checkpoint(path, where=f"deploy file {path}", map_location=map_location)
    return from_checkpoint(ckpt, Path(path), map_location)


# ---------------------------------------------------------------------------------- inference
class DeployedModel:
    """A loaded deploy artifact: ``.model`` (the eval-mode nn.Module) and its preprocessing.

    ``net(x)`` runs the model on an already normalised batch (no grad); ``net.preprocess(images)``
    builds that batch from images; ``net.predict(images)`` gives class indices (N,) (per pixel,
    (N, H, W), for segmentation); ``net.classify(images)`` gives class names; ``net.topk``
    names with probabilities. Attributes: name, route, num_classes, task, input_size, mean, std,
    crop_pct, class_names, extra, path, preprocessing_known (False for old-format files).
    """

    def __init__(self, model: nn.Module, meta: Mapping[str, Any], path: str | Path | None = None):
        self.model = model
        self.meta = dict(meta)
        self.path = path
        self.name: str = meta["model"]
        self.route = meta.get("route")
        self.num_classes: int = meta["num_classes"]
        self.task: str = meta.get("task", "classification")
        self.input_size: tuple[int, int, int] = tuple(int(v) for v in meta["input_size"])  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in meta["mean"])
        self.std = tuple(float(v) for v in meta["std"])
        self.crop_pct = float(meta.get("crop_pct", 1.0))
        self.class_names = list(meta["class_names"]) if meta.get("class_names") else None
        self.extra = dict(meta.get("extra") or {})
        self.preprocessing_known = bool(meta.get("preprocessing_known", True))

    def __repr__(self) -> str:
        return (f"DeployedModel({self.name!r}, route={self.route!r}, num_classes={self.num_classes}, "
                f"input_size={self.input_size}, path={str(self.path)!r})")

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.model.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def to(self, *args, **kwargs) -> "DeployedModel":
        self.model = self.model.to(*args, **kwargs)
        return self

    def metadata(self) -> dict[str, Any]:
        """The description carried in the file (no weights), e.g. for ONNX metadata."""
        return {"format": FORMAT, "model": self.name, "route": self.route, "num_classes": self.num_classes,
                "task": self.task, "input_size": list(self.input_size), "mean": list(self.mean),
                "std": list(self.std), "crop_pct": self.crop_pct, "class_names": self.class_names,
                "preprocessing_known": self.preprocessing_known}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device, self.dtype))

    # ---- preprocessing
    def _one(self, image: Any) -> torch.Tensor:
        """One image -> uint8 or 0-1 float tensor (C, H, W) resized and cropped to input_size."""
        from torchvision.transforms.v2 import functional as TF

        c, h, w = self.input_size
        if isinstance(image, (str, Path)):
            from PIL import Image

            with Image.open(image) as im:
                image = im.convert("RGB" if c == 3 else "L")
        if not isinstance(image, torch.Tensor) and hasattr(image, "convert") and hasattr(image, "size"):  # PIL
            mode = "RGB" if c == 3 else "L"
            if image.mode != mode:
                image = image.convert(mode)
        elif not isinstance(image, torch.Tensor):
            import numpy as np

            arr = np.asarray(image)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            if arr.ndim != 3 or arr.shape[2] > 4:
                raise ValueError(f"preprocess: expected an (H, W) or (H, W, C) array, got shape {arr.shape}")
            image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        if isinstance(image, torch.Tensor):
            if image.ndim == 2:
                image = image[None]
            if image.ndim != 3:
                raise ValueError(f"preprocess: expected a (C, H, W) image tensor, got shape {tuple(image.shape)}")
            if image.shape[0] == 4 and c == 3:  # RGBA: drop alpha
                image = image[:3]
            if image.shape[0] == 1 and c == 3:
                image = image.expand(3, -1, -1)
            if image.shape[0] != c:
                raise ValueError(f"preprocess: image has {image.shape[0]} channels, the model takes {c}")
        if self.crop_pct < 1:
            image = TF.resize(image, [int(min(h, w) / self.crop_pct)], antialias=True)
            image = TF.center_crop(image, [h, w])
        elif tuple(TF.get_size(image)) != (h, w):
            image = TF.resize(image, [h, w], antialias=True)
        if not isinstance(image, torch.Tensor):
            image = TF.pil_to_tensor(image)
        return image

    def _array_batch(self, arr: Any) -> list:
        """The images of a numpy array: one (H, W) / (H, W, C) image, a batch (N, H, W, C) uint8
        (the layout of the CIFAR arrays and most numpy data sets) or (N, C, H, W) float (0-1)."""
        import numpy as np

        if arr.ndim in (2, 3):
            return [arr]
        c = self.input_size[0]
        channels = {c, 1, 4} if c == 3 else {c, 1}  # (grey images are expanded, RGBA loses alpha)
        if arr.ndim == 4 and arr.dtype == np.uint8 and arr.shape[3] in channels:
            return list(arr)
        if arr.ndim == 4 and arr.dtype.kind == "f" and arr.shape[1] in channels:
            return list(torch.from_numpy(np.ascontiguousarray(arr)))
        raise ValueError(f"preprocess: cannot read a numpy array of shape {arr.shape} and dtype {arr.dtype} as images; "
                         f"allowed: one image (H, W) or (H, W, C), or a batch (N, H, W, C) uint8 or (N, C, H, W) "
                         f"float on the 0-1 scale, with C = {c} (or {', '.join(map(str, sorted(channels - {c})))})")

    def preprocess(self, images: Any) -> torch.Tensor:
        """Network input (N, C, H, W) on the model's device from one image or a sequence of them
        (PIL images, file paths, uint8 (C, H, W) tensors / (H, W, C) arrays, one uint8
        (N, C, H, W) tensor, or one numpy batch: (N, H, W, C) uint8 or (N, C, H, W) float); float
        tensors and arrays are taken as 0-1 pixel values."""
        if type(images).__module__ == "numpy" and hasattr(images, "ndim"):
            images = self._array_batch(images)
        elif isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        elif isinstance(images, (str, Path, torch.Tensor)) or not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("preprocess: no images")
        batch = []
        for image in images:
            t = self._one(image)
            t = t.float() / 255 if t.dtype == torch.uint8 else t.float()
            batch.append(t)
        x = torch.stack(batch)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((x - mean) / std).to(self.device, self.dtype)

    # ---- prediction
    def logits(self, images: Any) -> torch.Tensor:
        return self(self.preprocess(images))

    def predict(self, images: Any) -> torch.Tensor:
        """Class indices: (N,) for classification, (N, H, W) per pixel for segmentation; `images`
        as :meth:`preprocess` takes them (one image, a list, or a batch tensor / numpy array)."""
        return self.logits(images).argmax(1)

    def _names(self, idx: Iterable[int]) -> list[str]:
        return [self.class_names[i] if self.class_names else str(i) for i in idx]

    def classify(self, images: Any) -> list[str]:
        """Class names (the index as a string when the file records no names), one per image."""
        if self.task != "classification":
            raise ValueError(f"classify: {self.name} is a {self.task} model; use predict() for per-pixel classes")
        return self._names(self.predict(images).tolist())

    def topk(self, images: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the k most probable classes as (name, probability)."""
        if self.task != "classification":
            raise ValueError(f"topk: {self.name} is a {self.task} model")
        probs = self.logits(images).float().softmax(1)
        p, i = probs.topk(min(k, probs.shape[1]), dim=1)
        return [list(zip(self._names(ii), pp)) for ii, pp in zip(i.tolist(), p.tolist())]
