"""Declarative conversion of any model's Conv2d / Linear layers into structured layers.

A rule set is data (a list of mappings, e.g. loaded from YAML)::

    rules:
      - {type: conv, kernel_size: 3, depthwise: false, c: 0.5, n: 2}   # 3x3 convs: half the
      - {type: conv, kernel_size: 1, c: 0.5, exclude: ["*downsample*"]}  # channels, 2x2 alpha
    exclude: ["conv1", "fc"]                                            # keep stem / head dense

Each layer is given to the first rule that matches it. Selectors (all optional, all must hold):
``type`` (conv | linear), ``name`` (fnmatch pattern or list, on the module's qualified name),
``exclude`` (patterns), ``kernel_size``, ``stride``, ``groups`` (int or list), ``depthwise``
(bool: groups == in_channels > 1), ``in_channels`` / ``out_channels`` (int, list of ints, or
``{min: a, max: b}``); ``optional: true`` lets a rule match nothing. Inner sizes: ``c`` (inner channels per group, or inner features for
Linear) and ``n`` (inner kernel size), each an absolute int >= 1, a non-positive int taken as an
offset from the full size (``n: -1`` -> N - 1), or a float ratio in (0, 1] of the full size
(rounded half up, at least 1); omitted means the full size (no structure along that axis).

Everything is validated before anything is replaced: an invalid rule, an impossible (c, n) for a
matched layer, or an unsupported matched layer raises ValueError naming the rule and the layer,
and leaves the model untouched.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from ._util import as_tuple
from .layers import (
    StructuredConv2d,
    StructuredLayer,
    StructuredLinear,
    check_conv_structure,
    check_linear_structure,
)

__all__ = ["Rule", "Replacement", "StructurizeReport", "parse_rules", "load_rules", "plan_structure", "structurize"]

_SIZE = (int, float, type(None))


@dataclass(frozen=True)
class Rule:
    type: str = "conv"
    name: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    kernel_size: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    groups: tuple[int, ...] | None = None
    depthwise: bool | None = None
    in_channels: Any = None
    out_channels: Any = None
    c: int | float | None = None
    n: int | float | None = None
    optional: bool = False  # may match no layer (e.g. a bottleneck rule applied to a basic-block net)
    index: int = 0

    KEYS = ("type", "name", "exclude", "kernel_size", "stride", "groups", "depthwise",
            "in_channels", "out_channels", "c", "n", "optional")

    def describe(self) -> str:
        parts = [f"{k}={getattr(self, k)!r}" for k in self.KEYS
                 if getattr(self, k) is not None and getattr(self, k) != () and not (k == "optional" and not self.optional)]
        return f"rule {self.index} ({', '.join(parts)})"

    # --- matching -----------------------------------------------------------------------------
    def matches(self, name: str, m: nn.Module) -> bool:
        if self.type == "conv":
            if not isinstance(m, nn.modules.conv._ConvNd):
                return False
        elif not isinstance(m, nn.Linear):
            return False
        if self.name is not None and not any(fnmatch.fnmatchcase(name, p) for p in self.name):
            return False
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        if self.type == "linear":
            return _in_range(m.in_features, self.in_channels) and _in_range(m.out_features, self.out_channels)
        if self.kernel_size is not None and not any(all(k == s for k in m.kernel_size) for s in self.kernel_size):
            return False
        if self.stride is not None and not any(all(k == s for k in m.stride) for s in self.stride):
            return False
        if self.groups is not None and m.groups not in self.groups:
            return False
        if self.depthwise is not None and (m.groups == m.in_channels and m.groups > 1) != self.depthwise:
            return False
        return _in_range(m.in_channels, self.in_channels) and _in_range(m.out_channels, self.out_channels)


def _in_range(value: int, spec) -> bool:
    if spec is None:
        return True
    if isinstance(spec, Mapping):
        return spec.get("min", -math.inf) <= value <= spec.get("max", math.inf)
    return value in spec


def _resolve(spec, full: int) -> int | None:
    """Inner size from a rule spec; None when the spec is not a valid size."""
    if spec is None:
        return full
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int):
        return spec if spec > 0 else full + spec
    if isinstance(spec, float) and 0.0 < spec <= 1.0:
        return max(1, math.floor(spec * full + 0.5))
    return None


def parse_rules(rules) -> tuple[list[Rule], tuple[str, ...]]:
    """Rules from a list of mappings / Rule objects, a mapping {rules: [...], exclude: [...]}, or
    the path of a YAML file holding that mapping. Returns (rules, global excludes)."""
    exclude: tuple[str, ...] = ()
    if isinstance(rules, (str, Path)):
        rules = load_rules(rules)
    if isinstance(rules, Mapping):
        unknown = set(rules) - {"rules", "exclude"}
        if unknown:
            raise ValueError(f"rule set: unknown top-level keys {sorted(unknown)} (valid: rules, exclude)")
        exclude = as_tuple(rules.get("exclude"), "exclude", "rule set") or ()
        rules = rules.get("rules") or []
    if isinstance(rules, (Rule, Mapping)):
        rules = [rules]
    parsed = []
    for i, r in enumerate(rules):
        if isinstance(r, Rule):
            parsed.append(Rule(**{k: getattr(r, k) for k in Rule.KEYS}, index=i))
            continue
        where = f"rule {i}"
        if not isinstance(r, Mapping):
            raise ValueError(f"{where}: expected a mapping of selectors and sizes, got {r!r}")
        unknown = set(r) - set(Rule.KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (valid: {', '.join(Rule.KEYS)})")
        kind = r.get("type", "conv")
        if kind not in ("conv", "linear"):
            raise ValueError(f"{where}: type must be 'conv' or 'linear', got {kind!r}")
        for key in ("c", "n"):
            v = r.get(key)
            if not isinstance(v, _SIZE) or isinstance(v, bool) or (isinstance(v, float) and not 0 < v <= 1):
                raise ValueError(
                    f"{where}: '{key}' must be an int (absolute if >= 1, offset from the full size "
                    f"if <= 0) or a float ratio in (0, 1], got {v!r}"
                )
        if kind == "linear" and r.get("n") is not None:
            raise ValueError(f"{where}: linear rules take only 'c' (inner features), not 'n'")
        channels = {}
        for key in ("in_channels", "out_channels"):
            v = r.get(key)
            channels[key] = dict(v) if isinstance(v, Mapping) else as_tuple(v, key, where)
        parsed.append(Rule(
            type=kind, name=as_tuple(r.get("name"), "name", where), exclude=as_tuple(r.get("exclude"), "exclude", where) or (),
            kernel_size=as_tuple(r.get("kernel_size"), "kernel_size", where), stride=as_tuple(r.get("stride"), "stride", where),
            groups=as_tuple(r.get("groups"), "groups", where), depthwise=r.get("depthwise"), c=r.get("c"), n=r.get("n"),
            optional=bool(r.get("optional", False)), index=i, **channels,
        ))
    return parsed, exclude


def load_rules(path: str | Path) -> dict:
    """Read and validate a YAML rule file ({rules: [...], exclude: [...]}); returns the mapping,
    ready for `structurize` (which also accepts the path itself)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"rule file {path} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f)
    try:
        parse_rules(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return data


@dataclass(frozen=True)
class Replacement:
    name: str
    rule: int
    kind: str  # "conv" | "linear"
    layer: str  # e.g. "Conv2d(64->64, 3x3, s1, g1)"
    full: tuple[int, ...]  # per-filter full shape (C, N, N) or (in,)
    inner: tuple[int, ...]  # (c, n, n) or (c,)
    out_units: int

    @property
    def params_dense(self) -> int:
        return self.out_units * math.prod(self.full)

    @property
    def params_decomposed(self) -> int:
        return self.out_units * math.prod(self.inner)


@dataclass
class StructurizeReport:
    replacements: list[Replacement] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.replacements)

    def __iter__(self):
        return iter(self.replacements)

    def __str__(self) -> str:
        lines = [f"structurize: {len(self.replacements)} layers replaced"]
        width = max((len(r.name) for r in self.replacements), default=4)
        for r in self.replacements:
            lines.append(
                f"  {r.name:<{width}}  {r.layer:<34} full {'x'.join(map(str, r.full)):<9} -> inner "
                f"{'x'.join(map(str, r.inner)):<9} weights {r.params_dense:>9,} -> {r.params_decomposed:>9,}"
                f"  (rule {r.rule})"
            )
        dense = sum(r.params_dense for r in self.replacements)
        dec = sum(r.params_decomposed for r in self.replacements)
        if dense:
            lines.append(f"  replaced weights: {dense:,} -> {dec:,} decomposed ({dec / dense:.3f}x)")
        return "\n".join(lines)


