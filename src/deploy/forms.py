"""Per-layer deploy forms: every exact way a decomposed layer can run, by name.

A deploy plan maps layer names to forms. A form is a layer kind, optionally with the exact
sum-pool forms it runs in brackets::

    "decomposed"                            sum-pool + small conv (the installed policy picks the pool's forms)
    "spatial"                               sum-pool over space only + an n x n conv over all C/g channels
    "dense"                                 one plain conv (linear) with the structured kernel A alpha
    "decomposed[ch=ones_conv]"              the channel window as a grouped 1 x 1 conv with a 0/1 kernel
    "decomposed[ch=ones_conv,sp=mean]"      ... and the spatial window as its mean (avg_pool), the
                                            window area folded into the small conv's kernel
    "spatial[sp=depthwise]"                 the spatial window as a depthwise conv with a ones kernel

``ch`` takes a channel form of :data:`src.structured.sumpool.CHANNEL_FORMS` (``doubling``,
``cumsum``, ``ones_conv``); ``sp`` a spatial form of :data:`~src.structured.sumpool.SPATIAL_FORMS`
(``padded``, ``pair_adds``, ``avg_pool``, ``ones_conv``, ``avg_pool_area``, ``depthwise``) or
``mean``: the window mean (``avg_pool2d``, padding counted) followed by the small conv holding
``area * alpha`` (:class:`PooledConv2d`), which leaves ONNX Runtime and compilers one pool and
one conv, without the multiply. Every form computes the decomposed layer's function up to
rounding (tests/test_deploy_forms.py: float64 within 1e-10, ONNX Runtime against PyTorch in
float32). A form that cannot run in the current context falls back to an exact one that can:
``pair_adds`` to ``padded`` under autograd, ``torch.compile`` or tracing, ``avg_pool``
(``divisor_override``, which exporters drop) to ``avg_pool_area`` during ONNX export.

:func:`decompose_planned` applies a plan to a train-form structured model or to an already
decomposed one (a deploy artifact): forms are built from the decomposed layers themselves, so
a plan can be applied wherever the decomposed weights are. :func:`layer_forms` lists the forms
that differ for a given layer. Which form is fastest is measured, per backend, by
:func:`src.deploy.tuning.plan_recompose`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from src.structured._util import is_channels_last
from src.structured.basis import compose
from src.structured.layers import DecomposedConv2d, DecomposedLinear, StructuredLayer
from src.structured.ops import DECOMPOSE_TOLERANCE, decompose
from src.structured.sumpool import (
    CHANNEL_FORMS,
    SPATIAL_FORMS,
    SumPool,
    channel_window_ones,
    channel_window_sum,
    spatial_window_ones,
    spatial_window_sum,
    sum_pool2d,
    window_mean2d,
)

__all__ = ["DEPLOY_FORMS", "LayerForm", "FixedSumPool", "PooledConv2d", "PaddedConv2d", "layer_forms",
           "rewrite_layer", "decompose_planned", "plannable_layers", "plan_summary", "SPATIAL_SUBFORMS"]

DEPLOY_FORMS = ("decomposed", "spatial", "dense")
"""The layer kinds a plan can put a structured layer in (a form's kind)."""
SPATIAL_SUBFORMS = (*SPATIAL_FORMS, "mean")
_FORM_RE = re.compile(r"^\s*(\w+)\s*(?:\[([^\]]*)\])?\s*$")


@dataclass(frozen=True)
class LayerForm:
    """A layer kind (``decomposed``, ``spatial``, ``dense``) with optional fixed sum-pool forms:
    ``channel`` (a CHANNEL_FORMS name) and ``spatial`` (a SPATIAL_FORMS name or ``mean``);
    None leaves the choice to the installed sum-pool policy."""

    kind: str = "decomposed"
    channel: str | None = None
    spatial: str | None = None

    def __post_init__(self):
        if self.kind not in DEPLOY_FORMS:
            raise ValueError(f"deploy form {self}: unknown kind {self.kind!r}; choose from {DEPLOY_FORMS}")
        if self.channel is not None and self.channel not in CHANNEL_FORMS:
            raise ValueError(f"deploy form {self}: unknown channel form {self.channel!r}; choose from {CHANNEL_FORMS}")
        if self.spatial is not None and self.spatial not in SPATIAL_SUBFORMS:
            raise ValueError(f"deploy form {self}: unknown spatial form {self.spatial!r}; "
                             f"choose from {SPATIAL_SUBFORMS}")
        if self.kind == "dense" and (self.channel or self.spatial):
            raise ValueError(f"deploy form {self}: a dense layer has no sum-pool forms")
        if self.kind == "spatial" and self.channel:
            raise ValueError(f"deploy form {self}: the spatial kind has no channel window")

    @classmethod
    def parse(cls, text: "str | LayerForm") -> "LayerForm":
        """'decomposed[ch=ones_conv,sp=mean]' -> LayerForm('decomposed', 'ones_conv', 'mean')."""
        if isinstance(text, LayerForm):
            return text
        m = _FORM_RE.match(str(text))
        if not m:
            raise ValueError(f"cannot read deploy form {text!r} (e.g. 'dense', 'decomposed[ch=ones_conv,sp=mean]')")
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in (m.group(2) or "").split(","))):
            key, _, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if key not in ("ch", "sp") or not value or key in fields:
                raise ValueError(f"cannot read deploy form {text!r}: expected ch=<form> and/or sp=<form> in brackets")
            fields[key] = value
        return cls(m.group(1), fields.get("ch"), fields.get("sp"))

    def __str__(self) -> str:
        parts = [f"ch={self.channel}"] * bool(self.channel) + [f"sp={self.spatial}"] * bool(self.spatial)
        return self.kind + (f"[{','.join(parts)}]" if parts else "")

    @property
    def is_default(self) -> bool:
        return str(self) == "decomposed"


