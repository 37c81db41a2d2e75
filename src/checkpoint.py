"""The one checkpoint reader: every weight file the project reads goes through :func:`read_checkpoint`.

A file is read with ``torch.load(weights_only=True)`` (tensors and plain containers only) and
recognised as one of:

- ``"deploy file"``: a dict with ``"model"`` and ``"state_dict"`` (src/deploy/artifact.py, both
  formats); its other entries are the checkpoint's ``meta``;
- ``"Lightning checkpoint"``: a dict with ``"state_dict"`` and Lightning's ``"global_step"`` /
  ``"pytorch-lightning_version"``; the network sits under the LightningModule's ``model.`` prefix
  (src/lit/module.py). When the run kept a weight EMA (``"ema_state_dict"``, keys
  ``ema.module.*``), its EMA weights are taken (``"Lightning checkpoint (EMA weights)"``): they
  are what that run adopted as its trained model;
- ``"state_dict"``: ``torch.save(model.state_dict())``, or a dict holding one under
  ``"state_dict"`` (the dict's other entries are ``meta``).

A ``model.`` prefix on every key of a non-deploy state_dict is removed. Users: the deploy
artifact (``src.deploy.load_deploy``), the ONNX export (``src.deploy.export``) and a run's
starting weights (``model.init_from``, src/init_from.py). :func:`state_dict_mismatch` says how
a state_dict fails to fit a model. This module imports only torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["Checkpoint", "read_checkpoint", "state_dict_mismatch", "LIGHTNING_PREFIX", "EMA_KEY", "EMA_PREFIX"]

LIGHTNING_PREFIX = "model."
EMA_KEY, EMA_PREFIX = "ema_state_dict", "ema.module."
SHOWN = 8  # keys listed per kind in a mismatch message


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`read_checkpoint` found in a file: the network's `state_dict`, the file's
    `kind` (see the module docstring), its other entries (`meta`), and where it came from
    (`where`: the path, or the label errors name it by)."""

    state_dict: dict[str, torch.Tensor]
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    @property
    def is_deploy_file(self) -> bool:
        return self.kind == "deploy file"


def _tensors(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint(path: str | Path, *, where: str | None = None, map_location: Any = "cpu") -> Checkpoint:
    """The :class:`Checkpoint` in the file `path`. ValueError, named by `where` (default
    ``"checkpoint <path>"``), when the file does not exist, cannot be read with
    ``torch.load(weights_only=True)`` or holds no state_dict."""
    path = Path(path)
    where = where or f"checkpoint {path}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise ValueError(f"{where}: cannot read it (corrupt, or not a torch.save file of tensors and plain "
                         f"containers: {type(e).__name__}: {first})") from None
    kind, meta = "state_dict", {}
    if isinstance(obj, Mapping) and "state_dict" in obj and not _tensors(obj):
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        if "pytorch-lightning_version" in obj or "global_step" in obj:
            kind = "Lightning checkpoint"
            if _tensors(obj.get(EMA_KEY)):
                kind += " (EMA weights)"
                obj = {LIGHTNING_PREFIX + k[len(EMA_PREFIX):]: v for k, v in obj[EMA_KEY].items()
                       if k.startswith(EMA_PREFIX)}
            else:
                obj = obj["state_dict"]
        else:
            kind = "deploy file" if "model" in obj else kind
            obj = obj["state_dict"]
    if not _tensors(obj):
        raise ValueError(f"{where}: holds no state_dict (a mapping of names to tensors: a Lightning checkpoint, "
                         f"a deploy.pt or torch.save(model.state_dict()))")
    state = dict(obj)
    if kind != "deploy file" and all(k.startswith(LIGHTNING_PREFIX) for k in state):
        state = {k[len(LIGHTNING_PREFIX):]: v for k, v in state.items()}
    return Checkpoint(state, kind, meta, where)


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """'' when `state` fits `model` exactly; otherwise the missing keys, unexpected keys and
    differing shapes (the first few of each, with counts), on one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(v.shape)} in the model"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", shapes)):
        if items:
            more = f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:SHOWN])}{more}")
    return "; ".join(parts)
