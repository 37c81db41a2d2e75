"""Model zoo: the paper's architectures (dense) and their structured A/B variants.

    from src.models import create_model, list_models
    model = create_model("struct_resnet56_a")            # also: timm.create_model(...)

The A/B rule sets are package data (src/models/rules/<family>_<a|b>.yaml, read with
importlib.resources): `load_structure(family, variant)` returns one as a mapping.
"""

from . import cifar_resnet, efficientnet, hrnet, mobilenet, resnet  # noqa: F401  (registration)
from .registry import (
    STRUCTURE_DIR,
    ModelEntry,
    create_model,
    get_entry,
    list_models,
    load_structure,
    structure_file,
)

__all__ = ["create_model", "list_models", "get_entry", "ModelEntry", "STRUCTURE_DIR", "structure_file",
           "load_structure"]