# ------------------------------------------------------------------------------------------------
# Modules of the rewritten forms
# ------------------------------------------------------------------------------------------------


class FixedSumPool(SumPool):
    """A :class:`SumPool` that runs fixed exact forms: `channel_form` for the channel window and
    `spatial_form` for the spatial one (None: the installed policy's choice). Its fixed 0/1
    kernels are non-persistent buffers (not in the state_dict; they follow ``.to()``, and ONNX
    export writes them as initializers). ``spatial_form="mean"`` returns the window *mean*: only
    :class:`PooledConv2d`, whose conv holds the area, uses it."""

    def __init__(self, channels: int, channel_window: int, kernel_size, padding=0, dilation=1, groups: int = 1,
                 *, channel_form: str | None = None, spatial_form: str | None = None,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__(channel_window, kernel_size, padding, dilation, groups)
        self._pool2x2_pad = None  # never SumPool's policy fast path
        self.channel_form, self.spatial_form = channel_form, spatial_form
        self.channels = channels
        pooled = groups * (channels // groups - self.channel_window + 1)
        if channel_form == "ones_conv" and self.channel_window > 1:
            self.register_buffer("channel_ones", channel_window_ones(channels, self.channel_window, groups,
                                                                     dtype, device), persistent=False)
        else:
            self.channel_ones = None
        if spatial_form == "ones_conv":  # (the same depthwise ones conv, its kernel a buffer: exportable)
            self.spatial_form = spatial_form = "depthwise"
        if spatial_form == "depthwise":
            self.register_buffer("spatial_ones", spatial_window_ones(pooled, self.kernel_size, dtype, device),
                                 persistent=False)
        else:
            self.spatial_ones = None

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        form = self.spatial_form
        if form is None:
            return sum_pool2d(x, 1, self.kernel_size, self.padding, self.dilation)
        if form == "mean":
            return window_mean2d(x, self.kernel_size, self.padding)
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        if form == "pair_adds" and (tracing or (x.requires_grad and torch.is_grad_enabled())):
            form = "padded"
        elif form == "avg_pool" and torch.onnx.is_in_onnx_export():
            form = "avg_pool_area"
        elif form in ("avg_pool", "ones_conv") and x.requires_grad and torch.is_grad_enabled():
            form = "padded"
        return spatial_window_sum(x, self.kernel_size, self.padding, self.dilation, form, self.spatial_ones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_window > 1:
            if self.channel_form is None:
                x = sum_pool2d(x, self.channel_window, 1, 0, 1, self.groups)
            else:
                x = channel_window_sum(x, self.channel_window, self.groups, self.channel_form, self.channel_ones)
        if self.kernel_size == (1, 1) and not any(self.padding):
            return x
        return self._spatial(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", channel_form={self.channel_form}, spatial_form={self.spatial_form}"


class PooledConv2d(nn.Module):
    """Form ``sp=mean``: the sum-pool with the spatial window as a mean (``avg_pool2d``), then the
    small conv holding ``area * alpha`` (and the same bias); equal to the decomposed layer up to
    rounding (exact for power-of-two areas such as 2 x 2)."""

    def __init__(self, pool: FixedSumPool, conv: nn.Conv2d):
        super().__init__()
        self.pool, self.conv = pool, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class PaddedConv2d(nn.Sequential):
    """A dense conv whose zero padding is asymmetric (e.g. ``padding='same'`` with an even
    kernel): ``ZeroPad2d`` then the unpadded conv."""


# ------------------------------------------------------------------------------------------------
# Building a layer's forms
# ------------------------------------------------------------------------------------------------


def _channel_window(layer: DecomposedConv2d) -> int:
    return layer.pool.channel_window


def _has_spatial_window(layer: DecomposedConv2d) -> bool:
    return layer.pool.kernel_size != (1, 1) or any(layer.pool.padding)


def layer_forms(layer: nn.Module, forms: Sequence[str | LayerForm]) -> list[LayerForm]:
    """The forms of `forms` that apply to `layer` (structured or decomposed) and differ from one
    another: ``spatial`` only for a conv with channel and spatial structure, ``ch=`` only with a
    channel window, ``sp=`` only with a spatial window, linear layers decomposed or dense;
    duplicates dropped, order kept."""
    if isinstance(layer, StructuredLayer):
        layer = decompose(layer, tol=float("inf"))
    out: list[LayerForm] = []
    for f in map(LayerForm.parse, forms):
        if isinstance(layer, DecomposedLinear):
            ok = f.kind in ("decomposed", "dense") and not (f.channel or f.spatial)
        elif isinstance(layer, DecomposedConv2d):
            both = _channel_window(layer) > 1 and layer.inner_kernel_size < layer.kernel_size[0]
            ok = (f.kind != "spatial" or both) \
                and (f.channel is None or (f.kind == "decomposed" and _channel_window(layer) > 1)) \
                and (f.spatial is None or _has_spatial_window(layer))
            if f.spatial in ("pair_adds", "avg_pool", "ones_conv"):  # the 2 x 2 inference forms
                left, right, top, bottom = layer.pool.padding
                ok = ok and layer.pool.kernel_size == (2, 2) and layer.pool.dilation == (1, 1) \
                    and max(layer.pool.padding) <= 1 and (f.spatial == "pair_adds" or (left == right and top == bottom))
            if f.spatial in ("avg_pool_area", "mean"):
                ok = ok and layer.pool.dilation == (1, 1)
        else:
            ok = False
        if ok and f not in out:
            out.append(f)
    return out


def _keep_format(new: nn.Module, like: torch.Tensor) -> nn.Module:
    return new.to(memory_format=torch.channels_last) if is_channels_last(like) else new


@torch.no_grad()
def _dense_of(layer: DecomposedConv2d | DecomposedLinear) -> nn.Module:
    if isinstance(layer, DecomposedLinear):
        w = layer.linear.weight
        dense = nn.Linear(layer.in_features, layer.out_features, layer.linear.bias is not None,
                          device=w.device, dtype=w.dtype)
        dense.weight.copy_(compose(w.detach().double(), (layer.in_features,)).to(w.dtype))
        if layer.linear.bias is not None:
            dense.bias.copy_(layer.linear.bias)
        return dense.train(layer.training).requires_grad_(w.requires_grad)
    w, conv = layer.conv.weight, layer.conv
    left, right, top, bottom = layer.padding4
    symmetric = left == right and top == bottom
    dense = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                      (top, left) if symmetric else 0, layer.dilation, layer.groups, conv.bias is not None,
                      device=w.device, dtype=w.dtype)
    dense.weight.copy_(compose(w.detach().double(), layer.full_shape).to(w.dtype))
    if conv.bias is not None:
        dense.bias.copy_(conv.bias)
    dense = _keep_format(dense, w).train(layer.training).requires_grad_(w.requires_grad)
    return dense if symmetric else PaddedConv2d(nn.ZeroPad2d(layer.padding4), dense)


@torch.no_grad()
def _spatial_of(layer: DecomposedConv2d) -> DecomposedConv2d:
    """The spatial kind: sum-pool over space only, conv over all C/g channels holding B(C, c) alpha."""
    w = layer.conv.weight
    per_group = layer.in_channels // layer.groups
    n = layer.inner_kernel_size
    new = DecomposedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size[0], layer.stride, layer.padding4,
                           layer.dilation, layer.groups, layer.conv.bias is not None, device=w.device, dtype=w.dtype,
                           inner_channels=per_group, inner_kernel_size=n)
    new.conv.weight.copy_(compose(w.detach().double(), (per_group, n, n)).to(w.dtype))
    if layer.conv.bias is not None:
        new.conv.bias.copy_(layer.conv.bias)
    return _keep_format(new, w).train(layer.training).requires_grad_(w.requires_grad)


@torch.no_grad()
def rewrite_layer(layer: nn.Module, form: str | LayerForm) -> nn.Module:
    """`layer` (a structured layer, or a DecomposedConv2d / DecomposedLinear) in `form`, as a new
    module computing the same function up to rounding; `layer` is not modified. ValueError when
    the form does not apply to the layer (see :func:`layer_forms`). A train-form layer's kinds
    are built by the core from its kernel (``to_decomposed()``, ``to_decomposed(spatial_only=True)``,
    ``to_dense()``: the projection, in float64); a decomposed layer's from its alpha."""
    form = LayerForm.parse(form)
    train_form = layer if isinstance(layer, StructuredLayer) else None
    if train_form is not None:
        layer = decompose(train_form, tol=float("inf"))
    if not layer_forms(layer, [form]) and not form.is_default:
        raise ValueError(f"deploy form '{form}' does not apply to {type(layer).__name__} "
                         f"({_describe(layer)})")
    if form.kind == "dense":
        return train_form.to_dense() if train_form is not None else _dense_of(layer)
    if form.kind == "spatial":
        base = train_form.to_decomposed(spatial_only=True) if train_form is not None else _spatial_of(layer)
    else:
        base = layer if train_form is not None else copy.deepcopy(layer)
    if form.is_default or (form.kind == "spatial" and form.spatial is None):
        return base
    pool, conv = base.pool, base.conv
    w = conv.weight
    fixed = FixedSumPool(layer.in_channels, pool.channel_window, pool.kernel_size, pool.padding, pool.dilation,
                         pool.groups, channel_form=form.channel, spatial_form=form.spatial, dtype=w.dtype,
                         device=w.device)
    fixed = _keep_format(fixed, w)
    if form.spatial == "mean":
        area = pool.kernel_size[0] * pool.kernel_size[1]
        conv = copy.deepcopy(conv)
        conv.weight.mul_(area)
        return PooledConv2d(fixed, conv).train(layer.training)
    base.pool = fixed
    return base


def _describe(layer: nn.Module) -> str:
    if isinstance(layer, DecomposedConv2d):
        return (f"{layer.in_channels} -> {layer.out_channels}, kernel {layer.kernel_size}, groups {layer.groups}, "
                f"channel window {layer.pool.channel_window}, spatial window {layer.pool.kernel_size}")
    return repr(layer)


def plannable_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) for every layer a plan can name: structured layers (train form) and
    decomposed ones (deploy form), `module` itself included (name '')."""
    for name, m in module.named_modules():
        if isinstance(m, (StructuredLayer, DecomposedConv2d, DecomposedLinear)):
            yield name, m


def decompose_planned(module: nn.Module, plan: Mapping[str, str | LayerForm] | None = None, *,
                      tol: float = DECOMPOSE_TOLERANCE) -> nn.Module:
    """The deploy form of `module` with each layer of `plan` (name -> form, :class:`LayerForm`
    text such as ``"dense"``, ``"spatial"`` or ``"decomposed[ch=ones_conv]"``) in its form, the
    others decomposed: the one entry for deploy plans (``src.structured.decompose`` gives the
    plain decomposed form). `module` is a train-form structured model (decomposed as by
    :func:`src.structured.decompose`, `tol`; its planned layers are built from their train form,
    see :func:`rewrite_layer`) or an already decomposed one (a deploy artifact's model); it is
    not modified."""
    forms = {name: LayerForm.parse(f) for name, f in (plan or {}).items()}
    source = dict(plannable_layers(module))
    unknown = sorted(set(forms) - set(source))
    if unknown:
        raise ValueError(f"decompose_planned: the plan names no decomposable layer: {unknown}")
    if any(isinstance(m, StructuredLayer) for m in source.values()):
        model = decompose(module, tol=tol)
    else:
        model = copy.deepcopy(module)
    for name, form in forms.items():
        if form.is_default:
            continue
        try:
            new = rewrite_layer(source[name], form)
        except ValueError as e:
            raise ValueError(f"decompose_planned: layer '{name}': {e}") from None
        if name == "":
            return new
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model


def plan_summary(plan: Mapping[str, str | LayerForm], total: int) -> list[tuple[str, int]]:
    """[(form, number of layers)] of a plan over `total` layers, most frequent first, the layers
    left decomposed counted as 'decomposed'."""
    counts: dict[str, int] = {}
    for f in plan.values():
        key = str(LayerForm.parse(f))
        counts[key] = counts.get(key, 0) + 1
    rest = total - sum(counts.values())
    if rest > 0:
        counts["decomposed"] = counts.get("decomposed", 0) + rest
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
