"""The benchmarks' records: what a measurement returns (src/bench/measure.py, core.py), what
the report renders (report.py) and the cache stores (cache.py). Data only: a leaf module that
imports no other benchmark module (and neither torch nor the models)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LossOverhead", "LayerRow", "PlanCounts", "Row", "Skipped", "TrainingRow", "LAYER_KINDS", "Breakdown",
           "Profile", "OrtProfile"]


# ---------------------------------------------------------------------------------- core (core.py)
@dataclass(frozen=True)
class LossOverhead:
    """Median seconds of a CIFAR ResNet-56 SGD step (channels_last) with and without the
    structural loss, and of the structural loss's forward + backward alone."""

    batch: int
    structured_layers: int
    plain_s: float
    reg_s: float
    loss_alone_s: float


@dataclass(frozen=True)
class LayerRow:
    """One 3x3 conv (C -> C, stride 1, pad 1) against its decomposition (c inner channels, n = 2)."""

    channels: int
    hw: int
    batch: int
    inner_channels: int
    memory_format: str  # "NCHW" or "channels_last"
    dense_s: float
    dec_s: float
    mac_ratio: float


# ---------------------------------------------------------------------------------- models (measure.py)
@dataclass(frozen=True)
class PlanCounts:
    """How many of a model's `total` structured layers a deploy plan moved to each form: `dense`
    and `spatial` layer kinds (with any sum-pool forms), `other`: layers left decomposed but with
    fixed sum-pool forms; `forms`: [(form, layers)] of the whole plan (src.deploy.plan_summary)."""

    dense: int
    spatial: int
    total: int
    other: int = 0
    forms: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, plan: dict[str, str], total: int) -> "PlanCounts":
        from src.deploy.forms import LayerForm, plan_summary  # (rendering a record needs no torch)

        kinds = [LayerForm.parse(f) for f in plan.values()]
        return cls(sum(f.kind == "dense" for f in kinds), sum(f.kind == "spatial" for f in kinds), total,
                   sum(f.kind == "decomposed" and not f.is_default for f in kinds),
                   tuple(plan_summary(plan, total)))


@dataclass
class Row:
    """One (model, batch, backend, variant): the dense and the decomposed median latency."""

    model: str
    input_hw: tuple[int, int]
    batch: int
    backend: str
    variant: str  # "a" / "b"
    dense_s: float
    dec_s: float
    mac_ratio: float  # decomposed / dense multiply-accumulates, each layer counted in the form it runs
    round_ratios: tuple[float, ...] = ()  # decomposed / dense within each timing round
    plan: PlanCounts | None = None  # set on the rows of the variant deployed with its deploy plan

    @property
    def ratio(self) -> float:
        return self.dec_s / self.dense_s


@dataclass(frozen=True)
class Skipped:
    """A backend that could not run a (model, batch), and why."""

    model: str
    batch: int
    backend: str
    reason: str


# ---------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingRow:
    """Median seconds per SGD step (forward, backward, update), channels_last."""

    model: str
    batch: int
    dense_s: float
    task_s: float  # structured model, task loss only
    reg_s: float  # structured model, task loss + lam * structural loss
    loss_alone_s: float  # the structural loss's forward + backward alone


# ---------------------------------------------------------------------------------- profiles
LAYER_KINDS = ("conv (dense kernel)", "sum-pool", "small conv (alpha)", "other (BN, ReLU, adds, pooling, fc)",
               "total")


@dataclass(frozen=True)
class Breakdown:
    """One model's forward: ms per layer kind (LAYER_KINDS), and the most expensive aten ops
    (name, self ms), per forward."""

    ms: dict[str, float]
    top_ops: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Profile:
    """Dense, decomposed (variant a) and deploy-plan forms of one (model, batch), eager channels_last."""

    model: str
    batch: int
    plan: PlanCounts
    dense: Breakdown
    decomposed: Breakdown
    planned: Breakdown


@dataclass(frozen=True)
class OrtProfile:
    """Where ONNX Runtime spends a forward, ms per op type (its own profiler, the graph after its
    optimisations): the dense model, struct_<name>_<variant> decomposed, and with its ONNX Runtime
    deploy plan."""

    model: str
    batch: int
    variant: str
    plan: PlanCounts
    columns: dict[str, dict[str, float]]  # label -> op type -> ms per forward (and "total")
