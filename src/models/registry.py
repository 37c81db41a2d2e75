"""Model registry: dense architectures and their structured A/B variants.

Dense models are registered with ``@register_model(family=..., input_size=...)`` on a tiny
builder function. For every dense name ``x`` the registry also provides ``struct_x_a`` and
``struct_x_b``: the dense model passed through :func:`src.structured.structurize` with the rule
set ``<family>_<a|b>.yaml`` (data, not code). The rule sets are package data, ``src/models/rules/``,
read with importlib.resources, so an installed package builds them without the repository;
``conf/structure/`` holds identical copies as the Hydra ``structure`` group (a test keeps the two
equal). Names that timm does not already use are registered in timm's registry too, so
``timm.create_model("struct_resnet50_a")`` works.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from torch import nn

from src.structured import structurize

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "get_entry", "STRUCTURE_DIR",
           "structure_file", "load_structure", "VARIANTS"]

log = logging.getLogger(__name__)

# The packaged rule sets (pyproject.toml: [tool.setuptools.package-data] "src.models" = ["rules/*.yaml"]):
# a pathlib.Path in a source tree or an ordinary install, another importlib.resources Traversable
# (e.g. inside a zip) elsewhere.
STRUCTURE_DIR = resources.files(__package__) / "rules"
VARIANTS = ("a", "b")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str  # selects the rule set src/models/rules/<family>_<variant>.yaml
    input_size: tuple[int, int, int]  # the standard (C, H, W) the paper's tables use
    num_classes: int
    task: str = "classification"  # or "segmentation"
    dense_name: str | None = None  # set on structured variants
    variant: str | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def structure_file(family: str, variant: str):
    """The packaged rule file of a family's variant (an importlib.resources Traversable: has
    ``.name`` and ``.read_text()``)."""
    return STRUCTURE_DIR / f"{family}_{variant}.yaml"


def load_structure(family: str, variant: str) -> dict:
    """The rule set {rules: [...], exclude: [...]} of a family's variant, read from the package."""
    import yaml

    file = structure_file(family, variant)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"rule set {file.name} is not in the package (src/models/rules/); a wheel "
                         f"built without its package data?") from None
    return yaml.safe_load(text)


def register_model(*, family: str, input_size: tuple[int, int, int], num_classes: int,
                   task: str = "classification"):
    """Register a dense builder (named after the function) and its struct_<name>_a/_b variants."""

    def deco(fn: Callable[..., nn.Module]):
        name = fn.__name__
        _add(ModelEntry(name, fn, family, input_size, num_classes, task))
        for v in VARIANTS:
            _add(ModelEntry(f"struct_{name}_{v}", fn, family, input_size, num_classes, task, name, v))
        return fn

    return deco


def _add(entry: ModelEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"model '{entry.name}' is registered twice")
    _REGISTRY[entry.name] = entry
    _register_in_timm(entry)


def _register_in_timm(entry: ModelEntry) -> None:
    import timm

    if timm.is_model(entry.name):  # never shadow timm's own models
        return

    def entrypoint(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(f"{entry.name}: no pretrained weights are published for this model")
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        return create_model(entry.name, **kwargs)

    entrypoint.__name__ = entry.name
    entrypoint.__module__ = __name__
    timm.models.register_model(entrypoint)


def get_entry(name: str) -> ModelEntry:
    entry = _REGISTRY.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model '{name}'{hint} (list_models() gives all {len(_REGISTRY)} names)")
    return entry


def list_models(pattern: str = "*", *, dense_only: bool = False) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatchcase(n, pattern) and not (dense_only and e.variant))


def create_model(name: str, num_classes: int | None = None, *, structure: Any = None,
                 **kwargs) -> nn.Module:
    """Build a registered model.

    `structure` (optional) applies a rule set (a YAML path or a mapping, see
    :func:`src.structured.structurize`) on top of the named model: a custom structured variant.
    Other keyword arguments go to the dense builder (e.g. ``shortcut="B"`` for CIFAR ResNets).
    """
    entry = get_entry(name)
    model = entry.builder(num_classes=entry.num_classes if num_classes is None else num_classes, **kwargs)
    rule_sets = []  # (rules, where they come from)
    if entry.variant:
        rule_sets.append((load_structure(entry.family, entry.variant),
                          str(structure_file(entry.family, entry.variant))))
    if structure is not None:
        rule_sets.append((structure, str(structure) if isinstance(structure, (str, Path)) else "structure argument"))
    for rules, source in rule_sets:
        try:
            report = structurize(model, rules)
        except ValueError as e:
            raise ValueError(f"create_model('{name}') with {source}: {e}") from None
        log.debug("%s: %s", name, report)
    return model
