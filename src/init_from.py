"""Start a run from trained weights: ``model.init_from=<path>`` or ``+model.pretrained=true``.

``model.init_from`` accepts, all read by the project's one checkpoint reader
(``src.checkpoint.read_checkpoint``, ``torch.load(weights_only=True)``):

- a Lightning checkpoint of this pipeline (``runs/<...>/checkpoints/last.ckpt``): its
  ``state_dict`` holds the network under the LightningModule's ``model.`` prefix
  (src/lit/module.py); when the run kept a weight EMA (``optim.ema_decay``), the EMA weights
  (``ema_state_dict``, ``ema.module.*``) are taken, since they are what that run adopted as its
  trained model;
- a deploy file of a dense run (``deploy.pt``, src/deploy/artifact.py): its ``state_dict`` (the
  deploy form of a structured run is decomposed, so it fits only a decomposed model);
- a plain state_dict (``torch.save(model.state_dict())``), or a dict holding one under
  ``state_dict``; a ``model.`` prefix on every key is removed.

The weights load strictly. A structured model (``struct_*`` names, or ``structure=`` rules) keeps
the dense state_dict keys in its train-form layers, so a dense network's weights load into it
unchanged and it then trains with the structural loss (the pipeline projects and decomposes as
usual). A file that does not fit raises one ValueError naming the path, the missing and unexpected
keys and the shapes that differ.

``+model.pretrained=true`` (an optional key) loads the published ImageNet weights of the dense
architecture (torchvision's ``DEFAULT`` weights for resnet18/34/50 and mobilenet_v2; timm's for
efficientnet_b0/b1 and hrnet_w18_small_v2, and the HRNetV2 segmentation backbone). It needs the
internet (or the files in torch's / Hugging Face's cache); offline it stops with a one-line
ValueError saying so. With another number of classes the classifier keeps its fresh
initialisation. The CIFAR models have no published weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.checkpoint import read_checkpoint, state_dict_mismatch

__all__ = ["load_weights", "pretrained_state_dict", "load_pretrained", "init_model", "origin", "PRETRAINED"]

log = logging.getLogger(__name__)

# registered dense name -> (library, its model name, the classifier's key prefixes)
PRETRAINED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "resnet18": ("torchvision", "resnet18", ("fc.",)),
    "resnet34": ("torchvision", "resnet34", ("fc.",)),
    "resnet50": ("torchvision", "resnet50", ("fc.",)),
    "mobilenet_v2": ("torchvision", "mobilenet_v2", ("classifier.",)),
    "efficientnet_b0": ("timm", "efficientnet_b0", ("classifier.",)),
    "efficientnet_b1": ("timm", "efficientnet_b1", ("classifier.",)),
    "hrnet_w18_small_v2": ("timm", "hrnet_w18_small_v2", ("classifier.",)),
    "hrnetv2_w18_small_v2_seg": ("timm-backbone", "hrnet_w18_small_v2", ()),
}


@torch.no_grad()
def load_weights(model: nn.Module, path: str | Path, model_name: str | None = None) -> str:
    """Load the weights of `path` into `model` (strictly, in place); returns the file's kind.
    ValueError naming the path and what does not fit."""
    ckpt = read_checkpoint(path, where=f"model.init_from={path}")
    state, kind = ckpt.state_dict, ckpt.kind
    problem = state_dict_mismatch(model, state)
    if problem:
        what = f"model '{model_name}'" if model_name else type(model).__name__
        raise ValueError(f"model.init_from={path} ({kind}) does not fit {what}: {problem}")
    model.load_state_dict(state, strict=True)
    log.info("model.init_from: loaded %s (%s)", path, kind)
    return kind


@contextlib.contextmanager
def _hub_offline_unless_reachable(host: str):
    """Hugging Face hub downloads retry for about a minute when offline; when `host` cannot be
    reached, use the local cache only (so a cached file still loads and a missing one fails at once)."""
    try:
        socket.create_connection((host, 443), timeout=5).close()
        reachable = True
    except OSError:
        reachable = False
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or not reachable
    try:
        yield
    except Exception as e:  # noqa: BLE001
        if not reachable:
            raise OSError(f"{host} cannot be reached and the file is not in the local cache "
                          f"({type(e).__name__})") from None
        raise
    finally:
        constants.HF_HUB_OFFLINE = saved


def pretrained_state_dict(name: str, num_classes: int | None = None) -> tuple[dict[str, torch.Tensor], tuple[str, ...], str]:
    """(state_dict, classifier prefixes, source) of the published weights of dense model `name`.
    ValueError (one line) when there are none or they cannot be fetched."""
    if name not in PRETRAINED:
        raise ValueError(f"model.pretrained=true: no published weights for '{name}' (available: "
                         f"{', '.join(PRETRAINED)}); start from a file with model.init_from=<path>")
    library, lib_name, head = PRETRAINED[name]
    source = f"{library.split('-')[0]} {lib_name}"
    try:
        if library == "torchvision":
            import torchvision

            weights = torchvision.models.get_model_weights(lib_name).DEFAULT
            source = f"torchvision {weights} ({weights.url})"
            state = weights.get_state_dict(progress=False)
        else:
            import timm

            source = f"timm {lib_name} (Hugging Face hub)"
            kw = dict(features_only=True, feature_location="", out_indices=(1, 2, 3, 4)) \
                if library == "timm-backbone" else {}
            with _hub_offline_unless_reachable("huggingface.co"):
                state = timm.create_model(lib_name, pretrained=True, **kw).state_dict()
            if library == "timm-backbone":
                state = {f"backbone.{k}": v for k, v in state.items()}
    except Exception as e:  # noqa: BLE001 - offline errors come from urllib, requests, huggingface_hub, ...
        reason = " ".join(str(e).split())[:300]
        raise ValueError(f"model.pretrained=true: cannot fetch the weights of '{name}' from {source} "
                         f"({type(e).__name__}: {reason}); offline? put the file in place and pass it as "
                         f"model.init_from=<path>") from None
    return state, head, source


@torch.no_grad()
def load_pretrained(model: nn.Module, name: str) -> str:
    """Published weights of dense model `name` into `model` (in place); returns their source. The
    classifier keeps its initialisation when its shape differs (another number of classes), and
    so does everything outside the backbone of the segmentation model."""
    state, head, source = pretrained_state_dict(name)
    own = model.state_dict()
    if head and any(k.startswith(head) and k in own and own[k].shape != v.shape for k, v in state.items()):
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        state.update({k: v for k, v in own.items() if k.startswith(head)})
    if PRETRAINED[name][0] == "timm-backbone":
        state.update({k: v for k, v in own.items() if not k.startswith("backbone.")})
    problem = state_dict_mismatch(model, state)
    if problem:
        raise ValueError(f"model.pretrained=true: {source} does not fit '{name}': {problem}")
    model.load_state_dict(state, strict=True)
    log.info("model.pretrained: loaded %s", source)
    return source


def init_model(model: nn.Module, cfg: Any, model_name: str) -> str | None:
    """Apply ``model.init_from`` / ``model.pretrained`` of a run configuration to `model` (in
    place). Returns what was loaded (for the log), or None."""
    model_cfg = cfg.model
    init_from, pretrained = model_cfg.get("init_from"), bool(model_cfg.get("pretrained", False))
    if init_from and pretrained:
        raise ValueError("model.init_from and model.pretrained=true both given: choose one")
    if init_from:
        return f"{init_from} ({load_weights(model, init_from, model_name)})"
    if pretrained:
        from src.models import get_entry

        entry = get_entry(model_name)
        return load_pretrained(model, entry.dense_name or model_name)
    return None


def origin(path: str | Path) -> dict[str, str]:
    """Where a run's starting weights came from, recorded when the run starts (code.json, then
    summary.json): ``init_from_sha256`` (the file's bytes) and, when the file belongs to a finished
    run of this pipeline (its ``deploy.pt``, or its ``checkpoints/*.ckpt``, beside that run's
    ``summary.json``), ``init_from_run``: ``<config_hash> seed <seed> at <git_sha>`` of that run,
    which names the committed run it started from."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    found = {"init_from_sha256": digest.hexdigest()}
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            s = json.loads(summary.read_text())
            found["init_from_run"] = f"{s['config_hash']} seed {s['seed']} at {s['git_sha']}"
        except (ValueError, KeyError, TypeError):
            pass  # not a summary of this pipeline: the digest alone identifies the file
    return found