def _describe_layer(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features}->{m.out_features})"
    k = "x".join(map(str, m.kernel_size))
    s = "x".join(map(str, m.stride)) if len(set(m.stride)) > 1 else str(m.stride[0])
    return f"{type(m).__name__}({m.in_channels}->{m.out_channels}, {k}, s{s}, g{m.groups})"


def _check_plain(name: str, m: nn.Module, base: type) -> None:
    """Subclasses that override forward (timm's Conv2dSame, StdConv2d, ...) compute something
    other than the plain layer; replacing them would silently change the model."""
    if isinstance(m, StructuredLayer):
        return
    if type(m).forward is not base.forward or getattr(type(m), "_conv_forward", None) is not getattr(
        base, "_conv_forward", None
    ):
        raise ValueError(
            f"layer '{name}' ({type(m).__name__}): subclass of nn.{base.__name__} with its own "
            f"forward; it cannot be replaced by a structured layer without changing what it computes "
            f"(exclude it)"
        )


def plan_structure(model: nn.Module, rules, *, exclude: Sequence[str] = (), allow_unmatched: bool = False) -> StructurizeReport:
    """What `structurize` would replace, validated, without touching the model."""
    parsed, file_exclude = parse_rules(rules)
    exclude = tuple(exclude) + tuple(file_exclude)
    report = StructurizeReport(rules=parsed)
    hits = {r.index: 0 for r in parsed}
    for name, m in model.named_modules():
        if isinstance(m, StructuredLayer) or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        rule = next((r for r in parsed if r.matches(name, m)), None)
        if rule is None:
            continue
        hits[rule.index] += 1
        try:
            if rule.type == "linear":
                _check_plain(name, m, nn.Linear)
                c = _resolve(rule.c, m.in_features)
                check_linear_structure(m, c, name)
                full, inner, out_units = (m.in_features,), (c,), m.out_features
            else:
                check_conv_structure(m, 1, 1, name)  # type, padding mode, square kernel
                _check_plain(name, m, nn.Conv2d)
                cin, big_n = m.in_channels // m.groups, m.kernel_size[0]
                c, n = _resolve(rule.c, cin), _resolve(rule.n, big_n)
                check_conv_structure(m, c, n, name)
                full, inner, out_units = (cin, big_n, big_n), (c, n, n), m.out_channels
        except ValueError as e:
            raise ValueError(f"{rule.describe()}: {e}") from None
        report.replacements.append(Replacement(name, rule.index, rule.type, _describe_layer(m), full, inner, out_units))
    if not allow_unmatched:
        for r in parsed:
            if hits[r.index] == 0 and not r.optional:
                raise ValueError(
                    f"{r.describe()} matches no layer of {type(model).__name__} (after excludes and "
                    f"earlier rules); fix the selectors or pass allow_unmatched=True"
                )
    return report


def structurize(model: nn.Module, rules, *, exclude: Sequence[str] = (), allow_unmatched: bool = False) -> StructurizeReport:
    """Replace, in place, the Conv2d / Linear layers selected by `rules` with StructuredConv2d /
    StructuredLinear layers holding the same weights. Returns the report of what was replaced
    (print it for a table). Validates everything first: on error nothing is replaced."""
    report = plan_structure(model, rules, exclude=exclude, allow_unmatched=allow_unmatched)
    if any(rep.name == "" for rep in report.replacements):
        raise ValueError(
            f"structurize: the model itself is a {type(model).__name__}; use "
            f"StructuredConv2d.from_conv / StructuredLinear.from_linear for a single layer"
        )
    # A module registered under several names (weight sharing) is replaced at every one of them.
    aliases: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(name)
    for rep in report.replacements:
        old = model.get_submodule(rep.name)
        if rep.kind == "linear":
            new = StructuredLinear.from_linear(old, rep.inner[0], rep.name)
        else:
            new = StructuredConv2d.from_conv(old, rep.inner[0], rep.inner[1], rep.name)
        for name in aliases[id(old)]:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
    return report
