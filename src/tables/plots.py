"""The PNG plots: accuracy against multiplications and the training curves of a dataset table, and
the compression comparison's accuracy against multiplications and measured latency. Written without
timestamps (`_savefig`): the same runs give the same bytes."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from .claims import COMPARE
from .compare import _compare_key
from .length import Study, _quantile
from .load import _label, _recipe, get_entry, read_curves


class _Pyplot:
    """matplotlib.pyplot, imported on first use (a second of start-up that `--help`, the summary and
    the tables' text need none of), with the Agg backend unless the process chose one already (a
    notebook's: switching would close its figures; PNGs are drawn by Agg either way)."""

    def __getattr__(self, name: str):
        import sys

        import matplotlib

        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot

        return getattr(matplotlib.pyplot, name)


plt = _Pyplot()


def _savefig(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def plot_acc_vs_macs(dataset: str, groups: dict[tuple, list[dict]], out: Path) -> None:
    metric = "miou" if dataset == "cityscapes" else "acc"
    families: dict[str, list[tuple[float, float, float, str]]] = defaultdict(list)
    items = [(k, g) for k, g in groups.items() if k[0] == dataset]
    for key, g in items:
        ds, model, route, tag, _, cfg = key
        if route != "regularized":
            continue
        vals = [s[f"test_{metric}_decomposed"] for s in g]
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        entry = get_entry(model)
        families[(entry.dense_name or model) + tag + (f" [{_recipe(g[0])[2]} ep]" if len({_recipe(h[0]) for _, h in items}) > 1 else "")].append(
            (g[0]["mults_decomposed"] / 1e6, statistics.mean(vals), std, (entry.variant or "dense").upper()))
    fig, ax = plt.subplots(figsize=(6, 4))
    for fam, pts in sorted(families.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=fam)
        for x, y, _, v in pts:
            ax.annotate(v, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("mults per image (M), decomposed")
    ax.set_ylabel("test mIoU (%)" if metric == "miou" else "test top-1 (%)")
    ax.set_title(f"{dataset}: accuracy vs multiplications")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, out)


def _mean_band(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per epoch: mean, min and max over the seeds that have it."""
    per_epoch: dict[int, list[float]] = defaultdict(list)
    for c in curves:
        for e, v in c:
            per_epoch[e].append(v)
    epochs = sorted(per_epoch)
    return (epochs, [statistics.mean(per_epoch[e]) for e in epochs], [min(per_epoch[e]) for e in epochs],
            [max(per_epoch[e]) for e in epochs])


def plot_training(dataset: str, groups: dict[tuple, list[dict]], out: Path) -> None:
    """Per configuration: validation accuracy and mean structural residual per epoch, the mean over
    seeds as a line and the range over seeds as a band."""
    metric = "val/miou" if dataset == "cityscapes" else "val/acc"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    selected = [(k, g) for k, g in groups.items() if k[0] == dataset]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (key, g) in enumerate(selected):
        route = key[2]
        curves = [read_curves(s["_dir"]) for s in g]
        seeds = "seed " + ",".join(str(s["seed"]) for s in g) if len(g) <= 3 else f"{len(g)} seeds"
        label = f"{_label(key, g, selected)}{' (direct)' if route == 'direct' else ''} {seeds}"
        colour = colours[i % len(colours)]  # same colour in both panels
        for ax, name, scale in ((ax2, metric, 100.0), (ax1, "residual/mean", 1.0)):
            series = [c[name] for c in curves if name in c]
            if not series:
                continue
            epochs, mean, lo, hi = _mean_band(series)
            x = [e + 1 for e in epochs]
            ax.plot(x, [scale * v for v in mean], marker=".", label=label, color=colour)
            if len(series) > 1:
                ax.fill_between(x, [scale * v for v in lo], [scale * v for v in hi], color=colour, alpha=0.2, lw=0)
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("mean relative structural residual")
    ax1.set_title("structural residual during training")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("primary-set accuracy (%) of the trained model")
    ax2.set_title("accuracy during training (mean, range over seeds)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # (a dense model alone has no residual curve)
            ax.legend(fontsize=7)
    _savefig(fig, out)


def plot_compare(runs: list[dict], reference: list[dict], lat: dict, out_dir: Path) -> list[Path]:
    """Accuracy vs mults and vs measured latency (batch 64), one point per method and target."""
    points: dict[str, list[tuple[float, float | None, float, float]]] = defaultdict(list)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in runs:
        groups[(s["method"], _compare_key(s))].append(s)
    for s in reference:
        if s.get("route") == "regularized" and s["model"] in (COMPARE["dense"], *COMPARE["targets"].values()):
            groups[("dense" if s["model"] == COMPARE["dense"] else "structured (scratch)", s["model"])].append(s)
    for (method, name), g in sorted(groups.items()):
        accs = [s["test_acc_decomposed"] for s in g]
        row = (lat.get("models") or {}).get(name, {}).get("batch64")
        acc = (statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0)
        points[method].append((g[0]["mults_decomposed"] / 1e6, row["ms"] if row else None, *acc))
        planned = (lat.get("models") or {}).get(f"{name}+plan", {}).get("batch64")
        if planned:  # the same model deployed with its eager plan: on the latency plot only
            points[f"{method}, eager deploy plan"].append((None, planned["ms"], *acc))
    written = []
    for xname, idx, xlabel in (("macs", 0, "mults per image (M)"), ("latency", 1, "latency, batch 64 (ms)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, pts in sorted(points.items()):
            pts = sorted((p for p in pts if p[idx] is not None), key=lambda p: p[idx])
            if pts:
                ax.errorbar([p[idx] for p in pts], [p[2] for p in pts], yerr=[p[3] for p in pts], marker="o",
                            capsize=3, label=method, linestyle="none")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("primary-set top-1 (%)")
        ax.set_title(f"compression methods: accuracy vs {'multiplications' if idx == 0 else 'measured latency'}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        path = out_dir / f"compare_acc_vs_{xname}.png"
        _savefig(fig, path)
        written.append(path)
    return written




def plot_gap_vs_epochs(st: Study, out: Path) -> None:
    """The gap against training length (length.py): per claim, the per-seed paired gaps (filled: primary
    split; open: another split, not fitted), mean +- std per length, and the fit g_inf + b / E (solid
    over the lengths measured, dashed where it extrapolates, to `extrapolate_to`; shaded: the
    bootstrap's 2.5-97.5 % band); beside it the training-accuracy gap of the same pairs."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ticks = {st.extrapolate_to}
    for i, c in enumerate(st.claims):
        colour = colours[i % len(colours)]
        name = f"({c.label}) {c.structured}"
        for ax, attr in ((ax1, "gap"), (ax2, "train_gap")):
            for primary in (True, False):
                ps = [p for p in st.pairs if p.claim == c.label and (p.eval_set == st.primary) == primary
                      and getattr(p, attr) is not None]
                if not ps:
                    continue
                ticks |= {p.epochs for p in ps}
                split = "" if primary else f", {ps[0].eval_set} (not fitted)"
                ax.plot([p.epochs for p in ps], [getattr(p, attr) for p in ps], "o", ms=4, alpha=0.6,
                        color=colour, markerfacecolor=colour if primary else "none",
                        label=f"{name}: per seed{split}")
                by: dict[int, list[float]] = defaultdict(list)
                for p in ps:
                    by[p.epochs].append(getattr(p, attr))
                lengths = sorted(by)
                ax.errorbar(lengths, [statistics.mean(by[e]) for e in lengths],
                            yerr=[statistics.stdev(by[e]) if len(by[e]) > 1 else 0.0 for e in lengths],
                            fmt="s" if primary else "D", ms=7, capsize=4, color=colour,
                            markerfacecolor=colour if primary else "none", linestyle="none")
        f = st.fits.get(c.label)
        if f is not None:
            lo, hi = min(f.lengths), max(f.lengths)
            xs = [lo * (hi / lo) ** (k / 50) for k in range(51)]
            ax1.plot(xs, [f.at(x) for x in xs], "-", color=colour, label=f"{name}: fit g_inf + b/E")
            xs = [hi * (st.extrapolate_to / hi) ** (k / 50) for k in range(51)]
            ax1.plot(xs, [f.at(x) for x in xs], "--", color=colour)
            xs = [lo * (st.extrapolate_to / lo) ** (k / 80) for k in range(81)]
            band = [f.boot_at(x) for x in xs]
            ax1.fill_between(xs, [_quantile(v, 0.025) for v in band], [_quantile(v, 0.975) for v in band],
                             color=colour, alpha=0.12, lw=0)
            ax1.plot([st.extrapolate_to], [f.at(st.extrapolate_to)], "*", ms=10, color=colour,
                     markerfacecolor="none", label=f"{name}: at {st.extrapolate_to} epochs (extrapolation)")
        ax1.axhline(-c.drop, color=colour, lw=0.8, ls=":")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlim(min(ticks) / 1.25, max(ticks) * 1.25)
        ax.set_xticks(sorted(ticks))
        ax.set_xticklabels([str(t) for t in sorted(ticks)])
        ax.minorticks_off()
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("training epochs (log scale)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax1.set_ylabel("structured minus dense, held-out accuracy (points)")
    ax1.set_title("held-out gap (band: bootstrap 95 %; dotted: the claim's allowed drop)", fontsize=10)
    ax2.set_ylabel("structured minus dense, final-epoch train/acc (points)")
    ax2.set_title("training-accuracy gap")
    _savefig(fig, out)
